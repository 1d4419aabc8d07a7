//! The originals journal: each knob's value before the agent first changed it.
//!
//! Written atomically (temp file, fsync, rename, fsync of the directory), so a crash leaves the
//! old or the new journal, never a torn one. A recorded original is never overwritten. A corrupt
//! journal is an error, never silently replaced.
//!
//! Only one process at a time may change a state directory: [`Journal::load`] takes an
//! exclusive `flock` on `<state-dir>/.lock` (a [`StateLock`]) that the journal keeps for its
//! life, so the fixed temp file name is only ever written under the lock. [`read`] is the
//! lock-free, read-only view (for `check`).

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::kernel::Location;

pub const FILE_NAME: &str = "originals.json";
const TMP_NAME: &str = "originals.json.tmp";
/// The lock file of a state directory (never removed: removing a lock file races).
pub const LOCK_NAME: &str = ".lock";
const VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("state journal {path}: cannot {op}: {source}")]
    Io {
        path: PathBuf,
        op: &'static str,
        #[source]
        source: io::Error,
    },
    #[error(
        "state journal {path} is corrupt ({reason}); it is kept as is: inspect it, restore by hand, then remove it"
    )]
    Corrupt { path: PathBuf, reason: String },
    #[error(
        "state directory {} is locked by another redis-node-tuner ({}): stop it first (systemctl stop redis-node-tuner, or remove the DaemonSet), then retry",
        dir.display(),
        holder.as_deref().unwrap_or("holder unknown")
    )]
    Locked {
        dir: PathBuf,
        /// Who holds it, from the lock file: `pid N`, and whether that pid is in another PID
        /// namespace than the reader's (a container's: the DaemonSet's pod).
        holder: Option<String>,
    },
}

/// An exclusive `flock` on `<state-dir>/.lock`, held until the last clone is dropped (or the
/// process dies: the kernel releases it, so a crash never leaves a stale lock).
///
/// Within one process, acquiring the lock of a directory this process already holds returns the
/// same lock: it excludes other processes, not other parts of this one.
#[derive(Debug, Clone)]
pub struct StateLock(#[allow(dead_code)] Arc<Held>);

#[derive(Debug)]
struct Held {
    key: PathBuf,
    _file: File,
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Ok(mut held) = HELD.lock() {
            held.retain(|(k, w)| k != &self.key && w.strong_count() > 0);
        }
    }
}

/// The state directories this process holds, by canonical path.
static HELD: Mutex<Vec<(PathBuf, Weak<Held>)>> = Mutex::new(Vec::new());

impl StateLock {
    /// Locks `dir` (created, with its parent fsynced, if missing) without waiting: another
    /// process holding it is [`JournalError::Locked`].
    pub fn acquire(dir: &Path) -> Result<StateLock, JournalError> {
        create_state_dir(dir)?;
        let key = fs::canonicalize(dir).map_err(|source| JournalError::Io {
            path: dir.to_path_buf(),
            op: "resolve the state directory",
            source,
        })?;
        let mut held = HELD.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(h) = held
            .iter()
            .find(|(k, _)| k == &key)
            .and_then(|(_, w)| w.upgrade())
        {
            return Ok(StateLock(h));
        }
        let path = dir.join(LOCK_NAME);
        let io_err = |op, source| JournalError::Io {
            path: path.clone(),
            op,
            source,
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(|e| io_err("open the lock file", e))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                let mut text = String::new();
                let _ = file.read_to_string(&mut text);
                return Err(JournalError::Locked {
                    dir: dir.to_path_buf(),
                    holder: describe_holder(&text),
                });
            }
            Err(fs::TryLockError::Error(e)) => return Err(io_err("lock", e)),
        }
        // Name the holder for whoever finds the directory locked: its pid, and the PID
        // namespace that pid is in (a container's pid 1 is not the host's).
        let pidns = own_pidns()
            .map(|n| format!(" pidns:{n}"))
            .unwrap_or_default();
        file.set_len(0)
            .and_then(|()| file.rewind())
            .and_then(|()| writeln!(file, "{}{pidns}", std::process::id()))
            .map_err(|e| io_err("write the lock file", e))?;
        let h = Arc::new(Held {
            key: key.clone(),
            _file: file,
        });
        held.retain(|(_, w)| w.strong_count() > 0);
        held.push((key, Arc::downgrade(&h)));
        Ok(StateLock(h))
    }
}

