//! The module graph of the library has no cycle.
//!
//! Reads `src/` from `lib.rs` down (following `mod` declarations), finds every path
//! that starts with `crate::` or `super::` outside `#[cfg(test)]` items (`use` groups
//! included, `super` resolved), and builds two graphs: between the top-level modules,
//! and between the submodules of each module. Either having a cycle fails, naming it;
//! the top-level dependency list is printed (`cargo test --test architecture --
//! --nocapture`) and is what the architecture section of the README describes.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// A module path: `["store", "redis"]`; the crate root is `[]`.
type ModPath = Vec<String>;
/// Which module uses which.
type Graph = BTreeMap<String, BTreeSet<String>>;

/// One source file of the library.
struct SourceFile {
    module: ModPath,
    /// Comments, string and character literals blanked out.
    code: String,
}

/// Blanks out comments, string literals (raw ones included) and character literals,
/// so that neither `"crate::x"` nor `// super::y` counts as a use.
fn strip(src: &str) -> String {
    let b = src.as_bytes();
    let mut out = String::with_capacity(src.len());
    let mut i = 0;
    let blank = |out: &mut String, s: &[u8]| {
        for &c in s {
            out.push(if c == b'\n' { '\n' } else { ' ' });
        }
    };
    while i < b.len() {
        let rest = &b[i..];
        let prev_ident = i > 0 && (b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_');
        if rest.starts_with(b"//") {
            let end = rest.iter().position(|&c| c == b'\n').unwrap_or(rest.len());
            blank(&mut out, &rest[..end]);
            i += end;
        } else if rest.starts_with(b"/*") {
            let mut depth = 0;
            let mut j = 0;
            while j < rest.len() {
                if rest[j..].starts_with(b"/*") {
                    depth += 1;
                    j += 2;
                } else if rest[j..].starts_with(b"*/") {
                    depth -= 1;
                    j += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    j += 1;
                }
            }
            blank(&mut out, &rest[..j]);
            i += j;
        } else if !prev_ident && (rest.starts_with(b"r\"") || rest.starts_with(b"r#")) {
            let hashes = rest[1..].iter().take_while(|&&c| c == b'#').count();
            if rest.get(1 + hashes) != Some(&b'"') {
                out.push('r');
                i += 1;
                continue;
            }
            let mut close = vec![b'"'];
            close.extend(std::iter::repeat_n(b'#', hashes));
            let start = 2 + hashes;
            let end = rest[start..]
                .windows(close.len())
                .position(|w| w == close.as_slice())
                .map_or(rest.len(), |p| start + p + close.len());
            blank(&mut out, &rest[..end]);
            i += end;
        } else if rest[0] == b'"' {
            let mut j = 1;
            while j < rest.len() && rest[j] != b'"' {
                j += if rest[j] == b'\\' { 2 } else { 1 };
            }
            let end = (j + 1).min(rest.len());
            blank(&mut out, &rest[..end]);
            i += end;
        } else if rest[0] == b'\'' {
            // A character literal ('x', '\n', '\u{1F600}'), not a lifetime ('a).
            let len = if rest.get(1) == Some(&b'\\') {
                rest[2..].iter().position(|&c| c == b'\'').map(|p| p + 3)
            } else {
                let ch = src[i + 1..].chars().next().map_or(1, char::len_utf8);
                (rest.get(1 + ch) == Some(&b'\'')).then_some(ch + 2)
            };
            match len {
                Some(n) => {
                    blank(&mut out, &rest[..n]);
                    i += n;
                }
                None => {
                    out.push('\'');
                    i += 1;
                }
            }
        } else {
            let ch = src[i..].chars().next().unwrap_or(' ');
            out.push(ch);
            i += ch.len_utf8();
        }
    }
    out
}

/// Identifiers, `::` and single punctuation characters.
fn tokens(code: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut i = 0;
    let b = code.as_bytes();
    while i < b.len() {
        let c = b[i];
        if c.is_ascii_whitespace() {
            i += 1;
        } else if c.is_ascii_alphanumeric() || c == b'_' {
            let start = i;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                i += 1;
            }
            out.push(&code[start..i]);
        } else if code[i..].starts_with("::") {
            out.push("::");
            i += 2;
        } else {
            let n = code[i..].chars().next().map_or(1, char::len_utf8);
            out.push(&code[i..i + n]);
            i += n;
        }
    }
    out
}

fn is_ident(t: &str) -> bool {
    t.bytes()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == b'_')
}

