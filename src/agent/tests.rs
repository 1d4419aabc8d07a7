use super::*;
use crate::profile::Desired;
use crate::testing::FakeTree;

fn agent(tree: &FakeTree, profile: &Profile, state: &std::path::Path) -> Agent {
    let j = Journal::load(state).unwrap();
    Agent::new(tree.fs(), profile, JournalSlot::Ready(j))
}

#[test]
fn corrects_enforce_drift_and_journals_originals_first() {
    let tree = FakeTree::untuned();
    let state = tree.dir.path().join("state");
    let mut a = agent(&tree, &Profile::default(), &state);
    let before = a.observe();
    assert!(!before.ready);
    assert_eq!(before.failing().count(), 5);
    let (r, events) = a.reconcile(Instant::now());
    assert!(r.ready, "{r:#?}");
    assert_eq!(
        events
            .iter()
            .filter(|e| matches!(e, Event::DriftDetected { .. }))
            .count(),
        5
    );
    assert_eq!(
        events
            .iter()
            .filter(|e| matches!(e, Event::Corrected { .. }))
            .count(),
        5
    );
    assert_eq!(tree.get("proc/sys/vm/overcommit_memory"), "1\n");
    assert_eq!(tree.get("proc/sys/net/core/somaxconn"), "2048\n");
    // Fake files hold what was written; the kernel would show the bracketed list.
    assert_eq!(
        tree.get("sys/kernel/mm/transparent_hugepage/enabled"),
        "never\n"
    );
    let j = Journal::load(&state).unwrap();
    let o: Vec<_> = j
        .originals()
        .iter()
        .map(|(k, v)| (k.as_str(), v.value.as_str()))
        .collect();
    assert_eq!(
        o,
        [
            ("net.core.somaxconn", "128"),
            ("thp.defrag", "madvise"),
            ("thp.enabled", "always"),
            ("thp.hugepages-2048kB.enabled", "always"),
            ("vm.overcommit_memory", "0"),
        ]
    );
}

#[test]
fn higher_somaxconn_is_never_lowered_and_audit_is_never_written() {
    let tree = FakeTree::untuned();
    tree.put("proc/sys/net/core/somaxconn", "65535\n");
    let p = Profile::from_yaml("sysctls:\n  vm.overcommit_memory: {mode: audit}\n").unwrap();
    let mut a = agent(&tree, &p, &tree.dir.path().join("state"));
    let (r, events) = a.reconcile(Instant::now());
    assert_eq!(tree.get("proc/sys/net/core/somaxconn"), "65535\n");
    assert_eq!(tree.get("proc/sys/vm/overcommit_memory"), "0\n");
    assert!(events.contains(&Event::DriftDetected {
        knob: "vm.overcommit_memory".into(),
        desired: "1".into(),
        actual: "0".into(),
        mode: Mode::Audit,
        writer: None,
        seen_by: "poll",
    }));
    // Audit-mode drift does not make the node unready.
    assert!(r.ready, "{r:#?}");
    let k = r
        .settings
        .iter()
        .find(|k| k.name == "vm.overcommit_memory")
        .unwrap();
    assert_eq!(
        (k.in_sync, k.state, k.mode),
        (false, StateKind::Drift, Mode::Audit)
    );
}

#[test]
fn broken_journal_blocks_writes_and_failures_back_off() {
    let tree = FakeTree::untuned();
    let mut a = Agent::new(
        tree.fs(),
        &Profile::default(),
        JournalSlot::Broken("corrupt".into()),
    );
    let t0 = Instant::now();
    let (r, events) = a.reconcile(t0);
    assert!(!r.ready);
    assert_eq!(tree.get("proc/sys/vm/overcommit_memory"), "0\n");
    assert_eq!(
        events
            .iter()
            .filter(|e| matches!(e, Event::CorrectionFailed { .. }))
            .count(),
        5
    );
    let k = &r.settings[0];
    assert!(
        k.error
            .as_deref()
            .unwrap_or("")
            .contains("state journal is unusable"),
        "{k:?}"
    );
    // Within the backoff nothing is retried and drift is not re-announced.
    let (_, events) = a.reconcile(t0 + Duration::from_millis(10));
    assert!(events.is_empty(), "{events:?}");
    // After it, it retries.
    let (_, events) = a.reconcile(t0 + MAX_BACKOFF + Duration::from_secs(1));
    assert_eq!(events.len(), 5, "{events:?}");
}

#[test]
fn backoff_grows_and_is_capped() {
    let i = Duration::from_secs(1);
    assert!(
        backoff(i, 1) <= Duration::from_millis(1200) && backoff(i, 1) >= Duration::from_millis(800)
    );
    assert!(backoff(i, 4) >= Duration::from_millis(6400));
    assert!(backoff(i, 30) <= MAX_BACKOFF.mul_f64(1.2));
    // An hour's interval starts at a second: a contested write is retried soon.
    let hour = Duration::from_secs(3600);
    assert!(backoff(hour, 1) <= FIRST_BACKOFF_MAX.mul_f64(1.2));
}