/// The inode of this process's PID namespace.
fn own_pidns() -> Option<u64> {
    std::fs::metadata("/proc/self/ns/pid")
        .ok()
        .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
}

/// Who holds the lock, from its file (`<pid>[ pidns:<inode>]`): `pid N`, and where that pid
/// is when it is not in the reader's PID namespace.
fn describe_holder(text: &str) -> Option<String> {
    let mut words = text.split_whitespace();
    let pid = words
        .next()
        .filter(|p| p.chars().all(|c| c.is_ascii_digit()))?;
    let theirs = words
        .find_map(|w| w.strip_prefix("pidns:"))
        .and_then(|n| n.parse::<u64>().ok());
    Some(match (theirs, own_pidns()) {
        (Some(t), Some(o)) if t != o => format!(
            "pid {pid} in another PID namespace: a container's, such as the DaemonSet's pod"
        ),
        _ => format!("pid {pid}"),
    })
}

/// Creates the state directory if it is missing, and makes each new directory entry durable by
/// fsyncing its parent.
fn create_state_dir(dir: &Path) -> Result<(), JournalError> {
    if dir.is_dir() {
        return Ok(());
    }
    // The missing ancestors, outermost first.
    let mut missing = vec![];
    let mut p = Some(dir);
    while let Some(d) = p {
        if d.as_os_str().is_empty() || d.exists() {
            break;
        }
        missing.push(d);
        p = d.parent();
    }
    fs::create_dir_all(dir).map_err(|source| JournalError::Io {
        path: dir.to_path_buf(),
        op: "create the state directory",
        source,
    })?;
    for d in missing.iter().rev() {
        if let Some(parent) = d.parent().filter(|p| !p.as_os_str().is_empty()) {
            sync_dir(parent)?;
        }
    }
    Ok(())
}

/// One recorded original.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Original {
    pub location: Location,
    pub value: String,
    /// Seconds since the epoch when it was recorded.
    pub recorded_at: u64,
    /// For `net.*` knobs: the inode of the network namespace the value was read in, so a
    /// restore never writes one namespace's original into another.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<u64>,
    /// The kernel's boot id (`/proc/sys/kernel/random/boot_id`) when it was recorded; absent
    /// in journals written before it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_id: Option<String>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct OnDisk {
    version: u32,
    originals: BTreeMap<String, Original>,
}

/// The journal of one state directory, holding its lock.
#[derive(Debug)]
pub struct Journal {
    dir: PathBuf,
    originals: BTreeMap<String, Original>,
    boot_id: Option<String>,
    _lock: StateLock,
}

