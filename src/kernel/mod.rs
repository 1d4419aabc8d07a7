//! The kernel layer: read and write one knob under a configurable proc and sys root.
//!
//! Knobs are opened once and read with `pread` on the kept descriptor: procfs and sysfs return
//! the current value on every read, it is several times cheaper than open/read/close, and a
//! descriptor opened inside a network namespace stays bound to it. `net.*` sysctls are per
//! network namespace, so their files are opened in the host's namespace (see [`NetnsStatus`]).

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::mpsc;

use serde::{Deserialize, Serialize};

use crate::profile::{Desired, Knob, Profile, Setting};

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

/// How a knob's file is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// A sysctl: the trimmed text.
    Text,
    /// A sysfs enum such as `always [madvise] never`: the bracketed word.
    Enum,
}

/// Errors of one knob; each names the knob and the file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KernelError {
    #[error("{knob}: {path} does not exist")]
    NotFound { knob: String, path: PathBuf },
    #[error("{knob}: permission denied to {op} {path} (writing needs uid 0 and a writable mount)")]
    PermissionDenied {
        knob: String,
        path: PathBuf,
        op: &'static str,
    },
    #[error("{knob}: {path} is on a read-only file system (mount it read-write to enforce)")]
    ReadOnly { knob: String, path: PathBuf },
    #[error("{knob}: the kernel rejected {value:?} for {path} (EINVAL)")]
    Rejected {
        knob: String,
        path: PathBuf,
        value: String,
    },
    #[error("{knob}: cannot {op} {path}: {message}")]
    Io {
        knob: String,
        path: PathBuf,
        op: &'static str,
        message: String,
    },
    #[error("{knob}: unexpected content {content:?} in {path}: {expected}")]
    Parse {
        knob: String,
        path: PathBuf,
        content: String,
        expected: &'static str,
    },
    #[error("{knob}: wrote {wrote:?} to {path} but it reads back {read:?}")]
    NotApplied {
        knob: String,
        path: PathBuf,
        wrote: String,
        read: String,
    },
    #[error("{knob}: not verified to be the host's network namespace: {reason}")]
    NetnsUnverified { knob: String, reason: String },
}

impl KernelError {
    fn from_io(
        knob: &str,
        path: &Path,
        op: &'static str,
        value: Option<&str>,
        e: &io::Error,
    ) -> Self {
        let (knob, path) = (knob.to_string(), path.to_path_buf());
        match e.raw_os_error() {
            Some(libc::ENOENT) => KernelError::NotFound { knob, path },
            Some(libc::EACCES) | Some(libc::EPERM) => {
                KernelError::PermissionDenied { knob, path, op }
            }
            Some(libc::EROFS) => KernelError::ReadOnly { knob, path },
            Some(libc::EINVAL) if value.is_some() => KernelError::Rejected {
                knob,
                path,
                value: value.unwrap_or_default().to_string(),
            },
            _ => KernelError::Io {
                knob,
                path,
                op,
                message: e.to_string(),
            },
        }
    }

    /// Why it failed, as a stable word for metrics, logs and JSON.
    pub fn kind(&self) -> ErrorKind {
        match self {
            KernelError::NotFound { .. } => ErrorKind::Missing,
            KernelError::PermissionDenied { .. } => ErrorKind::Permission,
            KernelError::ReadOnly { .. } => ErrorKind::ReadOnly,
            KernelError::Rejected { .. } => ErrorKind::Invalid,
            KernelError::Io { .. } => ErrorKind::Io,
            KernelError::Parse { .. } => ErrorKind::Parse,
            KernelError::NotApplied { .. } => ErrorKind::NotApplied,
            KernelError::NetnsUnverified { .. } => ErrorKind::NetnsUnverified,
        }
    }
}

/// The kind of a [`KernelError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The file does not exist.
    Missing,
    /// EACCES/EPERM: not uid 0, or an LSM denied it.
    Permission,
    /// EROFS: the file is on a read-only mount.
    ReadOnly,
    /// EINVAL: the kernel refused the value.
    Invalid,
    /// Another I/O error.
    Io,
    /// The file's content is not what this knob holds.
    Parse,
    /// The write was accepted but the value read back is not the one wanted.
    NotApplied,
    /// A `net.*` knob whose network namespace is not proven to be the host's.
    NetnsUnverified,
}

