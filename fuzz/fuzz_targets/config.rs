//! The config loader: any text gives a Config or a ConfigError naming the file, never a
//! panic; errors stay bounded in size whatever the input (no 1 MB value echoed back).
#![no_main]

use std::path::Path;

use keygate::config::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Config::parse(text, Path::new("fuzz.toml"), |_| None) {
        Ok(c) => {
            // What validated builds its tables.
            let _ = c.route_table();
        }
        Err(e) => {
            assert_eq!(e.file, "fuzz.toml");
            assert!(e.to_string().len() < 2048, "error of {} bytes", e.to_string().len());
        }
    }
});
