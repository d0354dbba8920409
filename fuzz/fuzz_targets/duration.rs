//! Duration parsing: never panics, never overflows; an accepted value is at most 1000
//! years and reads back the same when written as milliseconds.
#![no_main]

use keygate::config::parse_duration;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(d) = parse_duration(s) {
        assert!(d.as_millis() <= 1000 * 365 * 86_400_000, "{s:?}");
        let again = parse_duration(&format!("{}ms", d.as_millis()));
        assert_eq!(again, Ok(d), "{s:?}");
    }
});
