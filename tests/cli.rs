//! The one-shot commands over a fake /proc + /sys tree.

mod common;
use common::*;

#[test]
fn check_reports_drift_as_table_and_json_and_never_writes() {
    let t = Tree::untuned();
    let out = t.run(&["check"]);
    assert_eq!(out.code, 1, "{out:?}");
    let header = out.stdout.lines().next().unwrap_or("");
    for col in ["SETTING", "DESIRED", "ACTUAL", "MODE", "STATE"] {
        assert!(header.contains(col), "{out:?}");
    }
    assert!(
        out.stdout
            .contains("node: not ready (5 enforce-mode setting(s) out of sync)"),
        "{out:?}"
    );
    let line = out
        .stdout
        .lines()
        .find(|l| l.starts_with("net.core.somaxconn"))
        .unwrap_or("");
    assert_eq!(
        line.split_whitespace().collect::<Vec<_>>(),
        [
            "net.core.somaxconn",
            ">=",
            "2048",
            "128",
            "enforce",
            "drift"
        ],
        "{out:?}"
    );

    let out = t.run(&["check", "--output", "json"]);
    assert_eq!(out.code, 1, "{out:?}");
    let v: serde_json::Value = serde_json::from_str(&out.stdout).expect("json");
    assert_eq!(v["ready"], false);
    let s = v["settings"].as_array().expect("settings");
    let oc = s
        .iter()
        .find(|k| k["name"] == "vm.overcommit_memory")
        .expect("overcommit");
    assert_eq!(oc["desired"], "1");
    assert_eq!(oc["actual"], "0");
    assert_eq!(oc["in_sync"], false);
    assert_eq!(oc["mode"], "enforce");
    assert!(
        s.iter()
            .any(|k| k["name"] == "thp.hugepages-2048kB.enabled" && k["actual"] == "always")
    );
    // Nothing was written, no journal made.
    assert_eq!(t.get(OVERCOMMIT), "0\n");
    assert!(!t.state_dir().exists());
}

