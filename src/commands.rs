//! The one-shot commands: `check`, `apply` (and `--dry-run`), `restore`. Each reads or
//! writes through the agent and the journal, prints for people (or JSON), and returns the
//! exit code; `cli` parses and dispatches to them, `daemon` runs `run`.

use std::io::Write;
use std::time::Instant;

use crate::agent::{Agent, Event, Report};
use crate::exit::{Exit, Output};
use crate::journal::{self, Journal, JournalError};
use crate::kernel::{HostFs, KnobFile};
use crate::procs::{Scan, Scanner, Verdict};

/// A journal that cannot be used by `apply`/`restore`/`run`: exit 6 when another process holds
/// it, else 4.
pub(crate) fn journal_failed(e: &JournalError) -> Exit {
    eprintln!("error: {e}\nnothing was written");
    match e {
        JournalError::Locked { .. } => Exit::Locked,
        _ => Exit::Journal,
    }
}

pub(crate) fn print_table(report: &Report) {
    let mut rows = vec![[
        "SETTING".to_string(),
        "DESIRED".into(),
        "ACTUAL".into(),
        "MODE".into(),
        "STATE".into(),
    ]];
    for k in &report.settings {
        rows.push([
            k.name.clone(),
            k.desired.clone(),
            k.actual.clone().unwrap_or_else(|| "-".into()),
            k.mode.to_string(),
            k.state.as_str().to_string(),
        ]);
    }
    let mut out = std::io::stdout().lock();
    let _ = write!(out, "{}", crate::exit::aligned(&rows));
    for k in &report.settings {
        if let Some(e) = &k.error {
            let _ = writeln!(out, "{e}");
        }
    }
    let failing = report.failing().count();
    let redis = report.redis_out_of_sync.len();
    let _ = if report.ready {
        writeln!(out, "node: ready")
    } else if failing == 0 && redis > 0 {
        writeln!(
            out,
            "node: not ready ({redis} Redis process check(s) out of sync, redis_processes.gate: true)"
        )
    } else {
        writeln!(
            out,
            "node: not ready ({failing} enforce-mode setting(s) out of sync)"
        )
    };
}

/// The `journal` key of `check --output json`: the recorded originals (read without the lock)
/// with the boot they were recorded in.
pub(crate) fn journal_json(
    state_dir: &std::path::Path,
    boot_id: Option<&str>,
) -> serde_json::Value {
    let mut j = serde_json::json!({
        "path": state_dir.join(journal::FILE_NAME).display().to_string(),
        "boot_id": boot_id,
    });
    match journal::read(state_dir) {
        Ok(originals) => {
            j["originals"] = originals
                .iter()
                .map(|(name, o)| {
                    serde_json::json!({
                        "name": name,
                        "value": o.value,
                        "recorded_at": o.recorded_at,
                        "boot_id": o.boot_id,
                        "this_boot": o.boot_id.as_deref().zip(boot_id).map(|(a, b)| a == b),
                    })
                })
                .collect();
        }
        Err(e) => j["error"] = e.to_string().into(),
    }
    j
}

/// `6144kB`, `?` when unreadable.
fn kib(bytes: Option<u64>) -> String {
    bytes.map_or_else(|| "?".into(), |b| format!("{}kB", b / 1024))
}

/// The second table of `check`: each Redis process and the kernel as it sees it.
pub(crate) fn print_processes(scan: &Scan, gate: bool) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out);
    let _ = writeln!(out, "Redis processes (under {}):", scan.proc_root.display());
    if scan.processes.is_empty() {
        let _ = writeln!(out, "none found");
        return;
    }
    let mut rows = vec![[
        "PID".to_string(),
        "OWNER".into(),
        "NETNS".into(),
        "SOMAXCONN".into(),
        "TCP-BACKLOG".into(),
        "LISTEN-BACKLOG".into(),
        "THP".into(),
        "IN-SYNC".into(),
        "WHY-NOT".into(),
    ]];
    for p in &scan.processes {
        let listen = match (p.listen_backlog, p.checks.get("backlog")) {
            (Some(b), _) => b.to_string(),
            (None, Some(Verdict::NotApplicable)) => "none".into(),
            _ => "?".into(),
        };
        rows.push([
            p.pid.to_string(),
            p.owner_label.clone(),
            p.netns.kind.as_str().into(),
            p.netns
                .somaxconn
                .map_or_else(|| "?".into(), |v| v.to_string()),
            format!(
                "{} ({})",
                p.tcp_backlog.value,
                p.tcp_backlog.source.as_str()
            ),
            listen,
            format!(
                "THP_enabled={} anon={}",
                match p.thp.thp_enabled {
                    Some(true) => "1",
                    Some(false) => "0",
                    None => "?",
                },
                kib(p.thp.anon_hugepages_bytes)
            ),
            match p.in_sync {
                Some(true) => "yes",
                Some(false) => "no",
                None => "unknown",
            }
            .into(),
            p.why_not.join("; "),
        ]);
    }
    let _ = write!(out, "{}", crate::exit::aligned(&rows));
    let n = scan
        .processes
        .iter()
        .filter(|p| p.in_sync == Some(false))
        .count();
    if n > 0 {
        let _ = writeln!(
            out,
            "redis processes: {n} out of sync ({})",
            if gate {
                "redis_processes.gate: true, the node is not ready"
            } else {
                "reported only: redis_processes.gate is false"
            }
        );
    }
}

