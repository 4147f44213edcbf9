//! The shape of `src/`, checked on the source: files of at most 400 lines (functions of at
//! most 80 are clippy's `too_many_lines`), and the dependency direction: data flows
//! api → preheat → registry → store | source → config → error → oci | secret,
//! and no module imports one at its own level or above it (store and source know nothing of
//! each other; api and cli neither). The crate root (lib.rs, main.rs, check.rs) wires them
//! together and may import any of them; so does test_util, the probe tests use (feature
//! `test-util`).

use std::collections::BTreeSet;
use std::path::Path;

/// Each top-level module's level: a module may import only modules of a lower level.
const LEVELS: &[(&str, u8)] = &[
    ("oci", 0),
    ("secret", 0),
    ("error", 1),
    ("config", 2),
    ("store", 3),
    ("source", 3),
    ("registry", 4),
    ("preheat", 5),
    ("api", 6),
    ("cli", 6),
    ("check", 7),
    ("test_util", 7),
];

fn level(module: &str) -> Option<u8> {
    LEVELS.iter().find(|(m, _)| *m == module).map(|(_, l)| *l)
}

/// The top-level module a file under `src/` belongs to; None for the crate root's files.
fn module_of(relative: &Path) -> Option<String> {
    let first = relative.components().next()?.as_os_str().to_str()?;
    let name = first.strip_suffix(".rs").unwrap_or(first);
    (!matches!(name, "lib" | "main")).then(|| name.to_owned())
}

/// The module path of a file (`src/a/b.rs` → [a, b], `src/a/mod.rs` → [a]).
fn module_path(relative: &Path) -> Vec<String> {
    let mut parts: Vec<String> =
        relative.iter().map(|c| c.to_string_lossy().trim_end_matches(".rs").to_owned()).collect();
    if matches!(parts.last().map(String::as_str), Some("mod" | "lib" | "main")) {
        parts.pop();
    }
    parts
}

/// Code without comments (line, block and doc comments) and without the contents of string
/// and character literals, which are blanked: what is left is what the compiler reads as paths.
fn code_of(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let (mut out, mut i) = (String::with_capacity(text.len()), 0);
    while i < chars.len() {
        let (c, next) = (chars[i], chars.get(i + 1).copied());
        i = match (c, next) {
            ('/', Some('/')) => (i..chars.len()).find(|&j| chars[j] == '\n').unwrap_or(chars.len()),
            ('/', Some('*')) => block_comment_end(&chars, i),
            ('"', _) => blank_until(&chars, i + 1, &mut out, '"'),
            ('r', Some('"' | '#')) if raw_string_hashes(&chars, i + 1).is_some() => {
                raw_string_end(&chars, i + 1)
            }
            ('\'', _) if is_char_literal(&chars, i) => blank_until(&chars, i + 1, &mut out, '\''),
            _ => {
                out.push(c);
                i + 1
            }
        };
    }
    out
}

/// The index after a `/* … */` comment starting at `start` (they nest).
fn block_comment_end(chars: &[char], start: usize) -> usize {
    let (mut depth, mut i) = (0, start);
    while i + 1 < chars.len() {
        match (chars[i], chars[i + 1]) {
            ('/', '*') => (depth, i) = (depth + 1, i + 2),
            ('*', '/') if depth == 1 => return i + 2,
            ('*', '/') => (depth, i) = (depth - 1, i + 2),
            _ => i += 1,
        }
    }
    chars.len()
}

/// Skips a literal's contents up to the closing `quote` (escapes honoured), leaving two quotes
/// in `out`; the index after it.
fn blank_until(chars: &[char], mut i: usize, out: &mut String, quote: char) -> usize {
    out.push(quote);
    while i < chars.len() && chars[i] != quote {
        i += if chars[i] == '\\' { 2 } else { 1 };
    }
    out.push(quote);
    i + 1
}

/// The number of `#` of a raw string whose `r` is just before `at`, if one starts there.
fn raw_string_hashes(chars: &[char], at: usize) -> Option<usize> {
    let hashes = chars[at..].iter().take_while(|&&c| c == '#').count();
    (chars.get(at + hashes) == Some(&'"')).then_some(hashes)
}

