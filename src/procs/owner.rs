//! Who a process belongs to, from its `/proc/<pid>/cgroup`: a Kubernetes pod (the kubelet puts
//! every container under a `pod<uid>` cgroup), a systemd unit (`<name>.service`), or nothing
//! known. A pod's namespace and name are found node-locally, in the kubelet's pod log directory
//! (`<pod-logs-dir>/<namespace>_<name>_<uid>/`): no API call.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

/// The owner of a process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Owner {
    Pod {
        uid: String,
        /// `None` when the pod log directory does not name it.
        #[serde(skip_serializing_if = "Option::is_none")]
        namespace: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        name: Option<String>,
    },
    Unit {
        unit: String,
    },
    None,
}

impl Owner {
    /// The `owner` label: `pod:<ns>/<name>` (`pod:<uid>` when the name is not known),
    /// `unit:<name>.service`, or `pid:<pid>`.
    pub fn label(&self, pid: u32) -> String {
        match self {
            Owner::Pod {
                namespace: Some(ns),
                name: Some(n),
                ..
            } => format!("pod:{ns}/{n}"),
            Owner::Pod { uid, .. } => format!("pod:{uid}"),
            Owner::Unit { unit } => format!("unit:{unit}"),
            Owner::None => format!("pid:{pid}"),
        }
    }
}

/// What a cgroup file says of its owner: the pod UID, else the systemd unit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CgroupOwner {
    Pod(String),
    Unit(String),
    None,
}

/// Parses `/proc/<pid>/cgroup`. The v2 line (`0::/path`) is preferred; on v1 the first line
/// whose path names a pod or a unit (the `name=systemd` or a controller's hierarchy).
///
/// Pod cgroups, by driver:
/// - cgroupfs: `/kubepods/burstable/pod<uid>/<container>` (uid with `-`);
/// - systemd: `/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid>.slice/
///   cri-containerd-<id>.scope` (uid with `_` for `-`, systemd's escaping).
pub fn parse_cgroup(text: &str) -> CgroupOwner {
    let mut lines: Vec<&str> = text.lines().collect();
    // The unified hierarchy first.
    lines.sort_by_key(|l| !l.starts_with("0::"));
    for line in lines {
        let Some(path) = line.splitn(3, ':').nth(2) else {
            continue;
        };
        let owner = path_owner(path);
        if owner != CgroupOwner::None {
            return owner;
        }
    }
    CgroupOwner::None
}

fn path_owner(path: &str) -> CgroupOwner {
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    for seg in &segs {
        if let Some(uid) = pod_uid(seg) {
            return CgroupOwner::Pod(uid);
        }
    }
    // The innermost `.service`: `system.slice/redis-server.service`, or a template instance
    // `system-redis.slice/redis@6379.service`.
    segs.iter()
        .rev()
        .find(|s| s.ends_with(".service") && s.len() > ".service".len())
        .map_or(CgroupOwner::None, |s| CgroupOwner::Unit((*s).to_string()))
}

/// The pod UID of one cgroup path segment: `pod<uid>` or `…-pod<uid>.slice` (also used by the
/// writer watch's attribution).
pub fn pod_uid(seg: &str) -> Option<String> {
    let seg = seg.strip_suffix(".slice").unwrap_or(seg);
    let rest = match seg.strip_prefix("pod") {
        Some(r) => r,
        None => seg.rsplit_once("-pod")?.1,
    };
    let uid = rest.replace('_', "-");
    let hex = uid.chars().filter(|c| c.is_ascii_hexdigit()).count();
    let shaped = uid.chars().all(|c| c.is_ascii_hexdigit() || c == '-');
    // A UID is 32 hex digits (in 5 groups); a static pod's is a 32-digit hash without dashes.
    (shaped && hex == 32).then_some(uid.to_ascii_lowercase())
}

/// Pod UID → (namespace, name), from the kubelet's pod log directory.
#[derive(Debug)]
pub struct PodNames {
    dir: PathBuf,
    known: HashMap<String, (String, String)>,
    /// The directory was listed in this scan already.
    listed: bool,
}

impl PodNames {
    pub fn new(dir: impl Into<PathBuf>) -> PodNames {
        PodNames {
            dir: dir.into(),
            known: HashMap::new(),
            listed: false,
        }
    }

    /// A new scan: an unknown UID may list the directory once more.
    pub fn rescan(&mut self) {
        self.listed = false;
    }

    /// The namespace and name of the pod `uid`, if its log directory is there.
    pub fn get(&mut self, uid: &str) -> Option<(String, String)> {
        if !self.known.contains_key(uid) && !self.listed {
            self.listed = true;
            self.known = list(&self.dir);
        }
        self.known.get(uid).cloned()
    }
}