pub(crate) fn check(
    mut agent: Agent,
    output: Output,
    state_dir: &std::path::Path,
    boot_id: Option<String>,
    mut scanner: Scanner,
) -> Exit {
    let scan = scanner.scan();
    let gate = scanner.gate();
    if gate {
        agent.set_redis_gate(scan.gate_lines());
    }
    let report = agent.observe();
    match output {
        Output::Text => {
            print_table(&report);
            print_processes(&scan, gate);
        }
        Output::Json => {
            let rendered = serde_json::to_value(&report).and_then(|mut v| {
                v["journal"] = journal_json(state_dir, boot_id.as_deref());
                v["processes"] = serde_json::to_value(&scan.processes)?;
                serde_json::to_string_pretty(&v)
            });
            match rendered {
                Ok(s) => println!("{s}"),
                Err(e) => eprintln!("error: cannot render JSON: {e}"),
            }
        }
    }
    if report.unreadable() {
        Exit::Unreadable
    } else if report.ready {
        Exit::Ok
    } else {
        Exit::NotReady
    }
}

pub(crate) fn dry_run(mut agent: Agent) -> Exit {
    let (report, changes) = agent.plan();
    for (knob, from, to) in &changes {
        println!("would change {knob}: {from} -> {to}");
    }
    for k in report
        .failing()
        .filter(|k| k.state == crate::reconcile::StateKind::Error)
    {
        println!(
            "cannot change {}: {}",
            k.name,
            k.error.as_deref().unwrap_or("?")
        );
    }
    if report.ready {
        println!("nothing to change");
        Exit::Ok
    } else {
        Exit::NotReady
    }
}

pub(crate) fn apply(mut agent: Agent) -> Exit {
    let (_, events) = agent.reconcile(Instant::now());
    for e in &events {
        match e {
            Event::Corrected { knob, from, to, .. } => println!("changed {knob}: {from} -> {to}"),
            Event::CorrectionFailed { error, .. } => println!("failed {error}"),
            _ => {}
        }
    }
    // Verify from a fresh read of every knob, not from the write path's own read-back.
    let report = agent.observe();
    print_table(&report);
    if report.ready {
        Exit::Ok
    } else {
        Exit::NotReady
    }
}

pub(crate) fn restore(fs: &HostFs, state_dir: &std::path::Path, boot_id: Option<String>) -> Exit {
    if !state_dir.exists() {
        println!(
            "nothing to restore: no originals recorded in {}",
            state_dir.join(journal::FILE_NAME).display()
        );
        return Exit::Ok;
    }
    let journal = match Journal::load(state_dir) {
        Ok(j) => j,
        Err(e) => return journal_failed(&e),
    };
    if journal.originals().is_empty() {
        println!(
            "nothing to restore: no originals recorded in {}",
            journal.path().display()
        );
        return Exit::Ok;
    }
    let mut failed = 0;
    for (knob, original) in journal.originals() {
        if original.location.is_net()
            && original.netns.is_some()
            && original.netns != fs.net_ns_ino()
        {
            failed += 1;
            println!(
                "failed {knob}: its original was recorded in network namespace net:[{}], this is {}; run restore there",
                original.netns.unwrap_or_default(),
                fs.net_ns_ino()
                    .map(|i| format!("net:[{i}]"))
                    .unwrap_or_else(|| "an unverified one".into())
            );
            continue;
        }
        if let (Some(then), Some(now)) = (&original.boot_id, &boot_id)
            && then != now
        {
            println!(
                "note {knob}: its original {:?} was recorded in an earlier boot ({then}, now {now}); restoring it anyway",
                original.value
            );
        }
        let mut t = KnobFile::for_restore(knob, original.location.clone());
        match fs.write(&mut t, &original.value) {
            Ok(r) if r.value == original.value => println!("restored {knob}: {}", original.value),
            Ok(r) => {
                failed += 1;
                println!(
                    "failed {knob}: wrote {:?} but it reads back {:?}",
                    original.value, r.value
                );
            }
            Err(e) => {
                failed += 1;
                println!("failed {e}");
            }
        }
    }
    if failed > 0 {
        println!(
            "{failed} original(s) not restored; the journal {} is kept",
            journal.path().display()
        );
        return Exit::NotReady;
    }
    match journal.remove() {
        Ok(()) => Exit::Ok,
        Err(e) => {
            eprintln!("error: every original was restored, but {e}");
            Exit::Journal
        }
    }
}
