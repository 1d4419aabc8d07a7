//! The profile: the desired state of the node's kernel.
//!
//! A [`Profile`] is the built-in Redis profile, optionally changed by a YAML file. Loading
//! validates the whole file and reports every problem at once (file, field path, value); a
//! profile that fails validation is never used, so nothing is written to the kernel.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

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
    /// Settings in a stable order; `Mode::Off` settings are dropped at load.
    pub settings: Vec<Setting>,
}

fn words(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| (*s).to_string()).collect()
}

fn word(w: &str) -> Desired {
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

/// One problem found in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issue {
    /// Field path, e.g. `sysctls["vm.overcommit_memory"].equals`.
    pub field: String,
    /// The offending value as written (JSON rendering), empty when the field is missing.
    pub value: String,
    pub message: String,
}

impl fmt::Display for Issue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.value.is_empty() {
            write!(f, "{}: {}", self.field, self.message)
        } else {
            write!(f, "{} = {}: {}", self.field, self.value, self.message)
        }
    }
}

/// Errors loading a profile.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error("config file {path}: cannot read: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path}: not valid YAML: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("config file {path}: {} problem(s):\n{}", issues.len(), render_issues(issues))]
    Invalid { path: PathBuf, issues: Vec<Issue> },
}

fn render_issues(issues: &[Issue]) -> String {
    issues
        .iter()
        .map(|i| format!("  - {i}"))
        .collect::<Vec<_>>()
        .join("\n")
}

impl Profile {
    /// Loads a YAML config file and applies it over the built-in profile.
    pub fn load(path: &Path) -> Result<Profile, ProfileError> {
        let text = std::fs::read_to_string(path).map_err(|source| ProfileError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Profile::from_yaml(&text).map_err(|e| match e {
            YamlError::Syntax(message) => ProfileError::Syntax {
                path: path.to_path_buf(),
                message,
            },
            YamlError::Invalid(issues) => ProfileError::Invalid {
                path: path.to_path_buf(),
                issues,
            },
        })
    }

    /// Parses and validates YAML text (see [`Profile::load`]).
    pub fn from_yaml(text: &str) -> Result<Profile, YamlError> {
        let value: Value = if text.trim().is_empty() {
            Value::Null
        } else {
            serde_saphyr::from_str(text).map_err(|e| YamlError::Syntax(e.to_string()))?
        };
        let mut v = Validator::default();
        let profile = v.profile(&value);
        if v.issues.is_empty() {
            Ok(profile)
        } else {
            Err(YamlError::Invalid(v.issues))
        }
    }

    /// The setting of this name.
    pub fn get(&self, name: &str) -> Option<&Setting> {
        self.settings.iter().find(|s| s.name == name)
    }
}

/// Errors of [`Profile::from_yaml`], before a file name is attached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum YamlError {
    Syntax(String),
    Invalid(Vec<Issue>),
}

#[derive(Default)]
struct Validator {
    issues: Vec<Issue>,
}

