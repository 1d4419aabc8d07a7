//! The layer order of ARCHITECTURE.md ("Layers"), enforced: every `crate::<module>` path in
//! `src/**/*.rs` (code and unit tests; comments are skipped) must name a module of a lower
//! layer than the file's own top-level module. A failure names the file, the line and the
//! import. Plain Rust, no parser crate: the paths are found as text.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::repo;

/// Outside the order: test fixtures, usable from the tests of any layer.
const FIXTURES: &str = "testing";

/// module → layer, from the table under "## Layers" in ARCHITECTURE.md.
fn layers(architecture: &str) -> BTreeMap<String, u32> {
    let mut out = BTreeMap::new();
    let section = architecture
        .split("## Layers")
        .nth(1)
        .expect("ARCHITECTURE.md has a '## Layers' section");
    for line in section.lines().take_while(|l| !l.starts_with("## ")) {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let (Some(layer), Some(modules)) = (cells.get(1), cells.get(2)) else {
            continue;
        };
        let Ok(layer) = layer.parse::<u32>() else {
            continue;
        };
        for m in modules.split(',') {
            let m = m.trim().trim_matches('`');
            assert!(
                out.insert(m.to_string(), layer).is_none(),
                "{m} is in two layers"
            );
        }
    }
    assert!(!out.is_empty(), "no layer rows in ARCHITECTURE.md");
    out
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).expect("read src").flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The top-level module a file of `src/` belongs to; `None` for the crate root.
fn module_of(rel: &Path) -> Option<String> {
    let first = rel.components().next()?.as_os_str().to_string_lossy();
    let name = first.strip_suffix(".rs").unwrap_or(&first);
    (!matches!(name, "lib" | "main")).then(|| name.to_string())
}

fn ident(s: &str) -> &str {
    let end = s
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    &s[..end]
}

/// The top-level modules a line of code names through `crate::` (a `crate::{a, b::c}` group
/// names each first segment).
fn crate_paths(code: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        let before = rest[..at].chars().last();
        rest = &rest[at + "crate::".len()..];
        if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
            continue; // `redis_node_tuner_crate::` or the like: not this crate
        }
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 0;
            let mut item_start = true;
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => item_start = true,
                    c if c.is_whitespace() => {}
                    _ if item_start => {
                        out.push(ident(&group[i..]).to_string());
                        item_start = false;
                    }
                    _ => {}
                }
            }
        } else {
            out.push(ident(rest).to_string());
        }
    }
    out.retain(|m| !m.is_empty() && m != "self");
    out
}

/// A line without its `//` comment (a `//` inside a string is rare enough in `use` lines and
/// paths to ignore).
fn code_of(line: &str) -> &str {
    match line.find("//") {
        Some(at) => &line[..at],
        None => line,
    }
}

/// Every import of a higher or equal layer, as "file:line: message".
fn violations(src: &Path, layers: &BTreeMap<String, u32>) -> Vec<String> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    files.sort();
    let mut bad = Vec::new();
    for f in &files {
        let rel = f.strip_prefix(src).expect("below src");
        let Some(from) = module_of(rel) else { continue };
        if from == FIXTURES {
            continue;
        }
        let Some(&from_layer) = layers.get(&from) else {
            bad.push(format!(
                "src/{}: module `{from}` is in no layer of ARCHITECTURE.md",
                rel.display()
            ));
            continue;
        };
        let text = std::fs::read_to_string(f).expect("read");
        for (n, line) in text.lines().enumerate() {
            for to in crate_paths(code_of(line)) {
                if to == from || to == FIXTURES {
                    continue;
                }
                match layers.get(&to) {
                    None => bad.push(format!(
                        "src/{}:{}: `crate::{to}` is in no layer of ARCHITECTURE.md",
                        rel.display(),
                        n + 1
                    )),
                    Some(&to_layer) if to_layer >= from_layer => bad.push(format!(
                        "src/{}:{}: `{from}` (layer {from_layer}) uses `crate::{to}` (layer \
                         {to_layer}): a module may use only lower layers\n    {}",
                        rel.display(),
                        n + 1,
                        line.trim()
                    )),
                    Some(_) => {}
                }
            }
        }
    }
    bad
}

#[test]
fn every_module_uses_only_lower_layers() {
    let arch = std::fs::read_to_string(repo().join("ARCHITECTURE.md")).expect("ARCHITECTURE.md");
    let layers = layers(&arch);
    let bad = violations(&repo().join("src"), &layers);
    assert!(
        bad.is_empty(),
        "{} import(s) against the layer order:\n{}",
        bad.len(),
        bad.join("\n")
    );
    // Every module of the table exists (a renamed module does not linger in the table).
    for m in layers.keys() {
        let src = repo().join("src");
        assert!(
            src.join(format!("{m}.rs")).is_file() || src.join(m).join("mod.rs").is_file(),
            "ARCHITECTURE.md names module `{m}`, which src/ does not have"
        );
    }
}

#[test]
fn an_upward_import_or_a_cycle_is_found_and_named() {
    let layers = layers(
        "## Layers\n| layer | modules |\n|---|---|\n| 0 | `kernel` |\n| 1 | `profile` |\n\
         | 2 | `agent`, `writers` |\n",
    );
    let dir = tempfile::tempdir().unwrap();
    let put = |rel: &str, text: &str| {
        let p = dir.path().join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    };
    put("lib.rs", "pub mod kernel;\n");
    put(
        "kernel/location.rs",
        "use std::fmt;\n// crate::profile in a comment is no import\nfn f() { crate::profile::sysctl_rel_path(\"a\"); }\n",
    );
    put(
        "profile/model.rs",
        "use crate::{kernel::Location, writers::WritersMode};\n",
    );
    put("agent.rs", "use crate::writers::Writer;\n");
    put("writers/mod.rs", "use crate::agent::Report;\n");
    put("testing.rs", "use crate::agent::Agent;\n");
    let bad = violations(dir.path(), &layers);
    let has = |needle: &str| bad.iter().any(|b| b.contains(needle));
    assert!(
        has("src/kernel/location.rs:3: `kernel` (layer 0) uses `crate::profile` (layer 1)"),
        "{bad:#?}"
    );
    assert!(
        has("src/profile/model.rs:1: `profile` (layer 1) uses `crate::writers` (layer 2)"),
        "{bad:#?}"
    );
    // agent ↔ writers: a cycle within a layer, both directions named.
    assert!(
        has("src/agent.rs:1: `agent` (layer 2) uses `crate::writers` (layer 2)"),
        "{bad:#?}"
    );
    assert!(
        has("src/writers/mod.rs:1: `writers` (layer 2) uses `crate::agent` (layer 2)"),
        "{bad:#?}"
    );
    assert_eq!(
        bad.len(),
        4,
        "the comment, the downward import and the fixtures pass: {bad:#?}"
    );
}

#[test]
fn crate_paths_are_read_from_groups_and_inline_paths() {
    assert_eq!(
        crate_paths("use crate::{agent::{Agent, Event}, kernel::HostFs, self};"),
        ["agent", "kernel"]
    );
    assert_eq!(
        crate_paths("let x = crate::metrics::Metrics::new(); y(crate::k8s::X)"),
        ["metrics", "k8s"]
    );
    assert!(crate_paths("redis_node_tuner_crate::x").is_empty());
}
