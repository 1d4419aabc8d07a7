//! The daemon's real steady pass on the REAL host, like for like with its I/O floor.
//!
//! Once a second (the daemon's default cadence, so caches are as cold as the daemon finds
//! them), alternating which goes first, it times:
//!
//! * `pass` — what the daemon's enforce thread does each second: `Agent::reconcile` (with the
//!   steady-state shortcut) and the metrics of the pass;
//! * `full` — the same pass without the shortcut (`Agent::reconcile_uncached`): every knob
//!   read, parsed, evaluated and reported, as every pass was before;
//! * `floor` — the same knob files, one `pread` each on descriptors kept open: the syscalls a
//!   pass cannot avoid.
//!
//! The profile is the built-in one in audit mode (`mode: audit`): exactly the same files and
//! reads, and nothing is ever written, even on an untuned host.
//!
//! `cargo bench --bench steady` prints p50/p90 of each and one parseable line:
//! `BENCH_STEADY files=N passes=N pass_ns=.. full_ns=.. floor_ns=.. ratio=.. target=1.3 ok=..`
//! (`ratio` = pass p50 / floor p50). `BENCH_STEADY_PASSES` (default 60) sets the length. Run
//! by `cargo test` (no `--bench`), it makes three quick passes of each and measures nothing.

use std::fs::File;
use std::hint::black_box;
use std::time::{Duration, Instant};

use redis_node_tuner::agent::{Agent, JournalSlot};
use redis_node_tuner::kernel::HostFs;
use redis_node_tuner::metrics::Metrics;
use redis_node_tuner::profile::Profile;

mod support;
use support::{benching, env_u64, knob_files, pread_kept, roots};

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn main() {
    let measuring = benching();
    let passes = if measuring {
        env_u64("BENCH_STEADY_PASSES", 60).max(3)
    } else {
        3
    };
    let cadence = if measuring {
        Duration::from_secs(1)
    } else {
        Duration::from_millis(10)
    };
    let (proc_root, sys_root) = roots();
    let profile = Profile::from_yaml("mode: audit\n").expect("audit profile");
    let fs = || HostFs::new(&proc_root, &sys_root);
    let mut agent = Agent::new(fs(), &profile, JournalSlot::None);
    let mut full = Agent::new(fs(), &profile, JournalSlot::None);
    let metrics = Metrics::new();
    let files = knob_files(&proc_root, &sys_root);
    let fds: Vec<File> = files.iter().map(|f| File::open(f).expect("open")).collect();
    // Warm-up: descriptors opened, the first full report built.
    let (r, _) = agent.reconcile(Instant::now());
    assert_eq!(
        r.settings.len(),
        files.len(),
        "the agent resolved other knobs than the floor reads"
    );
    let _ = full.reconcile_uncached(Instant::now());
    black_box(pread_kept(&fds));

    let (mut pass, mut uncached, mut floor) = (vec![], vec![], vec![]);
    let mut last = None;
    for i in 0..passes {
        std::thread::sleep(cadence);
        let mut time_pass = || {
            let t = Instant::now();
            let (report, events) = agent.reconcile(t);
            if last
                .as_ref()
                .is_some_and(|l| std::sync::Arc::ptr_eq(l, &report))
            {
                metrics.observe_duration(t.elapsed());
            } else {
                metrics.observe(&report, &events, t.elapsed());
                last = Some(report);
            }
            t.elapsed().as_nanos() as f64
        };
        let mut time_full = || {
            let t = Instant::now();
            let (report, events) = full.reconcile_uncached(t);
            metrics.observe(&report, &events, t.elapsed());
            t.elapsed().as_nanos() as f64
        };
        let time_floor = || {
            let t = Instant::now();
            black_box(pread_kept(&fds));
            t.elapsed().as_nanos() as f64
        };
        if i % 2 == 0 {
            pass.push(time_pass());
            floor.push(time_floor());
            uncached.push(time_full());
        } else {
            floor.push(time_floor());
            uncached.push(time_full());
            pass.push(time_pass());
        }
    }
    if !measuring {
        println!("steady: {passes} passes of each in test mode (nothing measured)");
        return;
    }
    let (p50, f50, u50) = (
        percentile(&mut pass, 0.5),
        percentile(&mut floor, 0.5),
        percentile(&mut uncached, 0.5),
    );
    let (p90, f90, u90) = (
        percentile(&mut pass, 0.9),
        percentile(&mut floor, 0.9),
        percentile(&mut uncached, 0.9),
    );
    println!("{:<8} {:>10} {:>10}", "", "p50 µs", "p90 µs");
    for (name, a, b) in [("pass", p50, p90), ("full", u50, u90), ("floor", f50, f90)] {
        println!("{name:<8} {:>10.1} {:>10.1}", a / 1e3, b / 1e3);
    }
    let ratio = p50 / f50;
    println!(
        "BENCH_STEADY files={} passes={passes} pass_ns={p50:.0} full_ns={u50:.0} floor_ns={f50:.0} ratio={ratio:.2} target=1.3 ok={}",
        files.len(),
        ratio <= 1.3
    );
}