impl ErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Missing => "missing",
            ErrorKind::Permission => "permission",
            ErrorKind::ReadOnly => "read_only",
            ErrorKind::Invalid => "invalid",
            ErrorKind::Io => "io",
            ErrorKind::Parse => "parse",
            ErrorKind::NotApplied => "not_applied",
            ErrorKind::NetnsUnverified => "netns_unverified",
        }
    }
}

impl PartialEq<&str> for ErrorKind {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

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
struct NetnsThread {
    tx: Mutex<mpsc::Sender<OpenRequest>>,
    /// Inode of the namespace the thread entered.
    ns_ino: Option<u64>,
}

impl NetnsThread {
    fn spawn(ns_file: &Path) -> io::Result<NetnsThread> {
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

    fn open(&self, path: &Path, write: bool) -> io::Result<File> {
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

fn open_file(path: &Path, write: bool) -> io::Result<File> {
    if write {
        // O_TRUNC matters for plain files (test trees); procfs and sysfs ignore it. Never O_CREAT.
        OpenOptions::new().write(true).truncate(true).open(path)
    } else {
        File::open(path)
    }
}

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

/// Inode of the calling thread's network namespace (as in `net:[<inode>]`).
fn thread_netns_ino() -> Option<u64> {
    std::fs::metadata("/proc/thread-self/ns/net")
        .ok()
        .map(|m| m.ino())
}

fn ns_id(path: &Path) -> io::Result<(u64, u64)> {
    let m = std::fs::metadata(path)?;
    Ok((m.dev(), m.ino()))
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

    fn detect_netns(&mut self) {
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

    /// The absolute path of a location under the roots.
    pub fn path(&self, loc: &Location) -> PathBuf {
        match loc.root {
            Root::Proc => self.proc_root.join(&loc.rel),
            Root::Sys => self.sys_root.join(&loc.rel),
        }
    }

    fn netns_blocked(&self, loc: &Location) -> Option<String> {
        match &self.netns {
            NetnsStatus::Unverified { reason } if loc.is_net() => Some(reason.clone()),
            _ => None,
        }
    }

    fn open(&self, loc: &Location, write: bool) -> io::Result<File> {
        let path = self.path(loc);
        match &self.net_thread {
            Some(t) if loc.is_net() => t.open(&path, write),
            _ => open_file(&path, write),
        }
    }

    /// A kernel without THP has `kernel/mm` but no `transparent_hugepage` in it. A sys root
    /// without `kernel/mm` is a wrong mount, reported as an error, not as "no THP".
    fn thp_absent(&self) -> bool {
        self.sys_root.join("kernel/mm").is_dir() && !self.sys_root.join(THP_DIR).exists()
    }

    /// Resolves a profile into the knobs of this host (per-size THP files are discovered).
    pub fn resolve(&self, profile: &Profile) -> Vec<Target> {
        let mut out = Vec::new();
        for s in &profile.settings {
            match &s.knob {
                Knob::Sysctl(name) => {
                    out.push(Target::new(s, name, Location::sysctl(name), Format::Text))
                }
                Knob::ThpEnabled => {
                    out.push(Target::new(s, &s.name, thp_loc("enabled"), Format::Enum))
                }
                Knob::ThpDefrag => {
                    out.push(Target::new(s, &s.name, thp_loc("defrag"), Format::Enum))
                }
                Knob::ThpPerSize => {
                    let sizes = self.thp_sizes();
                    if sizes.is_empty() {
                        // No THP, or a kernel before mTHP (6.8): nothing to check. A sys root
                        // without kernel/mm reads as "not found" below.
                        let mut t =
                            Target::new(s, &s.name, thp_loc("hugepages-*kB/enabled"), Format::Enum);
                        t.not_applicable =
                            self.thp_absent() || self.sys_root.join(THP_DIR).is_dir();
                        out.push(t);
                    }
                    for (kb, dir) in sizes {
                        let name = format!("thp.hugepages-{kb}kB.enabled");
                        out.push(Target::new(
                            s,
                            &name,
                            thp_loc(&format!("{dir}/enabled")),
                            Format::Enum,
                        ));
                    }
                }
            }
        }
        out
    }

    fn thp_sizes(&self) -> Vec<(u64, String)> {
        let dir = self.sys_root.join(THP_DIR);
        let Ok(rd) = std::fs::read_dir(&dir) else {
            return vec![];
        };
        let mut sizes: Vec<(u64, String)> = rd
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                let kb = name
                    .strip_prefix("hugepages-")?
                    .strip_suffix("kB")?
                    .parse()
                    .ok()?;
                // Some sizes exist for shmem only (shmem_enabled, no enabled).
                dir.join(&name)
                    .join("enabled")
                    .is_file()
                    .then_some((kb, name))
            })
            .collect();
        sizes.sort();
        sizes
    }

    /// Reads a knob: through its kept descriptor (opened on first use), `Ok(None)` when the
    /// knob does not apply to this kernel (no THP).
    pub fn read(&self, t: &mut Target) -> Result<Option<Reading>, KernelError> {
        if t.not_applicable {
            return Ok(None);
        }
        if let Some(reason) = self.netns_blocked(&t.location) {
            return Err(KernelError::NetnsUnverified {
                knob: t.name.clone(),
                reason,
            });
        }
        if t.fd.is_none() {
            if t.location.root == Root::Sys && self.thp_absent() {
                return Ok(None);
            }
            let fd = self.open(&t.location, false).map_err(|e| {
                KernelError::from_io(&t.name, &self.path(&t.location), "read", None, &e)
            })?;
            t.fd = Some(fd);
        }
        let mut buf = [0u8; 512];
        let n = match t.fd.as_ref().map(|fd| fd.read_at(&mut buf, 0)) {
            Some(Ok(n)) => n,
            Some(Err(e)) => {
                // A stale descriptor (e.g. the file went away) is reopened next time.
                t.fd = None;
                return Err(KernelError::from_io(
                    &t.name,
                    &self.path(&t.location),
                    "read",
                    None,
                    &e,
                ));
            }
            None => 0,
        };
        t.last_raw.clear();
        t.last_raw.extend_from_slice(&buf[..n]);
        parse(t, &buf[..n])
            .map(Some)
            .map_err(|expected| KernelError::Parse {
                knob: t.name.clone(),
                path: self.path(&t.location),
                content: String::from_utf8_lossy(&buf[..n]).into_owned(),
                expected,
            })
    }

    /// Whether a knob still holds the bytes its last read saw: one `pread` into a stack
    /// buffer, nothing allocated. `false` when it cannot tell (no kept descriptor, an error): the
    /// caller then reads it in full. A knob whose result does not depend on the file (not
    /// applicable, or `net.*` in an unverified namespace) is unchanged.
    pub fn unchanged(&self, t: &Target) -> bool {
        let unverified =
            matches!(self.netns, NetnsStatus::Unverified { .. }) && t.location.is_net();
        if t.not_applicable || unverified {
            return true;
        }
        let Some(fd) = &t.fd else {
            return false;
        };
        let mut buf = [0u8; 512];
        match fd.read_at(&mut buf, 0) {
            Ok(n) => t.last_raw[..] == buf[..n],
            Err(_) => false,
        }
    }

    /// Writes `value` to a knob and reads it back.
    pub fn write(&self, t: &mut Target, value: &str) -> Result<Reading, KernelError> {
        let path = self.path(&t.location);
        if let Some(reason) = self.netns_blocked(&t.location) {
            return Err(KernelError::NetnsUnverified {
                knob: t.name.clone(),
                reason,
            });
        }
        let io_err = |e: &io::Error| KernelError::from_io(&t.name, &path, "write", Some(value), e);
        let mut f = self.open(&t.location, true).map_err(|e| io_err(&e))?;
        f.write_all(format!("{value}\n").as_bytes())
            .map_err(|e| io_err(&e))?;
        drop(f);
        // Read back through a fresh descriptor: the file may have been replaced since it was
        // opened (module reload, a test tree), and the write went to the current one.
        t.fd = None;
        match self.read(t)? {
            Some(r) => Ok(r),
            None => Err(KernelError::NotFound {
                knob: t.name.clone(),
                path,
            }),
        }
    }
}

fn thp_loc(rel: &str) -> Location {
    Location {
        root: Root::Sys,
        rel: format!("{THP_DIR}/{rel}"),
    }
}

/// What a knob reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reading {
    /// The value: whitespace-normalised sysctl text, or the selected enum word.
    pub value: String,
    /// The value as an integer, for integer sysctls.
    pub number: Option<i64>,
}

fn parse(t: &Target, raw: &[u8]) -> Result<Reading, &'static str> {
    let text = std::str::from_utf8(raw).map_err(|_| "not UTF-8 text")?;
    match t.format {
        Format::Text => {
            let value = text.split_whitespace().collect::<Vec<_>>().join(" ");
            if value.is_empty() {
                return Err("an empty sysctl value");
            }
            let number = value.parse::<i64>().ok();
            if t.desired.numeric().is_some() && number.is_none() {
                return Err("a single integer");
            }
            Ok(Reading { value, number })
        }
        Format::Enum => {
            let mut selected = text
                .split_whitespace()
                .filter_map(|w| w.strip_prefix('[').and_then(|w| w.strip_suffix(']')));
            let word = match (selected.next(), selected.next()) {
                (Some(w), None) => w,
                // A file of one bare word (a plain-file test tree) reads as that word.
                (None, None) => match text.split_whitespace().collect::<Vec<_>>()[..] {
                    [w] => w,
                    _ => "",
                },
                _ => "",
            };
            if word.is_empty() {
                return Err("a list of words with exactly one in [brackets]");
            }
            Ok(Reading {
                value: word.to_string(),
                number: None,
            })
        }
    }
}

/// One knob of this host, resolved from a profile setting.
#[derive(Debug)]
pub struct Target {
    /// The knob's name: the setting name, or `thp.hugepages-<size>kB.enabled` per size.
    pub name: String,
    /// The profile setting it comes from.
    pub setting: String,
    pub location: Location,
    pub format: Format,
    pub desired: Desired,
    pub mode: crate::profile::Mode,
    not_applicable: bool,
    fd: Option<File>,
    /// The bytes of the last successful read (capacity kept: no allocation in steady state).
    last_raw: Vec<u8>,
}

impl Target {
    fn new(s: &Setting, name: &str, location: Location, format: Format) -> Target {
        Target {
            name: name.to_string(),
            setting: s.name.clone(),
            location,
            format,
            desired: s.desired.clone(),
            mode: s.mode,
            not_applicable: false,
            fd: None,
            last_raw: Vec::new(),
        }
    }

