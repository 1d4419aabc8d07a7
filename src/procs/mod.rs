//! Redis's own view: each Redis process on the host and the kernel as *it* sees it. The knobs
//! the agent proves are the host's; a Redis process checks its own: `net.core.somaxconn` of its
//! network namespace (a pod's starts at the kernel default, not the host's value), the THP it
//! is actually given (its `THP_enabled` and the per-size files), and the backlog its listener
//! really got (`min(tcp-backlog, somaxconn at listen time)`, from `sock_diag`).
//!
//! - `cmdline.rs`: is it Redis, and its configured `tcp-backlog`;
//! - `owner.rs`: its pod (cgroup + the kubelet's pod log directory) or systemd unit;
//! - `thp.rs`: the THP verdict of one process;
//! - `netns.rs`: its namespace's `somaxconn` and `sock_diag` socket, opened inside it;
//! - `diag.rs`: the `sock_diag` messages, byte by byte;
//! - here: the scan of the proc root and the verdicts.

mod cmdline;
mod diag;
mod netns;
mod owner;
mod thp;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

pub use cmdline::{BacklogSource, DEFAULT_TCP_BACKLOG, TcpBacklog};
pub use diag::{DiagError, Listener};
pub use owner::{CgroupOwner, Owner, parse_cgroup, pod_uid};
pub use thp::HostThp;

use crate::kernel::{kernel_release, new_netns_somaxconn};
use crate::profile::RedisProcesses;
use netns::{NsHandle, NsId, ns_id};

/// Where the kubelet keeps a directory per pod (`<ns>_<name>_<uid>`).
pub const DEFAULT_POD_LOGS_DIR: &str = "/var/log/pods";

/// The four checks of a process, in order.
pub const CHECKS: [&str; 4] = ["overcommit", "thp", "somaxconn", "backlog"];

/// One check's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    InSync,
    OutOfSync,
    /// Not readable (privilege, an old kernel): the reason is in `why_not`.
    Unknown,
    /// No TCP listener: no backlog to check.
    NotApplicable,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::InSync => "in_sync",
            Verdict::OutOfSync => "out_of_sync",
            Verdict::Unknown => "unknown",
            Verdict::NotApplicable => "not_applicable",
        }
    }
}

/// How the namespace's `somaxconn` came to be what it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NetnsKind {
    /// The host's namespace (the process runs on host networking): the host's value.
    HostNetwork,
    /// A namespace of its own at the value a new namespace starts with on this kernel (4096
    /// since Linux 5.4, 128 before).
    KernelDefault,
    /// A namespace of its own whose value was set in it (a pod's `securityContext.sysctls`).
    SetInNamespace,
    Unknown,
}

impl NetnsKind {
    pub fn as_str(self) -> &'static str {
        match self {
            NetnsKind::HostNetwork => "host_network",
            NetnsKind::KernelDefault => "kernel_default",
            NetnsKind::SetInNamespace => "set_in_namespace",
            NetnsKind::Unknown => "unknown",
        }
    }
}

/// The network namespace of a process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NetnsView {
    /// The namespace's inode (`net:[inode]`).
    pub inode: Option<u64>,
    pub kind: NetnsKind,
    pub somaxconn: Option<u32>,
    /// Why `somaxconn` (or the kind) is not known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Transparent hugepages as the process gets them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ThpView {
    /// `THP_enabled` of `/proc/<pid>/status`: `false` after `prctl(PR_SET_THP_DISABLE)`.
    pub thp_enabled: Option<bool>,
    /// The host's files that give THP to every process that did not opt out.
    pub host_always: Vec<String>,
    /// From `/proc/<pid>/smaps_rollup` (`None`: unreadable without ptrace rights).
    pub anon_hugepages_bytes: Option<u64>,
    pub shmem_pmd_mapped_bytes: Option<u64>,
    pub file_pmd_mapped_bytes: Option<u64>,
}

