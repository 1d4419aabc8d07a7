//! The `.deb` built by the project's packaging (cargo-deb) and the unit's security score, shared
//! by the offline systemd tests and the ones under a booted systemd.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::{repo, text};

/// The package holds the static binary of the container image: one release build serves both.
pub const TARGET: &str = "x86_64-unknown-linux-musl";

/// `cargo deb --target x86_64-unknown-linux-musl` into `out_dir`; the package's path.
pub fn build_deb(out_dir: &Path) -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let deb = out_dir.join("redis-node-tuner.deb");
    let o = Command::new(cargo)
        .current_dir(repo())
        .args(["deb", "--target", TARGET, "--no-strip", "--output"])
        .arg(&deb)
        .stdin(Stdio::null())
        .output()
        .expect("cargo deb (cargo install cargo-deb --version 3.8.0 --locked)");
    assert!(
        o.status.success(),
        "cargo deb (cargo install cargo-deb --version 3.8.0 --locked): {}",
        text(&o)
    );
    deb
}

/// The overall exposure level in the output of `systemd-analyze security UNIT`.
pub fn exposure_level(out: &str) -> Option<f64> {
    out.lines().find_map(|l| {
        l.split("Overall exposure level for ")
            .nth(1)?
            .split(": ")
            .nth(1)?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    })
}
