//! `wait`: the gate inside a Redis pod. Run as an init container of Redis (same image, no
//! privilege, no API access), it reads the kernel exactly as that pod sees it and returns only
//! when Redis would start without a warning about it, or fails after `--timeout`.
//!
//! Checked, as this process sees them:
//! - every enforce-mode setting of the profile that is global (`vm.*`, THP top-level and
//!   per-size): the agent sets these on the host, and the pod sees the host's value;
//! - `net.core.somaxconn` of this process's own network namespace against Redis's
//!   `tcp-backlog` (Redis's own check). A pod network namespace starts at the kernel's default
//!   (4096 since Linux 5.4, 128 before), not at the host's value;
//! - other `net.*` settings are per network namespace and not the host's here: listed, not
//!   waited for.
//!
//! Init containers run again whenever the pod sandbox is recreated (a node reboot), so the
//! Redis container never starts on a kernel the agent has not tuned yet.

use std::io::Write;
use std::time::{Duration, Instant};

use crate::exit::Exit;
use crate::kernel::{HostFs, kernel_release, new_netns_somaxconn};
use crate::profile::{Mode, Profile};
use crate::reconcile::{Target, resolve, satisfies};

/// The options of `wait`.
#[derive(Debug, Clone)]
pub struct WaitOptions {
    /// Redis's `tcp-backlog`: this network namespace's `somaxconn` must be at least this.
    pub tcp_backlog: u32,
    /// Give up (exit 9) after this long.
    pub timeout: Duration,
    /// How often the files are read again.
    pub interval: Duration,
}

/// One line of what `wait` sees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub name: String,
    pub actual: String,
    pub want: String,
    pub ok: bool,
    /// Where the value comes from, or why it is not waited for.
    pub note: Option<String>,
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} = {} (want {})", self.name, self.actual, self.want)?;
        if let Some(n) = &self.note {
            write!(f, ": {n}")?;
        }
        Ok(())
    }
}

/// Where this network namespace's `somaxconn` comes from, as far as a pod can tell.
fn somaxconn_source(value: u32, default: Option<u32>) -> String {
    match default {
        Some(d) if value == d => format!(
            "the kernel's default for a new network namespace ({d}): a pod network namespace, \
             or a host not raised"
        ),
        _ => "set for this network namespace (hostNetwork: the host's value; \
              or the pod's securityContext.sysctls)"
            .to_string(),
    }
}

/// The three ways to give a pod-network Redis a sufficient backlog (README "Every Redis start gated: wait").
pub const SOMAXCONN_REMEDY: &str = "raise it with the pod's securityContext.sysctls \
     (net.core.somaxconn; the kubelet needs --allowed-unsafe-sysctls=net.core.somaxconn), run \
     Redis with hostNetwork (the host's value, which the agent sets), use a kernel >= 5.4 \
     (4096 in every new network namespace), or lower Redis's tcp-backlog";

/// Reads everything `wait` checks once.
pub fn observe(
    fs: &HostFs,
    targets: &mut [Target],
    tcp_backlog: u32,
    release: &str,
) -> Vec<Finding> {
    let mut out = Vec::new();
    for t in targets.iter_mut() {
        if t.location().is_net() {
            if t.name() != "net.core.somaxconn" {
                out.push(Finding {
                    name: t.name().to_string(),
                    actual: "-".into(),
                    want: t.desired.to_string(),
                    ok: true,
                    note: Some("per network namespace: not the host's here, not waited for".into()),
                });
            }
            continue;
        }
        if t.mode != Mode::Enforce {
            continue;
        }
        let f = match fs.read(&mut t.file) {
            Ok(None) => continue,
            Ok(Some(r)) => Finding {
                name: t.name().to_string(),
                ok: satisfies(&t.desired, &r),
                actual: r.value,
                want: t.desired.to_string(),
                note: None,
            },
            Err(e) => Finding {
                name: t.name().to_string(),
                actual: "unreadable".into(),
                want: t.desired.to_string(),
                ok: false,
                note: Some(e.to_string()),
            },
        };
        out.push(f);
    }
    out.push(own_somaxconn(fs, tcp_backlog, release));
    out
}

/// `net.core.somaxconn` of this process's own network namespace against `tcp-backlog`.
fn own_somaxconn(fs: &HostFs, tcp_backlog: u32, release: &str) -> Finding {
    let path = fs.proc_root().join("sys/net/core/somaxconn");
    let want = format!(">= {tcp_backlog} (tcp-backlog)");
    let name = "net.core.somaxconn".to_string();
    match std::fs::read_to_string(&path)
        .map_err(|e| e.to_string())
        .and_then(|s| s.trim().parse::<u32>().map_err(|e| format!("{s:?}: {e}")))
    {
        Ok(v) => {
            let ok = v >= tcp_backlog;
            let mut note = somaxconn_source(v, new_netns_somaxconn(release));
            if !ok {
                note = format!("{note}; {SOMAXCONN_REMEDY}");
            }
            Finding {
                name,
                actual: v.to_string(),
                want,
                ok,
                note: Some(note),
            }
        }
        Err(e) => Finding {
            name,
            actual: "unreadable".into(),
            want,
            ok: false,
            note: Some(format!("{}: {e}", path.display())),
        },
    }
}