    /// A target for restoring a journalled original: any text, no desired value.
    pub fn for_restore(name: &str, location: Location) -> Target {
        let format = if location.root == Root::Sys {
            Format::Enum
        } else {
            Format::Text
        };
        Target {
            name: name.to_string(),
            setting: name.to_string(),
            location,
            format,
            desired: Desired::Text(String::new()),
            mode: crate::profile::Mode::Enforce,
            not_applicable: false,
            fd: None,
            last_raw: Vec::new(),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A fake /proc + /sys tree with the default profile's files.
    pub(crate) struct FakeTree {
        pub dir: tempfile::TempDir,
    }

    impl FakeTree {
        pub(crate) fn untuned() -> FakeTree {
            let dir = tempfile::tempdir().unwrap();
            let t = FakeTree { dir };
            t.put("proc/sys/vm/overcommit_memory", "0\n");
            t.put("proc/sys/net/core/somaxconn", "128\n");
            t.put(
                "sys/kernel/mm/transparent_hugepage/enabled",
                "[always] madvise never\n",
            );
            t.put(
                "sys/kernel/mm/transparent_hugepage/defrag",
                "always defer defer+madvise [madvise] never\n",
            );
            t.put(
                "sys/kernel/mm/transparent_hugepage/hugepages-64kB/enabled",
                "always [inherit] madvise never\n",
            );
            t.put(
                "sys/kernel/mm/transparent_hugepage/hugepages-2048kB/enabled",
                "[always] inherit madvise never\n",
            );
            t.put(
                "sys/kernel/mm/transparent_hugepage/hugepages-8kB/shmem_enabled",
                "always inherit [never]\n",
            );
            t
        }
        pub(crate) fn put(&self, rel: &str, content: &str) {
            let p = self.dir.path().join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, content).unwrap();
        }
        pub(crate) fn get(&self, rel: &str) -> String {
            std::fs::read_to_string(self.dir.path().join(rel)).unwrap()
        }
        pub(crate) fn fs(&self) -> HostFs {
            // Not /proc, so the netns check runs: PID 1's namespace file is absent here.
            let mut fs = HostFs::new(self.dir.path().join("proc"), self.dir.path().join("sys"));
            fs.assert_host_netns("test tree");
            fs
        }
    }

    fn target<'a>(ts: &'a mut [Target], name: &str) -> &'a mut Target {
        ts.iter_mut().find(|t| t.name == name).unwrap()
    }

