//! The host's global kernel knobs in tests that change them: saved first, put back on drop
//! (panic included), one such test at a time across every test binary (a file lock).
//!
//! A drop does not run when the test process is killed (SIGKILL, a CI timeout, the machine's
//! sandbox restarted). So the saved values are also written to a file beside the lock, with
//! the boot id, before any test changes a knob; the next `take()` on the same boot finds a
//! file left behind and puts those values back first. After a reboot the kernel has its own
//! defaults again and the file is only removed.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

pub const THP: &str = "/sys/kernel/mm/transparent_hugepage";
pub const OVERCOMMIT_PATH: &str = "/proc/sys/vm/overcommit_memory";
const LOCK: &str = "/tmp/redis-node-tuner-host-knobs.lock";
const SAVED: &str = "/tmp/redis-node-tuner-host-knobs.saved";
const BOOT_ID: &str = "/proc/sys/kernel/random/boot_id";

static SERIAL: Mutex<()> = Mutex::new(());

/// Holds the host's global knobs and puts them back on drop (panic included).
pub struct HostGuard {
    saved: Vec<(PathBuf, String)>,
    _lock: File,
    _serial: MutexGuard<'static, ()>,
}

pub fn selected(raw: &str) -> String {
    raw.split_whitespace()
        .find_map(|w| w.strip_prefix('[').and_then(|w| w.strip_suffix(']')))
        .unwrap_or(raw.trim())
        .to_string()
}

pub fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
}

pub fn write(p: &Path, v: &str) {
    std::fs::write(p, v).unwrap_or_else(|e| panic!("write {v:?} to {}: {e}", p.display()));
}

fn thp_files() -> Vec<PathBuf> {
    let mut files = vec![
        PathBuf::from(THP).join("enabled"),
        PathBuf::from(THP).join("defrag"),
    ];
    if let Ok(rd) = std::fs::read_dir(THP) {
        let mut sizes: Vec<PathBuf> = rd
            .filter_map(|e| e.ok())
            .map(|e| e.path().join("enabled"))
            .filter(|p| {
                p.parent()
                    .is_some_and(|d| d.to_string_lossy().contains("hugepages-"))
                    && p.is_file()
            })
            .collect();
        sizes.sort();
        files.extend(sizes);
    }
    files
}

impl HostGuard {
    /// Waits for other host-changing tests (this process and others), then saves the knobs.
    pub fn take() -> HostGuard {
        let serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let lock = File::create(LOCK).unwrap_or_else(|e| panic!("create {LOCK}: {e}"));
        lock.lock().unwrap_or_else(|e| panic!("lock {LOCK}: {e}"));
        assert!(is_root(), "the real-kernel tests need root");
        recover_left_behind();
        let mut saved = vec![];
        for p in [
            PathBuf::from(OVERCOMMIT_PATH),
            PathBuf::from("/proc/sys/net/core/somaxconn"),
        ] {
            saved.push((p.clone(), read(&p).trim().to_string()));
        }
        for p in thp_files().into_iter().filter(|p| p.exists()) {
            saved.push((p.clone(), selected(&read(&p))));
        }
        persist(&saved);
        HostGuard {
            saved,
            _lock: lock,
            _serial: serial,
        }
    }

    pub fn get(&self, p: &str) -> Option<&str> {
        self.saved
            .iter()
            .find(|(q, _)| q == Path::new(p))
            .map(|(_, v)| v.as_str())
    }
}

impl Drop for HostGuard {
    fn drop(&mut self) {
        if restore(&self.saved) {
            let _ = std::fs::remove_file(SAVED);
        }
    }
}

/// Writes every saved value back; false when one could not be written (the file then stays
/// for the next `take()`).
fn restore(saved: &[(PathBuf, String)]) -> bool {
    let mut all = true;
    for (p, v) in saved {
        if let Err(e) = std::fs::write(p, v) {
            eprintln!("could not restore {} to {v}: {e}", p.display());
            all = false;
        }
    }
    all
}

fn boot_id() -> String {
    read(Path::new(BOOT_ID)).trim().to_string()
}

/// `boot <id>` then one `<path>\t<value>` line per knob, written whole (temp file + rename).
fn persist(saved: &[(PathBuf, String)]) {
    let mut text = format!("boot {}\n", boot_id());
    for (p, v) in saved {
        text.push_str(&format!("{}\t{v}\n", p.display()));
    }
    let tmp = format!("{SAVED}.tmp");
    write(Path::new(&tmp), &text);
    std::fs::rename(&tmp, SAVED).unwrap_or_else(|e| panic!("rename {tmp} to {SAVED}: {e}"));
}

/// Puts back the values of a test process that was killed while holding the lock.
fn recover_left_behind() {
    let Ok(text) = std::fs::read_to_string(SAVED) else {
        return;
    };
    let mut lines = text.lines();
    let same_boot = lines.next().and_then(|l| l.strip_prefix("boot ")) == Some(&boot_id());
    let saved: Vec<(PathBuf, String)> = lines
        .filter_map(|l| l.split_once('\t'))
        .map(|(p, v)| (PathBuf::from(p), v.to_string()))
        .collect();
    if same_boot && !saved.is_empty() {
        eprintln!(
            "{SAVED}: a killed test left the host knobs changed; restoring {:?}",
            saved
        );
        if !restore(&saved) {
            panic!("{SAVED}: could not restore the knobs a killed test left changed");
        }
    }
    let _ = std::fs::remove_file(SAVED);
}

pub fn is_root() -> bool {
    read(Path::new("/proc/self/status"))
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0"))
}
