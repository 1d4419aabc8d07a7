//! Every in-repo reference points at something that exists: a README section named in a
//! comment (`README "Writer watch"`), a Markdown link to an anchor (`](#writer-watch)`,
//! `README.md#tests`), and a path of this tree (`src/k8s/mod.rs`, `deploy/base/...`).
//! A dangling one fails naming the file, the line and the reference.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// GitHub's anchor of a heading (or of a section name as a comment gives it).
fn slug(title: &str) -> String {
    title
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

/// The anchors of a Markdown file's headings.
fn anchors(md: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut fenced = false;
    for l in md.lines() {
        if l.starts_with("```") {
            fenced = !fenced;
        }
        if !fenced && l.starts_with('#') {
            out.insert(slug(l.trim_start_matches('#')));
        }
    }
    out
}

/// The tracked text files of the tree (not lock files, sums or binary objects).
fn files() -> Vec<PathBuf> {
    let out = Command::new("git")
        .args(["ls-files"])
        .current_dir(repo())
        .output()
        .expect("git ls-files");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|f| {
            !(f.ends_with(".lock")
                || f.ends_with(".sum")
                || f.ends_with(".o")
                || f.ends_with(".tsv")
                || f.ends_with("go.mod"))
        })
        .map(|f| repo().join(f))
        .filter(|p| p.is_file())
        .collect()
}

const TREE: [&str; 9] = [
    "src/",
    "deploy/",
    "tests/",
    "scripts/",
    "systemd/",
    "bpf/",
    "packaging/",
    "benches/",
    ".ci/",
];

/// Every problem of one file's text.
fn problems(
    rel: &str,
    text: &str,
    readme: &BTreeSet<String>,
    own: &BTreeSet<String>,
) -> Vec<String> {
    let mut out = vec![];
    for (n, line) in text.lines().enumerate() {
        let at = |what: String| format!("{rel}:{}: {what}", n + 1);
        // README "Section" (also README, "Section" and README's "Section").
        let mut rest = line;
        while let Some(i) = rest.find("README") {
            rest = &rest[i + 6..];
            let head: String = rest.chars().take(4).collect();
            if rest.starts_with(".md") {
                continue;
            }
            if let Some(q) = head.find('"') {
                let after = &rest[q + 1..];
                if let Some(end) = after.find('"') {
                    let name = &after[..end];
                    // A section is named by its title or the start of it ("Bare-metal
                    // quickstart" for "Bare-metal quickstart (systemd)").
                    let s = slug(name);
                    if name.starts_with(char::is_alphanumeric)
                        && !readme
                            .iter()
                            .any(|a| a == &s || a.starts_with(&format!("{s}-")))
                    {
                        out.push(at(format!("README section {name:?} does not exist")));
                    }
                }
            }
        }
        // Markdown anchors: README.md#a (anywhere), ](#a) (in Markdown: this file's own).
        for (marker, set) in [("README.md#", readme), ("](#", own)] {
            let mut rest = line;
            while let Some(i) = rest.find(marker) {
                rest = &rest[i + marker.len()..];
                let a: String = rest
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '-' || *c == '_')
                    .collect();
                if marker == "](#" && !rel.ends_with(".md") {
                    continue;
                }
                if !a.is_empty() && !set.contains(&a) {
                    out.push(at(format!("anchor #{a} does not exist")));
                }
            }
        }
        // Paths of this tree (not a C include, not the synthetic trees of two tests).
        if line.trim_start().starts_with("#include")
            || rel == "tests/layers.rs"
            || rel == "tests/references.rs"
        {
            continue;
        }
        for tok in line.split(|c: char| c.is_whitespace() || "`()[]{},;:\"'<>|=".contains(c)) {
            let tok = tok.trim_end_matches(['.', '/']);
            if !TREE.iter().any(|p| tok.starts_with(p))
                || tok.contains(['*', '$', '%', '\\', '…'])
                || tok.contains("...")
                || tok.contains("..")
            {
                continue;
            }
            // A path given relative to somewhere else (`src/` inside a crate we fetch) is
            // still named from the root here; only names with a file extension or an
            // existing directory prefix are checked.
            if !repo().join(tok).exists() {
                out.push(at(format!("path {tok} does not exist")));
            }
        }
    }
    out
}

#[test]
fn every_reference_to_a_readme_section_anchor_or_path_exists() {
    let readme = anchors(&std::fs::read_to_string(repo().join("README.md")).expect("README"));
    assert!(
        readme.contains("writer-watch") && readme.contains("tests"),
        "{readme:?}"
    );
    let mut all = vec![];
    for f in files() {
        let Ok(text) = std::fs::read_to_string(&f) else {
            continue;
        };
        if f.ends_with("tests/references.rs") {
            // Its own examples of dangling references.
            continue;
        }
        let rel = f
            .strip_prefix(repo())
            .unwrap_or(&f)
            .to_string_lossy()
            .into_owned();
        let own = if rel.ends_with(".md") {
            anchors(&text)
        } else {
            BTreeSet::new()
        };
        all.extend(problems(&rel, &text, &readme, &own));
    }
    assert!(all.is_empty(), "dangling references:\n{}", all.join("\n"));
}

#[test]
fn a_dangling_section_anchor_or_path_is_named_with_its_line() {
    let readme = anchors("# Tool\n## Writer watch\n### Every Redis start gated: `wait`\n");
    assert!(
        readme.contains("every-redis-start-gated-wait"),
        "{readme:?}"
    );
    let text = "ok: README \"Writer watch\" and README, \"Every Redis start gated: wait\"\n\
                bad: README \"Fleet scale\"\n\
                see [x](#writer-watch) and [y](#nowhere)\n\
                code in src/k8s.rs and src/lib.rs\n";
    let own = anchors("## Writer watch\n");
    let got = problems("doc.md", text, &readme, &own);
    assert_eq!(
        got,
        [
            "doc.md:2: README section \"Fleet scale\" does not exist",
            "doc.md:3: anchor #nowhere does not exist",
            "doc.md:4: path src/k8s.rs does not exist",
        ]
    );
    let _ = Path::new("");
}