#[test]
fn a_write_the_profile_does_not_accept_is_not_a_correction() {
    // The value written reads back as written, but the profile does not accept it (what
    // validation prevents for configs; built here by hand): reported as not applied, with
    // what was written and what was read. A kernel that reads back something else than was
    // written is covered against the real kernel in tests/hardening.rs.
    let tree = FakeTree::untuned();
    let mut a = agent(&tree, &Profile::default(), &tree.dir.path().join("state"));
    let t = a
        .targets
        .iter_mut()
        .find(|t| t.name() == "thp.enabled")
        .unwrap();
    t.desired = Desired::Word {
        allowed: vec!["never".into()],
        set: "madvise".into(),
    };
    let err = correct(&a.fs, &mut JournalSlot::None, t, "always", "madvise").unwrap_err();
    assert_eq!(err.kind, FailureKind::ReadOnlyAgent, "{err:?}");
    assert_eq!(
        tree.get("sys/kernel/mm/transparent_hugepage/enabled"),
        "[always] madvise never\n",
        "a read-only agent writes nothing"
    );
    let mut slot = JournalSlot::Ready(Journal::load(&tree.dir.path().join("state2")).unwrap());
    let err = correct(&a.fs, &mut slot, t, "always", "madvise").unwrap_err();
    assert_eq!(
        err.kind,
        FailureKind::Kernel(crate::kernel::ErrorKind::NotApplied),
        "{err:?}"
    );
    assert!(
        err.message.contains("wrote \"madvise\"") && err.message.contains("reads back \"madvise\""),
        "{err:?}"
    );
}

#[test]
fn a_knob_rewritten_on_every_pass_becomes_contested_and_clears_when_it_stays() {
    let tree = FakeTree::untuned();
    let mut a = agent(&tree, &Profile::default(), &tree.dir.path().join("state"));
    let t0 = Instant::now();
    let contested = |events: &[Event]| {
        events
            .iter()
            .filter(
                |e| matches!(e, Event::Contested { knob, .. } if knob == "vm.overcommit_memory"),
            )
            .count()
    };
    let flag = |r: &Report| {
        r.settings
            .iter()
            .find(|k| k.name == "vm.overcommit_memory")
            .map(|k| k.contested)
    };
    let (r, events) = a.reconcile(t0);
    assert_eq!((contested(&events), flag(&r)), (0, Some(false)));
    // Someone writes 0 again before every pass.
    for pass in 1..=CONTESTED_PASSES {
        tree.put("proc/sys/vm/overcommit_memory", "0\n");
        let (r, events) = a.reconcile(t0);
        let last = pass == CONTESTED_PASSES;
        assert_eq!(
            (contested(&events), flag(&r)),
            (usize::from(last), Some(last)),
            "pass {pass}"
        );
        assert!(r.ready, "each pass still corrects it");
    }
    // Announced once, flagged while it lasts.
    tree.put("proc/sys/vm/overcommit_memory", "0\n");
    let (r, events) = a.reconcile(t0);
    assert_eq!((contested(&events), flag(&r)), (0, Some(true)));
    // Left alone for a pass: no longer contested.
    let (r, _) = a.reconcile(t0);
    assert_eq!(flag(&r), Some(false));
    // A single drift after that is not contested.
    tree.put("proc/sys/vm/overcommit_memory", "0\n");
    let (r, _) = a.reconcile(t0);
    assert_eq!(flag(&r), Some(false));
}

#[test]
fn the_steady_state_reuses_the_report_until_a_byte_changes() {
    let tree = FakeTree::untuned();
    let mut a = agent(&tree, &Profile::default(), &tree.dir.path().join("state"));
    let t0 = Instant::now();
    let (first, events) = a.reconcile(t0);
    assert!(!events.is_empty());
    // The pass after a correction is a full one; then nothing changes.
    let (second, _) = a.reconcile(t0);
    assert!(!Arc::ptr_eq(&first, &second));
    let (third, events) = a.reconcile(t0);
    assert!(Arc::ptr_eq(&second, &third) && events.is_empty());
    // The same length, other bytes: noticed and corrected.
    tree.put("proc/sys/vm/overcommit_memory", "2\n");
    let (fourth, events) = a.reconcile(t0);
    assert!(!Arc::ptr_eq(&third, &fourth));
    assert!(
        events
            .iter()
            .any(|e| matches!(e, Event::Corrected { knob, .. } if knob == "vm.overcommit_memory"))
    );
    assert_eq!(tree.get("proc/sys/vm/overcommit_memory"), "1\n");
    // A changed network-namespace status makes the next pass full.
    let (fifth, _) = a.reconcile(t0);
    let (sixth, _) = a.reconcile(t0);
    assert!(Arc::ptr_eq(&fifth, &sixth));
    a.fs_mut().assert_host_netns("test");
    let (seventh, _) = a.reconcile(t0);
    assert!(!Arc::ptr_eq(&sixth, &seventh));
}

#[test]
fn redis_processes_out_of_sync_hold_readiness_only_when_gated() {
    let tree = FakeTree::untuned();
    let state = tree.dir.path().join("state");
    let mut a = agent(&tree, &Profile::default(), &state);
    let (r, _) = a.reconcile(Instant::now());
    assert!(r.ready && r.redis_out_of_sync.is_empty());
    let why = "pod:cache/redis-0 backlog: its listener has backlog 128, below tcp-backlog 511";
    a.set_redis_gate(vec![why.into()]);
    let (r, events) = a.reconcile(Instant::now());
    assert!(!r.ready, "the next pass is not ready: {r:#?}");
    assert_eq!(r.failing().count(), 0, "every knob is in sync");
    assert_eq!(r.redis_out_of_sync, [why]);
    assert!(events.is_empty());
    a.set_redis_gate(vec![]);
    let (r, _) = a.reconcile(Instant::now());
    assert!(r.ready);
}