fn render(v: &Value) -> String {
    v.to_string()
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

/// The first segment of the THP settings' names (`thp.enabled`, `thp.hugepages-64kB.enabled`):
/// reserved, so a sysctl can never take a THP setting's name (there is no `/proc/sys/thp`).
pub const THP_NAMESPACE: &str = "thp";

/// The file of a sysctl below `/proc/sys` (e.g. `vm/overcommit_memory`): a knob's identity.
/// Two names with the same path are the same knob. As in sysctl(8), a name containing `/` is
/// already a path and its dots are literal (`net/ipv4/conf/eth0.100/rp_filter`); otherwise dots
/// separate the segments (`vm.overcommit_memory`).
pub fn sysctl_rel_path(name: &str) -> String {
    if name.contains('/') {
        name.to_string()
    } else {
        name.replace('.', "/")
    }
}

/// Integer sysctls whose range the kernel enforces, by path below `/proc/sys`: (path, lowest,
/// highest, the range in words).
const KNOWN_RANGES: &[(&str, i64, i64, &str)] = &[
    ("vm/overcommit_memory", 0, 2, "0, 1 or 2"),
    (
        "net/core/somaxconn",
        0,
        i32::MAX as i64,
        "between 0 and 2147483647",
    ),
];

/// Checks a sysctl name, so it cannot escape /proc/sys: dotted segments of `[A-Za-z0-9_-]`
/// (`vm.swappiness`), or the `/` form of sysctl(8) whose segments may also hold dots but are
/// never empty, `.`, `..` or any other dots-only word, and never start with `/`
/// (`net/ipv4/conf/eth0.100/rp_filter`). Not in the `thp` namespace of the THP settings.
pub fn valid_sysctl_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("empty sysctl name");
    }
    if name.split(['.', '/']).next() == Some(THP_NAMESPACE) {
        return Err("names under thp. are THP settings, not sysctls: set them under thp:");
    }
    if name.contains('/') {
        return valid_sysctl_path(name);
    }
    for seg in name.split('.') {
        if seg.is_empty() {
            return Err("empty segment ('..' or a leading/trailing dot) could escape /proc/sys");
        }
        if !seg
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err("segments may contain only letters, digits, '_' and '-'");
        }
    }
    if !name.contains('.') {
        return Err("a sysctl name has at least two segments (e.g. vm.swappiness)");
    }
    Ok(())
}

/// The `/` form of a sysctl name (see [`valid_sysctl_name`]).
fn valid_sysctl_path(name: &str) -> Result<(), &'static str> {
    if name.starts_with('/') {
        return Err("an absolute path: a sysctl name is relative to /proc/sys");
    }
    for seg in name.split('/') {
        if seg.is_empty() {
            return Err("empty segment ('//' or a trailing '/') could escape /proc/sys");
        }
        if seg.chars().all(|c| c == '.') {
            return Err("a segment of only dots ('.', '..') could escape /proc/sys");
        }
        if !seg
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.')
        {
            return Err("segments may contain only letters, digits, '_', '-' and '.'");
        }
    }
    Ok(())
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

impl Validator {
    fn issue(
        &mut self,
        field: impl Into<String>,
        value: Option<&Value>,
        message: impl Into<String>,
    ) {
        self.issues.push(Issue {
            field: field.into(),
            value: value.map(render).unwrap_or_default(),
            message: message.into(),
        });
    }

