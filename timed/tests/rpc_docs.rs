//! `docs/rpc.md` documents exactly the methods the server registers: one `### name` section for
//! every entry of `timed::api::METHODS`, in that order, and no section for anything else.

use std::collections::BTreeSet;
use timed::api::METHODS;

fn doc_path() -> String {
    format!("{}/../docs/rpc.md", env!("CARGO_MANIFEST_DIR"))
}

/// The text of every `### ` heading outside fenced code blocks, in document order.
fn method_headings() -> Vec<String> {
    let path = doc_path();
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {path}: {e}"));
    let mut in_fence = false;
    let mut headings = Vec::new();
    for line in text.lines() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("```") || trimmed.starts_with("~~~") {
            in_fence = !in_fence;
            continue;
        }
        if in_fence {
            continue;
        }
        if let Some(name) = line.strip_prefix("### ") {
            headings.push(name.trim().to_string());
        }
    }
    headings
}

#[test]
fn every_method_has_a_section() {
    let headings: BTreeSet<String> = method_headings().into_iter().collect();
    let missing: Vec<&str> = METHODS.iter().copied().filter(|m| !headings.contains(*m)).collect();
    assert!(missing.is_empty(), "docs/rpc.md has no `### name` section for: {missing:?}");
}

#[test]
fn no_section_for_an_unknown_method() {
    let known: BTreeSet<&str> = METHODS.iter().copied().collect();
    let extra: Vec<String> = method_headings().into_iter().filter(|h| !known.contains(h.as_str())).collect();
    assert!(
        extra.is_empty(),
        "docs/rpc.md has `### ` headings that are not in timed::api::METHODS (method sections only; use `##` or `####` for anything else): {extra:?}"
    );
}

#[test]
fn sections_are_unique_and_in_methods_order() {
    let headings = method_headings();
    let mut seen = BTreeSet::new();
    let dupes: Vec<&String> = headings.iter().filter(|h| !seen.insert(h.as_str())).collect();
    assert!(dupes.is_empty(), "docs/rpc.md documents these methods more than once: {dupes:?}");
    let documented: Vec<&str> = headings.iter().map(String::as_str).filter(|h| METHODS.contains(h)).collect();
    let expected: Vec<&str> = METHODS.iter().copied().filter(|m| documented.contains(m)).collect();
    assert_eq!(documented, expected, "docs/rpc.md sections should follow the order of timed::api::METHODS");
}