#[test]
fn apply_then_check_then_restore_round_trip() {
    let t = Tree::untuned();
    let dry = t.run(&["apply", "--dry-run"]);
    assert_eq!(dry.code, 1, "{dry:?}");
    assert!(
        dry.stdout
            .contains("would change vm.overcommit_memory: 0 -> 1"),
        "{dry:?}"
    );
    assert!(
        dry.stdout
            .contains("would change net.core.somaxconn: 128 -> 2048"),
        "{dry:?}"
    );
    assert_eq!(t.get(OVERCOMMIT), "0\n");
    assert!(!t.state_dir().exists());

    let out = t.run(&["apply"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        out.stdout.contains("changed thp.enabled: always -> never"),
        "{out:?}"
    );
    assert_eq!(t.get(OVERCOMMIT), "1\n");
    assert_eq!(t.get(SOMAXCONN), "2048\n");
    assert_eq!(t.get(THP_ENABLED), "never\n");
    assert_eq!(t.get(THP_DEFRAG), "never\n");
    assert_eq!(t.get(THP_2M), "never\n");
    assert_eq!(t.run(&["check"]).code, 0);
    assert_eq!(t.run(&["apply", "--dry-run"]).code, 0);

    // A second apply after further drift never overwrites the recorded originals.
    t.put(OVERCOMMIT, "2\n");
    assert_eq!(t.run(&["apply"]).code, 0);
    let j: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(t.state_dir().join("originals.json")).expect("journal"),
    )
    .expect("journal json");
    assert_eq!(j["originals"]["vm.overcommit_memory"]["value"], "0");
    assert_eq!(j["originals"]["thp.defrag"]["value"], "madvise");
    assert!(
        j["originals"]["net.core.somaxconn"]["netns"].is_u64(),
        "{j}"
    );

    let out = t.run(&["restore"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(t.get(OVERCOMMIT), "0\n");
    assert_eq!(t.get(SOMAXCONN), "128\n");
    assert_eq!(t.get(THP_ENABLED), "always\n");
    assert_eq!(t.get(THP_DEFRAG), "madvise\n");
    assert_eq!(t.get(THP_2M), "always\n");
    assert!(!t.state_dir().join("originals.json").exists());
    let again = t.run(&["restore"]);
    assert_eq!(again.code, 0, "{again:?}");
    assert!(again.stdout.contains("nothing to restore"), "{again:?}");
}

#[test]
fn higher_somaxconn_is_kept() {
    let t = Tree::untuned();
    t.put(SOMAXCONN, "65535\n");
    assert_eq!(t.run(&["apply"]).code, 0);
    assert_eq!(t.get(SOMAXCONN), "65535\n");
}

#[test]
fn bad_config_exits_2_names_every_problem_and_writes_nothing() {
    let t = Tree::untuned();
    let cfg = t.path("bad.yaml");
    std::fs::write(
        &cfg,
        "sysctls:\n  vm.overcommit_memory: {equals: 7}\n  net.core.somaxconn: {at_least: -5}\n  ../x.y: {equals: 1}\nthp:\n  enabled: sometimes\nbogus: 1\n",
    )
    .expect("write config");
    let cfg_s = cfg.to_string_lossy().into_owned();
    for cmd in ["check", "apply", "run"] {
        let out = t.run(&["--config", &cfg_s, cmd]);
        assert_eq!(out.code, 2, "{cmd}: {out:?}");
        assert!(out.stderr.contains("bad.yaml"), "{out:?}");
        for needle in [
            "sysctls[\"vm.overcommit_memory\"].equals = 7",
            "sysctls[\"net.core.somaxconn\"].at_least = -5",
            "sysctls[\"../x.y\"]",
            "thp.enabled = \"sometimes\"",
            "bogus = 1: unknown key",
        ] {
            assert!(
                out.stderr.contains(needle),
                "{cmd}: missing {needle:?}: {out:?}"
            );
        }
    }
    assert_eq!(t.get(OVERCOMMIT), "0\n");
    assert_eq!(t.get(THP_ENABLED), "[always] madvise never\n");
    assert!(!t.state_dir().exists());

    let missing = t.run(&["--config", "/nonexistent/config.yaml", "check"]);
    assert_eq!(missing.code, 2, "{missing:?}");
    assert!(
        missing.stderr.contains("/nonexistent/config.yaml"),
        "{missing:?}"
    );
    let syntax = t.path("syntax.yaml");
    std::fs::write(&syntax, "sysctls: [\n").expect("write");
    let out = t.run(&["--config", &syntax.to_string_lossy(), "check"]);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("not valid YAML"), "{out:?}");
}

#[test]
fn config_file_and_env_change_the_profile() {
    let t = Tree::untuned();
    t.put("proc/sys/vm/swappiness", "60\n");
    let cfg = t.path("c.yaml");
    std::fs::write(
        &cfg,
        "sysctls:\n  vm.swappiness: {at_most: 10}\n  vm.overcommit_memory: {mode: audit}\nthp:\n  defrag: {equals: madvise}\n",
    )
    .expect("write");
    let out = Out::of(
        t.cmd(&["apply"])
            .env("REDIS_NODE_TUNER_CONFIG", &cfg)
            .output()
            .expect("spawn"),
    );
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(t.get("proc/sys/vm/swappiness"), "10\n");
    // audit mode: reported, never written
    assert_eq!(t.get(OVERCOMMIT), "0\n");
    assert_eq!(
        t.get(THP_DEFRAG),
        "always defer defer+madvise [madvise] never\n"
    );
    let json = Out::of(
        t.cmd(&["check"])
            .env("REDIS_NODE_TUNER_CONFIG", &cfg)
            .env("REDIS_NODE_TUNER_OUTPUT", "json")
            .output()
            .expect("spawn"),
    );
    assert_eq!(json.code, 0, "{json:?}");
    let v: serde_json::Value = serde_json::from_str(&json.stdout).expect("json");
    let oc = v["settings"]
        .as_array()
        .and_then(|s| {
            s.iter()
                .find(|k| k["name"] == "vm.overcommit_memory")
                .cloned()
        })
        .expect("overcommit");
    assert_eq!(
        (oc["mode"].as_str(), oc["in_sync"].as_bool()),
        (Some("audit"), Some(false))
    );
}

#[test]
fn unreadable_knob_exits_3() {
    let t = Tree::untuned();
    std::fs::remove_file(t.path(OVERCOMMIT)).expect("rm");
    let out = t.run(&["check"]);
    assert_eq!(out.code, 3, "{out:?}");
    assert!(
        out.stdout.contains("vm.overcommit_memory:") && out.stdout.contains("does not exist"),
        "{out:?}"
    );
    // apply sets what it can and says what it could not.
    let out = t.run(&["apply"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert_eq!(t.get(THP_ENABLED), "never\n");
}

#[test]
fn no_thp_is_not_applicable_and_a_wrong_sys_root_is_an_error() {
    let t = Tree::untuned();
    std::fs::remove_dir_all(t.path("sys/kernel/mm/transparent_hugepage")).expect("rm");
    let out = t.run(&["apply"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        out.stdout
            .lines()
            .any(|l| l.starts_with("thp.enabled") && l.contains("not_applicable")),
        "{out:?}"
    );

    let t = Tree::untuned();
    let out = Out::of(
        t.cmd(&["check", "--sys-root", "/nonexistent-sys"])
            .output()
            .expect("spawn"),
    );
    assert_eq!(out.code, 3, "{out:?}");
    assert!(
        out.stdout
            .contains("/nonexistent-sys/kernel/mm/transparent_hugepage/enabled does not exist"),
        "{out:?}"
    );
}

#[test]
fn unverified_network_namespace_is_never_in_sync() {
    let t = Tree::untuned();
    std::fs::remove_file(t.path("proc/1/ns/net")).expect("rm");
    t.put(SOMAXCONN, "4096\n");
    let out = t.run(&["check", "-o", "json"]);
    assert_eq!(out.code, 3, "{out:?}");
    let v: serde_json::Value = serde_json::from_str(&out.stdout).expect("json");
    assert!(
        v["netns"].as_str().unwrap_or("").starts_with("unverified"),
        "{v}"
    );
    let s = v["settings"]
        .as_array()
        .and_then(|s| {
            s.iter()
                .find(|k| k["name"] == "net.core.somaxconn")
                .cloned()
        })
        .expect("somaxconn");
    assert_eq!(s["in_sync"], false);
    assert!(
        s["error"].as_str().unwrap_or("").contains("not verified"),
        "{s}"
    );
    let out = t.run(&["apply"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert_eq!(t.get(SOMAXCONN), "4096\n");
}

#[test]
fn corrupt_journal_exits_4_and_nothing_is_written() {
    let t = Tree::untuned();
    std::fs::create_dir_all(t.state_dir()).expect("mkdir");
    std::fs::write(
        t.state_dir().join("originals.json"),
        "{\"version\":1,\"orig",
    )
    .expect("write");
    for cmd in ["apply", "restore"] {
        let out = t.run(&[cmd]);
        assert_eq!(out.code, 4, "{cmd}: {out:?}");
        assert!(
            out.stderr.contains("corrupt") && out.stderr.contains("originals.json"),
            "{out:?}"
        );
    }
    assert_eq!(t.get(OVERCOMMIT), "0\n");
    assert_eq!(
        std::fs::read_to_string(t.state_dir().join("originals.json")).expect("kept"),
        "{\"version\":1,\"orig"
    );
}

#[test]
fn restore_keeps_the_journal_when_one_original_cannot_be_written() {
    let t = Tree::untuned();
    assert_eq!(t.run(&["apply"]).code, 0);
    std::fs::remove_file(t.path(THP_DEFRAG)).expect("rm");
    let out = t.run(&["restore"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stdout.contains("failed thp.defrag"), "{out:?}");
    assert_eq!(t.get(OVERCOMMIT), "0\n");
    assert!(t.state_dir().join("originals.json").exists());
}

#[test]
fn usage_errors_exit_2_and_version_exits_0() {
    let t = Tree::untuned();
    assert_eq!(t.run(&["check", "--output", "yaml"]).code, 2);
    assert_eq!(t.run(&["frobnicate"]).code, 2);
    assert_eq!(t.run(&["run", "--interval", "10ms"]).code, 2);
    assert_eq!(t.run(&["--log-level", "bogus[", "check"]).code, 2);
    let v = t.run(&["--version"]);
    assert_eq!(v.code, 0);
    assert_eq!(
        v.stdout.trim(),
        format!("redis-node-tuner {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn named_kubectl_redis_node_tuner_the_binary_is_status_and_its_usage_errors_exit_2() {
    let dir = tempfile::tempdir().expect("tempdir");
    let plugin = dir.path().join("kubectl-redis_node_tuner");
    std::os::unix::fs::symlink(BIN, &plugin).expect("symlink");
    let run = |args: &[&str]| {
        Out::of(
            std::process::Command::new(&plugin)
                .env_clear()
                .args(args)
                .output()
                .expect("run the plugin"),
        )
    };
    let help = run(&["--help"]);
    assert_eq!(help.code, 0, "{help:?}");
    assert!(
        help.stdout.contains("Usage: redis-node-tuner status")
            && help.stdout.contains("--selector"),
        "{help:?}"
    );
    // status itself: a kubeconfig that does not read is a usage error, named.
    let missing = dir.path().join("missing.kubeconfig");
    let o = run(&["--kubeconfig", &missing.to_string_lossy()]);
    assert_eq!(o.code, 2, "{o:?}");
    assert!(o.stderr.contains("missing.kubeconfig"), "{o:?}");
    assert_eq!(run(&["-o", "yaml"]).code, 2);
    assert_eq!(run(&["--chunk-size", "0"]).code, 2);
    assert_eq!(run(&["--heartbeat", "soon"]).code, 2);
    let v = run(&["--version"]);
    assert_eq!(v.code, 0, "{v:?}");
    // Under its own name the binary wants a command.
    let t = Tree::untuned();
    assert_eq!(t.run(&["-o", "json"]).code, 2);
}

#[test]
fn a_running_daemon_locks_the_state_dir_apply_restore_and_run_exit_6_changing_nothing() {
    let t = Tree::untuned();
    assert_eq!(t.run(&["apply"]).code, 0);
    let journal = t.state_dir().join("originals.json");
    let recorded = std::fs::read(&journal).expect("journal");
    // A daemon that holds the lock but never writes (audit mode), in another process.
    let cfg = t.path("audit.yaml");
    std::fs::write(&cfg, "mode: audit\n").expect("write config");
    let cfg_s = cfg.to_string_lossy().into_owned();
    let d = Daemon::start(&t, &["--config", &cfg_s]);
    let pid = d.child.id().to_string();
    t.put(OVERCOMMIT, "2\n");

    for (args, what) in [
        (vec!["restore"], "restore"),
        (vec!["apply"], "apply"),
        (vec!["run", "--listen", ""], "a second run"),
    ] {
        let out = t.run(&args);
        assert_eq!(out.code, 6, "{what}: {out:?}");
        assert!(
            out.stderr.contains(&format!(
                "state directory {} is locked",
                t.state_dir().display()
            )) && out.stderr.contains(&format!("(pid {pid})"))
                && out.stderr.contains("nothing was written"),
            "{what}: {out:?}"
        );
        // Nothing changed: the drifted knob, the tuned ones, the journal.
        assert_eq!(t.get(OVERCOMMIT), "2\n", "{what}");
        assert_eq!(t.get(THP_ENABLED), "never\n", "{what}");
        assert_eq!(
            std::fs::read(&journal).expect("journal"),
            recorded,
            "{what}"
        );
    }
    // check takes no lock.
    let out = t.run(&["check", "-o", "json"]);
    assert_eq!(out.code, 1, "{out:?}");

    let (code, logs) = d.sigterm();
    assert_eq!(code, 0, "{logs}");
    // Released with the daemon: restore works again.
    let out = t.run(&["restore"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(t.get(OVERCOMMIT), "0\n");
    assert_eq!(t.get(THP_ENABLED), "always\n");
    assert!(!journal.exists());
}

#[test]
fn originals_carry_the_boot_id_and_restore_and_check_say_when_it_is_an_earlier_boot() {
    let t = Tree::untuned();
    let boot_id = "proc/sys/kernel/random/boot_id";
    t.put(boot_id, "11111111-aaaa\n");
    assert_eq!(t.run(&["apply"]).code, 0);
    let j: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(t.state_dir().join("originals.json")).expect("journal"),
    )
    .expect("journal json");
    assert_eq!(j["version"], 1, "{j}");
    assert_eq!(
        j["originals"]["vm.overcommit_memory"]["boot_id"], "11111111-aaaa",
        "{j}"
    );

    let originals = |out: &Out| -> Vec<serde_json::Value> {
        let v: serde_json::Value = serde_json::from_str(&out.stdout).expect("json");
        // The existing keys are unchanged.
        for k in ["ready", "netns", "settings"] {
            assert!(v.get(k).is_some(), "{k} missing: {v}");
        }
        v["journal"]["originals"]
            .as_array()
            .cloned()
            .expect("originals")
    };
    let out = t.run(&["check", "-o", "json"]);
    let o = originals(&out);
    assert_eq!(o.len(), 5, "{out:?}");
    let oc = o
        .iter()
        .find(|x| x["name"] == "vm.overcommit_memory")
        .expect("overcommit");
    assert_eq!(
        (&oc["value"], &oc["boot_id"], &oc["this_boot"]),
        (&"0".into(), &"11111111-aaaa".into(), &true.into()),
        "{out:?}"
    );

    // A reboot.
    t.put(boot_id, "22222222-bbbb\n");
    let out = t.run(&["check", "-o", "json"]);
    assert!(
        originals(&out).iter().all(|x| x["this_boot"] == false),
        "{out:?}"
    );
    let out = t.run(&["restore"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        out.stdout.contains(
            "note vm.overcommit_memory: its original \"0\" was recorded in an earlier boot (11111111-aaaa, now 22222222-bbbb); restoring it anyway"
        ),
        "{out:?}"
    );
    assert_eq!(t.get(OVERCOMMIT), "0\n");
}

#[test]
fn a_sysctl_with_a_dot_in_a_segment_is_set_through_its_slash_form() {
    let t = Tree::untuned();
    let vlan = "proc/sys/net/ipv4/conf/eth0.100/rp_filter";
    t.put(vlan, "0\n");
    // What the dotted form would mean instead: must stay untouched.
    t.put("proc/sys/net/ipv4/conf/eth0/100/rp_filter", "0\n");
    let cfg = t.path("vlan.yaml");
    std::fs::write(
        &cfg,
        "sysctls:\n  net/ipv4/conf/eth0.100/rp_filter: {equals: 2}\n",
    )
    .expect("write config");
    let cfg_s = cfg.to_string_lossy().into_owned();
    let out = t.run(&["--config", &cfg_s, "apply"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        out.stdout
            .contains("changed net/ipv4/conf/eth0.100/rp_filter: 0 -> 2"),
        "{out:?}"
    );
    assert_eq!(t.get(vlan), "2\n");
    assert_eq!(t.get("proc/sys/net/ipv4/conf/eth0/100/rp_filter"), "0\n");

    let out = t.run(&["--config", &cfg_s, "check", "-o", "json"]);
    assert_eq!(out.code, 0, "{out:?}");
    let v: serde_json::Value = serde_json::from_str(&out.stdout).expect("json");
    assert!(
        v["settings"].as_array().is_some_and(|s| s
            .iter()
            .any(|k| k["name"] == "net/ipv4/conf/eth0.100/rp_filter" && k["actual"] == "2")),
        "{v}"
    );
    let d = Daemon::start(&t, &["--config", &cfg_s]);
    let m = d.metrics();
    assert!(
        m.contains(
            r#"redis_node_tuner_setting_in_sync{setting="net/ipv4/conf/eth0.100/rp_filter"} 1"#
        ),
        "{m}"
    );
    let (code, logs) = d.sigterm();
    assert_eq!(code, 0, "{logs}");

    let out = t.run(&["--config", &cfg_s, "restore"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(t.get(vlan), "0\n");

    // Names that would leave /proc/sys are refused before anything is written.
    t.put("outside", "0\n");
    for bad in [
        "net/../../outside",
        "/outside",
        "net//x",
        "net/./core/somaxconn",
    ] {
        std::fs::write(&cfg, format!("sysctls:\n  {bad:?}: {{equals: 1}}\n")).expect("write");
        let out = t.run(&["--config", &cfg_s, "apply"]);
        assert_eq!(out.code, 2, "{bad}: {out:?}");
        assert!(
            out.stderr.contains(&format!("sysctls[{bad:?}]")),
            "{bad}: {out:?}"
        );
    }
    assert_eq!(t.get("outside"), "0\n");
    assert_eq!(t.get(OVERCOMMIT), "0\n");
}
