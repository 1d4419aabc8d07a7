//! Where a knob's file is: a path relative to the proc root or the sys root.

use serde::{Deserialize, Serialize};

/// The directory of the THP knobs, relative to the sys root.
pub const THP_DIR: &str = "kernel/mm/transparent_hugepage";

/// Which root a knob's path is relative to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Root {
    Proc,
    Sys,
}

/// A knob's file, relative to its root; recorded as such in the originals journal so a restore
/// resolves it under the roots in force at that time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Location {
    pub root: Root,
    pub rel: String,
}

impl Location {
    /// True for a path that stays below its root (no `..`, not absolute, no empty segment).
    pub fn is_contained(&self) -> bool {
        !self.rel.is_empty()
            && !self.rel.starts_with('/')
            && self
                .rel
                .split('/')
                .all(|seg| !seg.is_empty() && seg != "." && seg != "..")
    }

    /// `net/...` sysctls live in a network namespace.
    pub fn is_net(&self) -> bool {
        self.root == Root::Proc && self.rel.starts_with("sys/net/")
    }

    /// The file of a sysctl (see [`sysctl_rel_path`]).
    pub fn sysctl(name: &str) -> Location {
        Location {
            root: Root::Proc,
            rel: format!("sys/{}", sysctl_rel_path(name)),
        }
    }
}
/// The file of a sysctl below `/proc/sys` (e.g. `vm/overcommit_memory`): a knob's identity.
/// Two names with the same path are the same knob. As in sysctl(8), a name containing `/` is
/// already a path and its dots are literal (`net/ipv4/conf/eth0.100/rp_filter`); otherwise dots
/// separate the segments (`vm.overcommit_memory`).
pub fn sysctl_rel_path(name: &str) -> String {
    if name.contains('/') {
        name.to_string()
    } else {
        name.replace('.', "/")
    }
}

pub(super) fn thp_loc(rel: &str) -> Location {
    Location {
        root: Root::Sys,
        rel: format!("{THP_DIR}/{rel}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_stay_contained() {
        for rel in [
            "sys/vm/x",
            "sys/net/ipv4/conf/eth0.100/rp_filter",
            "sys/a/.../b",
        ] {
            let ok = Location {
                root: Root::Proc,
                rel: rel.into(),
            };
            assert!(ok.is_contained(), "{rel}");
        }
        for rel in [
            "",
            "/etc/passwd",
            "sys/../../etc",
            "sys//x",
            "./x",
            "sys/x/",
            "sys/x/..",
            "..",
        ] {
            assert!(
                !Location {
                    root: Root::Sys,
                    rel: rel.into()
                }
                .is_contained(),
                "{rel}"
            );
        }
    }

    #[test]
    fn only_net_sysctls_are_per_network_namespace() {
        assert!(Location::sysctl("net.core.somaxconn").is_net());
        assert!(Location::sysctl("net/ipv4/conf/eth0.100/rp_filter").is_net());
        assert!(!Location::sysctl("vm.overcommit_memory").is_net());
        assert!(!Location::sysctl("kernel.network_x").is_net());
        assert!(!thp_loc("enabled").is_net());
    }
}