/// Runs `wait`: prints what is out of sync whenever that changes, and returns 0 once
/// everything is in sync, or 9 after the timeout.
pub fn wait(fs: HostFs, profile: &Profile, opts: &WaitOptions) -> Exit {
    let release = kernel_release();
    let mut targets = resolve(&fs, profile);
    let start = Instant::now();
    let mut last: Option<Vec<Finding>> = None;
    let mut out = std::io::stdout();
    loop {
        let findings = observe(&fs, &mut targets, opts.tcp_backlog, &release);
        let bad: Vec<&Finding> = findings.iter().filter(|f| !f.ok).collect();
        if bad.is_empty() {
            let _ = writeln!(
                out,
                "in sync after {:.1}s (kernel {release}):",
                start.elapsed().as_secs_f64()
            );
            for f in &findings {
                let _ = writeln!(out, "  {f}");
            }
            return Exit::Ok;
        }
        if start.elapsed() >= opts.timeout {
            let _ = writeln!(
                out,
                "not in sync after {:?} (kernel {release}); Redis would start on a kernel it warns about:",
                opts.timeout
            );
            for f in &bad {
                let _ = writeln!(out, "  {f}");
            }
            return Exit::WaitTimeout;
        }
        if last.as_ref() != Some(&findings) {
            let _ = writeln!(
                out,
                "waiting for {} setting(s) (kernel {release}):",
                bad.len()
            );
            for f in &bad {
                let _ = writeln!(out, "  {f}");
            }
            let _ = out.flush();
            last = Some(findings);
        }
        std::thread::sleep(
            opts.interval
                .min(opts.timeout.saturating_sub(start.elapsed()))
                .max(Duration::from_millis(10)),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::FakeTree;

    fn bad(f: &[Finding]) -> Vec<&str> {
        f.iter()
            .filter(|f| !f.ok)
            .map(|f| f.name.as_str())
            .collect()
    }

    fn findings(tree: &FakeTree, backlog: u32, release: &str) -> Vec<Finding> {
        let fs = tree.fs();
        let mut ts = resolve(&fs, &Profile::default());
        observe(&fs, &mut ts, backlog, release)
    }

    #[test]
    fn an_untuned_kernel_is_named_knob_by_knob() {
        let tree = FakeTree::untuned();
        let f = findings(&tree, 511, "6.1.0-57-amd64");
        assert_eq!(
            bad(&f),
            [
                "vm.overcommit_memory",
                "thp.enabled",
                "thp.defrag",
                "thp.hugepages-2048kB.enabled",
                "net.core.somaxconn"
            ],
            "{f:#?}"
        );
        let s = f.iter().find(|f| f.name == "net.core.somaxconn").unwrap();
        assert_eq!(s.actual, "128");
        assert!(
            s.note
                .as_deref()
                .unwrap()
                .contains("allowed-unsafe-sysctls"),
            "{s}"
        );
    }

    #[test]
    fn a_tuned_kernel_and_a_default_pod_namespace_are_in_sync() {
        let tree = FakeTree::untuned();
        tree.put("proc/sys/vm/overcommit_memory", "1\n");
        tree.put(
            "sys/kernel/mm/transparent_hugepage/enabled",
            "always madvise [never]\n",
        );
        tree.put(
            "sys/kernel/mm/transparent_hugepage/defrag",
            "always defer defer+madvise madvise [never]\n",
        );
        tree.put("proc/sys/net/core/somaxconn", "4096\n");
        tree.put(
            "sys/kernel/mm/transparent_hugepage/hugepages-2048kB/enabled",
            "always inherit madvise [never]\n",
        );
        let f = findings(&tree, 511, "6.1.0-57-amd64");
        assert!(f.iter().all(|f| f.ok), "{f:#?}");
        let s = f.iter().find(|f| f.name == "net.core.somaxconn").unwrap();
        assert!(
            s.note
                .as_deref()
                .unwrap()
                .contains("default for a new network namespace (4096)"),
            "{s}"
        );
        // A per-size THP file set to always is not in sync (Redis memory could get mTHP).
        tree.put(
            "sys/kernel/mm/transparent_hugepage/hugepages-64kB/enabled",
            "[always] inherit madvise never\n",
        );
        let f = findings(&tree, 511, "6.1.0-57-amd64");
        assert_eq!(bad(&f), ["thp.hugepages-64kB.enabled"]);
        // A backlog above the namespace's value is not in sync, whatever the host's.
        tree.put(
            "sys/kernel/mm/transparent_hugepage/hugepages-64kB/enabled",
            "always inherit madvise [never]\n",
        );
        let f = findings(&tree, 8192, "6.1.0-57-amd64");
        assert_eq!(bad(&f), ["net.core.somaxconn"]);
    }

    #[test]
    fn audit_settings_and_other_net_knobs_are_not_waited_for() {
        let tree = FakeTree::untuned();
        tree.put("proc/sys/net/core/somaxconn", "4096\n");
        let p = Profile::from_yaml(
            "mode: audit\nsysctls:\n  net.ipv4.tcp_max_syn_backlog: {at_least: 8192}\n",
        )
        .unwrap();
        let fs = tree.fs();
        let mut ts = resolve(&fs, &p);
        let f = observe(&fs, &mut ts, 511, "6.12.0");
        assert!(f.iter().all(|f| f.ok), "{f:#?}");
        assert!(f.iter().any(|f| {
            f.name == "net.ipv4.tcp_max_syn_backlog"
                && f.note
                    .as_deref()
                    .is_some_and(|n| n.contains("not waited for"))
        }));
    }
}
