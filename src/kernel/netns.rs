//! The proof that `net.*` knobs are read in the host's network namespace: the agent's own
//! namespace compared with PID 1's under the proc root, a thread that entered PID 1's namespace
//! (`setns`) to open the `net.*` files there, or an outside assertion (`hostNetwork: true`).

use std::fs::File;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::mpsc;

use super::knob_io::open_file;
use super::{HostFs, Location};

/// Whether `net.*` knobs are read in the host's network namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetnsStatus {
    /// `--proc-root` is `/proc`: the agent's own namespace is used (run it with host networking).
    Own,
    /// The agent's namespace is the same as PID 1's under `--proc-root`.
    SharedWithHostInit,
    /// The agent entered PID 1's namespace on a dedicated thread, which opens the `net.*` files.
    Entered { ns_file: PathBuf },
    /// Proven by another source (e.g. the agent's Pod has `hostNetwork: true`).
    Asserted { proof: String },
    /// No proof: `net.*` knobs are reported as not in sync, with this reason.
    Unverified { reason: String },
}

impl NetnsStatus {
    pub fn describe(&self) -> String {
        match self {
            NetnsStatus::Own => "own network namespace (--proc-root is /proc)".into(),
            NetnsStatus::SharedWithHostInit => "shared with PID 1 under --proc-root".into(),
            NetnsStatus::Entered { ns_file } => format!("entered {}", ns_file.display()),
            NetnsStatus::Asserted { proof } => format!("host network namespace: {proof}"),
            NetnsStatus::Unverified { reason } => format!("unverified: {reason}"),
        }
    }
}

struct OpenRequest {
    path: PathBuf,
    write: bool,
    reply: mpsc::SyncSender<io::Result<File>>,
}

/// A thread that has entered another network namespace and opens files there.
pub(super) struct NetnsThread {
    tx: Mutex<mpsc::Sender<OpenRequest>>,
    /// Inode of the namespace the thread entered.
    ns_ino: Option<u64>,
}

impl NetnsThread {
    pub(super) fn spawn(ns_file: &Path) -> io::Result<NetnsThread> {
        let ns = File::open(ns_file)?;
        let (tx, rx) = mpsc::channel::<OpenRequest>();
        let (ready_tx, ready_rx) = mpsc::sync_channel::<io::Result<Option<u64>>>(1);
        std::thread::Builder::new()
            .name("netns".into())
            .spawn(move || {
                // setns acts on this thread only; it never runs async tasks.
                if let Err(e) = nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET) {
                    let _ = ready_tx.send(Err(io::Error::from(e)));
                    return;
                }
                drop(ns);
                let _ = ready_tx.send(Ok(thread_netns_ino()));
                for req in rx {
                    let _ = req.reply.send(open_file(&req.path, req.write));
                }
            })?;
        let ns_ino = ready_rx
            .recv()
            .map_err(|_| io::Error::other("netns thread exited"))??;
        Ok(NetnsThread {
            tx: Mutex::new(tx),
            ns_ino,
        })
    }

    pub(super) fn open(&self, path: &Path, write: bool) -> io::Result<File> {
        let (reply, rx) = mpsc::sync_channel(1);
        let req = OpenRequest {
            path: path.to_path_buf(),
            write,
            reply,
        };
        self.tx
            .lock()
            .map_err(|_| io::Error::other("netns thread lock poisoned"))?
            .send(req)
            .map_err(|_| io::Error::other("netns thread exited"))?;
        rx.recv()
            .map_err(|_| io::Error::other("netns thread exited"))?
    }
}

/// Inode of the calling thread's network namespace (as in `net:[<inode>]`).
fn thread_netns_ino() -> Option<u64> {
    std::fs::metadata("/proc/thread-self/ns/net")
        .ok()
        .map(|m| m.ino())
}

/// A namespace's identity: (device, inode) of its `ns/*` file.
pub fn ns_id(path: &Path) -> io::Result<(u64, u64)> {
    let m = std::fs::metadata(path)?;
    Ok((m.dev(), m.ino()))
}

