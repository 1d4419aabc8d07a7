//! The release artefacts of both architectures (`scripts/build-release.sh`): one static musl
//! release binary per architecture, shared by the image, the `.deb` and these tests. The arm64
//! binary runs `check`, `apply` and `check` again over a fake tree under `qemu-aarch64-static`;
//! each image holds exactly its binary, is ≤ 8 MB and is in the manifest list; each `.deb`
//! holds exactly its binary, for its architecture; each SBOM lists the binary's crates.
//!
//! Needs root (podman), and what scripts/release-tools.sh installs: the rustup targets,
//! gcc-aarch64-linux-gnu, qemu-user-static, cargo-deb, cargo-cyclonedx.

mod common;
use common::*;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use serde_json::Value;

const ARCHES: [&str; 2] = ["amd64", "arm64"];
/// The image budget of issue 11 (bytes, as podman counts them).
const IMAGE_BUDGET: u64 = 8_000_000;
const TAG: &str = "localhost/redis-node-tuner-release-test";

fn version() -> &'static str {
    env!("CARGO_PKG_VERSION")
}

/// Runs scripts/build-release.sh once for every test of this file; the dist directory.
fn dist() -> &'static Path {
    static DIST: OnceLock<PathBuf> = OnceLock::new();
    DIST.get_or_init(|| {
        for p in ["podman", "qemu-aarch64-static", "dpkg-deb"] {
            require(p);
        }
        let out = Command::new(repo().join("scripts/build-release.sh"))
            .env("TAG", TAG)
            .env(
                "CARGO",
                std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()),
            )
            .stdin(Stdio::null())
            .stderr(Stdio::inherit())
            .output()
            .expect("run scripts/build-release.sh");
        assert!(out.status.success(), "scripts/build-release.sh failed");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let dir = PathBuf::from(stdout.lines().last().expect("dist path").trim());
        if dir.is_absolute() {
            dir
        } else {
            repo().join(dir)
        }
    })
}

fn binary(arch: &str) -> PathBuf {
    dist().join(format!("redis-node-tuner-{}-{arch}", version()))
}

fn sha256(p: &Path) -> String {
    let out = Command::new("sha256sum")
        .arg(p)
        .output()
        .expect("sha256sum");
    assert!(out.status.success(), "sha256sum {}", p.display());
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or("")
        .to_string()
}

/// (e_machine, has a PT_INTERP program header) of a 64-bit little-endian ELF file.
fn elf_facts(p: &Path) -> (u16, bool) {
    let b = std::fs::read(p).expect("read binary");
    assert_eq!(&b[..4], b"\x7fELF", "{} is no ELF file", p.display());
    assert_eq!((b[4], b[5]), (2, 1), "not ELF64 little-endian");
    let u16_at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
    let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes"));
    let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"));
    let machine = u16_at(18);
    let phoff = u64_at(32) as usize;
    let (phentsize, phnum) = (u16_at(54) as usize, u16_at(56) as usize);
    let interp = (0..phnum).any(|i| u32_at(phoff + i * phentsize) == 3);
    (machine, interp)
}

fn qemu(t: &Tree, args: &[&str]) -> Out {
    let mut c = Command::new("qemu-aarch64-static");
    c.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .arg(binary("arm64"))
        .arg("--proc-root")
        .arg(t.path("proc"))
        .arg("--sys-root")
        .arg(t.path("sys"))
        .arg("--state-dir")
        .arg(t.state_dir())
        .args(args);
    Out::of(c.output().expect("run qemu-aarch64-static"))
}