/// Reads the journal of `dir` without locking or creating anything (a missing file is an
/// empty journal). It may be changed by its holder right after: for display only.
pub fn read(dir: &Path) -> Result<BTreeMap<String, Original>, JournalError> {
    let path = dir.join(FILE_NAME);
    match fs::read(&path) {
        Ok(bytes) => parse(&bytes).map_err(|reason| JournalError::Corrupt { path, reason }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(BTreeMap::new()),
        Err(source) => Err(JournalError::Io {
            path,
            op: "read",
            source,
        }),
    }
}

/// The kernel's boot id: `<proc-root>/sys/kernel/random/boot_id`, else this process's own
/// `/proc/sys/kernel/random/boot_id` (the boot id is one per kernel, not per namespace, and a
/// DaemonSet mounts only `/proc/sys/vm` and `/proc/sys/net/core` under its proc root).
pub fn boot_id(proc_root: &Path) -> Option<String> {
    let read = |root: &Path| {
        fs::read_to_string(root.join("sys/kernel/random/boot_id"))
            .ok()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
    };
    read(proc_root).or_else(|| read(Path::new("/proc")))
}

impl Journal {
    /// Locks `dir` (see [`StateLock::acquire`]: created if missing) and loads its journal; a
    /// missing file is an empty journal. The lock is held as long as the journal lives.
    pub fn load(dir: &Path) -> Result<Journal, JournalError> {
        let lock = StateLock::acquire(dir)?;
        Ok(Journal {
            dir: dir.to_path_buf(),
            originals: read(dir)?,
            boot_id: None,
            _lock: lock,
        })
    }

    /// The boot id stamped on originals recorded from now on.
    pub fn with_boot_id(mut self, boot_id: Option<String>) -> Journal {
        self.boot_id = boot_id;
        self
    }

    pub fn path(&self) -> PathBuf {
        self.dir.join(FILE_NAME)
    }

    pub fn originals(&self) -> &BTreeMap<String, Original> {
        &self.originals
    }

    /// Records `value` as the original of `knob` unless one is recorded already, and makes it
    /// durable before returning. Returns whether it was added.
    pub fn record(
        &mut self,
        knob: &str,
        location: &Location,
        value: &str,
        netns: Option<u64>,
    ) -> Result<bool, JournalError> {
        if self.originals.contains_key(knob) {
            return Ok(false);
        }
        let mut next = self.originals.clone();
        next.insert(
            knob.to_string(),
            Original {
                location: location.clone(),
                value: value.to_string(),
                recorded_at: SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0),
                netns,
                boot_id: self.boot_id.clone(),
            },
        );
        self.persist(&next)?;
        self.originals = next;
        Ok(true)
    }

    /// Removes the journal file (after a complete restore).
    pub fn remove(self) -> Result<(), JournalError> {
        let path = self.path();
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(JournalError::Io {
                    path,
                    op: "remove",
                    source,
                });
            }
        }
        sync_dir(&self.dir)
    }

    fn persist(&self, originals: &BTreeMap<String, Original>) -> Result<(), JournalError> {
        self.write_tmp(originals)?;
        self.commit()
    }

    /// Step 1 of an atomic update: the complete new journal in a temp file, fsynced.
    fn write_tmp(&self, originals: &BTreeMap<String, Original>) -> Result<(), JournalError> {
        let err = |op, source| JournalError::Io {
            path: self.dir.join(TMP_NAME),
            op,
            source,
        };
        let body = serde_json::to_vec_pretty(&OnDisk {
            version: VERSION,
            originals: originals.clone(),
        })
        .map_err(|e| err("serialise", io::Error::other(e)))?;
        let mut f = File::create(self.dir.join(TMP_NAME)).map_err(|e| err("create", e))?;
        f.write_all(&body).map_err(|e| err("write", e))?;
        f.write_all(b"\n").map_err(|e| err("write", e))?;
        f.sync_all().map_err(|e| err("fsync", e))
    }

    /// Step 2: rename over the journal and fsync the directory.
    fn commit(&self) -> Result<(), JournalError> {
        fs::rename(self.dir.join(TMP_NAME), self.path()).map_err(|source| JournalError::Io {
            path: self.path(),
            op: "rename the new journal into place",
            source,
        })?;
        sync_dir(&self.dir)
    }
}

fn sync_dir(dir: &Path) -> Result<(), JournalError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| JournalError::Io {
            path: dir.to_path_buf(),
            op: "fsync the state directory",
            source,
        })
}

