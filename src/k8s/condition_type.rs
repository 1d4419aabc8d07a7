//! The type of the agent's Node condition (`--condition-type`): `RedisKernelTuned` unless told
//! otherwise, validated as Kubernetes validates a condition type (a qualified name).

use std::fmt;
use std::str::FromStr;

/// The default condition type (the one dashboards, alerts and the admission policy know).
pub const DEFAULT: &str = "RedisKernelTuned";

/// The domain-qualified type recommended for node-readiness-controller rules.
pub const QUALIFIED: &str = "redis-node-tuner.io/KernelTuned";

/// The kubelet's own Node condition types: never the agent's (it would overwrite them, and the
/// kubelet would overwrite it).
pub const KUBELET: [&str; 5] = [
    "Ready",
    "MemoryPressure",
    "DiskPressure",
    "PIDPressure",
    "NetworkUnavailable",
];

/// Longest name part of a qualified name.
const NAME_MAX: usize = 63;
/// Longest prefix (a DNS subdomain).
const PREFIX_MAX: usize = 253;

/// Why a condition type is not a qualified name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConditionTypeError {
    #[error("empty")]
    Empty,
    #[error("more than one '/'")]
    TooManySlashes,
    #[error("empty prefix before '/'")]
    EmptyPrefix,
    #[error(
        "prefix {0:?} is not a DNS subdomain (at most 253 characters; lowercase alphanumeric labels of at most 63 characters separated by '.', each starting and ending with an alphanumeric, '-' inside)"
    )]
    BadPrefix(String),
    #[error("empty name")]
    EmptyName,
    #[error("name {0:?} is longer than 63 characters")]
    NameTooLong(String),
    #[error(
        "name {0:?} must be alphanumeric, '-', '_' or '.', starting and ending with an alphanumeric"
    )]
    BadName(String),
    #[error("{0} is the kubelet's condition; use a type of your own, e.g. {QUALIFIED}")]
    Kubelet(String),
}

/// A validated condition type: an optional DNS-subdomain prefix and '/', then a name of at most
/// 63 characters matching `[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ConditionType(String);

impl ConditionType {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for ConditionType {
    fn default() -> Self {
        ConditionType(DEFAULT.to_string())
    }
}

impl fmt::Display for ConditionType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for ConditionType {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl FromStr for ConditionType {
    type Err = ConditionTypeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        validate(s)?;
        Ok(ConditionType(s.to_string()))
    }
}

/// Checks `s` as a Kubernetes qualified name (what the API server accepts as a condition type).
pub fn validate(s: &str) -> Result<(), ConditionTypeError> {
    if s.is_empty() {
        return Err(ConditionTypeError::Empty);
    }
    let (prefix, name) = match s.split_once('/') {
        None => (None, s),
        Some((_, rest)) if rest.contains('/') => return Err(ConditionTypeError::TooManySlashes),
        Some((p, n)) => (Some(p), n),
    };
    if let Some(p) = prefix {
        if p.is_empty() {
            return Err(ConditionTypeError::EmptyPrefix);
        }
        if !is_dns_subdomain(p) {
            return Err(ConditionTypeError::BadPrefix(p.to_string()));
        }
    }
    if name.is_empty() {
        return Err(ConditionTypeError::EmptyName);
    }
    if name.len() > NAME_MAX {
        return Err(ConditionTypeError::NameTooLong(name.to_string()));
    }
    let bytes = name.as_bytes();
    let inner_ok = bytes
        .iter()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    let ends_ok = bytes.first().is_some_and(u8::is_ascii_alphanumeric)
        && bytes.last().is_some_and(u8::is_ascii_alphanumeric);
    if !(inner_ok && ends_ok) {
        return Err(ConditionTypeError::BadName(name.to_string()));
    }
    if KUBELET.contains(&s) {
        return Err(ConditionTypeError::Kubelet(s.to_string()));
    }
    Ok(())
}

/// RFC 1123 subdomain: at most 253 characters, labels of `[a-z0-9]([-a-z0-9]*[a-z0-9])?`
/// (each at most 63) separated by '.'.
fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= PREFIX_MAX
        && s.split('.').all(|label| {
            let b = label.as_bytes();
            !b.is_empty()
                && b.len() <= 63
                && b.iter()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
                && b.first().is_some_and(|c| *c != b'-')
                && b.last().is_some_and(|c| *c != b'-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_plain_and_qualified_names() {
        for ok in [
            DEFAULT,
            QUALIFIED,
            "Readiness",
            "example.com/Ready",
            "a",
            "A1",
            "x_y.z-w",
            "network.kubernetes.io/CNIReady",
            "projectcalico.org/CalicoReady",
            "a-b.c0/N",
            &"n".repeat(63),
            &format!(
                "{}/N",
                [
                    "a".repeat(63),
                    "b".repeat(63),
                    "c".repeat(63),
                    "d".repeat(61)
                ]
                .join(".")
            ),
        ] {
            assert_eq!(validate(ok), Ok(()), "{ok:?}");
            assert_eq!(
                ok.parse::<ConditionType>()
                    .map(|c| c.to_string())
                    .as_deref(),
                Ok(ok)
            );
        }
    }

    #[test]
    fn rejects_what_the_api_server_would_refuse() {
        use ConditionTypeError::*;
        let long_prefix = format!(
            "{}/N",
            [
                "a".repeat(63),
                "b".repeat(63),
                "c".repeat(63),
                "d".repeat(62)
            ]
            .join(".")
        );
        let cases: &[(&str, ConditionTypeError)] = &[
            ("", Empty),
            ("a/b/c", TooManySlashes),
            ("/Tuned", EmptyPrefix),
            ("redis-node-tuner.io/", EmptyName),
            ("Redis.IO/Tuned", BadPrefix("Redis.IO".into())),
            ("-a.io/Tuned", BadPrefix("-a.io".into())),
            ("a..io/Tuned", BadPrefix("a..io".into())),
            ("a_b.io/Tuned", BadPrefix("a_b.io".into())),
            (
                &long_prefix,
                BadPrefix(long_prefix.split('/').next().unwrap_or_default().into()),
            ),
            (&"n".repeat(64), NameTooLong("n".repeat(64))),
            ("Kernel Tuned", BadName("Kernel Tuned".into())),
            ("-Tuned", BadName("-Tuned".into())),
            ("Tuned.", BadName("Tuned.".into())),
            ("_x", BadName("_x".into())),
            ("Tüned", BadName("Tüned".into())),
            ("a.io/Tuned!", BadName("Tuned!".into())),
            ("Ready", Kubelet("Ready".into())),
            ("MemoryPressure", Kubelet("MemoryPressure".into())),
            ("DiskPressure", Kubelet("DiskPressure".into())),
            ("PIDPressure", Kubelet("PIDPressure".into())),
            ("NetworkUnavailable", Kubelet("NetworkUnavailable".into())),
        ];
        for (s, want) in cases {
            assert_eq!(validate(s).as_ref(), Err(want), "{s:?}");
            assert!(s.parse::<ConditionType>().is_err(), "{s:?}");
        }
    }

    #[test]
    fn default_is_the_historic_type() {
        assert_eq!(ConditionType::default().as_str(), "RedisKernelTuned");
        assert_eq!(ConditionType::default().as_str(), crate::k8s::CONDITION);
    }
}
