//! The inotify and fanotify knob watches on the real kernel (as root), without touching a
//! global knob: `net.core.somaxconn` of a network namespace each test creates, and the sysfs
//! attribute `tx_queue_len` of a veth in it (kernfs, the write path of the THP files).
//!
//! A [`Netns`] is a thread that unshared a network and a mount namespace, made its mounts
//! private and mounted that network namespace's sysfs on `/sys`; the watches are set up and
//! the writes made from it or from its children (who inherit both namespaces). The namespaces
//! end with the thread, on every path: nothing is left behind even when a test is killed.
//!
//! `write_paths_*` prove which system calls the watches see, and assert the table, so that a
//! kernel that changes it shows up here.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc;
use std::thread::JoinHandle;

use redis_node_tuner::writers::fanotify::{self, KnobFanotify};
use redis_node_tuner::writers::inotify::KnobInotify;

const SOMAXCONN: &str = "/proc/sys/net/core/somaxconn";
/// Another per-netns sysctl, the source of a same-filesystem `copy_file_range`.
const DGRAM_QLEN: &str = "/proc/sys/net/unix/max_dgram_qlen";
const DEV: &str = "rntev0";
const PEER: &str = "rntev1";
/// No process has this pid (`pid_max` is at most 2^22): nothing is filtered as the agent's.
const NOBODY: i32 = i32::MAX;
const KNOB: usize = 0;

fn txq(dev: &str) -> PathBuf {
    PathBuf::from(format!("/sys/class/net/{dev}/tx_queue_len"))
}

type Job = Box<dyn FnOnce() + Send>;

/// A thread in a network and mount namespace of its own, with that network namespace's sysfs
/// on `/sys` and a veth pair `rntev0`/`rntev1`.
struct Netns {
    jobs: Option<mpsc::Sender<Job>>,
    thread: Option<JoinHandle<()>>,
}

impl Netns {
    fn new() -> Netns {
        let (jobs, rx) = mpsc::channel::<Job>();
        let (ready_tx, ready) = mpsc::channel::<Result<(), String>>();
        let thread = std::thread::spawn(move || {
            let r = enter_new_namespaces();
            let ok = r.is_ok();
            let _ = ready_tx.send(r);
            if ok {
                for job in rx {
                    job();
                }
            }
        });
        let ns = Netns {
            jobs: Some(jobs),
            thread: Some(thread),
        };
        match ready.recv() {
            Ok(Ok(())) => ns,
            Ok(Err(e)) => panic!("setting up the test namespaces: {e}"),
            Err(_) => panic!("the namespace thread died"),
        }
    }

