//! Who a writer is, beyond what the kernel captured at the write: its cgroup path (from
//! `/proc/<pid>/cgroup` through `procfs` while the process lives, else by the cgroup id found
//! in the cgroup v2 tree), the Kubernetes Pod UID and container id that path names, and its
//! command line while it lives.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::foreign::Writer;

/// The inode of the initial PID namespace (`PROC_PID_INIT_INO`).
const INIT_PID_NS: u64 = 0xEFFF_FFFC;
/// The inode of the initial cgroup namespace (`PROC_CGROUP_INIT_INO`).
pub(super) const INIT_CGROUP_NS: u64 = 0xEFFF_FFFB;
/// The name of a writer that exited before the agent read `/proc/<pid>`.
pub const EXITED: &str = "(exited)";
/// A cgroup tree walk gives up after this many directories.
const WALK_MAX: usize = 100_000;

/// The Kubernetes identity a cgroup path names.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PodIdentity {
    pub pod_uid: Option<String>,
    pub container_id: Option<String>,
}

/// Parses a cgroup v2 path of the kubelet's cgroupfs or systemd driver:
/// `/kubepods/burstable/pod<uid>/<id>` or
/// `/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid_>.slice/cri-containerd-<id>.scope`.
pub fn pod_identity(cgroup: &str) -> PodIdentity {
    let mut id = PodIdentity::default();
    let segs: Vec<&str> = cgroup.split('/').filter(|s| !s.is_empty()).collect();
    if !segs.iter().any(|s| s.starts_with("kubepods")) {
        return id;
    }
    for (i, seg) in segs.iter().enumerate() {
        if let Some(uid) = crate::procs::pod_uid(seg) {
            id.pod_uid = Some(uid);
            if let Some(next) = segs.get(i + 1) {
                id.container_id = container_id_of(next);
            }
        }
    }
    id
}

fn container_id_of(seg: &str) -> Option<String> {
    let id = match seg.strip_suffix(".scope") {
        Some(scope) => scope.rsplit('-').next()?,
        None => seg,
    };
    let ok = id.len() == 64 && id.chars().all(|c| c.is_ascii_hexdigit());
    ok.then(|| id.to_string())
}

/// Resolves writers' cgroups and command lines.
#[derive(Debug)]
pub struct Resolver {
    proc_root: PathBuf,
    /// The cgroup v2 root the watch is attached to (the host's whole tree).
    cgroup_root: PathBuf,
    /// `/proc/<pid>` names the host's process of that pid: the agent is in the initial PID
    /// namespace and sees cgroup paths from the root (initial cgroup namespace).
    host_view: bool,
    /// cgroup id → path below `cgroup_root`, from the last walk.
    by_id: HashMap<u64, String>,
    /// When the tree was last walked: an id not found (a cgroup gone) does not walk it again
    /// for [`WALK_EVERY`].
    walked: Option<Instant>,
}

/// The shortest time between two walks of the cgroup tree.
const WALK_EVERY: Duration = Duration::from_secs(10);

impl Resolver {
    pub fn new(proc_root: &Path, cgroup_root: &Path) -> Resolver {
        let ns_ino = |ns: &str| {
            std::fs::metadata(proc_root.join("self/ns").join(ns))
                .map(|m| m.ino())
                .ok()
        };
        Resolver {
            proc_root: proc_root.to_path_buf(),
            cgroup_root: cgroup_root.to_path_buf(),
            host_view: ns_ino("pid") == Some(INIT_PID_NS)
                && ns_ino("cgroup") == Some(INIT_CGROUP_NS),
            by_id: HashMap::new(),
            walked: None,
        }
    }

    /// Who `pid` is, read from `/proc/<pid>` (a write seen by fanotify): `None` when the
    /// writer is not in the agent's PID namespace (pid 0); a writer that has exited already is
    /// named by its pid alone (comm [`EXITED`]).
    pub fn writer_of(&mut self, pid: u32) -> Option<Writer> {
        if pid == 0 {
            return None;
        }
        let read = procfs::process::Process::new_with_root(self.proc_root.join(pid.to_string()))
            .ok()
            .and_then(|p| Some((p.stat().ok()?, p.uid().ok()?)));
        let Some((stat, uid)) = read else {
            return Some(Writer {
                pid,
                tid: pid,
                comm: EXITED.into(),
                ppid: 0,
                parent_comm: EXITED.into(),
                uid: u32::MAX,
                cgroup: None,
                pod_uid: None,
                container_id: None,
                cmdline: None,
            });
        };
        let ppid = u32::try_from(stat.ppid).unwrap_or(0);
        let parent_comm =
            procfs::process::Process::new_with_root(self.proc_root.join(ppid.to_string()))
                .ok()
                .and_then(|pp| pp.stat().ok())
                .map(|s| s.comm)
                .unwrap_or_default();
        let (cgroup, cmdline) = match self.via_proc(pid, ppid) {
            Some((path, cmdline)) => (Some(path), cmdline),
            None => (None, None),
        };
        let id = cgroup.as_deref().map(pod_identity).unwrap_or_default();
        Some(Writer {
            pid,
            tid: pid,
            comm: stat.comm,
            ppid,
            parent_comm,
            uid,
            cgroup,
            pod_uid: id.pod_uid,
            container_id: id.container_id,
            cmdline,
        })
    }

