//! The model: what a profile is ([`Profile`], [`Setting`], [`Mode`], [`Desired`], [`Knob`]),
//! the built-in Redis profile, and the limits and vocabularies a config file is checked against.

use std::fmt;
use std::time::Duration;

/// Interval of the enforce loop when the config does not set one.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(1);
pub const MIN_INTERVAL: Duration = Duration::from_millis(100);
pub const MAX_INTERVAL: Duration = Duration::from_secs(3600);

/// THP `enabled` vocabulary (`/sys/kernel/mm/transparent_hugepage/enabled`).
pub const THP_ENABLED_WORDS: &[&str] = &["always", "madvise", "never"];
/// THP `defrag` vocabulary.
pub const THP_DEFRAG_WORDS: &[&str] = &["always", "defer", "defer+madvise", "madvise", "never"];
/// Per-size (mTHP) `hugepages-<size>kB/enabled` vocabulary.
pub const THP_PER_SIZE_WORDS: &[&str] = &["always", "inherit", "madvise", "never"];

/// What the agent does with a setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Mode {
    /// Checked, and corrected when it drifts.
    Enforce,
    /// Checked and reported; never written.
    Audit,
    /// Not checked at all (removes a built-in setting).
    Off,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Audit => "audit",
            Mode::Off => "off",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The desired value of one knob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Desired {
    /// An integer sysctl equal to this value.
    Equals(i64),
    /// An integer sysctl at least this value (a higher one is in sync and never lowered).
    AtLeast(i64),
    /// An integer sysctl at most this value.
    AtMost(i64),
    /// A sysctl whose whitespace-normalised text equals this.
    Text(String),
    /// A sysfs enum (`always [madvise] never`) whose selected word is one of `allowed`;
    /// drift is corrected by writing `set`.
    Word { allowed: Vec<String>, set: String },
}

impl Desired {
    /// The value written to correct drift.
    pub fn correction(&self) -> String {
        match self {
            Desired::Equals(v) | Desired::AtLeast(v) | Desired::AtMost(v) => v.to_string(),
            Desired::Text(s) => s.clone(),
            Desired::Word { set, .. } => set.clone(),
        }
    }

    /// The numeric target, for the desired-value gauge.
    pub fn numeric(&self) -> Option<i64> {
        match self {
            Desired::Equals(v) | Desired::AtLeast(v) | Desired::AtMost(v) => Some(*v),
            _ => None,
        }
    }
}

impl fmt::Display for Desired {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Desired::Equals(v) => write!(f, "{v}"),
            Desired::AtLeast(v) => write!(f, ">= {v}"),
            Desired::AtMost(v) => write!(f, "<= {v}"),
            Desired::Text(s) => write!(f, "{s}"),
            Desired::Word { allowed, .. } if allowed.len() == 1 => f.write_str(&allowed[0]),
            Desired::Word { allowed, .. } => f.write_str(&allowed.join("|")),
        }
    }
}

/// Where a knob lives.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Knob {
    /// `<proc-root>/sys/<name with dots as slashes>`.
    Sysctl(String),
    /// `<sys-root>/kernel/mm/transparent_hugepage/enabled`.
    ThpEnabled,
    /// `<sys-root>/kernel/mm/transparent_hugepage/defrag`.
    ThpDefrag,
    /// Every `<sys-root>/kernel/mm/transparent_hugepage/hugepages-<size>kB/enabled` (mTHP):
    /// expanded into one setting per size found on the host.
    ThpPerSize,
}

/// One setting of the profile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    /// Stable name: the sysctl name, or `thp.enabled`, `thp.defrag`, `thp.per_size`.
    pub name: String,
    pub knob: Knob,
    pub desired: Desired,
    pub mode: Mode,
}

/// The desired state of the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Profile {
    pub interval: Duration,
    /// The writer watch of `run` (`writers:`; `--writers` overrides it).
    pub writers: WritersMode,
    /// `writers` was set by the file or the command line, not left at its default.
    pub writers_explicit: bool,
    /// Settings in a stable order; `Mode::Off` settings are dropped at load.
    pub settings: Vec<Setting>,
    /// Which processes are Redis servers, and whether their own view gates readiness
    /// (`redis_processes:`).
    pub redis_processes: RedisProcesses,
}

/// The process names matched by default: `comm`, or argv[0]'s base name.
pub const REDIS_PROCESS_NAMES: &[&str] = &["redis-server", "valkey-server"];