    #[test]
    fn resolves_and_reads_the_default_profile() {
        let tree = FakeTree::untuned();
        let fs = tree.fs();
        let mut ts = fs.resolve(&Profile::default());
        let names: Vec<_> = ts.iter().map(|t| t.name.clone()).collect();
        assert_eq!(
            names,
            [
                "vm.overcommit_memory",
                "net.core.somaxconn",
                "thp.enabled",
                "thp.defrag",
                "thp.hugepages-64kB.enabled",
                "thp.hugepages-2048kB.enabled"
            ]
        );
        let r = fs
            .read(target(&mut ts, "net.core.somaxconn"))
            .unwrap()
            .unwrap();
        assert_eq!((r.value.as_str(), r.number), ("128", Some(128)));
        let r = fs.read(target(&mut ts, "thp.enabled")).unwrap().unwrap();
        assert_eq!(r.value, "always");
        let r = fs
            .read(target(&mut ts, "thp.hugepages-64kB.enabled"))
            .unwrap()
            .unwrap();
        assert_eq!(r.value, "inherit");
    }

    #[test]
    fn kept_descriptor_sees_in_place_changes_and_writes_read_back() {
        let tree = FakeTree::untuned();
        let fs = tree.fs();
        let mut ts = fs.resolve(&Profile::default());
        let t = target(&mut ts, "vm.overcommit_memory");
        assert_eq!(fs.read(t).unwrap().unwrap().value, "0");
        tree.put("proc/sys/vm/overcommit_memory", "2\n");
        assert_eq!(fs.read(t).unwrap().unwrap().value, "2");
        let back = fs.write(t, "1").unwrap();
        assert_eq!(back.number, Some(1));
        assert_eq!(tree.get("proc/sys/vm/overcommit_memory"), "1\n");
        // A shorter value over a longer one leaves no tail behind.
        let t = target(&mut ts, "net.core.somaxconn");
        tree.put("proc/sys/net/core/somaxconn", "4096\n");
        assert_eq!(fs.write(t, "1").unwrap().value, "1");
    }

