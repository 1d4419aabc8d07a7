//! The scan over a fake proc root: pid directories of plain files, and `ns/net` links to the
//! test's own namespace (so the real `somaxconn` file of the fake tree and a real sock_diag
//! socket are opened without privilege).

use super::*;

const UID: &str = "1f2e3d4c-5b6a-4789-8abc-def012345678";

struct Fake {
    dir: tempfile::TempDir,
}

impl Fake {
    fn new(somaxconn: &str, overcommit: &str, thp: &str) -> Fake {
        let f = Fake {
            dir: tempfile::tempdir().unwrap(),
        };
        f.write("proc/sys/net/core/somaxconn", &format!("{somaxconn}\n"));
        f.write("proc/sys/vm/overcommit_memory", &format!("{overcommit}\n"));
        f.write(
            "sys/kernel/mm/transparent_hugepage/enabled",
            &format!("{thp}\n"),
        );
        f.write(
            "sys/kernel/mm/transparent_hugepage/hugepages-64kB/enabled",
            "always inherit madvise [never]\n",
        );
        std::fs::create_dir_all(f.path("logs").join(format!("cache_redis-0_{UID}"))).unwrap();
        f.link("proc/1/ns/net", "/proc/thread-self/ns/net");
        f
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn write(&self, rel: &str, text: &str) {
        let p = self.path(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    fn link(&self, rel: &str, to: &str) {
        let p = self.path(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::os::unix::fs::symlink(to, p).unwrap();
    }

    /// A process: comm, cmdline (NUL-separated args), cgroup, THP_enabled.
    fn process(&self, pid: u32, comm: &str, args: &[&str], cgroup: &str, thp_enabled: u8) {
        let d = format!("proc/{pid}");
        self.write(&format!("{d}/comm"), &format!("{comm}\n"));
        let mut raw = args.join("\0");
        raw.push('\0');
        self.write(&format!("{d}/cmdline"), &raw);
        self.write(&format!("{d}/cgroup"), cgroup);
        self.write(
            &format!("{d}/status"),
            &format!("Name:\t{comm}\nTHP_enabled:\t{thp_enabled}\n"),
        );
        self.write(
            &format!("{d}/smaps_rollup"),
            "Rss:  100 kB\nAnonHugePages:   2048 kB\nShmemPmdMapped:  0 kB\nFilePmdMapped:  0 kB\n",
        );
        self.link(&format!("{d}/ns/net"), "/proc/thread-self/ns/net");
        self.link(&format!("{d}/fd/0"), "/dev/null");
        self.link(&format!("{d}/fd/6"), "socket:[1]");
    }

    fn scanner(&self, names: &[&str]) -> Scanner {
        Scanner::new(ScanOptions {
            proc_root: self.path("proc"),
            sys_root: self.path("sys"),
            pod_logs_dir: self.path("logs"),
            redis: RedisProcesses {
                names: names.iter().map(|s| s.to_string()).collect(),
                gate: false,
            },
            host_netns: Default::default(),
        })
    }
}

#[test]
fn redis_processes_their_owners_and_verdicts() {
    let f = Fake::new("128", "1", "always madvise [never]");
    f.process(
        100,
        "redis-server",
        &["redis-server 0.0.0.0:6379"],
        &format!(
            "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-ab.scope\n",
            UID.replace('-', "_")
        ),
        1,
    );
    f.process(
        200,
        "valkey-server",
        &[
            "/usr/bin/valkey-server",
            "--port",
            "0",
            "--tcp-backlog",
            "100",
        ],
        "0::/system.slice/valkey.service\n",
        0,
    );
    f.process(300, "bash", &["bash"], "0::/\n", 1);
    f.process(400, "keydb-server", &["keydb-server"], "0::/\n", 1);
    let scan = f.scanner(&["redis-server", "valkey-server"]).scan();
    assert_eq!(scan.proc_root, f.path("proc"));
    let pids: Vec<u32> = scan.processes.iter().map(|p| p.pid).collect();
    assert_eq!(pids, [100, 200]);

    let redis = &scan.processes[0];
    assert_eq!(redis.owner_label, "pod:cache/redis-0");
    assert_eq!(redis.program, "redis-server");
    assert_eq!(redis.overcommit_memory, Some(1));
    assert_eq!(redis.checks["overcommit"], Verdict::InSync);
    assert_eq!(redis.checks["thp"], Verdict::InSync);
    assert_eq!(redis.thp.anon_hugepages_bytes, Some(2048 * 1024));
    // The test's own namespace is PID 1's under this root: host networking, at 128.
    assert_eq!(redis.netns.kind, NetnsKind::HostNetwork);
    assert_eq!(redis.netns.somaxconn, Some(128));
    assert_eq!(
        (redis.tcp_backlog.value, redis.tcp_backlog.source),
        (511, BacklogSource::AssumedDefault)
    );
    assert_eq!(redis.checks["somaxconn"], Verdict::OutOfSync);
    assert!(
        redis
            .why("somaxconn")
            .is_some_and(|w| w.contains("is 128, below tcp-backlog 511")),
        "{:?}",
        redis.why_not
    );
    // No real listener has the fake socket's inode.
    assert_eq!(redis.checks["backlog"], Verdict::NotApplicable);
    assert_eq!(redis.in_sync, Some(false));

    let valkey = &scan.processes[1];
    assert_eq!(valkey.owner_label, "unit:valkey.service");
    assert_eq!(
        (valkey.tcp_backlog.value, valkey.tcp_backlog.source),
        (100, BacklogSource::Cmdline)
    );
    assert_eq!(valkey.checks["somaxconn"], Verdict::InSync);
    assert_eq!(valkey.in_sync, Some(true), "{:?}", valkey.why_not);
    assert_eq!(
        scan.out_of_sync(),
        [("pod:cache/redis-0".to_string(), "somaxconn")]
    );

    // The profile names another server.
    let scan = f.scanner(&["keydb-server"]).scan();
    assert_eq!(scan.processes.len(), 1);
    assert_eq!(scan.processes[0].owner_label, "pid:400");
}

#[test]
fn thp_always_out_of_sync_unless_the_process_opted_out() {
    let f = Fake::new("4096", "0", "[always] madvise never");
    f.process(10, "redis-server", &["redis-server *:6379"], "0::/\n", 1);
    f.process(11, "redis-server", &["redis-server *:6380"], "0::/\n", 0);
    let scan = f.scanner(&["redis-server"]).scan();
    let [a, b] = &scan.processes[..] else {
        panic!("{scan:?}")
    };
    assert_eq!(a.checks["thp"], Verdict::OutOfSync);
    assert!(a.why("thp").is_some_and(|w| w.contains("enabled=always")));
    assert_eq!(b.checks["thp"], Verdict::InSync);
    for p in [a, b] {
        assert_eq!(p.checks["overcommit"], Verdict::OutOfSync);
        assert_eq!(p.checks["somaxconn"], Verdict::InSync);
    }
    // Two servers of one owner get distinct labels.
    assert_eq!(
        (a.owner_label.as_str(), b.owner_label.as_str()),
        ("pid:10", "pid:11")
    );
}

#[test]
fn unreadable_namespace_is_unknown_with_the_reason() {
    let f = Fake::new("4096", "1", "never");
    f.process(10, "redis-server", &["redis-server *:6379"], "0::/\n", 1);
    std::fs::remove_file(f.path("proc/10/ns/net")).unwrap();
    std::fs::remove_dir_all(f.path("proc/10/fd")).unwrap();
    let scan = f.scanner(&["redis-server"]).scan();
    let p = &scan.processes[0];
    assert_eq!(p.netns.kind, NetnsKind::Unknown);
    assert_eq!(p.checks["somaxconn"], Verdict::Unknown);
    assert_eq!(p.checks["backlog"], Verdict::Unknown);
    assert_eq!(p.in_sync, None);
    assert!(p.why("somaxconn").is_some_and(|w| w.contains("ns/net")));
}

#[test]
fn the_host_is_seen_where_kthreadd_is_pid_2() {
    let d = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    assert!(!sees_host(d.path()), "no pid 2");
    std::fs::create_dir_all(d.path().join("2")).unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(d.path().join("2/comm"), "pause\n").unwrap_or_else(|e| panic!("{e}"));
    assert!(!sees_host(d.path()), "a container's pid 2");
    std::fs::write(d.path().join("2/comm"), "kthreadd\n").unwrap_or_else(|e| panic!("{e}"));
    assert!(sees_host(d.path()));
}