/// `redis_processes:` in the profile: the Redis processes whose own view is reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisProcesses {
    /// Process names (`comm`, or argv[0]'s base name).
    pub names: Vec<String>,
    /// A process out of sync makes the node not ready (default: reported only).
    pub gate: bool,
}

impl Default for RedisProcesses {
    fn default() -> Self {
        RedisProcesses {
            names: words(REDIS_PROCESS_NAMES),
            gate: false,
        }
    }
}

fn words(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| (*s).to_string()).collect()
}

pub(super) fn word(w: &str) -> Desired {
    Desired::Word {
        allowed: vec![w.to_string()],
        set: w.to_string(),
    }
}

impl Default for Profile {
    /// The built-in Redis profile.
    fn default() -> Self {
        let s = |name: &str, knob: Knob, desired: Desired| Setting {
            name: name.to_string(),
            knob,
            desired,
            mode: Mode::Enforce,
        };
        Profile {
            interval: DEFAULT_INTERVAL,
            writers: WritersMode::default(),
            writers_explicit: false,
            redis_processes: RedisProcesses::default(),
            settings: vec![
                s(
                    "vm.overcommit_memory",
                    Knob::Sysctl("vm.overcommit_memory".into()),
                    Desired::Equals(1),
                ),
                s(
                    "net.core.somaxconn",
                    Knob::Sysctl("net.core.somaxconn".into()),
                    Desired::AtLeast(2048),
                ),
                s("thp.enabled", Knob::ThpEnabled, word("never")),
                s("thp.defrag", Knob::ThpDefrag, word("never")),
                s(
                    "thp.per_size",
                    Knob::ThpPerSize,
                    Desired::Word {
                        allowed: words(&["never", "inherit"]),
                        set: "never".into(),
                    },
                ),
            ],
        }
    }
}

impl Profile {
    /// The setting of this name.
    pub fn get(&self, name: &str) -> Option<&Setting> {
        self.settings.iter().find(|s| s.name == name)
    }
}

/// Parses a duration: an integer number of seconds, or a number with `ms`, `s`, `m` or `h`.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => (&s[..i], s[i..].trim()),
        None => (s, "s"),
    };
    let n: u64 = num.parse().ok()?;
    let ms = match unit {
        "ms" => n,
        "s" => n.checked_mul(1000)?,
        "m" => n.checked_mul(60_000)?,
        "h" => n.checked_mul(3_600_000)?,
        _ => return None,
    };
    Some(Duration::from_millis(ms))
}

/// `writers:` in the profile, `--writers` on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WritersMode {
    /// No watch: drift is found by the poll only.
    Off,
    /// Name every foreign write and correct drift at once.
    #[default]
    Observe,
    /// As observe, and refuse (EPERM) sysctl writes that would move an enforce-mode numeric
    /// knob out of the profile.
    Lock,
}

impl WritersMode {
    pub fn as_str(self) -> &'static str {
        match self {
            WritersMode::Off => "off",
            WritersMode::Observe => "observe",
            WritersMode::Lock => "lock",
        }
    }

    pub fn parse(s: &str) -> Option<WritersMode> {
        match s {
            "off" => Some(WritersMode::Off),
            "observe" => Some(WritersMode::Observe),
            "lock" => Some(WritersMode::Lock),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_profile_is_the_redis_one() {
        let p = Profile::default();
        assert_eq!(p.interval, Duration::from_secs(1));
        let names: Vec<_> = p.settings.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "vm.overcommit_memory",
                "net.core.somaxconn",
                "thp.enabled",
                "thp.defrag",
                "thp.per_size"
            ]
        );
        assert_eq!(
            p.get("vm.overcommit_memory").map(|s| &s.desired),
            Some(&Desired::Equals(1))
        );
        assert_eq!(
            p.get("net.core.somaxconn").map(|s| &s.desired),
            Some(&Desired::AtLeast(2048))
        );
        assert!(p.settings.iter().all(|s| s.mode == Mode::Enforce));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("2"), Some(Duration::from_secs(2)));
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("3m"), Some(Duration::from_secs(180)));
        assert_eq!(parse_duration("1h"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_duration("1d"), None);
        assert_eq!(parse_duration("-1s"), None);
        assert_eq!(parse_duration("s"), None);
    }
}