    #[test]
    fn a_replaced_file_is_reopened_after_a_write() {
        let tree = FakeTree::untuned();
        let fs = tree.fs();
        let mut ts = fs.resolve(&Profile::default());
        let t = target(&mut ts, "vm.overcommit_memory");
        assert_eq!(fs.read(t).unwrap().unwrap().value, "0");
        // The file is replaced behind the kept descriptor.
        let p = tree.dir.path().join("proc/sys/vm/overcommit_memory");
        std::fs::rename(&p, tree.dir.path().join("old")).unwrap();
        tree.put("proc/sys/vm/overcommit_memory", "2\n");
        assert_eq!(fs.write(t, "1").unwrap().value, "1");
        tree.put("proc/sys/vm/overcommit_memory", "0\n");
        assert_eq!(fs.read(t).unwrap().unwrap().value, "0");
    }

    #[test]
    fn missing_thp_directory_is_not_applicable() {
        let tree = FakeTree::untuned();
        std::fs::remove_dir_all(tree.dir.path().join("sys/kernel/mm/transparent_hugepage"))
            .unwrap();
        let fs = tree.fs();
        let mut ts = fs.resolve(&Profile::default());
        let thp: Vec<_> = ts
            .iter_mut()
            .filter(|t| t.name.starts_with("thp."))
            .collect();
        assert_eq!(thp.len(), 3);
        for t in thp {
            assert_eq!(fs.read(t), Ok(None), "{}", t.name);
        }
    }

    #[test]
    fn errors_name_the_knob_and_the_file() {
        let tree = FakeTree::untuned();
        std::fs::remove_file(tree.dir.path().join("proc/sys/vm/overcommit_memory")).unwrap();
        tree.put("proc/sys/net/core/somaxconn", "lots\n");
        tree.put(
            "sys/kernel/mm/transparent_hugepage/enabled",
            "always madvise never\n",
        );
        tree.put(
            "sys/kernel/mm/transparent_hugepage/defrag",
            "[always] [never]\n",
        );
        let fs = tree.fs();
        let mut ts = fs.resolve(&Profile::default());
        let e = fs
            .read(target(&mut ts, "vm.overcommit_memory"))
            .unwrap_err();
        assert_eq!(e.kind(), "missing");
        assert!(
            e.to_string().contains("proc/sys/vm/overcommit_memory"),
            "{e}"
        );
        let e = fs.read(target(&mut ts, "net.core.somaxconn")).unwrap_err();
        assert_eq!(e.kind(), "parse");
        assert!(
            e.to_string()
                .starts_with("net.core.somaxconn: unexpected content \"lots\\n\""),
            "{e}"
        );
        assert!(e.to_string().contains("a single integer"), "{e}");
        assert_eq!(
            fs.read(target(&mut ts, "thp.enabled")).unwrap_err().kind(),
            "parse"
        );
        assert_eq!(
            fs.read(target(&mut ts, "thp.defrag")).unwrap_err().kind(),
            "parse"
        );
        // A write to a missing file is NotFound, and never creates it.
        let e = fs
            .write(target(&mut ts, "vm.overcommit_memory"), "1")
            .unwrap_err();
        assert_eq!(e.kind(), "missing");
        assert!(
            !tree
                .dir
                .path()
                .join("proc/sys/vm/overcommit_memory")
                .exists()
        );
    }

