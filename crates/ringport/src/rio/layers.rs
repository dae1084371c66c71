//! The layering of rio/ (the picture at the top of `rio/mod.rs`), checked
//! on its source: no cycle among its files' imports, a front that names no
//! engine, and engines that never name each other.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// A module's path below `rio`: `[]` for rio/mod.rs, `["uring", "queue"]`.
type Module = Vec<String>;

/// Every file of rio/ with its source, comments and tests left out.
fn sources() -> BTreeMap<Module, String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/rio");
    let mut out = BTreeMap::new();
    let mut dirs = vec![root.clone()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let rel = path.strip_prefix(&root).unwrap().with_extension("");
            let mut module: Module = rel.iter().map(|s| s.to_string_lossy().into()).collect();
            if module.last().is_some_and(|m| m == "mod") {
                module.pop();
            }
            let text = std::fs::read_to_string(&path).unwrap();
            let text = text.split("#[cfg(test)]").next().unwrap_or("");
            let code: Vec<&str> = text
                .lines()
                .map(|l| l.split("//").next().unwrap_or(""))
                .collect();
            out.insert(module, code.join("\n").replace("pub(in crate::rio)", "pub"));
        }
    }
    out
}

/// The paths a `use` tree stands for: `a::{b, c::{d}}` gives `a::b`, `a::c::d`.
fn expand(tree: &str) -> Vec<String> {
    let Some(open) = tree.find('{') else {
        return vec![tree.to_string()];
    };
    let (prefix, body) = (&tree[..open], &tree[open + 1..tree.rfind('}').unwrap()]);
    let (mut items, mut depth, mut item) = (Vec::new(), 0, String::new());
    for c in body.chars() {
        match c {
            ',' if depth == 0 => items.push(std::mem::take(&mut item)),
            '{' => (depth += 1, item.push(c)).1,
            '}' => (depth -= 1, item.push(c)).1,
            _ => item.push(c),
        }
    }
    items.push(item);
    items
        .iter()
        .filter(|i| !i.is_empty())
        .flat_map(|i| expand(&format!("{prefix}{i}")))
        .collect()
}

/// The rio module a path used in `from` names, if it names one.
fn resolve(from: &Module, path: &str, modules: &BTreeMap<Module, String>) -> Option<Module> {
    let segments: Vec<&str> = path.split(" as ").next()?.split("::").collect();
    let (mut base, rest): (Module, &[&str]) = match segments.first()? {
        &"crate" if segments.get(1) == Some(&"rio") => (Vec::new(), &segments[2..]),
        &"super" | &"self" => {
            let mut base = from.clone();
            let mut i = 0;
            while let Some(&s) = segments.get(i).filter(|s| **s == "super" || **s == "self") {
                if s == "super" {
                    base.pop();
                }
                i += 1;
            }
            (base, &segments[i..])
        }
        first => {
            let mut child = from.clone();
            child.push(first.to_string());
            if !modules.contains_key(&child) {
                return None;
            }
            (from.clone(), &segments[..])
        }
    };
    base.extend(rest.iter().map(|s| s.to_string()));
    (0..=base.len())
        .rev()
        .map(|n| base[..n].to_vec())
        .find(|m| modules.contains_key(m))
}

/// Which rio modules each file imports or names in its code.
fn imports() -> BTreeMap<Module, BTreeSet<Module>> {
    let modules = sources();
    let mut edges = BTreeMap::new();
    for (module, code) in &modules {
        let mut to = BTreeSet::new();
        let mut paths = Vec::new();
        for statement in code.split(';') {
            if let Some(at) = statement.find("use ") {
                let before = &statement[..at];
                if before.trim().is_empty() || before.trim().starts_with("pub") {
                    let tree: String = statement[at + 4..].split_whitespace().collect();
                    paths.extend(expand(&tree));
                }
            }
        }
        // Paths written in code: `super::x::f`, `thread::spawn`.
        let words = code.split(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'));
        paths.extend(words.filter(|w| w.contains("::")).map(String::from));
        for path in paths {
            let path = path.trim_start_matches("::").trim_end_matches("::");
            if let Some(target) = resolve(module, path, &modules) {
                if &target != module {
                    to.insert(target);
                }
            }
        }
        edges.insert(module.clone(), to);
    }
    edges
}

fn name(m: &Module) -> String {
    if m.is_empty() {
        "rio".into()
    } else {
        m.join("/")
    }
}

#[test]
fn no_cycle_among_rio_files() {
    let edges = imports();
    // Depth-first search; a module met again while still on the path closes
    // a cycle.
    fn visit(
        m: &Module,
        edges: &BTreeMap<Module, BTreeSet<Module>>,
        path: &mut Vec<Module>,
        done: &mut BTreeSet<Module>,
    ) {
        if let Some(at) = path.iter().position(|p| p == m) {
            let cycle: Vec<String> = path[at..].iter().chain([m]).map(name).collect();
            panic!("import cycle in rio/: {}", cycle.join(" -> "));
        }
        if !done.insert(m.clone()) {
            return;
        }
        path.push(m.clone());
        for next in &edges[m] {
            visit(next, edges, path, done);
        }
        path.pop();
    }
    for m in edges.keys() {
        visit(m, &edges, &mut Vec::new(), &mut BTreeSet::new());
    }
    assert!(edges[&vec!["engine".to_string()]].contains(&vec!["uring".to_string()]));
}

#[test]
fn front_names_no_engine_and_engines_not_each_other() {
    let edges = imports();
    let engine = |m: &Module| m.first().is_some_and(|f| f == "uring" || f == "epoll");
    for (m, to) in &edges {
        for t in to {
            let front = matches!(name(m).as_str(), "rio" | "cq" | "rq");
            assert!(
                !(front && engine(t)),
                "{} (front) names the engine {}",
                name(m),
                name(t)
            );
            if engine(m) && engine(t) {
                assert_eq!(
                    m[0],
                    t[0],
                    "{} names the other engine's {}",
                    name(m),
                    name(t)
                );
            }
            // Below the dispatch module, nothing names an engine.
            if !engine(m) && name(m) != "engine" && !front {
                assert!(!engine(t), "{} names the engine {}", name(m), name(t));
            }
        }
    }
}
