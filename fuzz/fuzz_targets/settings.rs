//! Fuzzes the settings loader: any settings file and any `ZEN_*` variables must load, or fail
//! with one line naming where the mistake is; never a panic. What loads must be valid as a
//! whole: it loads again, from its own effective TOML, to the same effective TOML.
//!
//! Input layout: the file's text, then a NUL byte, then variables as `NAME=VALUE` lines (each
//! name gets the `ZEN_` prefix). Run with `RUSTC_BOOTSTRAP=1 cargo fuzz run settings` from the
//! project root.

#![no_main]

use std::{collections::HashMap, path::PathBuf};

use libfuzzer_sys::fuzz_target;
use zen_server::config::{ConfigFile, Settings, Sources};

/// The file the loader reads, one per fuzzing process, in memory where the system allows.
fn file_path() -> PathBuf {
    let dir = if std::path::Path::new("/dev/shm").is_dir() { PathBuf::from("/dev/shm") } else { std::env::temp_dir() };
    dir.join(format!("zen-fuzz-settings-{}.toml", std::process::id()))
}

fn load(text: &str, env: HashMap<String, String>) -> Result<Settings, String> {
    let path = file_path();
    std::fs::write(&path, text).expect("the fuzzer's settings file");
    let sources =
        Sources { file: Some(ConfigFile { path: path.clone(), named_by: "--config" }), env, ..Sources::default() };
    let loaded = Settings::load(&sources).map_err(|error| error.to_string());
    let _ = std::fs::remove_file(path);
    loaded
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (file, vars) = text.split_once('\0').unwrap_or((&text, ""));
    let env: HashMap<String, String> = vars
        .lines()
        .filter_map(|line| line.split_once('='))
        .map(|(name, value)| (format!("ZEN_{name}"), value.to_owned()))
        .collect();
    match load(file, env) {
        Ok(settings) => {
            let effective = settings.to_toml().expect("effective settings print");
            let again = load(&effective, HashMap::new())
                .unwrap_or_else(|error| panic!("the effective settings do not load again: {error}\n{effective}"));
            assert_eq!(again.to_toml().expect("effective settings print"), effective);
        }
        Err(error) => assert!(!error.contains('\n'), "an error of more than one line: {error}"),
    }
});
