//! The crate's layers point down only: a module of `src/` may use (`crate::...`) only
//! modules of a lower layer. The list is ARCHITECTURE.md's; a new top-level module must be
//! placed in it (the test fails on a module it does not know).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Lowest first. Modules of one layer do not use each other either.
const LAYERS: &[&[&str]] = &[
    // Pure data, the life of the process, hash functions: nothing of ours.
    &["config", "lifecycle", "hash"],
    // Shared HTTP pieces (errors, answers, routes, bodies, client, ids) and telemetry
    // (logs, metrics registry, access log).
    &["http", "telemetry"],
    // Instances, their live state and the choice among them; who is asking (API keys).
    &["balance", "auth", "ledger"],
    // The engine poller (health and load), the supervisor, the embedding service and the
    // introspection answers (`/metrics`, `/v1/router/instances`, the admin listener).
    // Admission (per-principal limits) too.
    &[
        "scrape",
        "discover",
        "supervisor",
        "embed",
        "admin",
        "admission",
    ],
    // The public port.
    &["proxy"],
    // Process: daemon mode and readiness, then the command line.
    &["daemon"],
    &["cli"],
];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&module))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).expect("src/ readable") {
        let p = e.expect("dir entry").path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The top-level module a file of `src/` belongs to (`src/proxy/forward.rs` → `proxy`).
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).expect("under src/");
    let first = rel.components().next().expect("non-empty path");
    let name = first.as_os_str().to_string_lossy();
    name.trim_end_matches(".rs").to_string()
}

/// Every top-level module named after `crate::` in `text` (comments stripped), also
/// inside `use crate::{a::X, b::Y}` groups.
fn used_modules(text: &str) -> BTreeSet<String> {
    let code: String = text
        .lines()
        .map(|l| match l.find("//") {
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n");
    let mut out = BTreeSet::new();
    let mut rest = code.as_str();
    while let Some(i) = rest.find("crate::") {
        rest = &rest[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let end = matching_brace(group);
            for item in split_top_level(&group[..end]) {
                out.insert(ident(item.trim()));
            }
        } else {
            out.insert(ident(rest));
        }
    }
    out.retain(|m| !m.is_empty());
    out
}

fn ident(s: &str) -> String {
    s.chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect()
}

/// Index of the `}` closing a group whose `{` was just consumed.
fn matching_brace(s: &str) -> usize {
    let mut depth = 0;
    for (i, c) in s.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => return i,
            '}' => depth -= 1,
            _ => {}
        }
    }
    s.len()
}

/// The comma-separated items of a group, ignoring commas of nested groups.
fn split_top_level(s: &str) -> Vec<&str> {
    let (mut out, mut depth, mut start) = (Vec::new(), 0, 0);
    for (i, c) in s.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

#[test]
fn the_scanner_sees_every_form_of_use() {
    let text = "use crate::config::{A, B};\nuse crate::{balance::{x, y}, http::error};\n\
                // crate::cli in a comment\nlet a = crate::telemetry::metrics::X;";
    let got: Vec<String> = used_modules(text).into_iter().collect();
    assert_eq!(got, ["balance", "config", "http", "telemetry"]);
}

#[test]
fn layers_point_down() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    let mut wrong = Vec::new();
    for f in &files {
        let module = module_of(&src, f);
        if module == "lib" || module == "main" {
            continue;
        }
        let Some(mine) = layer_of(&module) else {
            wrong.push(format!("{}: module `{module}` is in no layer", f.display()));
            continue;
        };
        let text = std::fs::read_to_string(f).expect("readable source");
        for used in used_modules(&text) {
            if used == module {
                continue;
            }
            match layer_of(&used) {
                Some(theirs) if theirs < mine => {}
                _ => wrong.push(format!(
                    "{}: `{module}` (layer {mine}) uses `crate::{used}` (layer {:?})",
                    f.strip_prefix(&src).unwrap_or(f).display(),
                    layer_of(&used)
                )),
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "imports against the layers:\n{}",
        wrong.join("\n")
    );
}
