//! The core's boundary, checked: no file under `src/core` may use the user-facing `api` module,
//! kube, k8s-openapi or hyper, in a `use` or in a path written inline. The core is the model the
//! controller, the standalone loader and the proxy all adapt to; once it imports one of them it
//! can no longer be tested, or reasoned about, without it.
//!
//! The check reads the sources (from `CARGO_MANIFEST_DIR`), with comments and string literals
//! blanked out, so a doc comment may still name what it is not allowed to import.

use std::path::{Path, PathBuf};

/// First path segments the core must not start a path with.
const FORBIDDEN_CRATES: &[&str] = &["kube", "k8s_openapi", "hyper"];

/// One forbidden path: where, and what.
#[derive(Debug, PartialEq, Eq)]
struct Offence {
    line: usize,
    path: String,
}

/// Whether a flattened path (`crate::api::X`, `kube_runtime::watcher`) crosses the boundary.
/// `depth` is how many leading `super`s reach the crate root from this file's module.
fn crosses(path: &str, depth: usize) -> bool {
    let segs: Vec<&str> = path.trim_start_matches("::").split("::").map(str::trim).collect();
    let Some(first) = segs.first() else { return false };
    if FORBIDDEN_CRATES.iter().any(|c| first == c || first.starts_with(&format!("{c}_"))) {
        return true;
    }
    let supers = segs.iter().take_while(|s| **s == "super").count();
    let after_root = if *first == "crate" {
        segs.get(1)
    } else if supers >= depth {
        // From an inline `mod tests`, one `super` more is needed; a path that then names
        // `core::api` names nothing and would not compile, so counting it here is harmless.
        segs.get(supers)
    } else {
        None
    };
    after_root.is_some_and(|s| *s == "api")
}

