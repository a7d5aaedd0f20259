//! Arbitrary UTF-8 into `Config::parse`, the function every configuration file and every reload
//! goes through. It must never panic (a bad file is an error naming the key, never a crash of
//! the daemon), and a configuration it accepts must serialise back to TOML that parses to the
//! very same `Config`: what `lancached` would print or write is what it would read.

#![no_main]

use lancached::config::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(config) = Config::parse(text) else {
        return;
    };
    let again = toml::to_string(&config).expect("an accepted Config serialises to TOML");
    let reparsed = Config::parse(&again)
        .unwrap_or_else(|e| panic!("re-serialised config does not parse: {e}\n{again}"));
    assert_eq!(config, reparsed, "config changed across a TOML round trip:\n{again}");
});
