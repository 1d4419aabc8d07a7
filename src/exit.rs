//! What a command ends with: its exit code ([`Exit`], documented in the README) and how it
//! prints ([`Output`]). Below both `commands` and `cli`, which share them.

use std::process::ExitCode;

use clap::ValueEnum;

/// Exit codes (documented in the README).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Exit {
    /// Ready / done.
    Ok = 0,
    /// Drift (check, apply --dry-run), or something could not be set or restored.
    NotReady = 1,
    /// Bad usage, flag or config file; nothing was written.
    Usage = 2,
    /// An enforce-mode knob could not be read (check).
    Unreadable = 3,
    /// The state journal is corrupt or unreadable; nothing was written.
    Journal = 4,
    /// The daemon could not start (listen address, signals, runtime).
    Runtime = 5,
    /// The state directory is locked by another process; nothing was written.
    Locked = 6,
    /// A critical task of the daemon (the Kubernetes gate) died while it ran.
    TaskDied = 7,
    /// `run --writers lock --lock-unavailable exit`: the lock could not be put in force.
    LockUnavailable = 8,
    /// `wait`: the kernel, as the pod sees it, was not in sync by `--timeout`.
    WaitTimeout = 9,
    /// `status`: a node listed is not ready, stale, unknown, without the agent or unmarked.
    FleetNotReady = 10,
    /// `status`: the Kubernetes API could not be read (unreachable, refused, timed out, or
    /// credentials that cannot be had).
    Api = 11,
}

impl From<Exit> for ExitCode {
    fn from(e: Exit) -> ExitCode {
        ExitCode::from(e as u8)
    }
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Output {
    Text,
    Json,
}

/// Rows aligned in columns two spaces apart (the first row is the header), one line each,
/// trailing spaces trimmed: the table of `check`, `restore` and `status`.
pub fn aligned<const N: usize>(rows: &[[String; N]]) -> String {
    let mut width = [0usize; N];
    for r in rows {
        for (w, c) in width.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    for r in rows {
        let line = r
            .iter()
            .zip(width)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ");
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}