/// The index after a raw string whose `r` is just before `at`.
fn raw_string_end(chars: &[char], at: usize) -> usize {
    let hashes = raw_string_hashes(chars, at).expect("a raw string");
    let mut i = at + hashes + 1;
    while i < chars.len() {
        if chars[i] == '"' && chars[i + 1..].iter().take(hashes).filter(|&&c| c == '#').count() == hashes {
            return i + 1 + hashes;
        }
        i += 1;
    }
    chars.len()
}

/// Whether the `'` at `i` opens a character literal (`'a'`, `'\n'`), not a lifetime (`'a`).
fn is_char_literal(chars: &[char], i: usize) -> bool {
    chars.get(i + 1) == Some(&'\\') || chars.get(i + 2) == Some(&'\'')
}

/// The top-level modules a file's code names: `crate::m`, each `m` of `crate::{m::…, …}`,
/// and `super::…` chains that climb to the crate root.
fn imports(relative: &Path, text: &str) -> BTreeSet<String> {
    let code = code_of(text);
    let mut named = BTreeSet::new();
    let mut rest = code.as_str();
    while let Some(i) = rest.find("crate::") {
        let after = &rest[i + "crate::".len()..];
        let boundary = i == 0 || !rest[..i].ends_with(|c: char| c.is_alphanumeric() || c == '_');
        if boundary {
            if let Some(group) = after.strip_prefix('{') {
                named.extend(top_level_items(group).into_iter().map(|m| module_behind(&m)));
            } else {
                named.insert(module_behind(&ident(after)));
            }
        }
        rest = after;
    }
    let depth = module_path(relative).len();
    for (i, _) in code.match_indices("super::") {
        if code[..i].ends_with("super::") {
            continue;
        }
        let mut after = &code[i..];
        let mut climbs = 0;
        while let Some(next) = after.strip_prefix("super::") {
            climbs += 1;
            after = next;
        }
        // A chain as long as the file's module path reaches the crate root.
        if climbs >= depth {
            named.insert(ident(after));
        }
    }
    named.retain(|m| level(m).is_some());
    named
}

fn ident(s: &str) -> String {
    s.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect()
}

/// The first path segment of each item of a `{…}` use group, up to its closing brace.
fn top_level_items(group: &str) -> Vec<String> {
    let (mut items, mut depth, mut start) = (Vec::new(), 0, true);
    for (i, c) in group.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => break,
            '}' => depth -= 1,
            ',' if depth == 0 => start = true,
            c if start && (c.is_alphanumeric() || c == '_') => {
                items.push(ident(&group[i..]));
                start = false;
            }
            _ => {}
        }
    }
    items
}

/// What a file imports against the direction, as "module → module" lines.
fn violations(relative: &Path, text: &str) -> Vec<String> {
    let Some(module) = module_of(relative) else { return Vec::new() };
    let own =
        level(&module).unwrap_or_else(|| panic!("src/{}: module {module} has no level", relative.display()));
    imports(relative, text)
        .into_iter()
        .filter(|m| *m != module && level(m).is_some_and(|l| l >= own))
        .map(|m| format!("src/{}: {module} imports {m}", relative.display()))
        .collect()
}

/// The module a name at the crate root stands for: itself, or the module a root re-export
/// (`pub use` in lib.rs) comes from.
fn module_behind(name: &str) -> String {
    const REEXPORTS: &[(&str, &str)] = &[("Error", "error"), ("htpasswd_line", "api")];
    REEXPORTS.iter().find(|(n, _)| *n == name).map_or(name, |(_, m)| m).to_owned()
}

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn no_module_imports_one_at_its_level_or_above() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    assert!(files.len() > 20, "found only {} files under {}", files.len(), src.display());
    let found: Vec<String> = files
        .iter()
        .flat_map(|f| violations(f.strip_prefix(&src).unwrap(), &std::fs::read_to_string(f).unwrap()))
        .collect();
    assert!(found.is_empty(), "imports against the direction:\n{}", found.join("\n"));
}

#[test]
fn every_root_reexport_is_known_to_the_checker() {
    let lib = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/lib.rs")).unwrap();
    for line in code_of(&lib).lines().filter_map(|l| l.trim().strip_prefix("pub use ")) {
        let (module, name) = line.trim_end_matches(';').split_once("::").expect("pub use module::…");
        let name = name.rsplit("::").next().unwrap();
        assert_eq!(module_behind(name), module, "lib.rs re-exports {name}: add it to module_behind");
    }
}

