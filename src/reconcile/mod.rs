//! What the profile means on this host, and what to do about each knob.
//!
//! - `target.rs`: the profile resolved into this host's knob files ([`Target`]: a kernel
//!   [`KnobFile`](crate::kernel::KnobFile) with its desired value and mode).
//! - here: compare and decide, pure functions of (desired, observed) → state → action.

mod target;

pub use target::{Target, resolve};

use crate::kernel::{KernelError, Reading};
use crate::profile::{Desired, Mode};

/// What reading a knob gave: a value, `None` when it does not apply to this kernel, or an error.
pub type Observed = Result<Option<Reading>, KernelError>;

/// The state of one knob after an observation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    InSync,
    Drift,
    /// The knob does not exist on this kernel (no THP): nothing to do, counts as in sync.
    NotApplicable,
    /// The knob could not be read (or its namespace not verified).
    Error(KernelError),
}

/// The state of a knob as reported (`state` in JSON, logs): [`State`] without the error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StateKind {
    InSync,
    Drift,
    NotApplicable,
    Error,
}

impl StateKind {
    pub fn as_str(self) -> &'static str {
        match self {
            StateKind::InSync => "in_sync",
            StateKind::Drift => "drift",
            StateKind::NotApplicable => "not_applicable",
            StateKind::Error => "error",
        }
    }
}

impl serde::Serialize for StateKind {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl State {
    pub fn kind(&self) -> StateKind {
        match self {
            State::InSync => StateKind::InSync,
            State::Drift => StateKind::Drift,
            State::NotApplicable => StateKind::NotApplicable,
            State::Error(_) => StateKind::Error,
        }
    }

    pub fn as_str(&self) -> &'static str {
        self.kind().as_str()
    }

    /// In sync for readiness: the value matches, or the knob does not apply.
    pub fn is_ok(&self) -> bool {
        matches!(self, State::InSync | State::NotApplicable)
    }
}

/// Whether a reading satisfies the desired value.
pub fn satisfies(desired: &Desired, r: &Reading) -> bool {
    match (desired, r.number) {
        (Desired::Equals(v), Some(n)) => n == *v,
        (Desired::AtLeast(v), Some(n)) => n >= *v,
        (Desired::AtMost(v), Some(n)) => n <= *v,
        (Desired::Equals(_) | Desired::AtLeast(_) | Desired::AtMost(_), None) => false,
        (Desired::Text(t), _) => r.value == *t,
        (Desired::Word { allowed, .. }, _) => allowed.contains(&r.value),
    }
}

/// The state of a knob given what was read.
pub fn evaluate(desired: &Desired, observed: &Observed) -> State {
    match observed {
        Ok(None) => State::NotApplicable,
        Ok(Some(r)) if satisfies(desired, r) => State::InSync,
        Ok(Some(_)) => State::Drift,
        Err(e) => State::Error(e.clone()),
    }
}

/// What to do about a knob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Nothing,
    /// Drift in an audit-mode setting: report only.
    Report,
    /// Drift in an enforce-mode setting: write this value.
    Correct(String),
}

pub fn decide(mode: Mode, desired: &Desired, state: &State) -> Action {
    match (state, mode) {
        (State::Drift, Mode::Enforce) => Action::Correct(desired.correction()),
        (State::Drift, _) => Action::Report,
        _ => Action::Nothing,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn num(n: i64) -> Observed {
        Ok(Some(Reading {
            value: n.to_string(),
            number: Some(n),
        }))
    }

    fn word(w: &str) -> Observed {
        Ok(Some(Reading {
            value: w.into(),
            number: None,
        }))
    }

    #[test]
    fn table() {
        let never = Desired::Word {
            allowed: vec!["never".into()],
            set: "never".into(),
        };
        let per_size = Desired::Word {
            allowed: vec!["never".into(), "inherit".into()],
            set: "never".into(),
        };
        let cases: &[(&Desired, Observed, State)] = &[
            (&Desired::Equals(1), num(1), State::InSync),
            (&Desired::Equals(1), num(0), State::Drift),
            (&Desired::Equals(1), num(2), State::Drift),
            (&Desired::AtLeast(2048), num(2048), State::InSync),
            (&Desired::AtLeast(2048), num(65535), State::InSync),
            (&Desired::AtLeast(2048), num(128), State::Drift),
            (&Desired::AtMost(10), num(10), State::InSync),
            (&Desired::AtMost(10), num(60), State::Drift),
            (&Desired::Equals(1), word("x"), State::Drift),
            (
                &Desired::Text("1024 65000".into()),
                word("1024 65000"),
                State::InSync,
            ),
            (
                &Desired::Text("1024 65000".into()),
                word("32768 60999"),
                State::Drift,
            ),
            (&never, word("never"), State::InSync),
            (&never, word("madvise"), State::Drift),
            (&per_size, word("inherit"), State::InSync),
            (&per_size, word("always"), State::Drift),
            (&per_size, word("madvise"), State::Drift),
            (&never, Ok(None), State::NotApplicable),
        ];
        for (d, obs, want) in cases {
            assert_eq!(&evaluate(d, obs), want, "{d:?} {obs:?}");
        }
        let err = KernelError::NotFound {
            knob: "k".into(),
            path: "/p".into(),
        };
        assert_eq!(evaluate(&never, &Err(err.clone())), State::Error(err));
    }

    #[test]
    fn decisions() {
        let d = Desired::AtLeast(2048);
        assert_eq!(
            decide(Mode::Enforce, &d, &State::Drift),
            Action::Correct("2048".into())
        );
        assert_eq!(decide(Mode::Audit, &d, &State::Drift), Action::Report);
        assert_eq!(decide(Mode::Enforce, &d, &State::InSync), Action::Nothing);
        assert_eq!(
            decide(Mode::Enforce, &d, &State::NotApplicable),
            Action::Nothing
        );
        let w = Desired::Word {
            allowed: vec!["never".into(), "inherit".into()],
            set: "never".into(),
        };
        assert_eq!(
            decide(Mode::Enforce, &w, &State::Drift),
            Action::Correct("never".into())
        );
        assert!(State::NotApplicable.is_ok() && State::InSync.is_ok() && !State::Drift.is_ok());
    }
}