/// Drops every item marked `#[cfg(test)]` (unit-test modules and helpers): what only
/// tests use is not part of the architecture.
fn without_test_items(toks: Vec<&str>) -> Vec<&str> {
    let mut out = Vec::with_capacity(toks.len());
    let mut i = 0;
    while i < toks.len() {
        let is_cfg_test = toks[i..].starts_with(&["#", "[", "cfg", "(", "test", ")", "]"]);
        if !is_cfg_test {
            out.push(toks[i]);
            i += 1;
            continue;
        }
        // Skip to the end of the item: a `;` before any brace, or the matching `}`.
        let mut j = i + 7;
        let mut depth = 0usize;
        while j < toks.len() {
            match toks[j] {
                ";" if depth == 0 => break,
                "{" => depth += 1,
                "}" => {
                    depth = depth.saturating_sub(1);
                    if depth == 0 {
                        break;
                    }
                }
                _ => {}
            }
            j += 1;
        }
        i = j + 1;
    }
    out
}

/// The library's files, found from `lib.rs` through its `mod` declarations.
fn library(src: &Path) -> Vec<SourceFile> {
    let mut files = Vec::new();
    let mut todo = vec![(Vec::new(), src.join("lib.rs"))];
    while let Some((module, path)) = todo.pop() {
        let text =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let code = strip(&text);
        let toks = without_test_items(tokens(&code));
        // Children live beside `lib.rs`/`mod.rs`, or in a folder named after the file.
        let dir = match path.file_name().and_then(|n| n.to_str()) {
            Some("lib.rs" | "mod.rs") => path.parent().map(Path::to_path_buf),
            _ => Some(path.with_extension("")),
        }
        .unwrap_or_default();
        for w in toks.windows(3) {
            if w[0] == "mod" && is_ident(w[1]) && w[2] == ";" {
                let mut child = module.clone();
                child.push(w[1].to_string());
                let flat = dir.join(format!("{}.rs", w[1]));
                let nested = dir.join(w[1]).join("mod.rs");
                todo.push((child, if flat.exists() { flat } else { nested }));
            }
        }
        files.push(SourceFile { module, code });
    }
    files
}

/// Every module path a file names: `crate::a::b::C`, `super::x`, `self::y`, a path that
/// starts with one of the file's own child modules (`gateway::handle` in `lib.rs`),
/// and the leaves of `use crate::{a::{b, c}, d}` groups — as absolute segment lists.
fn referenced_paths(
    file: &SourceFile,
    toks: &[&str],
    modules: &BTreeSet<ModPath>,
) -> Vec<Vec<String>> {
    let depth = file.module.len();
    let children: BTreeSet<&str> = modules
        .iter()
        .filter(|m| m.len() == depth + 1 && m.starts_with(&file.module))
        .map(|m| m[depth].as_str())
        .collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < toks.len() {
        let t = toks[i];
        let starts_path = (t == "crate" || t == "super" || t == "self" || children.contains(t))
            && toks.get(i + 1) == Some(&"::")
            && (i == 0 || !matches!(toks[i - 1], "::" | "$" | "."));
        if !starts_path {
            i += 1;
            continue;
        }
        let mut base: Vec<String> = Vec::new();
        let mut j = i;
        match t {
            "crate" => j += 2,
            "self" => {
                base = file.module.clone();
                j += 2;
            }
            "super" => {
                base = file.module.clone();
                base.pop();
                while toks.get(j + 2) == Some(&"super") && toks.get(j + 3) == Some(&"::") {
                    base.pop();
                    j += 2;
                }
                j += 2;
            }
            // A child module: the path starts with its name.
            _ => base = file.module.clone(),
        }
        j = path_tail(toks, j, base, &mut out);
        i = j.max(i + 1);
    }
    out
}

/// Reads `a::b::{c, d::e}` from `toks[j]` onwards, prefixed by `base`; pushes each full
/// path; returns the index after it.
fn path_tail(
    toks: &[&str],
    mut j: usize,
    mut base: Vec<String>,
    out: &mut Vec<Vec<String>>,
) -> usize {
    while j < toks.len() {
        if is_ident(toks[j]) && toks[j] != "self" {
            base.push(toks[j].to_string());
            if toks.get(j + 1) == Some(&"::") {
                j += 2;
                continue;
            }
            out.push(base);
            return j + 1;
        }
        if toks[j] == "self" {
            out.push(base);
            return j + 1;
        }
        if toks[j] == "{" {
            j += 1;
            while j < toks.len() && toks[j] != "}" {
                if toks[j] == "," {
                    j += 1;
                    continue;
                }
                let next = path_tail(toks, j, base.clone(), out);
                // `as name` after a leaf.
                j = if toks.get(next) == Some(&"as") {
                    next + 2
                } else {
                    next
                };
                if toks.get(j).is_some_and(|t| *t != "," && *t != "}") {
                    j += 1; // `*` or anything unexpected: step over it.
                }
            }
            return j + 1;
        }
        if toks[j] == "*" {
            out.push(base);
            return j + 1;
        }
        break;
    }
    out.push(base);
    j
}