#[test]
fn every_top_level_module_has_a_level() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let lib = std::fs::read_to_string(src.join("lib.rs")).unwrap();
    for line in code_of(&lib).lines() {
        let line = line.trim();
        let declared = ["pub mod ", "pub(crate) mod ", "mod "].iter().find_map(|p| line.strip_prefix(p));
        if let Some(m) = declared {
            let m = m.trim_end_matches(';');
            assert!(level(m).is_some(), "module {m} (lib.rs) has no level in LEVELS");
        }
    }
}

#[test]
fn the_checker_sees_upward_and_sideways_imports() {
    let upward = violations(Path::new("store/fill.rs"), "use crate::registry::Mirror;");
    assert_eq!(upward, ["src/store/fill.rs: store imports registry"]);
    let grouped = violations(Path::new("config/mod.rs"), "use crate::{error::Error, api::auth::ClientAuth};");
    assert_eq!(grouped, ["src/config/mod.rs: config imports api"]);
    let sideways = violations(Path::new("source/peers/fetch.rs"), "let s: crate::store::fill::Source;");
    assert_eq!(sideways, ["src/source/peers/fetch.rs: source imports store"]);
    let climbed = violations(Path::new("oci/digest.rs"), "use super::super::error::Error;");
    assert_eq!(climbed, ["src/oci/digest.rs: oci imports error"]);
    let commented = violations(
        Path::new("store/mod.rs"),
        "// see crate::registry::Mirror\nuse crate::oci::digest::Digest;",
    );
    assert!(commented.is_empty(), "{commented:?}");
    let after_a_url =
        violations(Path::new("store/mod.rs"), "let u = \"http://x\"; use crate::registry::Mirror;");
    assert_eq!(
        after_a_url,
        ["src/store/mod.rs: store imports registry"],
        "code after `//` in a string was missed"
    );
    let quoted = violations(
        Path::new("store/mod.rs"),
        "let s = \"crate::registry\"; let r = r#\"crate::api \"x\"\"#; let c = '\"'; /* crate::api /* nested */ crate::api */",
    );
    assert!(quoted.is_empty(), "{quoted:?}");
    let reexported = violations(Path::new("oci/digest.rs"), "fn f() -> crate::Error {}");
    assert_eq!(reexported, ["src/oci/digest.rs: oci imports error"], "a root re-export was missed");
    let lifetimes =
        violations(Path::new("store/mod.rs"), "fn f<'a>(x: &'a str) -> crate::registry::Mirror {}");
    assert_eq!(lifetimes, ["src/store/mod.rs: store imports registry"], "a lifetime was read as a literal");
    let downward = violations(Path::new("api/admin.rs"), "use crate::{registry::Mirror, store::meta::Pin};");
    assert!(downward.is_empty(), "{downward:?}");
}

#[test]
fn no_source_file_is_over_400_lines() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let long: Vec<String> = files
        .iter()
        .filter_map(|f| {
            let n = std::fs::read_to_string(f).unwrap().lines().count();
            (n > 400).then(|| format!("{}: {n} lines", f.strip_prefix(&src).unwrap().display()))
        })
        .collect();
    assert!(
        long.is_empty(),
        "files over 400 lines (split them by what their parts own):\n{}",
        long.join("\n")
    );
}

/// The fields of a struct's definition in `text` that are `pub` or `pub(crate)`.
fn open_fields(text: &str, name: &str) -> Vec<String> {
    let start = text.find(&format!("struct {name} {{")).unwrap_or_else(|| panic!("struct {name} not found"));
    let body = &text[start..start + text[start..].find("\n}").unwrap()];
    body.lines().skip(1).map(str::trim).filter(|l| l.starts_with("pub")).map(str::to_owned).collect()
}

#[test]
fn the_store_and_the_mirror_keep_their_fields_private() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    for (file, name) in [("store/mod.rs", "Store"), ("registry/mod.rs", "Mirror"), ("lib.rs", "Server")] {
        let text = std::fs::read_to_string(src.join(file)).unwrap();
        let open: Vec<String> = open_fields(&text, name)
            .into_iter()
            .filter(|f| {
                !(name == "Server" && (f.starts_with("pub registry_addr") || f.starts_with("pub admin_addr")))
            })
            .collect();
        assert!(open.is_empty(), "{name} opens fields: {open:?}");
    }
    // The check itself sees an open field.
    assert_eq!(
        open_fields("pub struct S {\n    pub(crate) a: u8,\n    b: u8,\n}\n", "S"),
        ["pub(crate) a: u8,"]
    );
}
