//! The profile: the desired state of the node's kernel.
//!
//! A [`Profile`] is the built-in Redis profile, optionally changed by a YAML file. Loading
//! validates the whole file and reports every problem at once (file, field path, value); a
//! profile that fails validation is never used, so nothing is written to the kernel.
//!
//! - `model.rs`: the types, the built-in profile, the limits and vocabularies.
//! - `names.rs`: sysctl names and the files they stand for.
//! - `validate.rs`: the YAML validator, each rule stated once.

mod model;
mod names;
mod validate;

use std::fmt;
use std::path::{Path, PathBuf};

use serde_json::Value;

pub use crate::kernel::sysctl_rel_path;
pub use model::{
    DEFAULT_INTERVAL, Desired, Knob, MAX_INTERVAL, MIN_INTERVAL, Mode, Profile,
    REDIS_PROCESS_NAMES, RedisProcesses, Setting, THP_DEFRAG_WORDS, THP_ENABLED_WORDS,
    THP_PER_SIZE_WORDS, WritersMode, parse_duration,
};
pub use names::{THP_NAMESPACE, valid_sysctl_name};

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
        validate::validate(&value).map_err(YamlError::Invalid)
    }
}

/// Errors of [`Profile::from_yaml`], before a file name is attached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum YamlError {
    Syntax(String),
    Invalid(Vec<Issue>),
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::model::word;
    use super::*;

    fn issues(yaml: &str) -> Vec<Issue> {
        match Profile::from_yaml(yaml) {
            Err(YamlError::Invalid(i)) => i,
            other => panic!("expected validation issues, got {other:?}"),
        }
    }

    #[test]
    fn writers_takes_off_observe_or_lock_and_names_a_bad_value() {
        use crate::profile::WritersMode;
        let p = Profile::from_yaml("writers: lock\n").unwrap();
        assert_eq!((p.writers, p.writers_explicit), (WritersMode::Lock, true));
        let d = Profile::default();
        assert_eq!(
            (d.writers, d.writers_explicit),
            (WritersMode::Observe, false)
        );
        let i = issues("writers: block\n");
        assert_eq!(i.len(), 1, "{i:?}");
        assert_eq!(i[0].field, "writers");
        assert!(i[0].message.contains("off, observe or lock"), "{i:?}");
    }

    #[test]
    fn redis_processes_names_and_gate() {
        let d = Profile::default();
        assert_eq!(d.redis_processes.names, ["redis-server", "valkey-server"]);
        assert!(!d.redis_processes.gate);
        let p = Profile::from_yaml(
            "redis_processes: {names: [redis-server, keydb-server], gate: true}\n",
        )
        .unwrap();
        assert_eq!(p.redis_processes.names, ["redis-server", "keydb-server"]);
        assert!(p.redis_processes.gate);
        let p = Profile::from_yaml("redis_processes: {gate: true}\n").unwrap();
        assert_eq!(p.redis_processes.names, d.redis_processes.names);
        let got: Vec<String> = issues(
            "redis_processes: {names: [redis-server, /usr/bin/redis, 7], gate: yes please, colour: red}\n",
        )
        .iter()
        .map(|i| i.to_string())
        .collect();
        assert_eq!(got.len(), 4, "{got:#?}");
        assert!(
            got.iter()
                .any(|i| i.starts_with("redis_processes.colour = \"red\": unknown key")),
            "{got:#?}"
        );
        assert!(
            got.iter()
                .any(|i| i
                    .starts_with("redis_processes.gate = \"yes please\": expected true or false")),
            "{got:#?}"
        );
        assert!(
            got.iter().any(|i| i.starts_with(
                "redis_processes.names[1] = \"/usr/bin/redis\": expected a process name"
            )),
            "{got:#?}"
        );
        assert!(
            got.iter()
                .any(|i| i.starts_with("redis_processes.names[2] = 7")),
            "{got:#?}"
        );
        assert_eq!(
            issues("redis_processes: {names: []}\n")[0].field,
            "redis_processes.names"
        );
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
}
