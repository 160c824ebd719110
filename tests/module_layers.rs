//! No circle between the source files of a crate, nor between its top-level modules: each
//! `use crate::…`, `super::…` or `crate::…` path in a file (outside its unit tests) is an
//! edge to the module it names, and the graph must have no cycle.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

type Graph = BTreeMap<String, BTreeSet<String>>;

/// Module path (`train::session::fit`, `` for lib.rs) → source text without unit tests.
fn modules(src: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let rel = path.strip_prefix(src).unwrap().with_extension("");
                let name = rel.to_string_lossy().replace("/mod", "").replace('/', "::");
                let name = if name == "lib" || name == "main" { String::new() } else { name };
                let text = std::fs::read_to_string(&path).unwrap();
                let text = text.split("#[cfg(test)]").next().unwrap().to_string();
                out.insert(name, text);
            }
        }
    }
    out
}

/// The module a path in `from` refers to: the longest prefix that is a module.
fn target(mods: &BTreeMap<String, String>, from: &str, path: &str) -> Option<String> {
    let mut parts: Vec<&str> = path.split("::").collect();
    let mut base: Vec<&str> = match parts[0] {
        "crate" => vec![],
        "super" => from.split("::").filter(|s| !s.is_empty()).collect(),
        _ => return None,
    };
    if parts[0] == "super" {
        while parts.first() == Some(&"super") {
            base.pop();
            parts.remove(0);
        }
    } else {
        parts.remove(0);
    }
    (0..=parts.len()).rev().map(|i| [&base[..], &parts[..i]].concat().join("::")).find(|m| mods.contains_key(m))
}

fn graph(mods: &BTreeMap<String, String>) -> Graph {
    let mut g = Graph::new();
    for (from, text) in mods {
        let edges = g.entry(from.clone()).or_default();
        for (i, _) in text.match_indices("::") {
            let start = text[..i].rfind(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':')).map_or(0, |s| s + 1);
            let end =
                text[i..].find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':')).map_or(text.len(), |e| i + e);
            let path = text[start..end].trim_end_matches(':');
            if !(path.starts_with("crate::") || path.starts_with("super::")) {
                continue;
            }
            if let Some(to) = target(mods, from, path) {
                let nested = to.starts_with(&format!("{from}::")) || from.starts_with(&format!("{to}::"));
                if to != *from && !to.is_empty() && !nested {
                    edges.insert(to);
                }
            }
        }
    }
    g
}

/// A cycle of `g`, if it has one (depth-first search).
fn cycle(g: &Graph) -> Option<Vec<String>> {
    fn visit(n: &str, g: &Graph, path: &mut Vec<String>, done: &mut BTreeSet<String>) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|p| p == n) {
            return Some(path[at..].iter().cloned().chain([n.to_string()]).collect());
        }
        if done.contains(n) {
            return None;
        }
        path.push(n.to_string());
        for next in g.get(n).into_iter().flatten() {
            if let Some(c) = visit(next, g, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(n.to_string());
        None
    }
    let mut done = BTreeSet::new();
    g.keys().find_map(|n| visit(n, g, &mut Vec::new(), &mut done))
}

fn top_level(g: &Graph) -> Graph {
    let top = |m: &str| m.split("::").next().unwrap().to_string();
    let mut t = Graph::new();
    for (from, tos) in g {
        for to in tos.iter().filter(|to| top(to) != top(from)) {
            t.entry(top(from)).or_default().insert(top(to));
        }
    }
    t
}

#[test]
fn no_circle_between_files_or_modules() {
    for krate in ["crates/torch/src", "crates/data/src", "src"] {
        let mods = modules(&Path::new(env!("CARGO_MANIFEST_DIR")).join(krate));
        let g = graph(&mods);
        assert!(g.values().map(BTreeSet::len).sum::<usize>() > 0 || krate == "src", "{krate}: no edges found");
        assert_eq!(cycle(&g), None, "{krate}: files in a circle");
        assert_eq!(cycle(&top_level(&g)), None, "{krate}: modules in a circle");
    }
}

/// The check finds a circle where there is one.
#[test]
fn a_circle_is_found() {
    let mods: BTreeMap<String, String> = [
        ("a".to_string(), "use crate::b::x;".to_string()),
        ("b".to_string(), "fn f() { super::c::y() }".to_string()),
        ("c".to_string(), "use crate::a;".to_string()),
    ]
    .into();
    let g = graph(&mods);
    assert_eq!(cycle(&g), Some(vec!["a".into(), "b".into(), "c".into(), "a".into()]));
}
