//! The sysctl watcher: the `cgroup/sysctl` BPF program (`bpf.rs`) on the cgroup v2 root sees
//! every write to a watched `/proc/sys` knob before the kernel applies it, with the writer, the
//! old and the new value, and in lock mode refuses those that would move an enforce-mode
//! numeric knob out of the profile. Its events become [`Notice`]s.

use std::sync::Arc;
use std::time::Instant;

use super::bpf::{self, Op, RawWrite, Rule};
use super::origin::{Resolver, pod_identity};
use super::{Unavailable, WatchConfig};
use crate::foreign::{Notice, Source, WatchedKnob, Writer};
use crate::kernel::Root;
use crate::profile::{Desired, Mode, WritersMode};

/// How lock mode judges a knob: `Op::None` where it never refuses (audit mode, text knobs).
fn lock_rule(k: &WatchedKnob) -> (Op, i64) {
    match (&k.desired, k.mode) {
        (Desired::Equals(v), Mode::Enforce) => (Op::Eq, *v),
        (Desired::AtLeast(v), Mode::Enforce) => (Op::Ge, *v),
        (Desired::AtMost(v), Mode::Enforce) => (Op::Le, *v),
        _ => (Op::None, 0),
    }
}

/// The program's rules for `cfg`: every sysctl knob of the kernel's own procfs, `net.*` ones
/// only in the host's network namespace (and not at all without it).
pub(super) fn watchlist(cfg: &WatchConfig) -> bpf::Watchlist {
    let mut list = bpf::Watchlist::default();
    for (i, k) in cfg.knobs.iter().enumerate() {
        let Ok(index) = u32::try_from(i) else { break };
        if k.location.root != Root::Proc || !(cfg.is_kernel_file)(k) {
            continue;
        }
        let Some(name) = k.location.rel.strip_prefix("sys/") else {
            continue;
        };
        let netns = if k.location.is_net() {
            match cfg.host_netns.and_then(|n| u32::try_from(n).ok()) {
                Some(n) => n,
                None => continue, // not the host's namespace: not watched
            }
        } else {
            0
        };
        let (op, value) = lock_rule(k);
        list.sysctls.push((
            name.to_string(),
            Rule {
                knob: index,
                netns,
                lock: u32::from(cfg.mode == WritersMode::Lock),
                op: op as u32,
                value,
            },
        ));
    }
    list
}

/// A decoded event as a notice, its writer resolved (cgroup path, Pod, command line).
pub(super) fn notice(raw: &RawWrite, resolver: &mut Resolver) -> Notice {
    let (cgroup, cmdline) = resolver.resolve(raw.pid, raw.ppid, raw.cgroup_id);
    let id = cgroup.as_deref().map(pod_identity).unwrap_or_default();
    Notice {
        knob: raw.knob as usize,
        source: Source::Sysctl,
        writer: Some(Arc::new(Writer {
            pid: raw.pid,
            tid: raw.tid,
            comm: raw.comm.clone(),
            ppid: raw.ppid,
            parent_comm: raw.parent_comm.clone(),
            uid: raw.uid,
            cgroup,
            pod_uid: id.pod_uid,
            container_id: id.container_id,
            cmdline,
        })),
        old: raw.old.clone(),
        new: Some(raw.new.clone()),
        refused: raw.refused,
        at: Instant::now(),
        count: 1,
    }
}

