//! Test fixtures, shared by the unit tests and the integration tests (`tests/common`'s `Tree`
//! wraps [`FakeTree`]), and there for any bench that wants a fake host. Compiled only under
//! `cargo test` and with the non-default `testing` feature, which the crate's dev-dependency on
//! itself turns on for tests and benches: never part of a `cargo build`/`cargo run` binary.
//!
//! [`FakeTree`] is a temporary directory laid out like `/proc` + `/sys` (plain files) holding a
//! host's knobs at the untuned kernel defaults, for `--proc-root <dir>/proc --sys-root <dir>/sys`.

use std::path::PathBuf;

use crate::kernel::{HostFs, KnobFile};
use crate::profile::Profile;
use crate::reconcile::{Target, resolve};

/// `vm.overcommit_memory`, relative to a [`FakeTree`].
pub const OVERCOMMIT: &str = "proc/sys/vm/overcommit_memory";
/// `net.core.somaxconn`, relative to a [`FakeTree`].
pub const SOMAXCONN: &str = "proc/sys/net/core/somaxconn";
/// THP `enabled`, relative to a [`FakeTree`].
pub const THP_ENABLED: &str = "sys/kernel/mm/transparent_hugepage/enabled";
/// THP `defrag`, relative to a [`FakeTree`].
pub const THP_DEFRAG: &str = "sys/kernel/mm/transparent_hugepage/defrag";
/// The 2 MiB size's `enabled` (mTHP), relative to a [`FakeTree`].
pub const THP_2M: &str = "sys/kernel/mm/transparent_hugepage/hugepages-2048kB/enabled";
/// A 64 kB size's `enabled` (mTHP), relative to a [`FakeTree`].
pub const THP_64K: &str = "sys/kernel/mm/transparent_hugepage/hugepages-64kB/enabled";
/// An 8 kB size with `shmem_enabled` only (no `enabled`: not a knob), relative to a [`FakeTree`].
pub const THP_8K_SHMEM: &str = "sys/kernel/mm/transparent_hugepage/hugepages-8kB/shmem_enabled";

/// A fake `/proc` + `/sys` tree (plain files) standing in for a host; removed on drop.
pub struct FakeTree {
    pub dir: tempfile::TempDir,
}

impl FakeTree {
    /// An untuned host with one mTHP size: overcommit 0, somaxconn 128, THP enabled `always`,
    /// defrag `madvise`, the 2 MiB size `always`.
    pub fn untuned_2m_only() -> FakeTree {
        let t = FakeTree {
            dir: tempfile::tempdir().expect("tempdir"),
        };
        t.put(OVERCOMMIT, "0\n");
        t.put(SOMAXCONN, "128\n");
        t.put(THP_ENABLED, "[always] madvise never\n");
        t.put(THP_DEFRAG, "always defer defer+madvise [madvise] never\n");
        t.put(THP_2M, "[always] inherit madvise never\n");
        t
    }

    /// [`FakeTree::untuned_2m_only`] plus a 64 kB size at `inherit` and an 8 kB size that has
    /// `shmem_enabled` only (which the resolver must skip): six knobs for the default profile.
    pub fn untuned() -> FakeTree {
        let t = FakeTree::untuned_2m_only();
        t.put(THP_64K, "always [inherit] madvise never\n");
        t.put(THP_8K_SHMEM, "always inherit [never]\n");
        t
    }

    /// PID 1 under this proc root shares the network namespace of whoever reads it
    /// (`proc/1/ns/net` links to `/proc/self/ns/net`).
    pub fn share_init_netns(&self) {
        std::fs::create_dir_all(self.path("proc/1/ns")).expect("mkdir proc/1/ns");
        std::os::unix::fs::symlink("/proc/self/ns/net", self.path("proc/1/ns/net"))
            .expect("symlink proc/1/ns/net");
    }

    /// The absolute path of `rel` in the tree.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// Writes in place, creating the directories (an agent keeps descriptors open).
    pub fn put(&self, rel: &str, content: &str) {
        let p = self.path(rel);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(p, content).expect("write");
    }

    pub fn get(&self, rel: &str) -> String {
        std::fs::read_to_string(self.path(rel)).expect("read")
    }

    /// Makes a knob drift and unwritable: its file (which the agent keeps open) is moved aside
    /// with a wrong value, and a directory takes its place, so every correction fails.
    pub fn break_knob(&self, rel: &str, wrong: &str) {
        let aside = format!("{rel}.aside");
        std::fs::rename(self.path(rel), self.path(&aside)).expect("rename");
        std::fs::create_dir_all(self.path(rel)).expect("mkdir");
        self.put(&aside, wrong);
    }

    /// A writable file again, holding `value`.
    pub fn fix_knob(&self, rel: &str, value: &str) {
        std::fs::remove_dir(self.path(rel)).expect("rmdir");
        self.put(rel, value);
    }

    /// The tree as a [`HostFs`], its own network namespace asserted to be the host's (PID 1's
    /// namespace file is absent unless [`FakeTree::share_init_netns`] made it).
    pub fn fs(&self) -> HostFs {
        let mut fs = HostFs::new(self.path("proc"), self.path("sys"));
        fs.assert_host_netns("test tree");
        fs
    }

    /// [`FakeTree::fs`] and the built-in profile resolved on it.
    pub fn default_targets(&self) -> (HostFs, Vec<Target>) {
        let fs = self.fs();
        let ts = resolve(&fs, &Profile::default());
        (fs, ts)
    }
}

/// The built-in profile resolved on `fs`.
pub fn resolve_default(fs: &HostFs) -> Vec<Target> {
    resolve(fs, &Profile::default())
}

/// The target of this name (panics when there is none).
pub fn target<'a>(ts: &'a mut [Target], name: &str) -> &'a mut Target {
    ts.iter_mut()
        .find(|t| t.name() == name)
        .unwrap_or_else(|| panic!("no target {name}"))
}

/// The file of the target of this name (panics when there is none).
pub fn file<'a>(ts: &'a mut [Target], name: &str) -> &'a mut KnobFile {
    &mut target(ts, name).file
}

/// A knob of an enforce-mode [`Report`](crate::agent::Report): in sync when `actual` is
/// `desired` (state `InSync`, else `Drift`), no error; unreadable when `actual` is `None`.
pub fn knob(name: &str, desired: &str, actual: Option<&str>) -> crate::agent::KnobReport {
    let in_sync = actual == Some(desired);
    crate::agent::KnobReport {
        name: name.into(),
        setting: name.into(),
        desired: desired.into(),
        actual: actual.map(Into::into),
        in_sync,
        mode: crate::profile::Mode::Enforce,
        state: if in_sync {
            crate::reconcile::StateKind::InSync
        } else {
            crate::reconcile::StateKind::Drift
        },
        error: None,
        contested: false,
        desired_number: None,
        actual_number: None,
    }
}

/// A report of `settings`, said `ready` or not, with nothing else in it.
pub fn report(ready: bool, settings: Vec<crate::agent::KnobReport>) -> crate::agent::Report {
    crate::agent::Report {
        ready,
        netns: String::new(),
        settings,
        lock_missing: None,
        redis_out_of_sync: vec![],
    }
}
