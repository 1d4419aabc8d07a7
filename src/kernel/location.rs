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

    /// The file of a sysctl (see [`crate::profile::sysctl_rel_path`]).
    pub fn sysctl(name: &str) -> Location {
        Location {
            root: Root::Proc,
            rel: format!("sys/{}", crate::profile::sysctl_rel_path(name)),
        }
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
    use crate::profile::Profile;
    use crate::testing::FakeTree;

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
        // A resolved profile's paths are joined below their root, never outside it.
        let tree = FakeTree::untuned();
        let fs = tree.fs();
        let p = Profile::from_yaml("sysctls:\n  net/ipv4/conf/eth0.100/rp_filter: {equals: 1}\n")
            .unwrap();
        for t in fs.resolve(&p) {
            assert!(t.location.is_contained(), "{t:?}");
            assert!(fs.path(&t.location).starts_with(tree.dir.path()), "{t:?}");
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
