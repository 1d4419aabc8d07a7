//! Reading, comparing and writing a knob through its kept descriptor.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::file::parse;
use super::{HostFs, KernelError, KnobFile, Reading, Root};

pub(super) fn open_file(path: &Path, write: bool) -> io::Result<File> {
    if write {
        // O_TRUNC matters for plain files (test trees); procfs and sysfs ignore it. Never O_CREAT.
        OpenOptions::new().write(true).truncate(true).open(path)
    } else {
        File::open(path)
    }
}

impl HostFs {
    /// Reads a knob: through its kept descriptor (opened on first use), `Ok(None)` when the
    /// knob does not apply to this kernel (no THP).
    pub fn read(&self, t: &mut KnobFile) -> Result<Option<Reading>, KernelError> {
        if t.not_applicable {
            return Ok(None);
        }
        if let Some(reason) = self.netns_blocked(&t.location) {
            return Err(KernelError::NetnsUnverified {
                knob: t.name.clone(),
                reason,
            });
        }
        if t.fd.is_none() {
            if t.location.root == Root::Sys && self.thp_absent() {
                return Ok(None);
            }
            let fd = self.open(&t.location, false).map_err(|e| {
                KernelError::from_io(&t.name, &self.path(&t.location), "read", None, &e)
            })?;
            t.fd = Some(fd);
        }
        let mut buf = [0u8; 512];
        let n = match t.fd.as_ref().map(|fd| fd.read_at(&mut buf, 0)) {
            Some(Ok(n)) => n,
            Some(Err(e)) => {
                // A stale descriptor (e.g. the file went away) is reopened next time.
                t.fd = None;
                return Err(KernelError::from_io(
                    &t.name,
                    &self.path(&t.location),
                    "read",
                    None,
                    &e,
                ));
            }
            None => 0,
        };
        t.last_raw.clear();
        t.last_raw.extend_from_slice(&buf[..n]);
        parse(t, &buf[..n])
            .map(Some)
            .map_err(|expected| KernelError::Parse {
                knob: t.name.clone(),
                path: self.path(&t.location),
                content: String::from_utf8_lossy(&buf[..n]).into_owned(),
                expected,
            })
    }

    /// Whether a knob still holds the bytes its last read saw: one `pread` into a stack
    /// buffer, nothing allocated. `false` when it cannot tell (no kept descriptor, an error): the
    /// caller then reads it in full. A knob whose result does not depend on the file (not
    /// applicable, or `net.*` in an unverified namespace) is unchanged.
    pub fn unchanged(&self, t: &KnobFile) -> bool {
        if t.not_applicable || self.netns_unverified(&t.location) {
            return true;
        }
        let Some(fd) = &t.fd else {
            return false;
        };
        let mut buf = [0u8; 512];
        match fd.read_at(&mut buf, 0) {
            Ok(n) => t.last_raw[..] == buf[..n],
            Err(_) => false,
        }
    }

