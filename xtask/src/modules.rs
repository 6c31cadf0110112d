//! `cargo xtask modules`: the observer crate's module graph (which
//! top-level module names which through `crate::`), its cycles, and the
//! edges that point back up the data flow.
//!
//! Why a check of our own: the data flow is one way (docs/design.md), and
//! the way it stops being one is a single convenient `use` in the wrong
//! direction, which no compiler error catches. The test below runs this on
//! the real tree, so such an edge fails the suite the day it is written.
//! `cargo modules` would draw the same graph, but it needs a toolchain
//! component and a build; this reads the source, in a second.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
};

use anyhow::Context as _;

/// The stages in data-flow order: a module may name modules of its own or
/// an earlier layer. Layer 0 holds what every stage shares (configuration,
/// the record types, helpers); the CLI and the daemon's wiring come last.
pub const LAYERS: &[&[&str]] = &[
    &["config", "event", "netns", "privilege", "instance", "stats"],
    &["kernel"],
    &["hooks"],
    &["decode", "counters"],
    &["capture"],
    &["enrich"],
    &["diagnose"],
    &["sink", "health"],
    &["history"],
    &["views", "doctor", "lab"],
    &["cli"],
    &["daemon"],
];

pub struct Graph {
    /// Module -> the modules it names.
    pub edges: BTreeMap<String, BTreeSet<String>>,
}

impl Graph {
    /// Reads every `.rs` file under `src` (the crate root's `lib.rs` and
    /// `main.rs` aside), without comments and `#[cfg(test)] mod tests`.
    pub fn read(src: &Path) -> anyhow::Result<Graph> {
        let mut files = Vec::new();
        walk(src, &mut files)?;
        let top: BTreeSet<String> = files.iter().filter_map(|f| top_module(src, f)).collect();
        let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for file in &files {
            let Some(module) = top_module(src, file) else { continue };
            let text = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
            let named = edges.entry(module.clone()).or_default();
            for name in crate_names(&strip(&text)) {
                if name != module && top.contains(&name) {
                    named.insert(name);
                }
            }
        }
        Ok(Graph { edges })
    }

    /// Sets of modules that reach each other (Tarjan's strongly connected
    /// components of more than one module).
    pub fn cycles(&self) -> Vec<Vec<String>> {
        struct State<'a> {
            g: &'a Graph,
            index: BTreeMap<&'a str, usize>,
            low: BTreeMap<&'a str, usize>,
            stack: Vec<&'a str>,
            on: BTreeSet<&'a str>,
            out: Vec<Vec<String>>,
        }
        fn visit<'a>(s: &mut State<'a>, v: &'a str) {
            let i = s.index.len();
            s.index.insert(v, i);
            s.low.insert(v, i);
            s.stack.push(v);
            s.on.insert(v);
            for w in s.g.edges.get(v).into_iter().flatten() {
                let w = w.as_str();
                if !s.index.contains_key(w) {
                    visit(s, w);
                    let lw = s.low[w];
                    if let Some(l) = s.low.get_mut(v) {
                        *l = (*l).min(lw);
                    }
                } else if s.on.contains(w) {
                    let iw = s.index[w];
                    if let Some(l) = s.low.get_mut(v) {
                        *l = (*l).min(iw);
                    }
                }
            }
            if s.low[v] == s.index[v] {
                let mut comp = Vec::new();
                while let Some(w) = s.stack.pop() {
                    s.on.remove(w);
                    comp.push(w.to_owned());
                    if w == v {
                        break;
                    }
                }
                if comp.len() > 1 {
                    comp.sort();
                    s.out.push(comp);
                }
            }
        }
        let mut s = State {
            g: self,
            index: BTreeMap::new(),
            low: BTreeMap::new(),
            stack: Vec::new(),
            on: BTreeSet::new(),
            out: Vec::new(),
        };
        for v in self.edges.keys() {
            if !s.index.contains_key(v.as_str()) {
                visit(&mut s, v);
            }
        }
        s.out
    }

    /// Edges from a module to one of a later layer (against the flow), and
    /// modules no layer names.
    pub fn back_edges(&self) -> (Vec<(String, String)>, Vec<String>) {
        let layer = |m: &str| LAYERS.iter().position(|l| l.contains(&m));
        let unplaced = self.edges.keys().filter(|m| layer(m).is_none()).cloned().collect();
        let back = self
            .edges
            .iter()
            .flat_map(|(from, to)| to.iter().map(move |t| (from, t)))
            .filter(|(from, to)| matches!((layer(from), layer(to)), (Some(a), Some(b)) if a < b))
            .map(|(a, b)| (a.clone(), b.clone()))
            .collect();
        (back, unplaced)
    }
}

