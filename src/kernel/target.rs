//! A profile resolved into the knobs of this host ([`Target`]), and how a knob's file is
//! parsed into a [`Reading`].

use std::fs::File;

use super::location::thp_loc;
use super::{HostFs, Location, Root, THP_DIR};
use crate::profile::{Desired, Knob, Profile, Setting};

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

pub(super) fn parse(t: &Target, raw: &[u8]) -> Result<Reading, &'static str> {
    let text = std::str::from_utf8(raw).map_err(|_| "not UTF-8 text")?;
    match t.format {
        Format::Text => {
            let value = text.split_whitespace().collect::<Vec<_>>().join(" ");
            if value.is_empty() {
                return Err("an empty sysctl value");
            }
            let number = value.parse::<i64>().ok();
            if t.desired.numeric().is_some() && number.is_none() {
                return Err("a single integer");
            }
            Ok(Reading { value, number })
        }
        Format::Enum => {
            let mut selected = text
                .split_whitespace()
                .filter_map(|w| w.strip_prefix('[').and_then(|w| w.strip_suffix(']')));
            let word = match (selected.next(), selected.next()) {
                (Some(w), None) => w,
                // A file of one bare word (a plain-file test tree) reads as that word.
                (None, None) => match text.split_whitespace().collect::<Vec<_>>()[..] {
                    [w] => w,
                    _ => "",
                },
                _ => "",
            };
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

/// One knob of this host, resolved from a profile setting.
#[derive(Debug)]
pub struct Target {
    /// The knob's name: the setting name, or `thp.hugepages-<size>kB.enabled` per size.
    pub name: String,
    /// The profile setting it comes from.
    pub setting: String,
    pub location: Location,
    pub format: Format,
    pub desired: Desired,
    pub mode: crate::profile::Mode,
    pub(super) not_applicable: bool,
    pub(super) fd: Option<File>,
    /// The bytes of the last successful read (capacity kept: no allocation in steady state).
    pub(super) last_raw: Vec<u8>,
}

impl Target {
    fn new(s: &Setting, name: &str, location: Location, format: Format) -> Target {
        Target {
            name: name.to_string(),
            setting: s.name.clone(),
            location,
            format,
            desired: s.desired.clone(),
            mode: s.mode,
            not_applicable: false,
            fd: None,
            last_raw: Vec::new(),
        }
    }

    /// A target for restoring a journalled original: any text, no desired value.
    pub fn for_restore(name: &str, location: Location) -> Target {
        let format = if location.root == Root::Sys {
            Format::Enum
        } else {
            Format::Text
        };
        Target {
            name: name.to_string(),
            setting: name.to_string(),
            location,
            format,
            desired: Desired::Text(String::new()),
            mode: crate::profile::Mode::Enforce,
            not_applicable: false,
            fd: None,
            last_raw: Vec::new(),
        }
    }
}

impl HostFs {
    /// A kernel without THP has `kernel/mm` but no `transparent_hugepage` in it. A sys root
    /// without `kernel/mm` is a wrong mount, reported as an error, not as "no THP".
    pub(super) fn thp_absent(&self) -> bool {
        self.sys_root.join("kernel/mm").is_dir() && !self.sys_root.join(THP_DIR).exists()
    }

    /// Resolves a profile into the knobs of this host (per-size THP files are discovered).
    pub fn resolve(&self, profile: &Profile) -> Vec<Target> {
        let mut out = Vec::new();
        for s in &profile.settings {
            match &s.knob {
                Knob::Sysctl(name) => {
                    out.push(Target::new(s, name, Location::sysctl(name), Format::Text))
                }
                Knob::ThpEnabled => {
                    out.push(Target::new(s, &s.name, thp_loc("enabled"), Format::Enum))
                }
                Knob::ThpDefrag => {
                    out.push(Target::new(s, &s.name, thp_loc("defrag"), Format::Enum))
                }
                Knob::ThpPerSize => {
                    let sizes = self.thp_sizes();
                    if sizes.is_empty() {
                        // No THP, or a kernel before mTHP (6.8): nothing to check. A sys root
                        // without kernel/mm reads as "not found" below.
                        let mut t =
                            Target::new(s, &s.name, thp_loc("hugepages-*kB/enabled"), Format::Enum);
                        t.not_applicable =
                            self.thp_absent() || self.sys_root.join(THP_DIR).is_dir();
                        out.push(t);
                    }
                    for (kb, dir) in sizes {
                        let name = format!("thp.hugepages-{kb}kB.enabled");
                        out.push(Target::new(
                            s,
                            &name,
                            thp_loc(&format!("{dir}/enabled")),
                            Format::Enum,
                        ));
                    }
                }
            }
        }
        out
    }

    fn thp_sizes(&self) -> Vec<(u64, String)> {
        let dir = self.sys_root.join(THP_DIR);
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
}

#[cfg(test)]
mod tests {
    use crate::testing::{FakeTree, target};

    #[test]
    fn resolves_and_reads_the_default_profile() {
        let tree = FakeTree::untuned();
        let (fs, mut ts) = tree.default_targets();
        let names: Vec<_> = ts.iter().map(|t| t.name.clone()).collect();
        assert_eq!(
            names,
            [
                "vm.overcommit_memory",
                "net.core.somaxconn",
                "thp.enabled",
                "thp.defrag",
                "thp.hugepages-64kB.enabled",
                "thp.hugepages-2048kB.enabled"
            ]
        );
        let r = fs
            .read(target(&mut ts, "net.core.somaxconn"))
            .unwrap()
            .unwrap();
        assert_eq!((r.value.as_str(), r.number), ("128", Some(128)));
        let r = fs.read(target(&mut ts, "thp.enabled")).unwrap().unwrap();
        assert_eq!(r.value, "always");
        let r = fs
            .read(target(&mut ts, "thp.hugepages-64kB.enabled"))
            .unwrap()
            .unwrap();
        assert_eq!(r.value, "inherit");
    }

    #[test]
    fn missing_thp_directory_is_not_applicable() {
        let tree = FakeTree::untuned();
        std::fs::remove_dir_all(tree.dir.path().join("sys/kernel/mm/transparent_hugepage"))
            .unwrap();
        let (fs, mut ts) = tree.default_targets();
        let thp: Vec<_> = ts
            .iter_mut()
            .filter(|t| t.name.starts_with("thp."))
            .collect();
        assert_eq!(thp.len(), 3);
        for t in thp {
            assert_eq!(fs.read(t), Ok(None), "{}", t.name);
        }
    }
}
