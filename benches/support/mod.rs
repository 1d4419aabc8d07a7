//! Shared by the benches: the knob files of the default profile found independently of the
//! agent's resolver, the raw pread floor, and small helpers.
#![allow(dead_code)]

use std::fs::File;
use std::hint::black_box;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

pub fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

pub fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

pub fn roots() -> (PathBuf, PathBuf) {
    (
        PathBuf::from(env_or("BENCH_PROC_ROOT", "/proc")),
        PathBuf::from(env_or("BENCH_SYS_ROOT", "/sys")),
    )
}

/// The knob files of the default profile, found the way the issue describes them
/// (independently of the agent's resolver, so a resolver change shows up as a count mismatch).
pub fn knob_files(proc_root: &Path, sys_root: &Path) -> Vec<PathBuf> {
    let thp = sys_root.join("kernel/mm/transparent_hugepage");
    let mut files = vec![
        proc_root.join("sys/vm/overcommit_memory"),
        proc_root.join("sys/net/core/somaxconn"),
        thp.join("enabled"),
        thp.join("defrag"),
    ];
    let mut sizes: Vec<(u64, PathBuf)> = std::fs::read_dir(&thp)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| {
                    let name = e.file_name().into_string().ok()?;
                    let kb: u64 = name
                        .strip_prefix("hugepages-")?
                        .strip_suffix("kB")?
                        .parse()
                        .ok()?;
                    let f = e.path().join("enabled");
                    f.is_file().then_some((kb, f))
                })
                .collect()
        })
        .unwrap_or_default();
    sizes.sort();
    files.extend(sizes.into_iter().map(|(_, f)| f));
    files
}

#[inline(never)]
pub fn pread_kept(fds: &[File]) -> usize {
    let mut total = 0;
    let mut buf = [0u8; 512];
    for fd in fds {
        total += fd.read_at(&mut buf, 0).expect("pread");
        black_box(&buf);
    }
    total
}

pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Whether this run measures (`cargo bench` passes `--bench`), as criterion decides; `cargo
/// test --benches` runs benches in test mode (no `--bench`), as do `--test`, `--list` and
/// `--profile-time`.
pub fn benching() -> bool {
    let args: Vec<String> = std::env::args().collect();
    let has = |flag: &str| {
        args.iter()
            .any(|a| a == flag || a.starts_with(&format!("{flag}=")))
    };
    has("--bench") && !has("--test") && !has("--list") && !has("--profile-time")
}