/// The source with comments and string/char literals replaced by spaces (newlines kept, so
/// offsets still give line numbers).
fn blank_comments_and_strings(src: &str) -> String {
    let b = src.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    let blank = |out: &mut Vec<u8>, c: u8| out.push(if c == b'\n' { b'\n' } else { b' ' });
    while i < b.len() {
        if b[i..].starts_with(b"//") {
            while i < b.len() && b[i] != b'\n' {
                out.push(b' ');
                i += 1;
            }
        } else if b[i..].starts_with(b"/*") {
            let mut level = 0;
            while i < b.len() {
                if b[i..].starts_with(b"/*") {
                    level += 1;
                    out.extend_from_slice(b"  ");
                    i += 2;
                } else if b[i..].starts_with(b"*/") {
                    level -= 1;
                    out.extend_from_slice(b"  ");
                    i += 2;
                    if level == 0 {
                        break;
                    }
                } else {
                    blank(&mut out, b[i]);
                    i += 1;
                }
            }
        } else if b[i..].starts_with(b"'\"'") || b[i..].starts_with(b"'\\\"'") {
            // A char literal holding a quote is not the start of a string.
            while out.len() < i + if b[i + 1] == b'\\' { 4 } else { 3 } {
                out.push(b' ');
            }
            i = out.len();
        } else if b[i] == b'r' && !prev_is_ident(b, i) && raw_string_hashes(b, i).is_some() {
            let hashes = raw_string_hashes(b, i).unwrap_or(0);
            let close: Vec<u8> = std::iter::once(b'"').chain(std::iter::repeat_n(b'#', hashes)).collect();
            let body = i + 2 + hashes;
            let end = find(b, body, &close).map_or(b.len(), |e| e + close.len());
            for &c in &b[i..end] {
                blank(&mut out, c);
            }
            i = end;
        } else if b[i] == b'"' {
            let mut j = i + 1;
            while j < b.len() && b[j] != b'"' {
                j += if b[j] == b'\\' { 2 } else { 1 };
            }
            let end = (j + 1).min(b.len());
            for &c in &b[i..end] {
                blank(&mut out, c);
            }
            i = end;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// With `b[i] == 'r'`: the number of `#` of a raw string starting there (`r"`, `r#"`), if one does.
fn raw_string_hashes(b: &[u8], i: usize) -> Option<usize> {
    let hashes = b.get(i + 1..)?.iter().take_while(|c| **c == b'#').count();
    (b.get(i + 1 + hashes) == Some(&b'"')).then_some(hashes)
}

fn prev_is_ident(b: &[u8], i: usize) -> bool {
    i > 0 && (b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_')
}

fn find(b: &[u8], from: usize, needle: &[u8]) -> Option<usize> {
    b.get(from..)?.windows(needle.len()).position(|w| w == needle).map(|p| p + from)
}

/// Flattens a use tree (`crate::{api::{A, B}, core}`) into full paths.
fn flatten_use(prefix: &str, tree: &str, out: &mut Vec<String>) {
    let tree = tree.trim();
    let Some(open) = tree.find('{') else {
        let path = tree.split(" as ").next().unwrap_or(tree).trim();
        out.push(format!("{prefix}{path}"));
        return;
    };
    let head = format!("{prefix}{}", &tree[..open]);
    let inner = tree[open + 1..].trim_end().strip_suffix('}').unwrap_or(&tree[open + 1..]);
    let (mut depth, mut start) = (0usize, 0usize);
    for (k, c) in inner.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                flatten_use(&head, &inner[start..k], out);
                start = k + 1;
            }
            _ => {}
        }
    }
    if !inner[start..].trim().is_empty() {
        flatten_use(&head, &inner[start..], out);
    }
}

/// Every forbidden path in one file's source; `depth` is the file's module depth below the
/// crate root (`core/pool.rs` is 2).
fn offences(src: &str, depth: usize) -> Vec<Offence> {
    let code = blank_comments_and_strings(src);
    let line_of = |at: usize| code[..at].bytes().filter(|c| *c == b'\n').count() + 1;
    let mut found = Vec::new();
    let b = code.as_bytes();
    // `use` statements, with their groups flattened.
    let mut at = 0;
    while let Some(p) = find(b, at, b"use ") {
        at = p + 4;
        if prev_is_ident(b, p) {
            continue;
        }
        let Some(end) = find(b, at, b";") else { break };
        let mut paths = Vec::new();
        flatten_use("", &code[at..end].split_whitespace().collect::<Vec<_>>().join(" "), &mut paths);
        for path in paths.into_iter().filter(|p| crosses(p, depth)) {
            found.push(Offence { line: line_of(p), path });
        }
    }
    // Paths written inline (`crate::api::X::Ok`, `::hyper::Request`).
    let is_path_byte = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c == b':';
    let mut i = 0;
    while i < b.len() {
        if !is_path_byte(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && is_path_byte(b[i]) {
            i += 1;
        }
        let chain = &code[start..i];
        if chain.contains("::") && !chain.trim_start_matches(':').is_empty() && crosses(chain, depth) {
            let offence = Offence { line: line_of(start), path: chain.to_owned() };
            if !found.contains(&offence) {
                found.push(offence);
            }
        }
    }
    found
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("read {}: {e}", dir.display()));
    for entry in entries {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `src/core/mod.rs` is `crate::core` (depth 1), `src/core/sticky/tests.rs` depth 3.
fn module_depth(core_dir: &Path, file: &Path) -> usize {
    let rel = file.strip_prefix(core_dir).unwrap_or(file);
    let dirs = rel.components().count() - 1;
    let is_mod = file.file_name().is_some_and(|n| n == "mod.rs");
    1 + dirs + usize::from(!is_mod)
}

#[test]
fn the_core_imports_no_api_kube_or_hyper() {
    let core_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/core");
    let mut files = Vec::new();
    rust_files(&core_dir, &mut files);
    files.sort();
    assert!(files.len() > 5, "found only {files:?} under {}", core_dir.display());
    let mut report = Vec::new();
    for file in &files {
        let src = std::fs::read_to_string(file).unwrap_or_else(|e| panic!("read {}: {e}", file.display()));
        for o in offences(&src, module_depth(&core_dir, file)) {
            report.push(format!("src/core/{}:{}: {}", file.strip_prefix(&core_dir).unwrap().display(), o.line, o.path));
        }
    }
    assert!(
        report.is_empty(),
        "the core must stay free of the api module, kube, k8s_openapi and hyper; move the type into \
         core (api may re-export it) or the code out of core:\n{}",
        report.join("\n")
    );
}

#[test]
fn the_scanner_finds_every_form_and_ignores_comments_and_strings() {
    let src = r##"//! Names kube::Client and crate::api::X in a comment: fine.
use std::fmt;
use crate::{
    core::Pool,
    api::{BalancerPoolSpec, Backend as B},
};
use kube_runtime::watcher;
use hyper as h;
fn f() -> crate::api::MemberStatus { let s = "hyper::Request"; let r = r#"k8s_openapi::X"#; todo!() }
type T = ::k8s_openapi::api::core::v1::Pod;
use super::super::api::Sticky;
use super::names::CookieMode;
fn hyperlink(hyper_free: u8) -> u8 { hyper_free } /* use hyper::Body; */
const Q: u8 = b'"'; const E: char = '\"'; use hyper_util::rt;
"##;
    let got: Vec<(usize, String)> = offences(src, 2).into_iter().map(|o| (o.line, o.path)).collect();
    assert_eq!(
        got,
        [
            (3, "crate::api::BalancerPoolSpec".to_owned()),
            (3, "crate::api::Backend".to_owned()),
            (7, "kube_runtime::watcher".to_owned()),
            (8, "hyper".to_owned()),
            (11, "super::super::api::Sticky".to_owned()),
            (14, "hyper_util::rt".to_owned()),
            (9, "crate::api::MemberStatus".to_owned()),
            (10, "::k8s_openapi::api::core::v1::Pod".to_owned()),
        ]
    );
}