impl HostFs {
    /// Finds out whether `net.*` knobs can be read in the namespace of PID 1 under the proc
    /// root (see [`HostFs::new`]).
    pub(super) fn detect_netns(&mut self) {
        let init_ns = self.proc_root.join("1/ns/net");
        let own = ns_id(Path::new("/proc/thread-self/ns/net"));
        let init = ns_id(&init_ns);
        self.netns = match (own, init) {
            (Ok(a), Ok(b)) if a == b => NetnsStatus::SharedWithHostInit,
            (Ok(_), Ok(_)) => match NetnsThread::spawn(&init_ns) {
                Ok(t) => {
                    self.net_thread = Some(t);
                    NetnsStatus::Entered { ns_file: init_ns }
                }
                Err(e) => NetnsStatus::Unverified {
                    reason: format!(
                        "{} differs from the agent's network namespace and entering it failed: {e}",
                        init_ns.display()
                    ),
                },
            },
            (Err(e), _) => NetnsStatus::Unverified {
                reason: format!("cannot read /proc/thread-self/ns/net: {e}"),
            },
            (_, Err(e)) => NetnsStatus::Unverified {
                reason: format!("cannot read {}: {e}", init_ns.display()),
            },
        };
    }

    /// Records an outside proof that the agent's own namespace is the host's (used when the
    /// namespace could not be compared, e.g. the Pod spec says `hostNetwork: true`).
    pub fn assert_host_netns(&mut self, proof: impl Into<String>) {
        if matches!(self.netns, NetnsStatus::Unverified { .. }) {
            self.netns = NetnsStatus::Asserted {
                proof: proof.into(),
            };
        }
    }

    /// Inode of the network namespace `net.*` knobs are opened in (`None`: unknown).
    pub fn net_ns_ino(&self) -> Option<u64> {
        match (&self.netns, &self.net_thread) {
            (NetnsStatus::Unverified { .. }, _) => None,
            (_, Some(t)) => t.ns_ino,
            (_, None) => thread_netns_ino(),
        }
    }

    pub fn netns(&self) -> &NetnsStatus {
        &self.netns
    }

    /// Whether `loc` is a `net.*` knob in a namespace not proven to be the host's (its reads
    /// and writes are refused).
    pub(super) fn netns_unverified(&self, loc: &Location) -> bool {
        matches!(self.netns, NetnsStatus::Unverified { .. }) && loc.is_net()
    }

    pub(super) fn netns_blocked(&self, loc: &Location) -> Option<String> {
        match &self.netns {
            NetnsStatus::Unverified { reason } if loc.is_net() => Some(reason.clone()),
            _ => None,
        }
    }

    /// Opens a knob's file: `net.*` ones on the thread in PID 1's namespace when there is one.
    pub(super) fn open(&self, loc: &Location, write: bool) -> io::Result<File> {
        let path = self.path(loc);
        match &self.net_thread {
            Some(t) if loc.is_net() => t.open(&path, write),
            _ => open_file(&path, write),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{FakeTree, file};

    #[test]
    fn unverified_netns_blocks_only_net_knobs() {
        let tree = FakeTree::untuned();
        let fs = HostFs::new(tree.dir.path().join("proc"), tree.dir.path().join("sys"));
        assert!(
            matches!(fs.netns(), NetnsStatus::Unverified { reason } if reason.contains("1/ns/net"))
        );
        let mut ts = crate::testing::resolve_default(&fs);
        let e = fs.read(file(&mut ts, "net.core.somaxconn")).unwrap_err();
        assert_eq!(e.kind(), "netns_unverified");
        assert_eq!(
            fs.write(file(&mut ts, "net.core.somaxconn"), "4096")
                .unwrap_err()
                .kind(),
            "netns_unverified"
        );
        assert_eq!(tree.get("proc/sys/net/core/somaxconn"), "128\n");
        assert!(fs.read(file(&mut ts, "vm.overcommit_memory")).is_ok());
    }

    #[test]
    fn same_netns_as_init_is_shared() {
        // A proc root whose PID 1 is this process's own namespace file.
        let tree = FakeTree::untuned();
        std::fs::create_dir_all(tree.dir.path().join("proc/1/ns")).unwrap();
        std::os::unix::fs::symlink(
            "/proc/thread-self/ns/net",
            tree.dir.path().join("proc/1/ns/net"),
        )
        .unwrap();
        let fs = HostFs::new(tree.dir.path().join("proc"), tree.dir.path().join("sys"));
        assert_eq!(fs.netns(), &NetnsStatus::SharedWithHostInit);
    }
}