/// The module a path points into: its longest prefix that is a module of the crate.
fn module_of(path: &[String], modules: &BTreeSet<ModPath>) -> ModPath {
    (0..=path.len())
        .rev()
        .map(|n| path[..n].to_vec())
        .find(|p| modules.contains(p))
        .unwrap_or_default()
}

/// Module-to-module uses: (from, to), both full module paths.
fn uses(src: &Path) -> BTreeSet<(ModPath, ModPath)> {
    let files = library(src);
    let modules: BTreeSet<ModPath> = files.iter().map(|f| f.module.clone()).collect();
    let mut edges = BTreeSet::new();
    for f in &files {
        let toks = without_test_items(tokens(&f.code));
        for p in referenced_paths(f, &toks, &modules) {
            let to = module_of(&p, &modules);
            if to != f.module {
                edges.insert((f.module.clone(), to));
            }
        }
    }
    assert!(
        files.len() > 10 && edges.len() > 20,
        "the reader found {} files and {} uses: it is broken, not the crate",
        files.len(),
        edges.len()
    );
    edges
}

/// The graph between the top-level modules (`store::redis` counts as `store`); the
/// crate root (`lib.rs`, which uses nearly everything) is the node `crate`.
fn top_level(edges: &BTreeSet<(ModPath, ModPath)>) -> Graph {
    let top = |m: &ModPath| m.first().cloned().unwrap_or_else(|| "crate".to_string());
    let mut g = Graph::new();
    for (from, to) in edges {
        let (a, b) = (top(from), top(to));
        if a != b {
            g.entry(a).or_default().insert(b);
        }
    }
    g
}

/// For each module with submodules, the graph between those submodules (a use of the
/// parent itself is not an edge: a child may use what its parent declares).
fn between_siblings(edges: &BTreeSet<(ModPath, ModPath)>) -> BTreeMap<String, Graph> {
    let mut out: BTreeMap<String, Graph> = BTreeMap::new();
    for (from, to) in edges {
        let common = from.iter().zip(to).take_while(|(a, b)| a == b).count();
        if common == 0 || from.len() <= common || to.len() <= common {
            continue;
        }
        let parent = from[..common].join("::");
        let name = |m: &ModPath| m[..=common].join("::");
        out.entry(parent)
            .or_default()
            .entry(name(from))
            .or_default()
            .insert(name(to));
    }
    out
}

/// A cycle of `g`, if it has one, as the list of modules around it.
fn find_cycle(g: &Graph) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Open,
        Done,
    }
    fn visit(
        g: &Graph,
        n: &str,
        marks: &mut BTreeMap<String, Mark>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        marks.insert(n.to_string(), Mark::Open);
        stack.push(n.to_string());
        for m in g.get(n).into_iter().flatten() {
            match marks.get(m.as_str()).copied().unwrap_or(Mark::New) {
                Mark::Open => {
                    let at = stack.iter().position(|s| s == m).unwrap_or(0);
                    let mut cycle = stack[at..].to_vec();
                    cycle.push(m.clone());
                    return Some(cycle);
                }
                Mark::New => {
                    if let Some(c) = visit(g, m, marks, stack) {
                        return Some(c);
                    }
                }
                Mark::Done => {}
            }
        }
        stack.pop();
        marks.insert(n.to_string(), Mark::Done);
        None
    }
    let mut marks = BTreeMap::new();
    for n in g.keys() {
        if marks.get(n.as_str()).copied().unwrap_or(Mark::New) == Mark::New
            && let Some(c) = visit(g, n, &mut marks, &mut Vec::new())
        {
            return Some(c);
        }
    }
    None
}