    fn object<'v>(
        &mut self,
        field: &str,
        v: &'v Value,
        known: &[&str],
    ) -> Option<&'v serde_json::Map<String, Value>> {
        let Value::Object(map) = v else {
            self.issue(
                field,
                Some(v),
                format!("expected a mapping, found {}", type_name(v)),
            );
            return None;
        };
        for key in map.keys() {
            if !known.contains(&key.as_str()) {
                let path = if field.is_empty() {
                    key.clone()
                } else {
                    format!("{field}.{key}")
                };
                self.issue(
                    path,
                    map.get(key),
                    format!("unknown key (known: {})", known.join(", ")),
                );
            }
        }
        Some(map)
    }

    fn mode(&mut self, field: String, v: &Value) -> Option<Mode> {
        match (v.as_str(), v) {
            (Some("enforce"), _) => Some(Mode::Enforce),
            (Some("audit"), _) => Some(Mode::Audit),
            // YAML 1.1 reads a bare `off` as false.
            (Some("off"), _) | (None, Value::Bool(false)) => Some(Mode::Off),
            _ => {
                self.issue(field, Some(v), "expected one of: enforce, audit, off");
                None
            }
        }
    }

    fn profile(&mut self, root: &Value) -> Profile {
        let mut profile = Profile::default();
        if root.is_null() {
            return profile;
        }
        let Some(map) = self.object("", root, &["interval", "mode", "sysctls", "thp"]) else {
            return profile;
        };
        if let Some(v) = map.get("interval") {
            let parsed = match v {
                Value::Number(n) => n.as_u64().map(Duration::from_secs),
                Value::String(s) => parse_duration(s),
                _ => None,
            };
            match parsed {
                Some(d) if (MIN_INTERVAL..=MAX_INTERVAL).contains(&d) => profile.interval = d,
                Some(_) => self.issue("interval", Some(v), "must be between 100ms and 1h"),
                None => self.issue(
                    "interval",
                    Some(v),
                    "expected a duration such as 1s, 500ms, 2m (or whole seconds)",
                ),
            }
        }
        let default_mode = match map.get("mode") {
            Some(v) => self.mode("mode".into(), v).unwrap_or(Mode::Enforce),
            None => Mode::Enforce,
        };
        // Settings the file does not name take the file's top-level mode.
        for s in &mut profile.settings {
            s.mode = default_mode;
        }
        if let Some(v) = map.get("sysctls") {
            self.sysctls(v, default_mode, &mut profile);
        }
        if let Some(v) = map.get("thp") {
            self.thp(v, default_mode, &mut profile);
        }
        profile.settings.retain(|s| s.mode != Mode::Off);
        profile
    }

    fn sysctls(&mut self, v: &Value, default_mode: Mode, profile: &mut Profile) {
        let Value::Object(map) = v else {
            self.issue(
                "sysctls",
                Some(v),
                format!(
                    "expected a mapping of sysctl name to rule, found {}",
                    type_name(v)
                ),
            );
            return;
        };
        // Path below /proc/sys → the key that named it in this file.
        let mut seen: std::collections::BTreeMap<String, &str> = Default::default();
        for (name, rule) in map {
            let field = format!("sysctls[\"{name}\"]");
            let name_value = Value::String(name.clone());
            if let Err(why) = valid_sysctl_name(name) {
                self.issue(
                    format!("sysctls[{}]", render(&name_value)),
                    Some(&name_value),
                    why,
                );
                continue;
            }
            let rel = sysctl_rel_path(name);
            if let Some(first) = seen.insert(rel.clone(), name) {
                self.issue(
                    field.clone(),
                    Some(&name_value),
                    format!("names the same sysctl as {first:?} (/proc/sys/{rel})"),
                );
                continue;
            }
            // A sysctl rule changes only the sysctl of that file, never a setting of another kind
            // that happens to share its name.
            let existing = profile.settings.iter().position(|s| match &s.knob {
                Knob::Sysctl(n) => sysctl_rel_path(n) == rel,
                _ => false,
            });
            let Some(rmap) = self.object(&field, rule, &["equals", "at_least", "at_most", "mode"])
            else {
                continue;
            };
            let constraints: Vec<&str> = ["equals", "at_least", "at_most"]
                .into_iter()
                .filter(|k| rmap.contains_key(*k))
                .collect();
            let mode = match rmap.get("mode") {
                Some(m) => self.mode(format!("{field}.mode"), m),
                None => Some(default_mode),
            };
            let desired = match constraints.as_slice() {
                [] => {
                    if existing.is_none() {
                        self.issue(
                            field.clone(),
                            Some(rule),
                            "a new sysctl needs one of: equals, at_least, at_most",
                        );
                    }
                    None
                }
                [key] => self.sysctl_value(&rel, &format!("{field}.{key}"), key, &rmap[*key]),
                _ => {
                    self.issue(
                        field.clone(),
                        Some(rule),
                        format!(
                            "give only one of equals, at_least, at_most (found {})",
                            constraints.join(", ")
                        ),
                    );
                    None
                }
            };
            let Some(mode) = mode else { continue };
            match existing {
                Some(i) => {
                    profile.settings[i].mode = mode;
                    if let Some(d) = desired {
                        profile.settings[i].desired = d;
                    }
                }
                None => {
                    if let Some(desired) = desired {
                        profile.settings.push(Setting {
                            name: name.clone(),
                            knob: Knob::Sysctl(name.clone()),
                            desired,
                            mode,
                        });
                    }
                }
            }
        }
    }

    /// The desired value of the sysctl at `rel` (path below /proc/sys).
    fn sysctl_value(&mut self, rel: &str, field: &str, key: &str, v: &Value) -> Option<Desired> {
        if key == "equals"
            && let Value::String(s) = v
        {
            let norm = s.split_whitespace().collect::<Vec<_>>().join(" ");
            if norm.is_empty() {
                self.issue(field, Some(v), "must not be empty");
                return None;
            }
            if let Ok(n) = norm.parse::<i64>() {
                return self
                    .check_known_range(rel, field, v, n)
                    .then_some(Desired::Equals(n));
            }
            if KNOWN_RANGES.iter().any(|(p, ..)| *p == rel) {
                self.issue(field, Some(v), "must be an integer");
                return None;
            }
            return Some(Desired::Text(norm));
        }
        let Some(n) = v.as_i64() else {
            let what = if key == "equals" {
                "an integer or a string"
            } else {
                "an integer"
            };
            self.issue(
                field,
                Some(v),
                format!("expected {what}, found {}", type_name(v)),
            );
            return None;
        };
        if !self.check_known_range(rel, field, v, n) {
            return None;
        }
        Some(match key {
            "equals" => Desired::Equals(n),
            "at_least" => Desired::AtLeast(n),
            _ => Desired::AtMost(n),
        })
    }

    /// Values the kernel would reject for the knobs whose range we know (by path, so every
    /// spelling of a name gets the same check).
    fn check_known_range(&mut self, rel: &str, field: &str, v: &Value, n: i64) -> bool {
        match KNOWN_RANGES.iter().find(|(p, ..)| *p == rel) {
            Some((_, lo, hi, words)) if !(*lo..=*hi).contains(&n) => {
                self.issue(
                    field,
                    Some(v),
                    format!(
                        "the kernel accepts only {words} for {}",
                        rel.replace('/', ".")
                    ),
                );
                false
            }
            _ => true,
        }
    }

    fn thp(&mut self, v: &Value, default_mode: Mode, profile: &mut Profile) {
        let Some(map) = self.object("thp", v, &["enabled", "defrag", "per_size"]) else {
            return;
        };
        for (key, name, vocab) in [
            ("enabled", "thp.enabled", THP_ENABLED_WORDS),
            ("defrag", "thp.defrag", THP_DEFRAG_WORDS),
        ] {
            let Some(rule) = map.get(key) else { continue };
            let field = format!("thp.{key}");
            // Shorthand: `enabled: never`.
            let (value, mode) = match rule {
                Value::String(_) => (Some(rule), Some(default_mode)),
                _ => {
                    let Some(r) = self.object(&field, rule, &["equals", "mode"]) else {
                        continue;
                    };
                    let mode = match r.get("mode") {
                        Some(m) => self.mode(format!("{field}.mode"), m),
                        None => Some(default_mode),
                    };
                    (r.get("equals"), mode)
                }
            };
            let desired = value.and_then(|w| {
                let f = if matches!(rule, Value::String(_)) {
                    field.clone()
                } else {
                    format!("{field}.equals")
                };
                self.thp_word(&f, w, vocab).map(|w| word(&w))
            });
            let Some(mode) = mode else { continue };
            if let Some(s) = profile.settings.iter_mut().find(|s| s.name == name) {
                s.mode = mode;
                if let Some(d) = desired {
                    s.desired = d;
                }
            }
        }
        if let Some(rule) = map.get("per_size") {
            let field = "thp.per_size";
            let Some(r) = self.object(field, rule, &["allowed", "set", "mode"]) else {
                return;
            };
            let mode = match r.get("mode") {
                Some(m) => self.mode(format!("{field}.mode"), m),
                None => Some(default_mode),
            };
            let Some(s) = profile.settings.iter().position(|s| s.name == field) else {
                return;
            };
            let (mut allowed, mut set) = match &profile.settings[s].desired {
                Desired::Word { allowed, set } => (allowed.clone(), set.clone()),
                _ => (vec![], String::new()),
            };
            let mut ok = true;
            if let Some(a) = r.get("allowed") {
                match a.as_array() {
                    Some(list) if !list.is_empty() => {
                        let mut parsed = vec![];
                        for (i, w) in list.iter().enumerate() {
                            match self.thp_word(
                                &format!("{field}.allowed[{i}]"),
                                w,
                                THP_PER_SIZE_WORDS,
                            ) {
                                Some(w) => parsed.push(w),
                                None => ok = false,
                            }
                        }
                        allowed = parsed;
                    }
                    _ => {
                        self.issue(
                            format!("{field}.allowed"),
                            Some(a),
                            "expected a non-empty list of words",
                        );
                        ok = false;
                    }
                }
            }
            if let Some(w) = r.get("set") {
                match self.thp_word(&format!("{field}.set"), w, THP_PER_SIZE_WORDS) {
                    Some(w) => set = w,
                    None => ok = false,
                }
            }
            if ok && !allowed.contains(&set) {
                self.issue(
                    format!("{field}.set"),
                    Some(&Value::String(set.clone())),
                    format!("must be one of the allowed words ({})", allowed.join(", ")),
                );
                ok = false;
            }
            if let (true, Some(mode)) = (ok, mode) {
                profile.settings[s].mode = mode;
                profile.settings[s].desired = Desired::Word { allowed, set };
            }
        }
    }

    fn thp_word(&mut self, field: &str, v: &Value, vocab: &[&str]) -> Option<String> {
        match v.as_str() {
            Some(w) if vocab.contains(&w) => Some(w.to_string()),
            _ => {
                self.issue(
                    field,
                    Some(v),
                    format!("expected one of: {}", vocab.join(", ")),
                );
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn issues(yaml: &str) -> Vec<Issue> {
        match Profile::from_yaml(yaml) {
            Err(YamlError::Invalid(i)) => i,
            other => panic!("expected validation issues, got {other:?}"),
        }
    }

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
    fn empty_file_is_the_default() {
        assert_eq!(Profile::from_yaml(""), Ok(Profile::default()));
        assert_eq!(Profile::from_yaml("# nothing\n"), Ok(Profile::default()));
    }

    #[test]
    fn config_changes_values_adds_sysctls_modes_and_interval() {
        let p = Profile::from_yaml(
            r#"
interval: 500ms
sysctls:
  net.core.somaxconn: {at_least: 4096}
  vm.swappiness: {at_most: 10, mode: audit}
  vm.max_map_count: {equals: 262144}
  net.ipv4.ip_local_port_range: {equals: "1024   65000"}
thp:
  defrag: {equals: madvise, mode: audit}
  enabled: never
  per_size: {allowed: [never], set: never}
"#,
        )
        .unwrap();
        assert_eq!(p.interval, Duration::from_millis(500));
        assert_eq!(
            p.get("net.core.somaxconn").unwrap().desired,
            Desired::AtLeast(4096)
        );
        let sw = p.get("vm.swappiness").unwrap();
        assert_eq!(
            (sw.desired.clone(), sw.mode),
            (Desired::AtMost(10), Mode::Audit)
        );
        assert_eq!(
            p.get("vm.max_map_count").unwrap().desired,
            Desired::Equals(262144)
        );
        assert_eq!(
            p.get("net.ipv4.ip_local_port_range").unwrap().desired,
            Desired::Text("1024 65000".into())
        );
        let d = p.get("thp.defrag").unwrap();
        assert_eq!(
            (d.desired.to_string(), d.mode),
            ("madvise".into(), Mode::Audit)
        );
        assert_eq!(p.get("thp.per_size").unwrap().desired.to_string(), "never");
    }

    #[test]
    fn top_level_mode_and_off() {
        let p = Profile::from_yaml("mode: audit\nsysctls:\n  vm.overcommit_memory: {mode: enforce}\nthp:\n  per_size: {mode: off}\n").unwrap();
        assert_eq!(p.get("vm.overcommit_memory").unwrap().mode, Mode::Enforce);
        assert_eq!(p.get("net.core.somaxconn").unwrap().mode, Mode::Audit);
        assert!(p.get("thp.per_size").is_none());
    }

    #[test]
    fn every_problem_is_reported_at_once_with_field_and_value() {
        let got = issues(
            r#"
interval: fast
colour: blue
sysctls:
  vm.overcommit_memory: {equals: 3}
  net.core.somaxconn: {at_least: -1}
  ../../etc/passwd: {equals: 1}
  vm.new_one: {mode: enforce}
  vm.both: {at_least: 1, at_most: 2}
  vm.typo: {equals: 1, mode: enforced}
  vm.wrong_type: {at_least: "many"}
thp:
  enabled: sometimes
  defrag: {equals: never, extra: 1}
  per_size: {allowed: [never], set: always}
"#,
        );
        let rendered: Vec<String> = got.iter().map(|i| i.to_string()).collect();
        let expect = [
            "interval = \"fast\"",
            "colour = \"blue\": unknown key",
            "sysctls[\"vm.overcommit_memory\"].equals = 3: the kernel accepts only 0, 1 or 2",
            "sysctls[\"net.core.somaxconn\"].at_least = -1: the kernel accepts only between 0 and 2147483647",
            "sysctls[\"../../etc/passwd\"] = \"../../etc/passwd\"",
            "sysctls[\"vm.new_one\"] = {\"mode\":\"enforce\"}: a new sysctl needs one of",
            "sysctls[\"vm.both\"] = {\"at_least\":1,\"at_most\":2}: give only one of",
            "sysctls[\"vm.typo\"].mode = \"enforced\"",
            "sysctls[\"vm.wrong_type\"].at_least = \"many\": expected an integer",
            "thp.enabled = \"sometimes\": expected one of: always, madvise, never",
            "thp.defrag.extra = 1: unknown key",
            "thp.per_size.set = \"always\"",
        ];
        for e in expect {
            assert!(
                rendered.iter().any(|r| r.contains(e)),
                "missing {e:?} in {rendered:#?}"
            );
        }
        assert_eq!(got.len(), expect.len(), "{rendered:#?}");
    }

    #[test]
    fn a_sysctl_rule_never_reaches_a_thp_setting() {
        // Was accepted, and `5` was written into the THP `enabled` file.
        for yaml in [
            "sysctls: {thp.enabled: {equals: 5}}\n",
            "sysctls: {thp.defrag: {equals: 1}}\n",
            "sysctls: {thp.per_size: {mode: audit}}\n",
            "sysctls: {thp.hugepages-2048kB.enabled: {equals: always}}\n",
        ] {
            let got = issues(yaml);
            assert_eq!(got.len(), 1, "{yaml}: {got:?}");
            assert!(got[0].message.contains("THP settings"), "{yaml}: {got:?}");
            assert!(
                got[0].field.starts_with("sysctls[\"thp."),
                "{yaml}: {got:?}"
            );
        }
        assert_eq!(
            Profile::from_yaml("thp: {enabled: never}\n")
                .unwrap()
                .get("thp.enabled")
                .map(|s| s.desired.clone()),
            Some(word("never"))
        );
    }

    #[test]
    fn syntax_and_type_errors() {
        assert!(matches!(
            Profile::from_yaml("sysctls: [unclosed"),
            Err(YamlError::Syntax(_))
        ));
        assert!(!issues("- a\n- b\n").is_empty());
        assert!(!issues("sysctls: 3\n").is_empty());
        assert!(
            issues("interval: 0s\n")[0]
                .message
                .contains("between 100ms and 1h")
        );
    }

    #[test]
    fn sysctl_names_cannot_escape() {
        for bad in [
            "",
            "vm",
            "vm..x",
            ".vm.x",
            "vm.x.",
            "vm.x y",
            "vm.*",
            "/etc/passwd",
            "/proc/sys/vm/swappiness",
            "net/../../etc/shadow",
            "net/ipv4/..",
            "../x",
            "./net/core/somaxconn",
            "net/./core/somaxconn",
            "net/.../x",
            "net//core/somaxconn",
            "net/core/",
            "net/core/somaxconn/",
            "net/co re/x",
            "net/core/*",
            "net\\core/x",
            "thp/enabled",
            "vm/",
        ] {
            assert!(valid_sysctl_name(bad).is_err(), "{bad:?} accepted");
        }
        // The escapes are also refused where paths are used (e.g. a tampered journal).
        for escape in [
            "/etc/passwd",
            "net/../../etc/shadow",
            "net/ipv4/..",
            "../x",
            "net//x",
        ] {
            let loc = crate::kernel::Location::sysctl(escape);
            assert!(!loc.is_contained(), "{escape:?} -> {loc:?}");
        }
        for good in [
            "vm.swappiness",
            "net.ipv4.conf.all.rp_filter",
            "kernel.sched_rt-x",
            "net/ipv4/conf/eth0.100/rp_filter",
            "vm/swappiness",
            "net/ipv4/neigh/br-x.5/gc_stale_time",
        ] {
            assert!(valid_sysctl_name(good).is_ok(), "{good:?} rejected");
            assert!(
                crate::kernel::Location::sysctl(good).is_contained(),
                "{good}"
            );
        }
    }

    #[test]
    fn sysctl_names_map_to_paths_as_sysctl8_does() {
        for (name, rel) in [
            ("vm.overcommit_memory", "vm/overcommit_memory"),
            ("vm/overcommit_memory", "vm/overcommit_memory"),
            (
                "net/ipv4/conf/eth0.100/rp_filter",
                "net/ipv4/conf/eth0.100/rp_filter",
            ),
            // The dotted form cannot say it: eth0.100 would be two directories.
            (
                "net.ipv4.conf.eth0.100.rp_filter",
                "net/ipv4/conf/eth0/100/rp_filter",
            ),
        ] {
            assert_eq!(sysctl_rel_path(name), rel, "{name}");
            let loc = crate::kernel::Location::sysctl(name);
            assert_eq!(loc.rel, format!("sys/{rel}"));
            assert_eq!(loc.root, crate::kernel::Root::Proc);
        }
        // The name is kept as written; both spellings of one file are one knob, and the known
        // ranges apply to every spelling.
        let p = Profile::from_yaml(
            "sysctls:\n  net/ipv4/conf/eth0.100/rp_filter: {equals: 2}\n  net/core/somaxconn: {at_least: 8192}\n",
        )
        .unwrap();
        let s = p.get("net/ipv4/conf/eth0.100/rp_filter").unwrap();
        assert_eq!(
            s.knob,
            Knob::Sysctl("net/ipv4/conf/eth0.100/rp_filter".into())
        );
        assert_eq!(
            p.get("net.core.somaxconn").unwrap().desired,
            Desired::AtLeast(8192)
        );
        assert!(p.get("net/core/somaxconn").is_none());
        let got = issues(
            "sysctls:\n  vm/overcommit_memory: {equals: 5}\n  vm.swappiness: {equals: 1}\n  vm/swappiness: {equals: 2}\n",
        );
        let rendered: Vec<String> = got.iter().map(|i| i.to_string()).collect();
        assert_eq!(got.len(), 2, "{rendered:#?}");
        assert!(
            rendered[0].contains(
                "sysctls[\"vm/overcommit_memory\"].equals = 5: the kernel accepts only 0, 1 or 2"
            ),
            "{rendered:#?}"
        );
        assert!(
            rendered[1].contains("names the same sysctl as \"vm.swappiness\""),
            "{rendered:#?}"
        );
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