fn parse(bytes: &[u8]) -> Result<BTreeMap<String, Original>, String> {
    let disk: OnDisk = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    if disk.version != VERSION {
        return Err(format!("unsupported version {}", disk.version));
    }
    for (knob, o) in &disk.originals {
        if !o.location.is_contained() {
            return Err(format!(
                "{knob}: path {:?} escapes its root",
                o.location.rel
            ));
        }
    }
    Ok(disk.originals)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::Root;

    fn loc(rel: &str) -> Location {
        Location {
            root: Root::Proc,
            rel: rel.into(),
        }
    }

    #[test]
    fn records_once_and_survives_reload() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let mut j = Journal::load(&state).unwrap();
        assert!(j.originals().is_empty());
        assert!(
            j.record(
                "vm.overcommit_memory",
                &loc("sys/vm/overcommit_memory"),
                "0",
                None
            )
            .unwrap()
        );
        // A later change never overwrites the recorded original.
        assert!(
            !j.record(
                "vm.overcommit_memory",
                &loc("sys/vm/overcommit_memory"),
                "1",
                None
            )
            .unwrap()
        );
        let j = Journal::load(&state).unwrap();
        assert_eq!(j.originals()["vm.overcommit_memory"].value, "0");
        assert!(!state.join(TMP_NAME).exists());
        j.remove().unwrap();
        assert!(!state.join(FILE_NAME).exists());
    }

    #[test]
    fn boot_id_is_recorded_and_journals_without_it_still_load() {
        let dir = tempfile::tempdir().unwrap();
        // A journal of the first release: no boot_id field.
        fs::write(
            dir.path().join(FILE_NAME),
            "{\"version\":1,\"originals\":{\"a.b\":{\"location\":{\"root\":\"proc\",\"rel\":\"sys/a/b\"},\"value\":\"1\",\"recorded_at\":5}}}",
        )
        .unwrap();
        let j = Journal::load(dir.path())
            .unwrap()
            .with_boot_id(Some("b00t".into()));
        assert_eq!(j.originals()["a.b"].boot_id, None);
        let mut j = j;
        j.record("c.d", &loc("sys/c/d"), "2", None).unwrap();
        drop(j);
        let o = read(dir.path()).unwrap();
        assert_eq!(o["c.d"].boot_id.as_deref(), Some("b00t"));
        assert_eq!(o["a.b"].boot_id, None);
        assert!(
            fs::read_to_string(dir.path().join(FILE_NAME))
                .unwrap()
                .contains("\"version\": 1"),
            "the format stays version 1"
        );
        let proc = tempfile::tempdir().unwrap();
        // Without one under the proc root: the kernel's own (not namespaced).
        assert_eq!(
            boot_id(proc.path()),
            fs::read_to_string("/proc/sys/kernel/random/boot_id")
                .ok()
                .map(|s| s.trim().to_string())
        );
        fs::create_dir_all(proc.path().join("sys/kernel/random")).unwrap();
        fs::write(proc.path().join("sys/kernel/random/boot_id"), "1234-5\n").unwrap();
        assert_eq!(boot_id(proc.path()).as_deref(), Some("1234-5"));
    }

    #[test]
    fn the_lock_file_names_its_holder_and_is_shared_within_the_process() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("a/b/state");
        let lock = StateLock::acquire(&state).unwrap();
        assert_eq!(
            fs::read_to_string(state.join(LOCK_NAME)).unwrap(),
            format!(
                "{} pidns:{}\n",
                std::process::id(),
                own_pidns().expect("pidns")
            )
        );
        // The same process may open the journal while it holds the lock.
        let j = Journal::load(&state).unwrap();
        drop(lock);
        drop(j);
        assert!(
            HELD.lock()
                .unwrap()
                .iter()
                .all(|(k, _)| !k.ends_with("a/b/state"))
        );
        // Nothing but the lock file is created until something is recorded.
        assert!(read(&state).unwrap().is_empty());
        assert!(!state.join(FILE_NAME).exists());
    }

    #[test]
    fn corrupt_journal_is_reported_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(FILE_NAME);
        for bad in [
            &b"{\"version\":1,\"originals\":{\"a.b\":{\"location\":{\"root\":\"proc\",\"rel\":\"sys/a"[..],
            b"{\"version\":9,\"originals\":{}}",
            b"{\"version\":1,\"originals\":{\"x\":{\"location\":{\"root\":\"proc\",\"rel\":\"../etc/shadow\"},\"value\":\"1\",\"recorded_at\":0}}}",
            b"{\"version\":1,\"originals\":{},\"extra\":1}",
        ] {
            fs::write(&p, bad).unwrap();
            let e = Journal::load(dir.path()).unwrap_err();
            assert!(matches!(e, JournalError::Corrupt { .. }), "{e}");
            assert!(e.to_string().contains("originals.json"), "{e}");
            assert_eq!(fs::read(&p).unwrap(), bad, "corrupt journal must be kept");
        }
    }

    #[test]
    fn unwritable_state_dir_is_an_io_error() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let mut j = Journal::load(&state).unwrap();
        // The state directory's place is taken by a file.
        fs::remove_dir_all(&state).unwrap();
        fs::write(&state, "x").unwrap();
        let e = j.record("a.b", &loc("sys/a/b"), "1", None).unwrap_err();
        assert!(matches!(e, JournalError::Io { .. }), "{e}");
        assert!(j.originals().is_empty());
    }

    #[test]
    fn the_lock_holder_is_named_with_its_pid_namespace() {
        let ours = own_pidns().expect("own pid namespace");
        assert_eq!(
            describe_holder(&format!("42 pidns:{ours}\n")).as_deref(),
            Some("pid 42")
        );
        assert_eq!(
            describe_holder("42\n").as_deref(),
            Some("pid 42"),
            "an older file"
        );
        assert_eq!(
            describe_holder(&format!("1 pidns:{}\n", ours + 1)).as_deref(),
            Some("pid 1 in another PID namespace: a container's, such as the DaemonSet's pod")
        );
        assert_eq!(describe_holder("garbage"), None);
        assert_eq!(describe_holder(""), None);
    }
}
