//! One knob's file ([`KnobFile`]), the per-size THP files this kernel has, and how a knob's
//! file is parsed into a [`Reading`].

use std::fs::File;

use super::location::thp_loc;
use super::{HostFs, Location, Root, THP_DIR};

/// How a knob's file is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// A sysctl: the trimmed text.
    Text,
    /// A sysfs enum such as `always [madvise] never`: the bracketed word.
    Enum,
}

/// What a knob reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reading {
    /// The value: whitespace-normalised sysctl text, or the selected enum word.
    pub value: String,
    /// The value as an integer, for integer sysctls.
    pub number: Option<i64>,
}

/// The selected word of a sysfs enum (`always [madvise] never`): the one in brackets, or a
/// file's single bare word (a plain-file test tree); `None` when there is not exactly one.
pub fn selected_word(text: &str) -> Option<&str> {
    let mut selected = text
        .split_whitespace()
        .filter_map(|w| w.strip_prefix('[').and_then(|w| w.strip_suffix(']')));
    match (selected.next(), selected.next()) {
        (Some(w), None) => Some(w),
        (None, None) => match text.split_whitespace().collect::<Vec<_>>()[..] {
            [w] => Some(w),
            _ => None,
        },
        _ => None,
    }
}

pub(super) fn parse(t: &KnobFile, raw: &[u8]) -> Result<Reading, &'static str> {
    let text = std::str::from_utf8(raw).map_err(|_| "not UTF-8 text")?;
    match t.format {
        Format::Text => {
            let value = text.split_whitespace().collect::<Vec<_>>().join(" ");
            if value.is_empty() {
                return Err("an empty sysctl value");
            }
            let number = value.parse::<i64>().ok();
            if t.numeric && number.is_none() {
                return Err("a single integer");
            }
            Ok(Reading { value, number })
        }
        Format::Enum => {
            let word = selected_word(text).unwrap_or("");
            if word.is_empty() {
                return Err("a list of words with exactly one in [brackets]");
            }
            Ok(Reading {
                value: word.to_string(),
                number: None,
            })
        }
    }
}

/// One knob's file on this host: its name, where it is, how it is read, and the descriptor kept
/// open between reads (with the bytes of the last read, for the steady-state compare).
#[derive(Debug)]
pub struct KnobFile {
    /// The knob's name: a setting name, or `thp.hugepages-<size>kB.enabled` per size.
    pub name: String,
    pub location: Location,
    pub format: Format,
    /// A sysctl whose value must be a single integer (a number is desired of it).
    pub numeric: bool,
    /// This kernel has no such knob (no THP, or no per-size THP before 6.8): reads as `None`.
    pub not_applicable: bool,
    pub(super) fd: Option<File>,
    /// The bytes of the last successful read (capacity kept: no allocation in steady state).
    pub(super) last_raw: Vec<u8>,
}

impl KnobFile {
    pub fn new(name: &str, location: Location, format: Format, numeric: bool) -> KnobFile {
        KnobFile {
            name: name.to_string(),
            location,
            format,
            numeric,
            not_applicable: false,
            fd: None,
            last_raw: Vec::new(),
        }
    }

    /// A sysctl's file (text).
    pub fn sysctl(name: &str, numeric: bool) -> KnobFile {
        KnobFile::new(name, Location::sysctl(name), Format::Text, numeric)
    }

    /// A THP file (a word list), `rel` below the THP directory.
    pub fn thp(name: &str, rel: &str) -> KnobFile {
        KnobFile::new(name, thp_loc(rel), Format::Enum, false)
    }

    /// A file for restoring a journalled original: any text.
    pub fn for_restore(name: &str, location: Location) -> KnobFile {
        let format = if location.root == Root::Sys {
            Format::Enum
        } else {
            Format::Text
        };
        KnobFile::new(name, location, format, false)
    }
}

impl HostFs {
    /// A kernel without THP has `kernel/mm` but no `transparent_hugepage` in it. A sys root
    /// without `kernel/mm` is a wrong mount, reported as an error, not as "no THP".
    pub fn thp_absent(&self) -> bool {
        self.sys_root.join("kernel/mm").is_dir() && !self.sys_root.join(THP_DIR).exists()
    }

    /// The THP directory exists under the sys root.
    pub fn thp_present(&self) -> bool {
        self.sys_root.join(THP_DIR).is_dir()
    }

    /// The per-size THP knobs of this kernel (6.8+): (size in kB, directory name), by size.
    pub fn thp_sizes(&self) -> Vec<(u64, String)> {
        thp_sizes(&self.sys_root)
    }
}

/// The per-size THP directories under a sys root (6.8+) that have an `enabled` file: (size in
/// kB, directory name), by size.
pub fn thp_sizes(sys_root: &std::path::Path) -> Vec<(u64, String)> {
    let dir = sys_root.join(THP_DIR);
    let Ok(rd) = std::fs::read_dir(&dir) else {
        return vec![];
    };
    let mut sizes: Vec<(u64, String)> = rd
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let kb = name
                .strip_prefix("hugepages-")?
                .strip_suffix("kB")?
                .parse()
                .ok()?;
            // Some sizes exist for shmem only (shmem_enabled, no enabled).
            dir.join(&name)
                .join("enabled")
                .is_file()
                .then_some((kb, name))
        })
        .collect();
    sizes.sort();
    sizes
}
