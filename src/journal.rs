//! The originals journal: each knob's value before the agent first changed it.
//!
//! Written atomically (temp file, fsync, rename, fsync of the directory), so a crash leaves the
//! old or the new journal, never a torn one. A recorded original is never overwritten. A corrupt
//! journal is an error, never silently replaced.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::kernel::Location;

pub const FILE_NAME: &str = "originals.json";
const TMP_NAME: &str = "originals.json.tmp";
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
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct OnDisk {
    version: u32,
    originals: BTreeMap<String, Original>,
}

/// The journal of one state directory.
#[derive(Debug)]
pub struct Journal {
    dir: PathBuf,
    originals: BTreeMap<String, Original>,
}

impl Journal {
    /// Loads the journal of `dir`; a missing file is an empty journal.
    pub fn load(dir: &Path) -> Result<Journal, JournalError> {
        let path = dir.join(FILE_NAME);
        let originals = match fs::read(&path) {
            Ok(bytes) => parse(&bytes).map_err(|reason| JournalError::Corrupt {
                path: path.clone(),
                reason,
            })?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => BTreeMap::new(),
            Err(source) => {
                return Err(JournalError::Io {
                    path,
                    op: "read",
                    source,
                });
            }
        };
        Ok(Journal {
            dir: dir.to_path_buf(),
            originals,
        })
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
        fs::create_dir_all(&self.dir).map_err(|e| JournalError::Io {
            path: self.dir.clone(),
            op: "create the state directory",
            source: e,
        })?;
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
    fn crash_between_write_and_rename_keeps_the_old_journal() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = Journal::load(dir.path()).unwrap();
        j.record("a.b", &loc("sys/a/b"), "1", None).unwrap();
        let before = fs::read(dir.path().join(FILE_NAME)).unwrap();
        // Simulate a crash: the new journal reached the temp file, the rename never happened.
        let mut next = j.originals().clone();
        next.insert(
            "c.d".into(),
            Original {
                location: loc("sys/c/d"),
                value: "2".into(),
                recorded_at: 0,
                netns: None,
            },
        );
        j.write_tmp(&next).unwrap();
        drop(j);
        assert_eq!(fs::read(dir.path().join(FILE_NAME)).unwrap(), before);
        let mut j = Journal::load(dir.path()).unwrap();
        assert_eq!(j.originals().keys().collect::<Vec<_>>(), ["a.b"]);
        // The next record replaces the stale temp file and commits cleanly.
        j.record("c.d", &loc("sys/c/d"), "3", None).unwrap();
        let j = Journal::load(dir.path()).unwrap();
        assert_eq!(j.originals()["c.d"].value, "3");
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
        fs::write(&state, "x").unwrap();
        let e = j.record("a.b", &loc("sys/a/b"), "1", None).unwrap_err();
        assert!(matches!(e, JournalError::Io { .. }), "{e}");
        assert!(j.originals().is_empty());
    }
}
