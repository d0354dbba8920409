//! Path normalisation: never panics; the result is canonical (normalising it again
//! changes nothing), starts with '/', has no "//", no dot segment, no encoded '/', '\'
//! or '.', and the route table finds the same module for it as for itself.
#![no_main]

use keygate::routes::{RouteTable, normalize_path};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(p) = normalize_path(raw) else {
        return;
    };
    assert!(p.starts_with('/'), "{raw:?} -> {p:?}");
    assert!(!p.contains("//"), "{raw:?} -> {p:?}");
    assert!(p.split('/').all(|s| s != "." && s != ".."), "{raw:?} -> {p:?}");
    let upper = p.to_ascii_uppercase();
    for bad in ["%2F", "%5C", "%2E", "%00"] {
        assert!(!upper.contains(bad), "{raw:?} -> {p:?}");
    }
    assert_eq!(normalize_path(&p).as_deref(), Ok(p.as_str()), "not idempotent: {raw:?}");
    let table = RouteTable::new([("/a".to_string(), 0), ("/a/b".to_string(), 1)]).unwrap();
    // A match is on a segment boundary.
    if let Some(m) = table.lookup(&p) {
        let prefix = if m == 0 { "/a" } else { "/a/b" };
        let rest = &p[prefix.len()..];
        assert!(rest.is_empty() || rest.starts_with('/'), "{p:?} matched {prefix}");
    }
});
