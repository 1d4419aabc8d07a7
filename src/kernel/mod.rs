//! The kernel layer: read and write one knob under a configurable proc and sys root.
//!
//! Knobs are opened once and read with `pread` on the kept descriptor: procfs and sysfs return
//! the current value on every read, it is several times cheaper than open/read/close, and a
//! descriptor opened inside a network namespace stays bound to it. `net.*` sysctls are per
//! network namespace, so their files are opened in the host's namespace (see [`NetnsStatus`]).
//!
//! - `location.rs`: where a knob's file is, relative to the proc or sys root.
//! - `file.rs`: one knob's file, the per-size THP files of this kernel, and how files are parsed.
//! - `knob_io.rs`: reading, comparing and writing a knob through its kept descriptor.
//! - `netns.rs`: the proof that `net.*` files are in the host's network namespace.
//! - `somaxconn.rs`: the `net.core.somaxconn` a new network namespace starts with.
//! - `error.rs`: what fails, per knob, and its stable kind.

mod error;
mod file;
mod knob_io;
mod location;
mod netns;
mod somaxconn;

use std::path::{Path, PathBuf};

pub use error::{ErrorKind, KernelError};
pub use file::{Format, KnobFile, Reading, selected_word, thp_sizes};
pub use location::{Location, Root, THP_DIR, sysctl_rel_path};
pub use netns::{NetnsStatus, ns_id};
pub use somaxconn::{kernel_release, new_netns_somaxconn};

use netns::NetnsThread;

/// The host's kernel as seen through a proc root and a sys root.
pub struct HostFs {
    proc_root: PathBuf,
    sys_root: PathBuf,
    netns: NetnsStatus,
    net_thread: Option<NetnsThread>,
}

impl std::fmt::Debug for HostFs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostFs")
            .field("proc_root", &self.proc_root)
            .field("sys_root", &self.sys_root)
            .field("netns", &self.netns)
            .finish()
    }
}

impl HostFs {
    /// Opens the roots. When `proc_root` is not `/proc`, finds out whether `net.*` knobs can be
    /// read in the namespace of PID 1 under it: same namespace, entered on a dedicated thread,
    /// or unverified (with the reason).
    pub fn new(proc_root: impl Into<PathBuf>, sys_root: impl Into<PathBuf>) -> HostFs {
        let proc_root = proc_root.into();
        let sys_root = sys_root.into();
        let mut fs = HostFs {
            proc_root,
            sys_root,
            netns: NetnsStatus::Own,
            net_thread: None,
        };
        if fs.proc_root != Path::new("/proc") {
            fs.detect_netns();
        }
        fs
    }

    /// Where procfs is mounted.
    pub fn proc_root(&self) -> &Path {
        &self.proc_root
    }

    /// The absolute path of a location under the roots.
    pub fn path(&self, loc: &Location) -> PathBuf {
        match loc.root {
            Root::Proc => self.proc_root.join(&loc.rel),
            Root::Sys => self.sys_root.join(&loc.rel),
        }
    }
}