    #[test]
    fn io_errors_map_to_distinct_kinds() {
        let p = Path::new("/x");
        let k = |errno, value| {
            KernelError::from_io("k", p, "write", value, &io::Error::from_raw_os_error(errno))
                .kind()
        };
        assert_eq!(k(libc::ENOENT, Some("1")), "missing");
        assert_eq!(k(libc::EACCES, Some("1")), "permission");
        assert_eq!(k(libc::EPERM, Some("1")), "permission");
        assert_eq!(k(libc::EROFS, Some("1")), "read_only");
        assert_eq!(k(libc::EINVAL, Some("1")), "invalid");
        assert_eq!(k(libc::EINVAL, None), "io");
        assert_eq!(k(libc::EIO, None), "io");
    }

    /// `CAP_DAC_OVERRIDE` is in this process's effective set: file modes do not stop its
    /// writes (uid 0 normally has it).
    fn has_dac_override() -> bool {
        std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("CapEff:"))
                    .and_then(|h| u64::from_str_radix(h.trim(), 16).ok())
            })
            // CAP_DAC_OVERRIDE is capability 1.
            .is_some_and(|caps| caps & (1 << 1) != 0)
    }

    #[test]
    fn a_write_denied_by_the_file_mode_is_permission_denied_as_root_and_not() {
        let tree = FakeTree::untuned();
        let p = tree.dir.path().join("proc/sys/vm/overcommit_memory");
        let mut perm = std::fs::metadata(&p).unwrap().permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o444);
        std::fs::set_permissions(&p, perm).unwrap();
        let fs = tree.fs();
        let mut ts = fs.resolve(&Profile::default());
        let r = fs.write(target(&mut ts, "vm.overcommit_memory"), "1");
        if !has_dac_override() {
            // Not root, or root without the capability (the child below).
            let e = r.unwrap_err();
            assert_eq!(e.kind(), "permission", "{e}");
            assert!(
                e.to_string().contains("proc/sys/vm/overcommit_memory"),
                "{e}"
            );
            assert_eq!(tree.get("proc/sys/vm/overcommit_memory"), "0\n");
            return;
        }
        // uid 0 with CAP_DAC_OVERRIDE ignores the mode, so the write goes through here ...
        assert_eq!(r.unwrap().value, "1");
        // ... and the error path is proven by this same test in a child process of this test
        // binary with every capability dropped (setpriv, util-linux): still uid 0, but the
        // mode now applies to it, as it does to any other user.
        let test = format!(
            "{}::a_write_denied_by_the_file_mode_is_permission_denied_as_root_and_not",
            module_path!().split_once("::").map_or("", |(_, m)| m)
        );
        let out = std::process::Command::new("setpriv")
            .args([
                "--inh-caps=-all",
                "--ambient-caps=-all",
                "--bounding-set=-all",
                "--",
            ])
            .arg(std::env::current_exe().unwrap())
            .args(["--exact", &test, "--test-threads=1", "--nocapture"])
            .output()
            .expect("setpriv (util-linux) is needed to drop the capabilities of a child");
        let text = format!(
            "{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success() && text.contains("1 passed"),
            "the capability-less child did not prove permission_denied:\n{text}"
        );
    }

    #[test]
    fn unverified_netns_blocks_only_net_knobs() {
        let tree = FakeTree::untuned();
        let fs = HostFs::new(tree.dir.path().join("proc"), tree.dir.path().join("sys"));
        assert!(
            matches!(fs.netns(), NetnsStatus::Unverified { reason } if reason.contains("1/ns/net"))
        );
        let mut ts = fs.resolve(&Profile::default());
        let e = fs.read(target(&mut ts, "net.core.somaxconn")).unwrap_err();
        assert_eq!(e.kind(), "netns_unverified");
        assert_eq!(
            fs.write(target(&mut ts, "net.core.somaxconn"), "4096")
                .unwrap_err()
                .kind(),
            "netns_unverified"
        );
        assert_eq!(tree.get("proc/sys/net/core/somaxconn"), "128\n");
        assert!(fs.read(target(&mut ts, "vm.overcommit_memory")).is_ok());
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