    /// Writes `value` to a knob and reads it back.
    pub fn write(&self, t: &mut KnobFile, value: &str) -> Result<Reading, KernelError> {
        let path = self.path(&t.location);
        if let Some(reason) = self.netns_blocked(&t.location) {
            return Err(KernelError::NetnsUnverified {
                knob: t.name.clone(),
                reason,
            });
        }
        let io_err = |e: &io::Error| KernelError::from_io(&t.name, &path, "write", Some(value), e);
        let mut f = self.open(&t.location, true).map_err(|e| io_err(&e))?;
        f.write_all(format!("{value}\n").as_bytes())
            .map_err(|e| io_err(&e))?;
        drop(f);
        // Read back through a fresh descriptor: the file may have been replaced since it was
        // opened (module reload, a test tree), and the write went to the current one.
        t.fd = None;
        match self.read(t)? {
            Some(r) => Ok(r),
            None => Err(KernelError::NotFound {
                knob: t.name.clone(),
                path,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::testing::{FakeTree, file};

    #[test]
    fn kept_descriptor_sees_in_place_changes_and_writes_read_back() {
        let tree = FakeTree::untuned();
        let (fs, mut ts) = tree.default_targets();
        let t = file(&mut ts, "vm.overcommit_memory");
        assert_eq!(fs.read(t).unwrap().unwrap().value, "0");
        tree.put("proc/sys/vm/overcommit_memory", "2\n");
        assert_eq!(fs.read(t).unwrap().unwrap().value, "2");
        let back = fs.write(t, "1").unwrap();
        assert_eq!(back.number, Some(1));
        assert_eq!(tree.get("proc/sys/vm/overcommit_memory"), "1\n");
        // A shorter value over a longer one leaves no tail behind.
        let t = file(&mut ts, "net.core.somaxconn");
        tree.put("proc/sys/net/core/somaxconn", "4096\n");
        assert_eq!(fs.write(t, "1").unwrap().value, "1");
    }

    #[test]
    fn a_replaced_file_is_reopened_after_a_write() {
        let tree = FakeTree::untuned();
        let (fs, mut ts) = tree.default_targets();
        let t = file(&mut ts, "vm.overcommit_memory");
        assert_eq!(fs.read(t).unwrap().unwrap().value, "0");
        // The file is replaced behind the kept descriptor.
        let p = tree.dir.path().join("proc/sys/vm/overcommit_memory");
        std::fs::rename(&p, tree.dir.path().join("old")).unwrap();
        tree.put("proc/sys/vm/overcommit_memory", "2\n");
        assert_eq!(fs.write(t, "1").unwrap().value, "1");
        tree.put("proc/sys/vm/overcommit_memory", "0\n");
        assert_eq!(fs.read(t).unwrap().unwrap().value, "0");
    }

    #[test]
    fn errors_name_the_knob_and_the_file() {
        let tree = FakeTree::untuned();
        std::fs::remove_file(tree.dir.path().join("proc/sys/vm/overcommit_memory")).unwrap();
        tree.put("proc/sys/net/core/somaxconn", "lots\n");
        tree.put(
            "sys/kernel/mm/transparent_hugepage/enabled",
            "always madvise never\n",
        );
        tree.put(
            "sys/kernel/mm/transparent_hugepage/defrag",
            "[always] [never]\n",
        );
        let (fs, mut ts) = tree.default_targets();
        let e = fs.read(file(&mut ts, "vm.overcommit_memory")).unwrap_err();
        assert_eq!(e.kind(), "missing");
        assert!(
            e.to_string().contains("proc/sys/vm/overcommit_memory"),
            "{e}"
        );
        let e = fs.read(file(&mut ts, "net.core.somaxconn")).unwrap_err();
        assert_eq!(e.kind(), "parse");
        assert!(
            e.to_string()
                .starts_with("net.core.somaxconn: unexpected content \"lots\\n\""),
            "{e}"
        );
        assert!(e.to_string().contains("a single integer"), "{e}");
        assert_eq!(
            fs.read(file(&mut ts, "thp.enabled")).unwrap_err().kind(),
            "parse"
        );
        assert_eq!(
            fs.read(file(&mut ts, "thp.defrag")).unwrap_err().kind(),
            "parse"
        );
        // A write to a missing file is NotFound, and never creates it.
        let e = fs
            .write(file(&mut ts, "vm.overcommit_memory"), "1")
            .unwrap_err();
        assert_eq!(e.kind(), "missing");
        assert!(
            !tree
                .dir
                .path()
                .join("proc/sys/vm/overcommit_memory")
                .exists()
        );
    }

    /// `CAP_DAC_OVERRIDE` is in this process's effective set: file modes do not stop its
    /// writes (uid 0 normally has it).
    fn has_dac_override() -> bool {
        std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("CapEff:"))
                    .and_then(|h| u64::from_str_radix(h.trim(), 16).ok())
            })
            // CAP_DAC_OVERRIDE is capability 1.
            .is_some_and(|caps| caps & (1 << 1) != 0)
    }

    #[test]
    fn a_write_denied_by_the_file_mode_is_permission_denied_as_root_and_not() {
        let tree = FakeTree::untuned();
        let p = tree.dir.path().join("proc/sys/vm/overcommit_memory");
        let mut perm = std::fs::metadata(&p).unwrap().permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o444);
        std::fs::set_permissions(&p, perm).unwrap();
        let (fs, mut ts) = tree.default_targets();
        let r = fs.write(file(&mut ts, "vm.overcommit_memory"), "1");
        if !has_dac_override() {
            // Not root, or root without the capability (the child below).
            let e = r.unwrap_err();
            assert_eq!(e.kind(), "permission", "{e}");
            assert!(
                e.to_string().contains("proc/sys/vm/overcommit_memory"),
                "{e}"
            );
            assert_eq!(tree.get("proc/sys/vm/overcommit_memory"), "0\n");
            return;
        }
        // uid 0 with CAP_DAC_OVERRIDE ignores the mode, so the write goes through here ...
        assert_eq!(r.unwrap().value, "1");
        // ... and the error path is proven by this same test in a child process of this test
        // binary with every capability dropped (setpriv, util-linux): still uid 0, but the
        // mode now applies to it, as it does to any other user.
        let test = format!(
            "{}::a_write_denied_by_the_file_mode_is_permission_denied_as_root_and_not",
            module_path!().split_once("::").map_or("", |(_, m)| m)
        );
        let out = std::process::Command::new("setpriv")
            .args([
                "--inh-caps=-all",
                "--ambient-caps=-all",
                "--bounding-set=-all",
                "--",
            ])
            .arg(std::env::current_exe().unwrap())
            .args(["--exact", &test, "--test-threads=1", "--nocapture"])
            .output()
            .expect("setpriv (util-linux) is needed to drop the capabilities of a child");
        let text = format!(
            "{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success() && text.contains("1 passed"),
            "the capability-less child did not prove permission_denied:\n{text}"
        );
    }
}