    /// The cgroup v2 path of `pid` (whose cgroup id was `cgroup_id` at the write), and its
    /// command line if it still runs.
    pub fn resolve(
        &mut self,
        pid: u32,
        ppid: u32,
        cgroup_id: u64,
    ) -> (Option<String>, Option<String>) {
        if self.host_view
            && let Some((path, cmdline)) = self.via_proc(pid, ppid)
        {
            return (Some(path), cmdline);
        }
        (self.by_cgroup_id(cgroup_id), None)
    }

    /// Through `/proc/<pid>`, if that is still the writer (same parent).
    fn via_proc(&self, pid: u32, ppid: u32) -> Option<(String, Option<String>)> {
        let p =
            procfs::process::Process::new_with_root(self.proc_root.join(pid.to_string())).ok()?;
        let stat = p.stat().ok()?;
        if u32::try_from(stat.ppid).ok()? != ppid {
            return None; // exited, and the pid was reused
        }
        let path = p
            .cgroups()
            .ok()?
            .0
            .into_iter()
            .find(|c| c.hierarchy == 0)?
            .pathname;
        let cmdline = p
            .cmdline()
            .ok()
            .filter(|c| !c.is_empty())
            .map(|c| truncate(c.join(" "), 256));
        Some((path, cmdline))
    }

    fn by_cgroup_id(&mut self, id: u64) -> Option<String> {
        if let Some(p) = self.by_id.get(&id) {
            return Some(p.clone());
        }
        if self.walked.is_some_and(|at| at.elapsed() < WALK_EVERY) {
            return None; // gone since, or not there: no walk per event
        }
        self.walked = Some(Instant::now());
        self.by_id = walk(&self.cgroup_root);
        self.by_id.get(&id).cloned()
    }
}

/// cgroup id (the inode number of its directory in cgroup v2) → path, for the whole tree.
fn walk(root: &Path) -> HashMap<u64, String> {
    let mut out = HashMap::new();
    let mut stack = vec![(root.to_path_buf(), "/".to_string())];
    while let Some((dir, rel)) = stack.pop() {
        if out.len() >= WALK_MAX {
            break;
        }
        let Ok(meta) = std::fs::metadata(&dir) else {
            continue;
        };
        out.insert(meta.ino(), rel.clone());
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                let name = e.file_name().to_string_lossy().into_owned();
                let child = if rel == "/" {
                    format!("/{name}")
                } else {
                    format!("{rel}/{name}")
                };
                stack.push((e.path(), child));
            }
        }
    }
    out
}

fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut at = max;
        while !s.is_char_boundary(at) {
            at -= 1;
        }
        s.truncate(at);
        s.push('…');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "0a1b2c3d-4e5f-6789-abcd-ef0123456789";
    const CID: &str = "5f1c2b9e0d8a7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a2f1e0d9c8b7a6f5e4d3c2b";

    #[test]
    fn cgroupfs_driver_paths_name_the_pod_and_container() {
        let id = pod_identity(&format!("/kubepods/burstable/pod{UID}/{CID}"));
        assert_eq!(id.pod_uid.as_deref(), Some(UID));
        assert_eq!(id.container_id.as_deref(), Some(CID));
        let id = pod_identity(&format!("/kubepods/pod{UID}/{CID}"));
        assert_eq!(id.pod_uid.as_deref(), Some(UID));
    }

    #[test]
    fn systemd_driver_paths_name_the_pod_and_container() {
        let uid_ = UID.replace('-', "_");
        for runtime in ["cri-containerd", "crio", "docker"] {
            let id = pod_identity(&format!(
                "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{uid_}.slice/{runtime}-{CID}.scope"
            ));
            assert_eq!(id.pod_uid.as_deref(), Some(UID), "{runtime}");
            assert_eq!(id.container_id.as_deref(), Some(CID), "{runtime}");
        }
        let id = pod_identity(&format!("/kubepods.slice/kubepods-pod{uid_}.slice"));
        assert_eq!(id.pod_uid.as_deref(), Some(UID));
        assert_eq!(id.container_id, None);
    }

    #[test]
    fn other_paths_name_no_pod() {
        for p in [
            "/",
            "/user.slice/user-0.slice/session-1.scope",
            "/system.slice/redis-node-tuner.service",
            &format!("/pod{UID}/{CID}"),
            "/kubepods/burstable/podnot-a-uid/abc",
        ] {
            assert_eq!(pod_identity(p), PodIdentity::default(), "{p}");
        }
    }

    #[test]
    fn the_cgroup_walk_finds_a_directory_by_its_inode() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("a/b")).unwrap();
        let ino = std::fs::metadata(root.path().join("a/b")).unwrap().ino();
        let map = walk(root.path());
        assert_eq!(map.get(&ino).map(String::as_str), Some("/a/b"));
        let top = std::fs::metadata(root.path()).unwrap().ino();
        assert_eq!(map.get(&top).map(String::as_str), Some("/"));
    }

    #[test]
    fn long_command_lines_are_cut_on_a_character_boundary() {
        let s = truncate("é".repeat(200), 255);
        assert!(s.ends_with('…'));
        assert!(s.len() <= 255 + '…'.len_utf8());
    }
}
