//! The YAML validator: a config file's value tree applied over the built-in profile, every
//! problem collected as an [`Issue`] (field path, value, message) instead of stopping at the
//! first one.

use std::time::Duration;

use serde_json::{Map, Value};

use super::model::word;
use super::names::valid_sysctl_name;
use super::{
    Desired, Issue, Knob, MAX_INTERVAL, MIN_INTERVAL, Mode, Profile, Setting, THP_DEFRAG_WORDS,
    THP_ENABLED_WORDS, THP_PER_SIZE_WORDS, parse_duration,
};
use crate::kernel::sysctl_rel_path;

/// Validates a config file's value tree (`Null` for an empty file) into a profile.
pub(super) fn validate(root: &Value) -> Result<Profile, Vec<Issue>> {
    let mut v = Validator::default();
    let profile = v.profile(root);
    if v.issues.is_empty() {
        Ok(profile)
    } else {
        Err(v.issues)
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
    ) -> Option<&'v Map<String, Value>> {
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
                self.issue(
                    child(field, key),
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

    /// A rule's `mode`, or `default_mode` when it names none; `None` (reported) when it is
    /// not a mode.
    fn rule_mode(&mut self, field: &str, rule: &Map<String, Value>, default: Mode) -> Option<Mode> {
        match rule.get("mode") {
            Some(m) => self.mode(child(field, "mode"), m),
            None => Some(default),
        }
    }

    fn profile(&mut self, root: &Value) -> Profile {
        let mut profile = Profile::default();
        if root.is_null() {
            return profile;
        }
        let Some(map) = self.object(
            "",
            root,
            &[
                "interval",
                "mode",
                "redis_processes",
                "sysctls",
                "thp",
                "writers",
            ],
        ) else {
            return profile;
        };
        if let Some(v) = map.get("redis_processes") {
            self.redis_processes(v, &mut profile);
        }
        if let Some(v) = map.get("writers") {
            match v.as_str().and_then(crate::profile::WritersMode::parse) {
                Some(m) => {
                    profile.writers = m;
                    profile.writers_explicit = true;
                }
                None => self.issue("writers", Some(v), "expected off, observe or lock"),
            }
        }
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
        let default_mode = self
            .rule_mode("", map, Mode::Enforce)
            .unwrap_or(Mode::Enforce);
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
            let mode = self.rule_mode(&field, rmap, default_mode);
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
                Some(i) => profile.settings[i].apply(mode, desired),
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
            let (value, value_field, mode) = match rule {
                Value::String(_) => (Some(rule), field.clone(), Some(default_mode)),
                _ => {
                    let Some(r) = self.object(&field, rule, &["equals", "mode"]) else {
                        continue;
                    };
                    let mode = self.rule_mode(&field, r, default_mode);
                    (r.get("equals"), child(&field, "equals"), mode)
                }
            };
            let desired = value
                .and_then(|w| self.thp_word(&value_field, w, vocab))
                .map(|w| word(&w));
            let Some(mode) = mode else { continue };
            if let Some(s) = profile.get_mut(name) {
                s.apply(mode, desired);
            }
        }
        if let Some(rule) = map.get("per_size") {
            self.thp_per_size(rule, default_mode, profile);
        }
    }

    /// `thp.per_size`: the words every mTHP size may hold, and the one written to correct it.
    fn thp_per_size(&mut self, rule: &Value, default_mode: Mode, profile: &mut Profile) {
        let field = "thp.per_size";
        let Some(r) = self.object(field, rule, &["allowed", "set", "mode"]) else {
            return;
        };
        let mode = self.rule_mode(field, r, default_mode);
        let Some(s) = profile.get_mut(field) else {
            return;
        };
        let (mut allowed, mut set) = match &s.desired {
            Desired::Word { allowed, set } => (allowed.clone(), set.clone()),
            _ => (vec![], String::new()),
        };
        let mut ok = true;
        if let Some(a) = r.get("allowed") {
            match a.as_array() {
                Some(list) if !list.is_empty() => {
                    let mut parsed = vec![];
                    for (i, w) in list.iter().enumerate() {
                        match self.thp_word(&format!("{field}.allowed[{i}]"), w, THP_PER_SIZE_WORDS)
                        {
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
            s.apply(mode, Some(Desired::Word { allowed, set }));
        }
    }

    /// `redis_processes: {names: [...], gate: bool}`.
    fn redis_processes(&mut self, v: &Value, profile: &mut Profile) {
        let field = "redis_processes";
        let Some(map) = self.object(field, v, &["names", "gate"]) else {
            return;
        };
        if let Some(g) = map.get("gate") {
            match g {
                Value::Bool(b) => profile.redis_processes.gate = *b,
                _ => self.issue(
                    child(field, "gate"),
                    Some(g),
                    format!("expected true or false, found {}", type_name(g)),
                ),
            }
        }
        let Some(n) = map.get("names") else { return };
        let Some(list) = n.as_array().filter(|l| !l.is_empty()) else {
            self.issue(
                child(field, "names"),
                Some(n),
                "expected a non-empty list of process names",
            );
            return;
        };
        let mut names = vec![];
        for (i, item) in list.iter().enumerate() {
            match item.as_str() {
                // A process name: what `comm` or argv[0]'s base name can be.
                Some(s) if !s.is_empty() && !s.contains(['/', ' ', '\0']) => {
                    names.push(s.to_string())
                }
                _ => self.issue(
                    format!("{field}.names[{i}]"),
                    Some(item),
                    "expected a process name (no '/', no space), as in `comm` or argv[0]'s base name",
                ),
            }
        }
        if names.len() == list.len() {
            profile.redis_processes.names = names;
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

/// The path of `key` below `field` (`key` alone at the top level).
fn child(field: &str, key: &str) -> String {
    if field.is_empty() {
        key.to_string()
    } else {
        format!("{field}.{key}")
    }
}

impl Setting {
    /// What a rule does to a setting, stated once for every kind of rule: it takes the rule's
    /// mode, and its desired value when the rule gives one.
    fn apply(&mut self, mode: Mode, desired: Option<Desired>) {
        self.mode = mode;
        if let Some(d) = desired {
            self.desired = d;
        }
    }
}

impl Profile {
    fn get_mut(&mut self, name: &str) -> Option<&mut Setting> {
        self.settings.iter_mut().find(|s| s.name == name)
    }
}
