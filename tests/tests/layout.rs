//! The tree shows the architecture: no crate of the workspace has a cycle
//! among its modules. A module "uses" another when its code (not its
//! comments, not its `#[cfg(test)]` part) names `crate::<module>` or
//! `super::<sibling>`; each crate's modules must form a DAG, so a reader
//! can take them in one order (e.g. the processor's `engine/` never uses
//! its shell).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use chatpipe_tests::workspace_root;

/// Library source folders of the workspace's crates.
fn crate_sources(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(d) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            if !p.is_dir() || name.starts_with('.') || name == "target" || name == "node_modules" {
                continue;
            }
            if p.join("Cargo.toml").is_file() && p.join("src/lib.rs").is_file() {
                out.push(p.join("src"));
            }
            dirs.push(p);
        }
    }
    out.sort();
    out
}

/// Module path (`engine::window`) → code of its file, for every module
/// file of a crate (binaries under `src/bin/` and `main.rs` excluded).
fn modules(src: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut dirs = vec![src.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).expect("read source dir").flatten() {
            let p = e.path();
            if p.is_dir() {
                if p.file_name().is_some_and(|n| n != "bin") {
                    dirs.push(p);
                }
                continue;
            }
            if p.extension().is_none_or(|x| x != "rs")
                || p.file_name().is_some_and(|n| n == "main.rs")
            {
                continue;
            }
            let rel = p.strip_prefix(src).expect("under src").with_extension("");
            let mut parts: Vec<String> = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            if parts.last().is_some_and(|l| l == "lib" || l == "mod") {
                parts.pop();
            }
            let text = std::fs::read_to_string(&p).expect("read module");
            out.insert(parts.join("::"), code_of(&text));
        }
    }
    out
}

/// The code of a module file: without its `#[cfg(test)]` part and its
/// comment lines (docs may link anywhere).
fn code_of(text: &str) -> String {
    let code = text.split("#[cfg(test)]").next().unwrap_or_default();
    code.lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The paths named after `prefix` in `code` (`crate::a::b` → `a::b`).
fn named_after<'a>(code: &'a str, prefix: &str) -> Vec<&'a str> {
    code.match_indices(prefix)
        .map(|(i, _)| {
            let rest = &code[i + prefix.len()..];
            let end = rest
                .find(|c: char| {
                    !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == ':')
                })
                .unwrap_or(rest.len());
            rest[..end].trim_end_matches(':')
        })
        .collect()
}

/// Edges of the module graph of one crate.
fn graph(mods: &BTreeMap<String, String>) -> BTreeMap<String, BTreeSet<String>> {
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (m, code) in mods {
        let edges = g.entry(m.clone()).or_default();
        if m.is_empty() {
            continue; // the crate root declares and re-exports everything
        }
        let mut targets: Vec<String> = named_after(code, "crate::")
            .into_iter()
            .map(str::to_owned)
            .collect();
        let parent = m.rsplit_once("::").map_or("", |(p, _)| p);
        for s in named_after(code, "super::") {
            targets.push(if parent.is_empty() {
                s.to_owned()
            } else {
                format!("{parent}::{s}")
            });
        }
        for t in targets {
            // The longest module prefix of the named path.
            let parts: Vec<&str> = t.split("::").collect();
            let Some(target) = (1..=parts.len())
                .rev()
                .map(|k| parts[..k].join("::"))
                .find(|c| mods.contains_key(c))
            else {
                continue;
            };
            let nested =
                target.starts_with(&format!("{m}::")) || m.starts_with(&format!("{target}::"));
            if target != *m && !nested {
                edges.insert(target);
            }
        }
    }
    g
}

/// One cycle of `g`, if any.
fn find_cycle(g: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        u: &str,
        g: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        state.insert(u.to_owned(), 1);
        stack.push(u.to_owned());
        for v in g.get(u).into_iter().flatten() {
            match state.get(v) {
                Some(1) => {
                    let at = stack.iter().position(|s| s == v).unwrap_or(0);
                    let mut cycle = stack[at..].to_vec();
                    cycle.push(v.clone());
                    return Some(cycle);
                }
                Some(_) => {}
                None => {
                    if let Some(c) = visit(v, g, state, stack) {
                        return Some(c);
                    }
                }
            }
        }
        stack.pop();
        state.insert(u.to_owned(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for u in g.keys() {
        if !state.contains_key(u) {
            if let Some(c) = visit(u, g, &mut state, &mut Vec::new()) {
                return Some(c);
            }
        }
    }
    None
}

#[test]
fn no_crate_has_a_module_cycle() {
    let root = workspace_root();
    let crates = crate_sources(&root);
    assert!(crates.len() >= 10, "found only {crates:?}");
    let mut cycles = Vec::new();
    for src in &crates {
        if let Some(c) = find_cycle(&graph(&modules(src))) {
            cycles.push(format!("{}: {}", src.display(), c.join(" -> ")));
        }
    }
    assert!(cycles.is_empty(), "module cycles:\n{}", cycles.join("\n"));
}

#[test]
fn the_check_sees_a_cycle() {
    let crate_of = |files: &[(&str, &str)]| -> BTreeMap<String, String> {
        files
            .iter()
            .map(|(m, text)| ((*m).to_owned(), code_of(text)))
            .collect()
    };
    let cyclic = crate_of(&[
        ("", "pub mod a;\npub mod b;"),
        ("a", "use crate::b::Thing;"),
        ("b", "use super::a::Other;"),
    ]);
    assert_eq!(
        find_cycle(&graph(&cyclic)),
        Some(vec!["a".to_owned(), "b".to_owned(), "a".to_owned()])
    );
    // Doc links and tests may point back.
    let acyclic = crate_of(&[
        ("a", "use crate::b::Thing;"),
        (
            "b",
            "//! See [`crate::a`].\nfn f() {}\n#[cfg(test)]\nmod tests { use crate::a; }",
        ),
    ]);
    assert_eq!(find_cycle(&graph(&acyclic)), None);
}
