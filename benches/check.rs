//! Cost of one observation pass of the default profile on the REAL host (read-only).
//!
//! Side by side, in the same run, over exactly the same files:
//!
//! * `observe/agent_observe` — one `Agent::observe()` (pread on kept descriptors, parse,
//!   evaluate, build the report). Descriptors are opened on the first call (warm-up), so this
//!   is the steady state of the daemon's loop.
//! * `observe/open_read_close` — the raw floor the issue compares against: for every file,
//!   `File::open` + one `read` into a stack buffer + close. Nothing is parsed.
//! * `observe/std_fs_read` — the same with `std::fs::read` (open + statx + read until EOF +
//!   close), the idiomatic "just read the file".
//! * `observe/pread_kept_fds` — the raw floor of the agent's own I/O strategy: one `pread` per
//!   file on descriptors opened once. Nothing is parsed.
//! * `observe/agent_new_observe` — a cold pass: `Agent::new` (resolve, discover per-size THP
//!   directories) + the first `observe()` (opens every descriptor). What `check` pays once.
//!
//! After criterion, when run as `cargo bench`, an interleaved A/B/A/B loop measures the
//! agent and the open/read/close floor again in alternating batches (so background load hits
//! both alike) and prints one parseable line:
//!
//! `BENCH_CHECK files=N agent_ns=.. open_read_close_ns=.. pread_ns=.. ratio=.. target=1.5 ok=..`
//!
//! Nothing is ever written: `observe()` writes nothing, and the floors only open read-only.
//! Environment: `BENCH_PROC_ROOT` / `BENCH_SYS_ROOT` (default /proc, /sys),
//! `BENCH_MEASURE_SECS` (default 3), `BENCH_WARMUP_SECS` (default 1),
//! `BENCH_INTERLEAVE_ROUNDS` (default 41; 0 skips the interleaved summary).

use std::fs::File;
use std::hint::black_box;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group};

mod support;
use redis_node_tuner::agent::{Agent, JournalSlot};
use redis_node_tuner::kernel::HostFs;
use redis_node_tuner::profile::Profile;
use support::{env_u64, knob_files, median, pread_kept, roots};

fn new_agent(proc_root: &Path, sys_root: &Path, profile: &Profile) -> Agent {
    Agent::new(HostFs::new(proc_root, sys_root), profile, JournalSlot::None)
}

