//! A Redis process's network namespace, as the agent reads it: its `net.core.somaxconn` file
//! and a `NETLINK_SOCK_DIAG` socket, both opened by a short-lived thread that entered the
//! namespace (`setns`, `CAP_SYS_ADMIN`) and left; the two descriptors stay bound to that
//! namespace (a `/proc/sys/net` file resolves against the namespace of the thread that opens
//! it, a netlink socket answers for the namespace it was created in). They are kept per
//! namespace inode while a process of that namespace is seen, and dropped with the last one
//! (a kept descriptor would keep a deleted pod's namespace alive).

use std::fs::File;
use std::os::fd::OwnedFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::diag::{self, DiagError, Listener};

/// A namespace's identity: (device, inode) of its `ns/net` file ([`crate::kernel::ns_id`]).
pub type NsId = (u64, u64);

pub use crate::kernel::ns_id;

/// The calling thread's own network namespace.
pub fn own_ns() -> Option<NsId> {
    ns_id(Path::new("/proc/thread-self/ns/net")).ok()
}

/// The kept descriptors of one namespace.
#[derive(Debug)]
pub struct NsHandle {
    somaxconn: File,
    diag: Result<OwnedFd, String>,
}

impl NsHandle {
    /// Opens the namespace of `ns_file` (`<proc>/<pid>/ns/net`): in this thread when it is the
    /// agent's own, else on a thread that enters it. `somaxconn` is the sysctl's path under a
    /// procfs mount (resolved in the namespace of the thread that opens it).
    pub fn open(ns_file: &Path, target: NsId, somaxconn: &Path) -> Result<NsHandle, String> {
        if own_ns() == Some(target) {
            return open_here(somaxconn);
        }
        let ns =
            File::open(ns_file).map_err(|e| format!("cannot open {}: {e}", ns_file.display()))?;
        let path: PathBuf = somaxconn.to_path_buf();
        let shown = ns_file.display().to_string();
        std::thread::Builder::new()
            .name("netns-view".into())
            .spawn(move || {
                // setns acts on this thread only, which ends right after.
                nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| {
                    format!(
                        "cannot enter {shown}: {e}{}",
                        if e == nix::errno::Errno::EPERM {
                            " (needs CAP_SYS_ADMIN)"
                        } else {
                            ""
                        }
                    )
                })?;
                open_here(&path)
            })
            .map_err(|e| format!("cannot start a thread: {e}"))?
            .join()
            .map_err(|_| "the namespace thread panicked".to_string())?
    }

    /// The namespace's `net.core.somaxconn` now.
    pub fn somaxconn(&self) -> Result<u32, String> {
        let mut buf = [0u8; 32];
        let n = self
            .somaxconn
            .read_at(&mut buf, 0)
            .map_err(|e| format!("cannot read net.core.somaxconn: {e}"))?;
        let text = String::from_utf8_lossy(&buf[..n]);
        text.trim()
            .parse()
            .map_err(|_| format!("net.core.somaxconn reads {:?}", text.trim()))
    }

    /// Every TCP listener of the namespace.
    pub fn listeners(&self) -> Result<Vec<Listener>, String> {
        let fd = self.diag.as_ref().map_err(Clone::clone)?;
        diag::listeners(fd).map_err(|e: DiagError| e.to_string())
    }
}

fn open_here(somaxconn: &Path) -> Result<NsHandle, String> {
    let file =
        File::open(somaxconn).map_err(|e| format!("cannot open {}: {e}", somaxconn.display()))?;
    Ok(NsHandle {
        somaxconn: file,
        diag: diag::socket().map_err(|e| format!("cannot open a sock_diag socket: {e}")),
    })
}
