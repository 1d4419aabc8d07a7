//! The pinned Helm of the chart tests (tests/helm/build.sh: built from the Go module proxy once,
//! then cached), run with its state in a temp dir of its own.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use super::{Out, repo};

/// The chart's directory.
pub fn chart() -> PathBuf {
    repo().join("deploy/helm/redis-node-tuner")
}

/// Builds (or finds in the cache) the pinned Helm.
pub fn helm_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let out = Command::new("bash")
            .arg(repo().join("tests/helm/build.sh"))
            .stderr(Stdio::inherit())
            .output()
            .expect("run tests/helm/build.sh");
        assert!(out.status.success(), "building helm failed");
        let stdout = String::from_utf8_lossy(&out.stdout);
        PathBuf::from(stdout.lines().last().expect("helm path").trim())
    })
}

/// Helm with its state in a temp dir of its own (no user config, cache or repositories).
pub fn helm(args: &[&str]) -> Out {
    helm_env(args, &[])
}

/// As [`helm`], with extra environment variables (e.g. `KUBECONFIG`).
pub fn helm_env(args: &[&str], env: &[(&str, &Path)]) -> Out {
    let home = tempfile::tempdir().expect("helm home");
    let mut cmd = Command::new(helm_bin());
    cmd.env("HELM_CACHE_HOME", home.path().join("cache"))
        .env("HELM_CONFIG_HOME", home.path().join("config"))
        .env("HELM_DATA_HOME", home.path().join("data"))
        .args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    Out::of(cmd.output().expect("run helm"))
}
