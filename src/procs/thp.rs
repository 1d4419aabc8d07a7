//! Transparent hugepages as one process gets them: the host's `enabled` files (top-level and
//! per size) and the process's own `THP_enabled` (0 after `prctl(PR_SET_THP_DISABLE)`, which
//! Redis 6.2+ calls when the top-level file says `[always]`).

use crate::kernel::{selected_word, thp_sizes};
use std::path::Path;

use serde::Serialize;

/// The host's THP `enabled` words: the top-level one and each size's (`hugepages-<n>kB`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct HostThp {
    /// `None`: no THP on this kernel (or unreadable).
    pub top: Option<String>,
    /// (directory name, word) of each size with an `enabled` file.
    pub sizes: Vec<(String, String)>,
}

impl HostThp {
    /// Reads `<sys-root>/kernel/mm/transparent_hugepage/{enabled,hugepages-*kB/enabled}`.
    pub fn read(sys_root: &Path) -> HostThp {
        let dir = sys_root.join(crate::kernel::THP_DIR);
        let word = |p: &Path| {
            std::fs::read_to_string(p)
                .ok()
                .and_then(|t| selected_word(&t).map(str::to_string))
        };
        HostThp {
            top: word(&dir.join("enabled")),
            sizes: thp_sizes(sys_root)
                .into_iter()
                .filter_map(|(_, name)| {
                    let w = word(&dir.join(&name).join("enabled"))?;
                    Some((name, w))
                })
                .collect(),
        }
    }

    /// Where THP is given to every process that has not opted out: the top-level file or a
    /// size that says `always` (a size's `inherit` follows the top-level word). `madvise` gives
    /// hugepages only to ranges a process `madvise(MADV_HUGEPAGE)`s, which Redis never does.
    pub fn always(&self) -> Vec<String> {
        let top_always = self.top.as_deref() == Some("always");
        let mut out = vec![];
        if top_always {
            out.push("enabled=always".to_string());
        }
        for (size, w) in &self.sizes {
            if w == "always" || (w == "inherit" && top_always) {
                out.push(format!("{size}/enabled={w}"));
            }
        }
        out
    }
}

/// The THP verdict of one process: in sync (`None`) or why not.
///
/// | `THP_enabled` | some `always` (top or per size, `inherit` resolved) | verdict |
/// |---|---|---|
/// | 0 (prctl) | any | in sync: no THP for this process |
/// | 1 / unknown | none | in sync: `never` or `madvise` everywhere |
/// | 1 | some | out of sync: the kernel gives it hugepages |
/// | unknown | some | out of sync (no proof it opted out) |
pub fn verdict(host: &HostThp, thp_enabled: Option<bool>) -> Result<(), String> {
    if thp_enabled == Some(false) {
        return Ok(());
    }
    let always = host.always();
    if always.is_empty() {
        return Ok(());
    }
    Err(format!(
        "THP {} and the process has not disabled THP (THP_enabled: {})",
        always.join(", "),
        match thp_enabled {
            Some(true) => "1",
            _ => "unknown",
        }
    ))
}

/// The `THP_enabled:` line of `/proc/<pid>/status` (Linux 5.0+).
pub fn status_thp_enabled(status: &str) -> Option<bool> {
    status.lines().find_map(|l| {
        let v = l.strip_prefix("THP_enabled:")?.trim();
        Some(v != "0")
    })
}

/// Bytes of a `Key:   N kB` line of `/proc/<pid>/smaps_rollup`.
pub fn rollup_bytes(rollup: &str, key: &str) -> Option<u64> {
    rollup.lines().find_map(|l| {
        let rest = l.strip_prefix(key)?.strip_prefix(':')?;
        let kb: u64 = rest.trim().strip_suffix("kB")?.trim().parse().ok()?;
        Some(kb * 1024)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(top: Option<&str>, sizes: &[(&str, &str)]) -> HostThp {
        HostThp {
            top: top.map(str::to_string),
            sizes: sizes
                .iter()
                .map(|(s, w)| (s.to_string(), w.to_string()))
                .collect(),
        }
    }

    #[test]
    fn the_verdict_table() {
        let never = host(Some("never"), &[("hugepages-64kB", "never")]);
        let madvise = host(Some("madvise"), &[("hugepages-2048kB", "inherit")]);
        let always = host(Some("always"), &[]);
        let size_always = host(Some("never"), &[("hugepages-64kB", "always")]);
        let inherit_always = host(Some("always"), &[("hugepages-2048kB", "inherit")]);
        let no_thp = host(None, &[]);
        for (h, enabled, ok) in [
            (&never, Some(true), true),
            (&never, None, true),
            (&madvise, Some(true), true),
            (&no_thp, Some(true), true),
            (&always, Some(true), false),
            (&always, None, false),
            (&always, Some(false), true),
            (&size_always, Some(true), false),
            (&size_always, Some(false), true),
            (&inherit_always, Some(true), false),
        ] {
            assert_eq!(
                verdict(h, enabled).is_ok(),
                ok,
                "{h:?} THP_enabled {enabled:?}"
            );
        }
        let why = verdict(&size_always, Some(true)).unwrap_err();
        assert!(why.contains("hugepages-64kB/enabled=always"), "{why}");
        assert_eq!(
            inherit_always.always(),
            ["enabled=always", "hugepages-2048kB/enabled=inherit"]
        );
    }

    #[test]
    fn status_and_rollup_lines() {
        assert_eq!(
            status_thp_enabled("Name:\tredis-server\nTHP_enabled:\t0\nThreads:\t5\n"),
            Some(false)
        );
        assert_eq!(status_thp_enabled("THP_enabled:\t1\n"), Some(true));
        assert_eq!(status_thp_enabled("Name:\tx\n"), None);
        let r = "Rss:  16840 kB\nAnonHugePages:      6144 kB\nShmemPmdMapped:        0 kB\n";
        assert_eq!(rollup_bytes(r, "AnonHugePages"), Some(6144 * 1024));
        assert_eq!(rollup_bytes(r, "ShmemPmdMapped"), Some(0));
        assert_eq!(rollup_bytes(r, "FilePmdMapped"), None);
        assert_eq!(selected_word("always [madvise] never\n"), Some("madvise"));
        assert_eq!(selected_word("never\n"), Some("never"));
    }
}
