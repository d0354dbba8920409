//! The Authorization header parser: never panics, and anything it accepts as a
//! credential is exactly `ApiKey <spaces>SU-ddd-ddd-ddd:<40 lowercase hex>` in length.
#![no_main]

use keygate::auth::{Presented, parse};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Presented::Credential(_) = parse(data) {
        assert!(data.len() <= 256, "over-long value accepted");
        assert!(data[..6].eq_ignore_ascii_case(b"apikey"));
        let cred = data[6..].trim_ascii_start();
        assert_eq!(cred.len(), 14 + 1 + 40, "{:?}", String::from_utf8_lossy(data));
        assert!(cred.starts_with(b"SU-"));
        assert!(cred[15..].iter().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b)));
    }
});