/// One Redis process and the kernel as it sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProcessView {
    pub pid: u32,
    /// `comm`.
    pub name: String,
    /// The base name of argv[0]'s first word.
    pub program: String,
    pub owner: Owner,
    /// `pod:<ns>/<name>`, `unit:<name>.service` or `pid:<pid>` (with `#<pid>` appended when two
    /// processes of a scan would share it): the metrics' `owner` label.
    pub owner_label: String,
    pub overcommit_memory: Option<i64>,
    pub thp: ThpView,
    pub netns: NetnsView,
    pub tcp_backlog: TcpBacklog,
    /// Its TCP listeners; empty for a server without one (port 0, unix socket only).
    pub listeners: Vec<Listener>,
    /// The smallest backlog of its listeners.
    pub listen_backlog: Option<u32>,
    /// overcommit, thp, somaxconn, backlog → verdict.
    pub checks: BTreeMap<&'static str, Verdict>,
    /// `true` when every check is in sync (or not applicable), `false` when one is out of sync,
    /// `null` when none is out of sync but one is unknown.
    pub in_sync: Option<bool>,
    /// One line per check out of sync or unknown.
    pub why_not: Vec<String>,
}

impl ProcessView {
    /// The checks out of sync.
    pub fn out_of_sync(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.checks
            .iter()
            .filter(|(_, v)| **v == Verdict::OutOfSync)
            .map(|(k, _)| *k)
    }

    /// The line of `why_not` about `check`.
    pub fn why(&self, check: &str) -> Option<&str> {
        let prefix = format!("{check}: ");
        self.why_not.iter().find_map(|w| w.strip_prefix(&prefix))
    }
}

/// What one scan found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Scan {
    /// The procfs whose pid directories were scanned.
    pub proc_root: PathBuf,
    /// Whether that procfs shows the host's processes (see [`sees_host`]): when it does not
    /// (a pod without `hostPID`), finding no Redis says nothing about Redis on the node.
    pub sees_host: bool,
    pub processes: Vec<ProcessView>,
}

impl Scan {
    /// (owner label, check) of every check out of sync.
    pub fn out_of_sync(&self) -> Vec<(String, &'static str)> {
        self.processes
            .iter()
            .flat_map(|p| p.out_of_sync().map(|c| (p.owner_label.clone(), c)))
            .collect()
    }

    /// `<owner> <check>: <why>` of every check out of sync: what holds readiness with
    /// `redis_processes.gate: true`.
    pub fn gate_lines(&self) -> Vec<String> {
        self.processes
            .iter()
            .flat_map(|p| {
                p.out_of_sync().map(move |c| {
                    format!("{} {c}: {}", p.owner_label, p.why(c).unwrap_or_default())
                })
            })
            .collect()
    }
}

/// Where and what to scan.
#[derive(Debug, Clone)]
pub struct ScanOptions {
    /// `--proc-root`: the host's sysctls (overcommit) and, when it has pid directories, the
    /// processes.
    pub proc_root: PathBuf,
    pub sys_root: PathBuf,
    pub pod_logs_dir: PathBuf,
    pub redis: RedisProcesses,
    /// The host's network namespace inode as the agent proved it (0: not proven), used when
    /// `<proc>/1/ns/net` cannot be read: [`crate::kernel::HostFs::net_ns_ino`] at start, set
    /// again by `run` once its Pod shows `hostNetwork: true`.
    pub host_netns: Arc<AtomicU64>,
}

/// The procfs whose pid directories are scanned: `--proc-root` when it has them, else the
/// agent's own `/proc` (in a pod with `hostPID: true`, the host's processes).
pub fn pids_root(proc_root: &Path) -> PathBuf {
    if proc_root.join("1").is_dir() {
        proc_root.to_path_buf()
    } else {
        PathBuf::from("/proc")
    }
}

/// Whether the procfs `root` shows the host's processes: the initial PID namespace, the only
/// one where kernel threads are visible (`kthreadd` is always its PID 2). A pod without
/// `hostPID` sees its own container's processes only.
pub fn sees_host(root: &Path) -> bool {
    std::fs::read_to_string(root.join("2/comm")).is_ok_and(|c| c.trim_end() == "kthreadd")
}