#[test]
fn static_binaries_of_both_arches_and_the_arm64_one_tunes_a_fake_tree_under_qemu() {
    // EM_X86_64 = 62, EM_AARCH64 = 183; static: no program interpreter.
    assert_eq!(elf_facts(&binary("amd64")), (62, false));
    assert_eq!(elf_facts(&binary("arm64")), (183, false));

    let t = Tree::untuned();
    let out = qemu(&t, &["--version"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains(version()), "{out:?}");

    let before = qemu(&t, &["check"]);
    println!("qemu-aarch64-static redis-node-tuner check (untuned fake tree):\n{before:?}");
    assert_eq!(before.code, 1, "drift on an untuned tree: {before:?}");
    for row in [
        "vm.overcommit_memory",
        "net.core.somaxconn",
        "thp.enabled",
        "thp.defrag",
    ] {
        assert!(
            before
                .stdout
                .lines()
                .any(|l| l.starts_with(row) && l.ends_with("drift")),
            "{row} not reported as drift: {before:?}"
        );
    }

    let apply = qemu(&t, &["apply"]);
    assert_eq!(apply.code, 0, "{apply:?}");
    assert_eq!(t.get(OVERCOMMIT).trim(), "1");
    assert_eq!(t.get(SOMAXCONN).trim(), "2048");
    // A plain file: holds what the agent wrote (the kernel would show "[never]").
    assert_eq!(t.get(THP_ENABLED).trim(), "never");

    let after = qemu(&t, &["check", "-o", "json"]);
    println!("qemu-aarch64-static redis-node-tuner check -o json (after apply):\n{after:?}");
    assert_eq!(after.code, 0, "{after:?}");
    let j: Value = serde_json::from_str(&after.stdout).expect("check JSON");
    assert_eq!(j["ready"], Value::Bool(true), "{j:#}");
    // The journal written by the arm64 binary holds the originals.
    let journal = std::fs::read_to_string(t.state_dir().join("originals.json")).expect("journal");
    assert!(journal.contains("vm.overcommit_memory"), "{journal}");
}

fn podman(args: &[&str]) -> Out {
    Out::of(
        Command::new("podman")
            .arg("--runtime")
            .arg("runc")
            .args(args)
            .output()
            .expect("run podman"),
    )
}

#[test]
fn images_of_both_arches_hold_their_binary_within_budget_in_one_manifest_list() {
    dist();
    let list = format!("{TAG}:{}-multiarch", version());
    let out = podman(&["manifest", "inspect", &list]);
    assert_eq!(out.code, 0, "{out:?}");
    let m: Value = serde_json::from_str(&out.stdout).expect("manifest JSON");
    let mut arches: Vec<String> = m["manifests"]
        .as_array()
        .expect("manifests")
        .iter()
        .map(|e| {
            assert_eq!(e["platform"]["os"], "linux", "{e:#}");
            e["platform"]["architecture"]
                .as_str()
                .unwrap_or("")
                .to_string()
        })
        .collect();
    arches.sort();
    assert_eq!(arches, ARCHES, "{m:#}");

    for arch in ARCHES {
        let image = format!("{TAG}:{}-{arch}", version());
        let out = podman(&["image", "inspect", &image]);
        assert_eq!(out.code, 0, "{out:?}");
        let info: Value = serde_json::from_str(&out.stdout).expect("inspect JSON");
        let info = &info[0];
        assert_eq!(info["Architecture"], arch, "{image}");
        let size = info["Size"].as_u64().expect("Size");
        println!("image {image}: {size} bytes");
        assert!(
            size <= IMAGE_BUDGET,
            "{image} is {size} bytes, over the {IMAGE_BUDGET} budget"
        );
        // The binary in the image is the one tested here (and packaged in the .deb).
        let out = podman(&["image", "mount", &image]);
        assert_eq!(out.code, 0, "{out:?}");
        let root = PathBuf::from(out.stdout.trim());
        let inside = sha256(&root.join("usr/bin/redis-node-tuner"));
        let _ = podman(&["image", "unmount", &image]);
        assert_eq!(inside, sha256(&binary(arch)), "{image}: another binary");
    }
}

#[test]
fn debs_of_both_arches_hold_their_binary() {
    for arch in ARCHES {
        let deb = dist().join(format!("redis-node-tuner_{}-1_{arch}.deb", version()));
        let out = Out::of(
            Command::new("dpkg-deb")
                .arg("--field")
                .arg(&deb)
                .arg("Architecture")
                .output()
                .expect("dpkg-deb --field"),
        );
        assert_eq!(out.code, 0, "{}: {out:?}", deb.display());
        assert_eq!(out.stdout.trim(), arch, "{}", deb.display());
        let dir = tempfile::tempdir().expect("tempdir");
        let out = Out::of(
            Command::new("dpkg-deb")
                .arg("--extract")
                .arg(&deb)
                .arg(dir.path())
                .output()
                .expect("dpkg-deb --extract"),
        );
        assert_eq!(out.code, 0, "{out:?}");
        assert_eq!(
            sha256(&dir.path().join("usr/bin/redis-node-tuner")),
            sha256(&binary(arch)),
            "{}: another binary",
            deb.display()
        );
        for f in [
            "usr/lib/systemd/system/redis-node-tuner.service",
            "etc/redis-node-tuner/config.yaml",
        ] {
            assert!(dir.path().join(f).is_file(), "{}: no {f}", deb.display());
        }
    }
}

#[test]
fn sboms_list_the_crates_of_each_binary() {
    for arch in ARCHES {
        let p = dist().join(format!("redis-node-tuner-{}-{arch}.cdx.json", version()));
        let bom: Value = serde_json::from_str(
            &std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display())),
        )
        .expect("SBOM is JSON");
        assert_eq!(bom["bomFormat"], "CycloneDX", "{}", p.display());
        let names: Vec<&str> = bom["components"]
            .as_array()
            .expect("components")
            .iter()
            .filter_map(|c| c["name"].as_str())
            .collect();
        println!("SBOM {}: {} components", p.display(), names.len());
        for want in [
            "tokio",
            "kube-client",
            "rustls",
            "ring",
            "serde-saphyr",
            "clap",
        ] {
            assert!(names.contains(&want), "{}: no {want}", p.display());
        }
        // Only what is linked into the binary: no dev-dependencies.
        for dev in ["criterion", "proptest"] {
            assert!(!names.contains(&dev), "{}: lists {dev}", p.display());
        }
        assert!(
            bom["metadata"]["component"]["name"] == "redis-node-tuner",
            "{}: {:#}",
            p.display(),
            bom["metadata"]
        );
    }
}