fn walk(dir: &Path, out: &mut Vec<std::path::PathBuf>) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            walk(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    out.sort();
    Ok(())
}

/// `sink` for src/sink/metrics.rs, `config` for src/config.rs; None for the crate roots.
fn top_module(src: &Path, file: &Path) -> Option<String> {
    let first = file.strip_prefix(src).ok()?.components().next()?.as_os_str().to_str()?.to_owned();
    let name = first.strip_suffix(".rs").unwrap_or(&first).to_owned();
    (name != "lib" && name != "main").then_some(name)
}

/// The text without comments and without the unit-test module (tests may
/// name anything).
fn strip(text: &str) -> String {
    let text = match text.find("#[cfg(test)]\nmod tests") {
        Some(i) => &text[..i],
        None => text,
    };
    text.lines().map(|l| l.split_once("//").map_or(l, |(code, _)| code)).collect::<Vec<_>>().join("\n")
}

/// The top-level names after every `crate::`, in paths and in `use crate::{a, b::c}` groups.
fn crate_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("crate::") {
        rest = &rest[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // The names at the group's own depth, each after `{` or `,`.
            let mut depth = 0usize;
            let mut expect_name = true;
            let mut word = String::new();
            for c in group.chars() {
                if c.is_alphanumeric() || c == '_' {
                    if depth == 0 && expect_name {
                        word.push(c);
                    }
                    continue;
                }
                if !word.is_empty() {
                    names.insert(std::mem::take(&mut word));
                }
                match c {
                    ':' | ' ' | '\n' | '\t' => {}
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        expect_name = true;
                        continue;
                    }
                    _ => {}
                }
                if c != ' ' && c != '\n' && c != '\t' {
                    expect_name = false;
                }
            }
            if !word.is_empty() {
                names.insert(word);
            }
        } else {
            let word: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
            if !word.is_empty() {
                names.insert(word);
            }
        }
    }
    names
}

/// Prints the graph; fails on a cycle outside `sink/`, a back edge beyond
/// `allowed_back`, or a module in no layer.
pub fn run(src: &Path) -> anyhow::Result<()> {
    let g = Graph::read(src)?;
    for (module, to) in &g.edges {
        let to: Vec<&str> = to.iter().map(String::as_str).collect();
        println!("{module:>10} -> {}", to.join(", "));
    }
    let cycles = g.cycles();
    let (back, unplaced) = g.back_edges();
    println!("cycles: {}", if cycles.is_empty() { "none".to_owned() } else { format!("{cycles:?}") });
    println!("edges back up the data flow: {}", if back.is_empty() { "none".to_owned() } else { format!("{back:?}") });
    if !cycles.is_empty() || back.len() > 1 || !unplaced.is_empty() {
        anyhow::bail!("the module graph is not one way (modules in no layer: {unplaced:?})");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_in_paths_and_groups() {
        let text = "use crate::{config::Config, event::{A, b::C}, health, history,\n    hooks};\nlet x = crate::stats::Stats::get();";
        let got: Vec<String> = crate_names(text).into_iter().collect();
        assert_eq!(got, ["config", "event", "health", "history", "hooks", "stats"]);
    }

    /// The observer's own tree: one way, no cycle (the rule of
    /// docs/design.md, kept by the suite).
    #[test]
    fn the_observer_crate_flows_one_way() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../observer/src");
        let g = Graph::read(&src).unwrap();
        assert!(g.cycles().is_empty(), "cycles: {:?}", g.cycles());
        let (back, unplaced) = g.back_edges();
        assert!(unplaced.is_empty(), "modules in no layer of xtask/src/modules.rs: {unplaced:?}");
        assert!(back.len() <= 1, "edges back up the data flow: {back:?}");
    }
}