/// Scans repeatedly, keeping each namespace's descriptors between scans.
#[derive(Debug)]
pub struct Scanner {
    opts: ScanOptions,
    root: PathBuf,
    /// [`sees_host`] of `root`, once: the PID namespace a procfs shows does not change.
    sees_host: bool,
    pods: owner::PodNames,
    /// `SOMAXCONN` of this kernel: what a new namespace starts with.
    new_ns_somaxconn: Option<u32>,
    namespaces: HashMap<NsId, NsHandle>,
}

/// A namespace's facts for one scan.
struct NsFacts {
    somaxconn: Result<u32, String>,
    listeners: Result<Vec<Listener>, String>,
}

impl Scanner {
    pub fn new(opts: ScanOptions) -> Scanner {
        let root = pids_root(&opts.proc_root);
        Scanner {
            sees_host: sees_host(&root),
            root,
            pods: owner::PodNames::new(&opts.pod_logs_dir),
            new_ns_somaxconn: new_netns_somaxconn(&kernel_release()),
            namespaces: HashMap::new(),
            opts,
        }
    }

    /// Whether a process out of sync makes the node not ready (`redis_processes.gate`).
    pub fn gate(&self) -> bool {
        self.opts.redis.gate
    }

    /// Every Redis process now, with its view.
    pub fn scan(&mut self) -> Scan {
        self.pods.rescan();
        let overcommit = read_i64(&self.opts.proc_root.join("sys/vm/overcommit_memory"));
        let host_thp = HostThp::read(&self.opts.sys_root);
        let proven = self.opts.host_netns.load(Ordering::Relaxed);
        let host_ns = ns_id(&self.root.join("1/ns/net"))
            .ok()
            .map(|id| id.1)
            .or((proven != 0).then_some(proven));
        let mut facts: HashMap<NsId, NsFacts> = HashMap::new();
        let mut processes = vec![];
        for pid in pids(&self.root) {
            let dir = self.root.join(pid.to_string());
            let Some(p) = self.process(
                pid,
                &dir,
                &mut facts,
                (overcommit.as_ref(), &host_thp, host_ns),
            ) else {
                continue;
            };
            processes.push(p);
        }
        // A namespace no process is in any more is let go.
        self.namespaces.retain(|id, _| facts.contains_key(id));
        unique_labels(&mut processes);
        Scan {
            sees_host: self.sees_host,
            proc_root: self.root.clone(),
            processes,
        }
    }