/// Loads and attaches the program for `cfg`.
pub(super) fn load(
    cfg: &WatchConfig,
    cgroup_root: &std::path::Path,
) -> Result<bpf::Loaded, Unavailable> {
    let object = super::object().ok_or_else(|| Unavailable {
        reason: "unsupported_arch",
        message: format!("no writer-watch program for {}", std::env::consts::ARCH),
    })?;
    let list = watchlist(cfg);
    if list.sysctls.is_empty() {
        return Err(Unavailable {
            reason: "fake_root",
            message: "no sysctl of the profile is a file of the kernel's procfs under \
                      --proc-root: there are no sysctl writes to watch"
                .into(),
        });
    }
    bpf::load(object, cgroup_root, &list)
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::kernel::Location;

    fn knob(name: &str, loc: Location, desired: Desired, mode: Mode) -> WatchedKnob {
        WatchedKnob {
            name: name.into(),
            path: PathBuf::from("/nonexistent").join(&loc.rel),
            location: loc,
            desired,
            mode,
        }
    }

    fn cfg(mode: WritersMode, host_netns: Option<u64>) -> WatchConfig {
        WatchConfig {
            mode,
            cgroup_root: None,
            host_netns,
            unlock_file: None,
            is_kernel_file: |k| !k.name.starts_with("fake."),
            knobs: vec![
                knob(
                    "vm.overcommit_memory",
                    Location::sysctl("vm.overcommit_memory"),
                    Desired::Equals(1),
                    Mode::Enforce,
                ),
                knob(
                    "net.core.somaxconn",
                    Location::sysctl("net.core.somaxconn"),
                    Desired::AtLeast(2048),
                    Mode::Enforce,
                ),
                knob(
                    "kernel.pid_max",
                    Location::sysctl("kernel.pid_max"),
                    Desired::AtLeast(4_000_000),
                    Mode::Audit,
                ),
                knob(
                    "thp.enabled",
                    Location {
                        root: Root::Sys,
                        rel: "kernel/mm/transparent_hugepage/enabled".into(),
                    },
                    Desired::Word {
                        allowed: vec!["never".into()],
                        set: "never".into(),
                    },
                    Mode::Enforce,
                ),
            ],
        }
    }

    fn rule(l: &bpf::Watchlist, n: &str) -> Rule {
        l.sysctls
            .iter()
            .find(|(k, _)| k == n)
            .map(|(_, r)| *r)
            .unwrap_or_else(|| panic!("no rule for {n}"))
    }

    #[test]
    fn lock_mode_locks_enforce_mode_numeric_sysctls_only() {
        let l = watchlist(&cfg(WritersMode::Lock, Some(4026531840)));
        let r = rule(&l, "vm/overcommit_memory");
        assert_eq!(
            (r.knob, r.lock, r.op, r.value, r.netns),
            (0, 1, Op::Eq as u32, 1, 0)
        );
        let r = rule(&l, "net/core/somaxconn");
        assert_eq!(
            (r.knob, r.op, r.value, r.netns),
            (1, Op::Ge as u32, 2048, 4026531840)
        );
        assert_eq!(
            rule(&l, "kernel/pid_max").op,
            Op::None as u32,
            "audit mode is never refused"
        );
        assert_eq!(l.sysctls.len(), 3, "THP files are not sysctls");
        let o = watchlist(&cfg(WritersMode::Observe, Some(1)));
        assert!(o.sysctls.iter().all(|(_, r)| r.lock == 0));
    }

    #[test]
    fn knobs_outside_the_kernels_files_are_not_watched() {
        let mut c = cfg(WritersMode::Observe, Some(1));
        c.knobs[0].name = "fake.overcommit".into();
        let l = watchlist(&c);
        assert!(l.sysctls.iter().all(|(_, r)| r.knob != 0));
        assert_eq!(l.sysctls.len(), 2);
    }

    #[test]
    fn net_knobs_are_not_watched_without_the_host_netns() {
        let l = watchlist(&cfg(WritersMode::Observe, None));
        assert!(l.sysctls.iter().all(|(n, _)| !n.starts_with("net/")));
        assert_eq!(l.sysctls.len(), 2);
    }

    #[test]
    fn a_write_becomes_a_notice_with_its_values_and_writer() {
        let raw = RawWrite {
            knob: 1,
            refused: true,
            pid: 42,
            tid: 43,
            ppid: 7,
            uid: 0,
            netns: 1,
            cgroup_id: 0,
            comm: "sysctl".into(),
            parent_comm: "bash".into(),
            old: Some("4096".into()),
            new: "128".into(),
        };
        let dir = tempfile::tempdir().unwrap();
        let mut r = Resolver::new(dir.path(), dir.path());
        let n = notice(&raw, &mut r);
        let w = n.writer.as_ref().unwrap();
        assert_eq!(
            (
                n.knob,
                n.source,
                n.refused,
                n.old.as_deref(),
                n.new.as_deref()
            ),
            (1, Source::Sysctl, true, Some("4096"), Some("128"))
        );
        assert_eq!(
            (w.pid, w.tid, w.ppid, w.comm.as_str()),
            (42, 43, 7, "sysctl")
        );
    }
}