    /// Runs `f` on the namespace's thread.
    fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let (tx, rx) = mpsc::channel();
        let job: Job = Box::new(move || {
            let _ = tx.send(f());
        });
        self.jobs
            .as_ref()
            .and_then(|j| j.send(job).ok())
            .expect("the namespace thread takes jobs");
        rx.recv()
            .expect("the job ran (a panic is on the namespace thread)")
    }

    /// `sh -c script` in the namespaces; the child's pid.
    fn sh(&self, script: &str) -> i32 {
        let script = script.to_string();
        self.run(move || {
            let mut c = Command::new("sh").arg("-c").arg(&script).spawn().unwrap();
            let pid = i32::try_from(c.id()).unwrap();
            let st = c.wait().unwrap();
            assert!(st.success(), "{script}: {st}");
            pid
        })
    }

    fn read(&self, path: &Path) -> String {
        let path = path.to_path_buf();
        self.run(move || std::fs::read_to_string(&path).unwrap().trim().to_string())
    }

    fn inotify(&self, path: &Path) -> KnobInotify {
        let path = path.to_path_buf();
        self.run(move || {
            let (w, failed) = KnobInotify::with_files([(KNOB, path)]).unwrap();
            assert!(failed.is_empty(), "{failed:?}");
            w
        })
    }

    fn fanotify(&self, path: &Path, own_pid: i32) -> KnobFanotify {
        let path = path.to_path_buf();
        self.run(move || {
            let (g, failed) = KnobFanotify::with_files(own_pid, [(KNOB, path)]).unwrap();
            assert!(failed.is_empty(), "{failed:?}");
            g
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        self.jobs.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn enter_new_namespaces() -> Result<(), String> {
    use nix::mount::{MsFlags, mount};
    use nix::sched::{CloneFlags, unshare};
    unshare(CloneFlags::CLONE_NEWNET | CloneFlags::CLONE_NEWNS)
        .map_err(|e| format!("unshare: {e}"))?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(|e| format!("making / private: {e}"))?;
    mount(
        Some("sysfs"),
        "/sys",
        Some("sysfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .map_err(|e| format!("mounting sysfs: {e}"))?;
    let out = Command::new("ip")
        .args(["link", "add", DEV, "type", "veth", "peer", "name", PEER])
        .output()
        .map_err(|e| format!("ip: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "ip link add: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(())
}

/// Everything queued now (the kernel queues a write's event before the write returns).
fn inotify_now(w: &mut KnobInotify) -> Vec<usize> {
    let mut out = Vec::new();
    w.drain(&mut out).unwrap();
    out
}

fn fanotify_now(g: &mut KnobFanotify) -> Vec<(usize, i32)> {
    let mut out = Vec::new();
    g.drain(&mut out).unwrap();
    out
}

#[test]
fn somaxconn_of_a_netns_fires_for_its_writes_only() {
    let a = Netns::new();
    let b = Netns::new();
    let path = Path::new(SOMAXCONN);
    let mut w = a.inotify(path);
    let mut g = a.fanotify(path, NOBODY);

    // A write in another namespace: its own file, not this one.
    b.sh(&format!("echo 1111 > {SOMAXCONN}"));
    assert_eq!(b.read(path), "1111");
    assert_eq!(inotify_now(&mut w), Vec::<usize>::new());
    assert_eq!(fanotify_now(&mut g), vec![]);

    let pid = a.sh(&format!("echo 2222 > {SOMAXCONN}"));
    assert_eq!(a.read(path), "2222");
    assert_eq!(inotify_now(&mut w), vec![KNOB]);
    assert_eq!(fanotify_now(&mut g), vec![(KNOB, pid)]);

    // A refused write changes nothing and raises nothing...
    let refused = a.run(|| refused_write(SOMAXCONN, false));
    assert_eq!(refused, Some(nix::errno::Errno::EINVAL as i32));
    assert_eq!(a.read(path), "2222");
    assert_eq!(inotify_now(&mut w), Vec::<usize>::new());
    assert_eq!(fanotify_now(&mut g), vec![]);
    // ...but an open with O_TRUNC (a shell's `>`) is a modification of its own, write or not.
    let refused = a.run(|| refused_write(SOMAXCONN, true));
    assert_eq!(refused, Some(nix::errno::Errno::EINVAL as i32));
    assert_eq!(a.read(path), "2222");
    assert_eq!(inotify_now(&mut w), vec![KNOB]);
    // fanotify drops it: a truncation is raised without a path, and a group that reports
    // descriptors (not file identifiers) has nothing to open.
    assert_eq!(fanotify_now(&mut g), vec![]);
}

/// The errno of writing a word the kernel refuses.
fn refused_write(path: &str, truncate: bool) -> Option<i32> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .truncate(truncate)
        .open(path)
        .unwrap();
    f.write_all(b"not a number")
        .err()
        .and_then(|e| e.raw_os_error())
}

#[test]
fn a_sysfs_attribute_of_a_netns_device_fires_for_its_writes_only() {
    let a = Netns::new();
    let b = Netns::new();
    let path = txq(DEV);
    let mut w = a.inotify(&path);
    let mut g = a.fanotify(&path, NOBODY);

    // The same device name in another namespace is another kernfs node.
    b.sh(&format!("echo 1500 > {}", path.display()));
    assert_eq!(inotify_now(&mut w), Vec::<usize>::new());
    assert_eq!(fanotify_now(&mut g), vec![]);

    let pid = a.sh(&format!("echo 1600 > {}", path.display()));
    assert_eq!(a.read(&path), "1600");
    assert_eq!(inotify_now(&mut w), vec![KNOB]);
    assert_eq!(fanotify_now(&mut g), vec![(KNOB, pid)]);

    // The agent's own write (its pid passed in) is not reported by fanotify.
    let own = i32::try_from(std::process::id()).unwrap();
    let mut mine = a.fanotify(&path, own);
    let p = path.clone();
    a.run(move || std::fs::write(p, "1700").unwrap());
    let mut out = Vec::new();
    let d = mine.drain(&mut out).unwrap();
    assert_eq!((out, d.own), (vec![], 1));
    assert_eq!(fanotify_now(&mut g), vec![(KNOB, own)]);
    assert_eq!(inotify_now(&mut w), vec![KNOB]);
}

#[test]
fn a_sysfs_watch_ends_with_its_namespace() {
    let a = Netns::new();
    let mut w = a.inotify(&txq(DEV));
    let mut p = a.inotify(Path::new(SOMAXCONN));
    drop(a);
    // The namespace's sysfs is unmounted with its mount namespace: IN_UNMOUNT, IN_IGNORED.
    let mut gone = Vec::new();
    let mut out = Vec::new();
    for _ in 0..100 {
        gone.extend(w.drain(&mut out).unwrap().gone);
        if !gone.is_empty() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(gone, vec![KNOB]);
    assert_eq!(out, vec![KNOB]);
    // procfs stays mounted: its file of a namespace that is gone raises nothing at all (the
    // caller learns it from a failed read). Checked without waiting: nothing is queued.
    assert_eq!(p.drain(&mut out).unwrap().gone, Vec::<usize>::new());
}

/// Writes `value` to `path` by `method`; prints `ok <bytes>` or `err <errno name>`.
const WRITER: &str = r#"
import ctypes, errno, os, sys, tempfile
method, path, value, source = sys.argv[1], sys.argv[2], sys.argv[3].encode(), sys.argv[4]
def tmp():
    f = tempfile.TemporaryFile()
    f.write(value); f.flush()
    return f
try:
    if method == "mmap":
        libc = ctypes.CDLL(None, use_errno=True)
        libc.mmap.restype = ctypes.c_void_p
        libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
        fd = os.open(path, os.O_RDWR)
        p = libc.mmap(None, 4096, 3, 1, fd, 0)  # PROT_READ|PROT_WRITE, MAP_SHARED
        if p is None or p == ctypes.c_void_p(-1).value:
            raise OSError(ctypes.get_errno(), "mmap")
        ctypes.memmove(p, value, len(value))
        n = len(value)
    else:
        fd = os.open(path, os.O_WRONLY)
        if method == "write":
            n = os.write(fd, value)
        elif method == "pwrite":
            n = os.pwrite(fd, value, 0)
        elif method == "writev":
            n = os.writev(fd, [value[:1], value[1:]])
        elif method == "sendfile":
            f = tmp(); n = os.sendfile(fd, f.fileno(), 0, len(value))
        elif method == "splice":
            r, w = os.pipe(); os.write(w, value); n = os.splice(r, fd, len(value))
        elif method == "copy_file_range":
            f = tmp(); n = os.copy_file_range(f.fileno(), fd, len(value), 0)
        elif method == "copy_file_range_same_fs":
            s = os.open(source, os.O_RDONLY); n = os.copy_file_range(s, fd, 64, 0)
        else:
            raise SystemExit("unknown method " + method)
    print("ok", n)
except OSError as e:
    print("err", errno.errorcode.get(e.errno, str(e.errno)))
"#;

/// Writes through io_uring (`IORING_OP_WRITE` or `IORING_OP_WRITEV`) from the calling thread.
fn io_uring_write(path: &Path, value: &[u8], vectored: bool) -> String {
    use io_uring::{IoUring, opcode, types};
    use std::os::fd::AsRawFd;
    let file = match std::fs::OpenOptions::new().write(true).open(path) {
        Ok(f) => f,
        Err(e) => return format!("err open {e}"),
    };
    let mut ring = match IoUring::new(2) {
        Ok(r) => r,
        Err(e) => return format!("err io_uring_setup {e}"),
    };
    let iov = [libc_iovec(value)];
    let fd = types::Fd(file.as_raw_fd());
    let sqe = if vectored {
        opcode::Writev::new(fd, iov.as_ptr().cast(), 1)
            .offset(0)
            .build()
    } else {
        opcode::Write::new(fd, value.as_ptr(), u32::try_from(value.len()).unwrap())
            .offset(0)
            .build()
    };
    // SAFETY: `value`, `iov` and `file` outlive the operation: it completes (submit_and_wait)
    // before they are dropped.
    unsafe { ring.submission().push(&sqe) }.expect("a free submission entry");
    ring.submit_and_wait(1).expect("io_uring_enter");
    let res = ring.completion().next().expect("a completion").result();
    if res >= 0 {
        format!("ok {res}")
    } else {
        format!("err {}", nix::errno::Errno::from_raw(-res))
            .split(':')
            .next()
            .unwrap_or_default()
            .to_string()
    }
}

/// `struct iovec` as io_uring reads it: base pointer, length.
#[repr(C)]
struct Iovec {
    base: *const u8,
    len: usize,
}

fn libc_iovec(v: &[u8]) -> Iovec {
    Iovec {
        base: v.as_ptr(),
        len: v.len(),
    }
}

/// One row of the table: how the write ended, whether it changed the value, what fired.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Row {
    method: &'static str,
    result: String,
    applied: bool,
    inotify: bool,
    fanotify: bool,
}

const METHODS: [&str; 10] = [
    "write",
    "pwrite",
    "writev",
    "sendfile",
    "splice",
    "copy_file_range",
    "copy_file_range_same_fs",
    "io_uring_write",
    "io_uring_writev",
    "mmap",
];

/// Runs every method against `target` in a fresh namespace, each writing its own value
/// (from `base` up); `source`, a file on the same filesystem, is set to that value before,
/// for the same-filesystem copy.
fn measure(target: &Path, source: &Path, base: u32) -> Vec<Row> {
    let ns = Netns::new();
    let mut w = ns.inotify(target);
    let mut g = ns.fanotify(target, NOBODY);
    let mut rows = Vec::new();
    for (i, method) in METHODS.iter().enumerate() {
        let value = (base + u32::try_from(i).unwrap() * 2).to_string();
        let before = (base + 1 + u32::try_from(i).unwrap() * 2).to_string();
        // A plain write first: it must be seen (the watches work), and the value is known.
        let pid = ns.sh(&format!("echo {before} > {}", target.display()));
        assert_eq!(inotify_now(&mut w), vec![KNOB], "{method}: the plain write");
        assert_eq!(
            fanotify_now(&mut g),
            vec![(KNOB, pid)],
            "{method}: the plain write"
        );
        ns.sh(&format!("echo {value} > {}", source.display()));

        let (result, writer) = if method.starts_with("io_uring") {
            let (t, v) = (target.to_path_buf(), value.clone());
            let vectored = *method == "io_uring_writev";
            let r = ns.run(move || io_uring_write(&t, v.as_bytes(), vectored));
            (r, i32::try_from(std::process::id()).unwrap())
        } else {
            let (t, s, v, m) = (
                target.to_path_buf(),
                source.to_path_buf(),
                value.clone(),
                *method,
            );
            ns.run(move || {
                let mut c = Command::new("python3")
                    .args(["-c", WRITER, m])
                    .arg(&t)
                    .arg(&v)
                    .arg(&s)
                    .stdout(std::process::Stdio::piped())
                    .spawn()
                    .expect("python3");
                let pid = i32::try_from(c.id()).unwrap();
                let mut out = String::new();
                std::io::Read::read_to_string(c.stdout.as_mut().unwrap(), &mut out).unwrap();
                assert!(c.wait().unwrap().success(), "{m}: {out}");
                (out.trim().to_string(), pid)
            })
        };
        let applied = ns.read(target) == value;
        let ino = inotify_now(&mut w);
        let fan = fanotify_now(&mut g);
        for (_, pid) in &fan {
            assert_eq!(*pid, writer, "{method}: fanotify names the writer");
        }
        rows.push(Row {
            method,
            result,
            applied,
            inotify: ino == vec![KNOB],
            fanotify: fan == vec![(KNOB, writer)],
        });
    }
    rows
}

fn table(title: &str, rows: &[Row]) -> String {
    let mut s = format!("{title}\n| path | result | value changed | inotify | fanotify |\n");
    for r in rows {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} |",
            r.method, r.result, r.applied, r.inotify, r.fanotify
        );
    }
    s
}

fn expect(rows: &[(&'static str, &str, bool, bool, bool)]) -> Vec<Row> {
    rows.iter()
        .map(|&(method, result, applied, inotify, fanotify)| Row {
            method,
            result: result.to_string(),
            applied,
            inotify,
            fanotify,
        })
        .collect()
}

/// Measured on Linux 6.18.
#[test]
fn write_paths_on_procfs() {
    let rows = measure(Path::new(SOMAXCONN), Path::new(DGRAM_QLEN), 3000);
    let t = table("procfs /proc/sys/net/core/somaxconn", &rows);
    println!("{t}");
    assert_eq!(
        rows,
        expect(&[
            ("write", "ok 4", true, true, true),
            ("pwrite", "ok 4", true, true, true),
            ("writev", "ok 4", true, true, true),
            ("sendfile", "ok 4", true, true, true),
            ("splice", "ok 4", true, true, true),
            ("copy_file_range", "err EXDEV", false, false, false),
            // procfs files are 0 bytes long to the VFS: nothing to copy.
            ("copy_file_range_same_fs", "ok 0", false, false, false),
            ("io_uring_write", "ok 4", true, true, true),
            ("io_uring_writev", "ok 4", true, true, true),
            ("mmap", "err ENODEV", false, false, false),
        ]),
        "{t}"
    );
}

/// Measured on Linux 6.18.
#[test]
fn write_paths_on_sysfs() {
    let rows = measure(&txq(DEV), &txq(PEER), 5000);
    let t = table("sysfs /sys/class/net/<veth>/tx_queue_len", &rows);
    println!("{t}");
    assert_eq!(
        rows,
        expect(&[
            ("write", "ok 4", true, true, true),
            ("pwrite", "ok 4", true, true, true),
            ("writev", "ok 4", true, true, true),
            ("sendfile", "ok 4", true, true, true),
            ("splice", "ok 4", true, true, true),
            ("copy_file_range", "err EXDEV", false, false, false),
            // sysfs files are 4096 bytes long to the VFS (procfs ones 0): the copy goes
            // through splice, whole line included.
            ("copy_file_range_same_fs", "ok 5", true, true, true),
            ("io_uring_write", "ok 4", true, true, true),
            ("io_uring_writev", "ok 4", true, true, true),
            ("mmap", "err ENODEV", false, false, false),
        ]),
        "{t}"
    );
}

/// Without `CAP_SYS_ADMIN` fanotify is a permission error (the caller's
/// `reason="permission"`), and inotify still works. The test runs itself again under
/// `setpriv` with the capability out of the bounding set.
#[test]
fn without_cap_sys_admin_fanotify_is_a_permission_error_and_inotify_works() {
    const CHILD: &str = "RNT_KNOB_EVENTS_NO_SYS_ADMIN";
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("knob");
    std::fs::write(&file, "0").unwrap();
    if std::env::var_os(CHILD).is_some() {
        match KnobFanotify::new(NOBODY) {
            Err(fanotify::Error::Permission(_)) => {}
            other => panic!("fanotify without CAP_SYS_ADMIN: {other:?}"),
        }
        let (mut w, failed) = KnobInotify::with_files([(KNOB, file.clone())]).unwrap();
        assert!(failed.is_empty());
        std::fs::write(&file, "1").unwrap();
        assert_eq!(inotify_now(&mut w), vec![KNOB]);
        println!("child: permission error, inotify fired");
        return;
    }
    let out = Command::new("setpriv")
        .args(["--bounding-set=-sys_admin", "--inh-caps=-sys_admin", "--"])
        .arg(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "without_cap_sys_admin_fanotify_is_a_permission_error_and_inotify_works",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD, "1")
        .output()
        .expect("setpriv");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("child: permission error, inotify fired"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A watch is on one inode, and procfs makes an inode per mount: a write through another
/// procfs instance (a container's own `/proc`, `sysctl -w` in a privileged pod) changes the
/// same knob and raises nothing here. sysfs shares its superblock within a network namespace,
/// so a second sysfs mount there is seen. (Measured on THP with the value it had: a sysfs of
/// another network namespace is another superblock, and not seen either.) README, "Writer
/// watch": the sysctl program or the poll catches those writes.
#[test]
fn a_write_through_another_procfs_instance_is_not_seen_a_second_sysfs_mount_is() {
    let a = Netns::new();
    let path = Path::new(SOMAXCONN);
    let mut w = a.inotify(path);
    let mut g = a.fanotify(path, NOBODY);
    a.sh(
        "d=$(mktemp -d) && unshare -m sh -c \"mount -t proc proc $d && echo 3333 > $d/sys/net/core/somaxconn\"; rmdir $d",
    );
    assert_eq!(
        a.read(path),
        "3333",
        "the write through the second procfs applied"
    );
    assert_eq!(inotify_now(&mut w), Vec::<usize>::new());
    assert_eq!(fanotify_now(&mut g), vec![]);

    let txq = txq(DEV);
    let mut w = a.inotify(&txq);
    let mut g = a.fanotify(&txq, NOBODY);
    a.sh(&format!(
        "d=$(mktemp -d) && unshare -m sh -c \"mount -t sysfs sysfs $d && echo 777 > $d/class/net/{DEV}/tx_queue_len\"; rmdir $d"
    ));
    assert_eq!(a.read(&txq), "777");
    assert_eq!(inotify_now(&mut w), vec![KNOB]);
    assert_eq!(fanotify_now(&mut g).len(), 1);
}
