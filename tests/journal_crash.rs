//! The originals journal under real crashes (issue 7, "tests that must be made honest"): the
//! real binary's `apply`, against a fake kernel tree whose knobs all drifted, is killed with
//! SIGKILL at a random point (a seeded random delay spread over the length of an `apply`), at
//! least 50 times. After each kill, either the journal is absent and no knob was changed, or
//! `restore` puts back every original (the values from before the first `apply`). Every other
//! run also re-applies to completion after the crash first, so the originals recorded before
//! the crash are proven never overwritten by the values the crashed run had already written.

mod common;
use common::*;

use std::os::unix::process::ExitStatusExt;
use std::process::Stdio;
use std::time::{Duration, Instant};

const KILLS: usize = 60;
const KNOBS: [&str; 5] = [OVERCOMMIT, SOMAXCONN, THP_ENABLED, THP_DEFRAG, THP_2M];

/// xorshift64*: a seeded, dependency-free generator (the seed is printed for a re-run with
/// `RNT_CRASH_SEED`).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// What a knob's file holds, as the kernel layer reads it (the selected word of an enum).
fn value(t: &Tree, rel: &str) -> String {
    let raw = t.get(rel);
    let words: Vec<&str> = raw.split_whitespace().collect();
    words
        .iter()
        .find_map(|w| w.strip_prefix('[').and_then(|w| w.strip_suffix(']')))
        .map(str::to_string)
        .unwrap_or_else(|| words.join(" "))
}

fn values(t: &Tree) -> Vec<String> {
    KNOBS.iter().map(|k| value(t, k)).collect()
}

fn raw(t: &Tree) -> Vec<String> {
    KNOBS.iter().map(|k| t.get(k)).collect()
}

/// A procfs or sysfs value changes at once with the `write(2)` and `O_TRUNC` does nothing to
/// it; a plain file of the fake tree is emptied by the open and filled by the write. A kill
/// between the two leaves it empty, which no kernel knob can be: such a file is given back the
/// value it held before the write, as the kernel would still show.
fn emulate_atomic_writes(t: &Tree, before: &[String]) {
    for (k, old) in KNOBS.iter().zip(before) {
        if t.get(k).is_empty() {
            t.put(k, old);
        }
    }
}

#[test]
fn apply_killed_at_random_points_never_loses_an_original() {
    let seed = std::env::var("RNT_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_c0de_u64);
    eprintln!("seed {seed} (RNT_CRASH_SEED)");
    let mut rng = Rng(seed | 1);

    // How long an uninterrupted apply takes here, so kills spread over the whole run.
    let mut took = vec![];
    for _ in 0..5 {
        let t = Tree::untuned();
        let start = Instant::now();
        let out = t.run(&["apply"]);
        took.push(start.elapsed());
        assert_eq!(out.code, 0, "{out:?}");
    }
    took.sort();
    let span = took[2].mul_f64(1.5).as_micros().max(1000) as u64;
    eprintln!(
        "apply takes {:?} (median); kills within 0..{span} µs",
        took[2]
    );

    let (mut before_journal, mut mid_run, mut completed) = (0, 0, 0);
    for i in 0..KILLS {
        let t = Tree::untuned();
        let originals = values(&t);
        let untouched = raw(&t);
        let delay = Duration::from_micros(rng.next() % span);
        let mut child = t
            .cmd(&["apply"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn apply");
        std::thread::sleep(delay);
        let _ = child.kill(); // SIGKILL; a no-op if it already exited
        let status = child.wait().expect("wait apply");
        emulate_atomic_writes(&t, &untouched);
        let journal = t.state_dir().join("originals.json");
        let what = format!("kill {i} after {delay:?} ({status})");
        if !journal.exists() {
            assert_eq!(
                raw(&t),
                untouched,
                "{what}: no journal, yet a knob was changed"
            );
            before_journal += 1;
        } else if status.signal() == Some(9) {
            mid_run += 1;
        } else {
            assert_eq!(status.code(), Some(0), "{what}");
            completed += 1;
        }
        if i % 2 == 1 {
            let out = t.run(&["apply"]);
            assert_eq!(out.code, 0, "{what}: apply after the crash: {out:?}");
        }
        let out = t.run(&["restore"]);
        assert_eq!(out.code, 0, "{what}: restore: {out:?}");
        assert_eq!(
            values(&t),
            originals,
            "{what}: restore did not return every original: {out:?}"
        );
        assert!(
            !journal.exists(),
            "{what}: journal left after a full restore"
        );
    }
    eprintln!(
        "{KILLS} kills: {before_journal} before any journal, {mid_run} during apply with a journal, {completed} after apply finished"
    );
}