    fn process(
        &mut self,
        pid: u32,
        dir: &Path,
        facts: &mut HashMap<NsId, NsFacts>,
        (overcommit, host_thp, host_ns): (Result<&i64, &String>, &HostThp, Option<u64>),
    ) -> Option<ProcessView> {
        let comm = std::fs::read_to_string(dir.join("comm")).ok()?;
        let comm = comm.trim_end_matches('\n').to_string();
        let raw = std::fs::read(dir.join("cmdline")).unwrap_or_default();
        let cmd = cmdline::Cmdline::parse(&raw);
        if !cmdline::matches(&self.opts.redis.names, &comm, &cmd) {
            return None;
        }
        let mut why = vec![];
        let mut checks = BTreeMap::new();

        // Owner.
        let owner = match std::fs::read_to_string(dir.join("cgroup")).map(|t| parse_cgroup(&t)) {
            Ok(CgroupOwner::Pod(uid)) => {
                let (namespace, name) = self.pods.get(&uid).unzip();
                Owner::Pod {
                    uid,
                    namespace,
                    name,
                }
            }
            Ok(CgroupOwner::Unit(unit)) => Owner::Unit { unit },
            _ => Owner::None,
        };

        // Overcommit: the host's, the same for every process.
        checks.insert(
            "overcommit",
            match overcommit {
                Ok(1) => Verdict::InSync,
                Ok(v) => {
                    why.push(format!(
                        "overcommit: vm.overcommit_memory is {v}, Redis needs 1 (background saves and replication may fail under memory pressure)"
                    ));
                    Verdict::OutOfSync
                }
                Err(e) => {
                    why.push(format!("overcommit: {e}"));
                    Verdict::Unknown
                }
            },
        );

        // THP.
        let status = std::fs::read_to_string(dir.join("status")).unwrap_or_default();
        let thp_enabled = thp::status_thp_enabled(&status);
        let rollup = std::fs::read_to_string(dir.join("smaps_rollup")).ok();
        let bytes = |key| rollup.as_deref().and_then(|r| thp::rollup_bytes(r, key));
        let thp_view = ThpView {
            thp_enabled,
            host_always: host_thp.always(),
            anon_hugepages_bytes: bytes("AnonHugePages"),
            shmem_pmd_mapped_bytes: bytes("ShmemPmdMapped"),
            file_pmd_mapped_bytes: bytes("FilePmdMapped"),
        };
        checks.insert(
            "thp",
            match thp::verdict(host_thp, thp_enabled) {
                Ok(()) => Verdict::InSync,
                Err(e) => {
                    why.push(format!("thp: {e}"));
                    Verdict::OutOfSync
                }
            },
        );

        // Its network namespace.
        let tcp_backlog = cmdline::tcp_backlog(&cmd, dir);
        let ns_file = dir.join("ns/net");
        let mut netns = NetnsView {
            inode: None,
            kind: NetnsKind::Unknown,
            somaxconn: None,
            error: None,
        };
        let mut listeners: Result<Vec<Listener>, String> =
            Err("its network namespace is not known".into());
        match ns_id(&ns_file) {
            Ok(id) => {
                netns.inode = Some(id.1);
                let f = self.facts(id, &ns_file, facts);
                match &f.somaxconn {
                    Ok(v) => {
                        netns.somaxconn = Some(*v);
                        netns.kind = if host_ns == Some(id.1) {
                            NetnsKind::HostNetwork
                        } else if Some(*v) == self.new_ns_somaxconn {
                            NetnsKind::KernelDefault
                        } else {
                            NetnsKind::SetInNamespace
                        };
                    }
                    Err(e) => {
                        netns.error = Some(e.clone());
                        if host_ns == Some(id.1) {
                            netns.kind = NetnsKind::HostNetwork;
                        }
                    }
                }
                listeners = f.listeners.clone();
            }
            Err(e) => {
                netns.error = Some(format!(
                    "cannot read {}: {e}{}",
                    ns_file.display(),
                    privilege_hint(&e)
                ));
            }
        }
        let backlog_note = if tcp_backlog.source == BacklogSource::AssumedDefault {
            " (assumed: the command line is a process title)"
        } else {
            ""
        };
        checks.insert(
            "somaxconn",
            match netns.somaxconn {
                Some(v) if v >= tcp_backlog.value => Verdict::InSync,
                Some(v) => {
                    why.push(format!(
                        "somaxconn: net.core.somaxconn of its network namespace ({}) is {v}, below tcp-backlog {}{backlog_note}",
                        netns.kind.as_str(),
                        tcp_backlog.value
                    ));
                    Verdict::OutOfSync
                }
                None => {
                    why.push(format!(
                        "somaxconn: {}",
                        netns.error.as_deref().unwrap_or("unknown")
                    ));
                    Verdict::Unknown
                }
            },
        );

        // Its listeners: the sockets of the namespace's dump that are among its descriptors.
        let own = match listeners {
            Ok(all) => socket_inodes(dir).map(|mine| {
                all.into_iter()
                    .filter(|l| mine.contains(&u64::from(l.inode)))
                    .collect::<Vec<_>>()
            }),
            Err(e) => Err(e),
        };
        let (own, listen_backlog) = match own {
            Ok(mut l) => {
                l.sort_by_key(|l| (l.port, l.address));
                let min = l.iter().map(|l| l.backlog).min();
                (l, min)
            }
            Err(e) => {
                why.push(format!("backlog: {e}"));
                checks.insert("backlog", Verdict::Unknown);
                (vec![], None)
            }
        };
        if !checks.contains_key("backlog") {
            let v = match listen_backlog {
                None => Verdict::NotApplicable,
                Some(b) if b >= tcp_backlog.value => Verdict::InSync,
                Some(b)
                    if tcp_backlog.source == BacklogSource::AssumedDefault
                        && netns.somaxconn.is_some_and(|s| b < s) =>
                {
                    why.push(format!(
                        "backlog: its listener has backlog {b}, below both the assumed tcp-backlog {} and somaxconn {}: either tcp-backlog is set to {b}, or somaxconn was raised after Redis started listening (then restart it); set-proc-title no shows the configured value",
                        tcp_backlog.value,
                        netns.somaxconn.unwrap_or_default()
                    ));
                    Verdict::Unknown
                }
                Some(b) => {
                    why.push(format!(
                        "backlog: its listener has backlog {b}, below tcp-backlog {}{backlog_note} (somaxconn of its namespace was {b} or less when it started listening; a restart after raising it applies the new value)",
                        tcp_backlog.value
                    ));
                    Verdict::OutOfSync
                }
            };
            checks.insert("backlog", v);
        }

        let in_sync = if checks.values().any(|v| *v == Verdict::OutOfSync) {
            Some(false)
        } else if checks.values().any(|v| *v == Verdict::Unknown) {
            None
        } else {
            Some(true)
        };
        let owner_label = owner.label(pid);
        Some(ProcessView {
            pid,
            name: comm,
            program: cmd.program().to_string(),
            owner,
            owner_label,
            overcommit_memory: overcommit.ok().copied(),
            thp: thp_view,
            netns,
            tcp_backlog,
            listeners: own,
            listen_backlog,
            checks,
            in_sync,
            why_not: why,
        })
    }