/// Checks that the agent observes exactly `files.len()` knobs and that all of them read.
fn sanity(agent: &mut Agent, files: &[PathBuf]) {
    let report = agent.observe();
    assert_eq!(
        report.settings.len(),
        files.len(),
        "the agent resolved {} knobs but the floor reads {} files: {:?} vs {:?}",
        report.settings.len(),
        files.len(),
        report.settings.iter().map(|k| &k.name).collect::<Vec<_>>(),
        files
    );
    for k in &report.settings {
        assert!(
            k.actual.is_some() && k.error.is_none(),
            "knob {} did not read: {:?}",
            k.name,
            k.error
        );
    }
    for f in files {
        File::open(f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
    }
}

#[inline(never)]
fn open_read_close(files: &[PathBuf]) -> usize {
    let mut total = 0;
    let mut buf = [0u8; 512];
    for f in files {
        let mut file = File::open(f).expect("open");
        total += file.read(&mut buf).expect("read");
        black_box(&buf);
    }
    total
}

#[inline(never)]
fn std_fs_read(files: &[PathBuf]) -> usize {
    files
        .iter()
        .map(|f| std::fs::read(f).expect("read").len())
        .sum()
}

/// The agent and the floors over the same files, checked to read the same thing.
struct Fixture {
    proc_root: PathBuf,
    sys_root: PathBuf,
    profile: Profile,
    files: Vec<PathBuf>,
    agent: Agent,
    fds: Vec<File>,
}

fn fixture() -> Fixture {
    let (proc_root, sys_root) = roots();
    let profile = Profile::default();
    let files = knob_files(&proc_root, &sys_root);
    let mut agent = new_agent(&proc_root, &sys_root, &profile);
    sanity(&mut agent, &files);
    let fds = files.iter().map(|f| File::open(f).expect("open")).collect();
    Fixture {
        proc_root,
        sys_root,
        profile,
        files,
        agent,
        fds,
    }
}

fn bench_observe(c: &mut Criterion) {
    let Fixture {
        proc_root,
        sys_root,
        profile,
        files,
        mut agent,
        fds,
    } = fixture();

    let mut g = c.benchmark_group("observe");
    g.bench_function("agent_observe", |b| b.iter(|| black_box(agent.observe())));
    g.bench_function("open_read_close", |b| {
        b.iter(|| black_box(open_read_close(&files)))
    });
    g.bench_function("std_fs_read", |b| b.iter(|| black_box(std_fs_read(&files))));
    g.bench_function("pread_kept_fds", |b| b.iter(|| black_box(pread_kept(&fds))));
    g.bench_function("agent_new_observe", |b| {
        b.iter(|| {
            let mut a = new_agent(&proc_root, &sys_root, &profile);
            black_box(a.observe())
        })
    });
    g.finish();
}

/// Per-call nanoseconds of `f` over a batch of `n` calls.
fn batch<F: FnMut()>(n: u32, mut f: F) -> f64 {
    let t = Instant::now();
    for _ in 0..n {
        f();
    }
    t.elapsed().as_nanos() as f64 / f64::from(n)
}

/// Alternating batches of the agent and the floors; medians of the per-batch means.
fn interleaved(rounds: u64) {
    let Fixture {
        files,
        mut agent,
        fds,
        ..
    } = fixture();

    // Size a batch at ~20 ms of the floor.
    let probe = batch(200, || {
        black_box(open_read_close(&files));
    });
    let n = ((20_000_000.0 / probe.max(1.0)) as u32).clamp(100, 200_000);
    let (mut a, mut f, mut p) = (vec![], vec![], vec![]);
    let deadline = Instant::now() + Duration::from_secs(60);
    for i in 0..rounds {
        // Alternate the order too, so neither side always runs first.
        if i % 2 == 0 {
            a.push(batch(n, || drop(black_box(agent.observe()))));
            f.push(batch(n, || {
                black_box(open_read_close(&files));
            }));
        } else {
            f.push(batch(n, || {
                black_box(open_read_close(&files));
            }));
            a.push(batch(n, || drop(black_box(agent.observe()))));
        }
        p.push(batch(n, || {
            black_box(pread_kept(&fds));
        }));
        if Instant::now() > deadline {
            break;
        }
    }
    let (am, fm, pm) = (median(&mut a), median(&mut f), median(&mut p));
    let ratio = am / fm;
    println!(
        "BENCH_CHECK files={} rounds={} batch={} agent_ns={:.0} open_read_close_ns={:.0} pread_ns={:.0} \
         ratio={:.3} agent_over_pread={:.3} target=1.5 ok={}",
        files.len(),
        a.len(),
        n,
        am,
        fm,
        pm,
        ratio,
        am / pm,
        if ratio <= 1.5 { "yes" } else { "no" }
    );
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(env_u64("BENCH_WARMUP_SECS", 1)))
        .measurement_time(Duration::from_secs(env_u64("BENCH_MEASURE_SECS", 3)))
        .sample_size(50)
}

criterion_group! {
    name = benches;
    config = config();
    targets = bench_observe
}

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    // As criterion decides: `cargo bench` passes --bench; `cargo test --benches` does not
    // (test mode), nor do --test, --list or --profile-time measure.
    let benching = support::benching();
    let rounds = env_u64("BENCH_INTERLEAVE_ROUNDS", 41);
    if benching && rounds > 0 {
        interleaved(rounds);
    }
}