fn listing(g: &Graph) -> String {
    g.iter()
        .map(|(k, v)| {
            format!(
                "{k} -> {}\n",
                v.iter().cloned().collect::<Vec<_>>().join(" ")
            )
        })
        .collect()
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

#[test]
fn top_level_modules_have_no_cycle() {
    let g = top_level(&uses(&src()));
    let list = listing(&g);
    println!("which module uses which:\n{list}");
    if let Some(c) = find_cycle(&g) {
        panic!(
            "module cycle: {}\n\nwhich module uses which:\n{list}",
            c.join(" -> ")
        );
    }
}

#[test]
fn submodules_of_a_module_have_no_cycle() {
    for (parent, g) in between_siblings(&uses(&src())) {
        if let Some(c) = find_cycle(&g) {
            panic!(
                "cycle between the submodules of {parent}: {}\n\n{}",
                c.join(" -> "),
                listing(&g)
            );
        }
    }
}

/// The reader sees the uses it must see: a `use` group, a `super::` path, a path in an
/// expression, and not one inside a string, a comment or a `#[cfg(test)]` module.
#[test]
fn the_reader_finds_uses_and_only_uses() {
    let dir = std::env::temp_dir().join(format!("keygate-arch-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("b")).unwrap();
    let write = |p: &str, s: &str| std::fs::write(dir.join(p), s).unwrap();
    write(
        "lib.rs",
        "mod a;\nmod b;\nmod c;\nmod d;\nmod e;\nmod f;\nmod g;\nmod h;\nmod i;\nmod j;\nmod k;\n\
         fn run() { k::go(); x.j::<u8>(); }\n",
    );
    write(
        "a.rs",
        "use crate::{b::{x, y as z}, c};\nfn f() { let s = \"crate::d::q\"; crate::e::go(); }\n\
         // crate::f::no\n#[cfg(test)]\nmod tests { use crate::g::t; }\n",
    );
    write("b/mod.rs", "mod x;\nmod y;\npub use self::x::Thing;\n");
    write(
        "b/x.rs",
        "use super::y::Thing;\nfn f() -> char { '\"' }\nuse crate::h;\n",
    );
    write("b/y.rs", "pub struct Thing;\nfn g() { super::x::f(); }\n");
    for m in ["c", "d", "e", "f", "g", "h", "i", "j", "k"] {
        write(
            &format!("{m}.rs"),
            &format!("use crate::{{a, b}};\nuse super::{m}_own;\n"),
        );
    }
    let files = library(&dir);
    let modules: BTreeSet<ModPath> = files.iter().map(|f| f.module.clone()).collect();
    let mut edges = BTreeSet::new();
    for f in &files {
        let toks = without_test_items(tokens(&f.code));
        for p in referenced_paths(f, &toks, &modules) {
            let to = module_of(&p, &modules);
            if to != f.module {
                edges.insert((f.module.join("::"), to.join("::")));
            }
        }
    }
    let from = |m: &str| -> BTreeSet<&str> {
        edges
            .iter()
            .filter(|(a, _)| a == m)
            .map(|(_, b)| b.as_str())
            .collect()
    };
    assert_eq!(from("a"), BTreeSet::from(["b::x", "b::y", "c", "e"]));
    assert_eq!(from("b::x"), BTreeSet::from(["b::y", "h"]));
    assert_eq!(from(""), BTreeSet::from(["k"]));
    assert_eq!(from("b"), BTreeSet::from(["b::x"]));
    assert_eq!(from("b::y"), BTreeSet::from(["b::x"]));
    let _ = std::fs::remove_dir_all(&dir);
}

/// The cycle finder finds a cycle where there is one, and none where there is none.
#[test]
fn a_back_edge_is_a_cycle() {
    let mut g = Graph::new();
    for (a, b) in [("gateway", "auth"), ("auth", "store"), ("store", "token")] {
        g.entry(a.into()).or_default().insert(b.into());
    }
    assert_eq!(find_cycle(&g), None);
    g.entry("token".into()).or_default().insert("auth".into());
    assert_eq!(
        find_cycle(&g),
        Some(vec![
            "auth".into(),
            "store".into(),
            "token".into(),
            "auth".into()
        ])
    );
    // Sibling submodules: store::cache -> store::redis -> store::cache.
    let edges: BTreeSet<(ModPath, ModPath)> = [
        (vec!["store", "cache"], vec!["store", "redis"]),
        (vec!["store", "redis"], vec!["store", "cache"]),
        (vec!["store", "redis"], vec!["store"]),
    ]
    .into_iter()
    .map(|(a, b)| {
        (
            a.into_iter().map(String::from).collect(),
            b.into_iter().map(String::from).collect(),
        )
    })
    .collect();
    let sib = between_siblings(&edges);
    assert!(find_cycle(&sib["store"]).is_some());
}