    /// The facts of one namespace in this scan: read once, however many processes share it.
    fn facts<'a>(
        &mut self,
        id: NsId,
        ns_file: &Path,
        facts: &'a mut HashMap<NsId, NsFacts>,
    ) -> &'a NsFacts {
        facts.entry(id).or_insert_with(|| {
            if !self.namespaces.contains_key(&id) {
                let somaxconn = self.root.join("sys/net/core/somaxconn");
                match NsHandle::open(ns_file, id, &somaxconn) {
                    Ok(h) => {
                        self.namespaces.insert(id, h);
                    }
                    Err(e) => {
                        return NsFacts {
                            somaxconn: Err(e.clone()),
                            listeners: Err(e),
                        };
                    }
                }
            }
            match self.namespaces.get(&id) {
                Some(h) => NsFacts {
                    somaxconn: h.somaxconn(),
                    listeners: h.listeners(),
                },
                None => NsFacts {
                    somaxconn: Err("not opened".into()),
                    listeners: Err("not opened".into()),
                },
            }
        })
    }
}

fn privilege_hint(e: &std::io::Error) -> &'static str {
    if e.kind() == std::io::ErrorKind::PermissionDenied {
        " (needs CAP_SYS_PTRACE, or the same uid as the process)"
    } else {
        ""
    }
}

fn read_i64(path: &Path) -> Result<i64, String> {
    let t = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    t.trim()
        .parse()
        .map_err(|_| format!("{} reads {:?}", path.display(), t.trim()))
}

/// The pids of a procfs (its numeric directories), in order.
fn pids(root: &Path) -> Vec<u32> {
    let mut out: Vec<u32> = std::fs::read_dir(root)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    out.sort_unstable();
    out
}

/// The inodes of the sockets among a process's descriptors (`/proc/<pid>/fd/N -> socket:[N]`).
fn socket_inodes(dir: &Path) -> Result<HashSet<u64>, String> {
    let fd_dir = dir.join("fd");
    let rd = std::fs::read_dir(&fd_dir).map_err(|e| {
        format!(
            "cannot read {}: {e}{}",
            fd_dir.display(),
            privilege_hint(&e)
        )
    })?;
    Ok(rd
        .filter_map(|e| e.ok())
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .filter_map(|l| {
            l.to_str()?
                .strip_prefix("socket:[")?
                .strip_suffix(']')?
                .parse()
                .ok()
        })
        .collect())
}

/// Makes `owner_label` unique within a scan (two servers of one pod or unit).
fn unique_labels(ps: &mut [ProcessView]) {
    let mut count: HashMap<String, usize> = HashMap::new();
    for p in ps.iter() {
        *count.entry(p.owner_label.clone()).or_default() += 1;
    }
    for p in ps.iter_mut() {
        if count.get(&p.owner_label).copied().unwrap_or(0) > 1 {
            p.owner_label = format!("{}#{}", p.owner_label, p.pid);
        }
    }
}

#[cfg(test)]
mod tests;
