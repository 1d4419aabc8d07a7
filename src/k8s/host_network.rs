//! What the agent learns from its own Pod: that it runs on host networking (the proof that its
//! `net.*` knobs are the host's), and that it tolerates its own taint (or it would be evicted by
//! it under `NoExecute`).

use k8s_openapi::api::core::v1::{Pod, Toleration};

use super::TAINT_KEY;

/// Facts read from the agent's own Pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodFacts {
    /// `namespace/name`.
    pub pod: String,
    pub host_network: bool,
    /// Whether the Pod tolerates our taint with the configured effect (`true` when the taint is
    /// off).
    pub tolerates_own_taint: bool,
}

impl PodFacts {
    pub fn of(pod: &Pod, taint_effect: Option<&str>) -> PodFacts {
        let spec = pod.spec.as_ref();
        let tolerations = spec
            .and_then(|s| s.tolerations.as_deref())
            .unwrap_or_default();
        PodFacts {
            pod: format!(
                "{}/{}",
                pod.metadata.namespace.as_deref().unwrap_or_default(),
                pod.metadata.name.as_deref().unwrap_or_default()
            ),
            host_network: spec.and_then(|s| s.host_network) == Some(true),
            tolerates_own_taint: taint_effect
                .is_none_or(|effect| tolerations.iter().any(|t| tolerates(t, TAINT_KEY, effect))),
        }
    }

    /// The proof text handed to the kernel layer, if the Pod proves host networking.
    pub fn proof(&self) -> Option<String> {
        self.host_network
            .then(|| format!("pod {} has hostNetwork: true", self.pod))
    }
}

/// Whether toleration `t` tolerates a taint `key` (no value) with `effect`, by the scheduler's
/// and the taint manager's rules: an empty key with `Exists` matches every key; an empty effect
/// matches every effect; `Equal` (the default operator) needs an equal (here: empty) value.
pub fn tolerates(t: &Toleration, key: &str, effect: &str) -> bool {
    let operator = t.operator.as_deref().unwrap_or("Equal");
    let key_ok = match t.key.as_deref() {
        None | Some("") => operator == "Exists",
        Some(k) => k == key,
    };
    let value_ok = operator == "Exists" || t.value.as_deref().unwrap_or_default().is_empty();
    let effect_ok = t
        .effect
        .as_deref()
        .is_none_or(|e| e.is_empty() || e == effect);
    key_ok && value_ok && effect_ok
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::PodSpec;

    fn t(
        key: Option<&str>,
        op: Option<&str>,
        value: Option<&str>,
        effect: Option<&str>,
    ) -> Toleration {
        Toleration {
            key: key.map(String::from),
            operator: op.map(String::from),
            value: value.map(String::from),
            effect: effect.map(String::from),
            toleration_seconds: None,
        }
    }

    #[test]
    fn toleration_rules() {
        let k = Some(TAINT_KEY);
        // The shipped toleration: every effect.
        let all = t(k, Some("Exists"), None, None);
        for e in ["NoSchedule", "PreferNoSchedule", "NoExecute"] {
            assert!(tolerates(&all, TAINT_KEY, e), "{e}");
        }
        // The old one: NoSchedule only, which let NoExecute evict the agent.
        let no_schedule = t(k, Some("Exists"), None, Some("NoSchedule"));
        assert!(tolerates(&no_schedule, TAINT_KEY, "NoSchedule"));
        assert!(!tolerates(&no_schedule, TAINT_KEY, "NoExecute"));
        // Tolerate-everything (empty key, Exists).
        assert!(tolerates(
            &t(None, Some("Exists"), None, None),
            TAINT_KEY,
            "NoExecute"
        ));
        // Equal with an empty value matches our value-less taint; another value does not.
        assert!(tolerates(
            &t(k, None, None, Some("NoExecute")),
            TAINT_KEY,
            "NoExecute"
        ));
        assert!(!tolerates(
            &t(k, Some("Equal"), Some("x"), None),
            TAINT_KEY,
            "NoExecute"
        ));
        assert!(!tolerates(
            &t(Some("other"), Some("Exists"), None, None),
            TAINT_KEY,
            "NoExecute"
        ));
        // An empty key with Equal matches nothing.
        assert!(!tolerates(
            &t(None, Some("Equal"), None, None),
            TAINT_KEY,
            "NoSchedule"
        ));
    }

    #[test]
    fn facts_of_a_pod() {
        let mut pod = Pod::default();
        pod.metadata.namespace = Some("ns".into());
        pod.metadata.name = Some("agent-x".into());
        pod.spec = Some(PodSpec {
            host_network: Some(true),
            tolerations: Some(vec![t(
                Some(TAINT_KEY),
                Some("Exists"),
                None,
                Some("NoSchedule"),
            )]),
            ..PodSpec::default()
        });
        let f = PodFacts::of(&pod, Some("NoExecute"));
        assert!(f.host_network && !f.tolerates_own_taint);
        assert_eq!(
            f.proof().as_deref(),
            Some("pod ns/agent-x has hostNetwork: true")
        );
        assert!(PodFacts::of(&pod, Some("NoSchedule")).tolerates_own_taint);
        assert!(PodFacts::of(&pod, None).tolerates_own_taint, "taint off");
        pod.spec = Some(PodSpec::default());
        assert_eq!(PodFacts::of(&pod, None).proof(), None);
    }
}