/// `<ns>_<name>_<uid>` → uid → (ns, name). Neither a namespace nor a pod name can hold `_`.
fn list(dir: &Path) -> HashMap<String, (String, String)> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return HashMap::new();
    };
    rd.filter_map(|e| e.ok())
        .filter_map(|e| parse_log_dir(&e.file_name().to_string_lossy()))
        .map(|(ns, name, uid)| (uid, (ns, name)))
        .collect()
}

pub fn parse_log_dir(name: &str) -> Option<(String, String, String)> {
    let mut parts = name.splitn(3, '_');
    let (ns, pod, uid) = (parts.next()?, parts.next()?, parts.next()?);
    if ns.is_empty() || pod.is_empty() || uid.is_empty() || uid.contains('_') {
        return None;
    }
    Some((ns.to_string(), pod.to_string(), uid.to_ascii_lowercase()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "1f2e3d4c-5b6a-4789-8abc-def012345678";

    #[test]
    fn pod_uid_of_cgroupfs_and_systemd_drivers_v1_and_v2() {
        for text in [
            // cgroup v2, systemd driver (containerd)
            "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1f2e3d4c_5b6a_4789_8abc_def012345678.slice/cri-containerd-0123abcd.scope\n",
            // cgroup v2, systemd driver, guaranteed QoS (no QoS slice)
            "0::/kubepods.slice/kubepods-pod1f2e3d4c_5b6a_4789_8abc_def012345678.slice/crio-0123abcd.scope\n",
            // cgroup v2, cgroupfs driver
            "0::/kubepods/besteffort/pod1f2e3d4c-5b6a-4789-8abc-def012345678/0123abcd\n",
            // cgroup v1, cgroupfs driver: several hierarchies
            "12:memory:/kubepods/burstable/pod1f2e3d4c-5b6a-4789-8abc-def012345678/0123abcd\n11:cpu,cpuacct:/kubepods/burstable/pod1f2e3d4c-5b6a-4789-8abc-def012345678/0123abcd\n1:name=systemd:/kubepods/burstable/pod1f2e3d4c-5b6a-4789-8abc-def012345678/0123abcd\n",
            // cgroup v1, systemd driver
            "4:pids:/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1f2e3d4c_5b6a_4789_8abc_def012345678.slice/docker-0123.scope\n",
        ] {
            assert_eq!(parse_cgroup(text), CgroupOwner::Pod(UID.into()), "{text}");
        }
        // A static pod's UID is a hash without dashes.
        assert_eq!(
            parse_cgroup("0::/kubepods/burstable/pod0123456789abcdef0123456789abcdef/c\n"),
            CgroupOwner::Pod("0123456789abcdef0123456789abcdef".into())
        );
    }

    #[test]
    fn systemd_units_and_nothing() {
        assert_eq!(
            parse_cgroup("0::/system.slice/redis-server.service\n"),
            CgroupOwner::Unit("redis-server.service".into())
        );
        assert_eq!(
            parse_cgroup("0::/system.slice/system-redis.slice/redis@6379.service\n"),
            CgroupOwner::Unit("redis@6379.service".into())
        );
        // v1: the name=systemd hierarchy names the unit, a controller's may not.
        assert_eq!(
            parse_cgroup("3:memory:/\n1:name=systemd:/system.slice/valkey.service\n0::/\n"),
            CgroupOwner::Unit("valkey.service".into())
        );
        assert_eq!(
            parse_cgroup("0::/user.slice/user-1000.slice/session-2.scope\n"),
            CgroupOwner::None
        );
        assert_eq!(parse_cgroup("0::/\n"), CgroupOwner::None);
        assert_eq!(parse_cgroup(""), CgroupOwner::None);
        // Not a UID: `pod` followed by something else.
        assert_eq!(parse_cgroup("0::/podman/abc\n"), CgroupOwner::None);
    }

    #[test]
    fn pod_names_from_the_kubelets_log_directory() {
        assert_eq!(
            parse_log_dir(&format!("cache_redis-0_{UID}")),
            Some(("cache".into(), "redis-0".into(), UID.into()))
        );
        assert_eq!(parse_log_dir("nounderscore"), None);
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join(format!("cache_redis-0_{UID}"))).unwrap();
        let mut names = PodNames::new(dir.path());
        assert_eq!(names.get(UID), Some(("cache".into(), "redis-0".into())));
        assert_eq!(names.get("0123456789abcdef0123456789abcdef"), None);
        let pod = Owner::Pod {
            uid: UID.into(),
            namespace: Some("cache".into()),
            name: Some("redis-0".into()),
        };
        assert_eq!(pod.label(7), "pod:cache/redis-0");
        assert_eq!(
            Owner::Unit {
                unit: "redis-server.service".into()
            }
            .label(7),
            "unit:redis-server.service"
        );
        assert_eq!(Owner::None.label(7), "pid:7");
    }
}
