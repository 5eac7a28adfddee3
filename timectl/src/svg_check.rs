//! Test helper shared by unit and integration tests (included by path from `tests/common`):
//! every `<svg>` in an HTML page must parse as XML on its own.

/// Returns how many `<svg>` elements the page has, panicking on one that is not well-formed.
pub fn svgs_parse(html: &str) -> usize {
    let mut n = 0;
    let mut rest = html;
    while let Some(i) = rest.find("<svg") {
        let end = rest[i..].find("</svg>").expect("closed svg") + i + 6;
        roxmltree::Document::parse(&rest[i..end]).expect("svg is well-formed");
        n += 1;
        rest = &rest[end..];
    }
    n
}
