//! Sysctl names: the check that keeps every name inside `/proc/sys` (the file a name stands for
//! is the kernel layer's [`crate::kernel::sysctl_rel_path`]).

/// The first segment of the THP settings' names (`thp.enabled`, `thp.hugepages-64kB.enabled`):
/// reserved, so a sysctl can never take a THP setting's name (there is no `/proc/sys/thp`).
pub const THP_NAMESPACE: &str = "thp";

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

#[cfg(test)]
mod tests {
    use super::*;

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
}
