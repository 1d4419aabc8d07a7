//! What the watchers need from the machine: capabilities, the kernel's own files (not a fake
//! tree), and the cgroup v2 root the sysctl program attaches to.

use std::path::{Path, PathBuf};

use super::Unavailable;
use crate::foreign::WatchedKnob;
use crate::kernel::Root;

const PROC_SUPER_MAGIC: i64 = 0x9fa0;
const SYSFS_MAGIC: i64 = 0x6265_6572;
const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

/// Capabilities the watch needs: (bit, name). CAP_SYS_ADMIN alone also does.
const NEEDED_CAPS: [(u32, &str); 3] = [(39, "CAP_BPF"), (38, "CAP_PERFMON"), (12, "CAP_NET_ADMIN")];
pub(super) const CAP_SYS_ADMIN: u32 = 21;

/// The effective capability set (`/proc/self/status` `CapEff`).
fn effective_caps() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .unwrap_or(0)
}

/// The capability `bit` is in the effective set.
pub(super) fn has_cap(bit: u32) -> bool {
    effective_caps() & (1u64 << bit) != 0
}

/// The sysctl program's capabilities missing from the effective set (none with CAP_SYS_ADMIN).
pub(super) fn missing_caps() -> Vec<&'static str> {
    let eff = effective_caps();
    if eff & (1 << CAP_SYS_ADMIN) != 0 {
        return vec![];
    }
    NEEDED_CAPS
        .iter()
        .filter(|(bit, _)| eff & (1u64 << bit) == 0)
        .map(|(_, name)| *name)
        .collect()
}

/// The knob's file is the kernel's own (procfs for sysctls, sysfs for THP), not a fake tree.
pub(super) fn is_kernel_file(k: &WatchedKnob) -> bool {
    let want = match k.location.root {
        Root::Proc => PROC_SUPER_MAGIC,
        Root::Sys => SYSFS_MAGIC,
    };
    fs_magic(&k.path) == Some(want)
}

// `f_type`'s integer type differs between libcs and architectures.
#[allow(clippy::unnecessary_cast)]
fn fs_magic(p: &Path) -> Option<i64> {
    nix::sys::statfs::statfs(p)
        .ok()
        .map(|s| s.filesystem_type().0 as i64)
}

/// The first cgroup v2 mount in the agent's mount table.
fn cgroup2_mount() -> Option<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        if right.split(' ').next()? != "cgroup2" {
            return None;
        }
        left.split(' ').nth(4).map(PathBuf::from)
    })
}

/// The cgroup v2 root to attach to.
pub(super) fn cgroup_root(given: Option<&Path>) -> Result<PathBuf, Unavailable> {
    if let Some(p) = given {
        if fs_magic(p) != Some(CGROUP2_SUPER_MAGIC) {
            return Err(Unavailable {
                reason: "no_cgroup2",
                message: format!("--cgroup-root {} is not a cgroup v2 mount", p.display()),
            });
        }
        // Every cgroup but the root has `cgroup.type`: a program on a child cgroup would see
        // the writes of that subtree only.
        if p.join("cgroup.type").exists() {
            return Err(Unavailable {
                reason: "no_cgroup2",
                message: format!(
                    "--cgroup-root {} is a cgroup below the root (it has cgroup.type): pass the \
                     host's cgroup v2 root",
                    p.display()
                ),
            });
        }
        return Ok(p.to_path_buf());
    }
    let own_ns = std::fs::metadata("/proc/self/ns/cgroup")
        .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
        .ok();
    if own_ns.is_some_and(|ino| ino != super::origin::INIT_CGROUP_NS) {
        return Err(Unavailable {
            reason: "cgroup_namespace",
            message: "the agent is in a cgroup namespace: its cgroup mount shows only its own \
                      subtree; mount the host's cgroup v2 root and pass --cgroup-root"
                .into(),
        });
    }
    cgroup2_mount().ok_or_else(|| Unavailable {
        reason: "no_cgroup2",
        message: "no cgroup v2 mount in /proc/self/mountinfo".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::Location;
    use crate::profile::{Desired, Mode};

    #[test]
    fn a_fake_tree_is_not_the_kernel() {
        let tree = crate::testing::FakeTree::untuned();
        let fs = tree.fs();
        let k = WatchedKnob {
            name: "vm.overcommit_memory".into(),
            location: Location::sysctl("vm.overcommit_memory"),
            path: fs.path(&Location::sysctl("vm.overcommit_memory")),
            desired: Desired::Equals(1),
            mode: Mode::Enforce,
        };
        assert!(!is_kernel_file(&k));
        let real = WatchedKnob {
            path: "/proc/sys/vm/overcommit_memory".into(),
            ..k
        };
        assert!(is_kernel_file(&real));
    }

    #[test]
    fn the_cgroup_root_must_be_the_v2_root_not_a_cgroup_below_it() {
        let e = cgroup_root(Some(Path::new("/tmp"))).unwrap_err();
        assert_eq!(e.reason, "no_cgroup2");
        if let Some(root) = cgroup2_mount()
            && !root.join("cgroup.type").exists()
        {
            assert_eq!(cgroup_root(Some(&root)), Ok(root.clone()));
            // Any child cgroup of the root has cgroup.type.
            let child = std::fs::read_dir(&root)
                .unwrap()
                .flatten()
                .map(|e| e.path())
                .find(|p| p.join("cgroup.type").exists());
            if let Some(child) = child {
                let e = cgroup_root(Some(&child)).unwrap_err();
                assert!(e.message.contains("below the root"), "{e}");
            }
        }
    }
}
