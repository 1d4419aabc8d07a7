//! What `net.core.somaxconn` a network namespace starts with. The value is per network
//! namespace and a new namespace (a pod's) does not inherit the host's: it starts at the
//! kernel's `SOMAXCONN`, 4096 since Linux 5.4 and 128 before.

/// `SOMAXCONN` of the kernel `release` (as in `uname -r`, e.g. `6.1.0-57-amd64`), or `None`
/// when the release does not start with `MAJOR.MINOR`.
pub fn new_netns_somaxconn(release: &str) -> Option<u32> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let major: u32 = parts.next()?.parse().ok()?;
    let minor: u32 = parts.next()?.parse().ok()?;
    Some(if (major, minor) >= (5, 4) { 4096 } else { 128 })
}

/// The running kernel's release (`uname -r`; the host's, also inside a container).
pub fn kernel_release() -> String {
    nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_changed_in_5_4() {
        assert_eq!(new_netns_somaxconn("4.18.0-553.el8_10.x86_64"), Some(128));
        assert_eq!(new_netns_somaxconn("5.3.18"), Some(128));
        assert_eq!(new_netns_somaxconn("5.4.0-1"), Some(4096));
        assert_eq!(new_netns_somaxconn("6.1.0-57-amd64"), Some(4096));
        assert_eq!(new_netns_somaxconn("6.12.117+deb12"), Some(4096));
        assert_eq!(new_netns_somaxconn("linux"), None);
        assert_eq!(new_netns_somaxconn("6"), None);
    }
}
