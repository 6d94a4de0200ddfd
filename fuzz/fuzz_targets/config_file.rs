//! The config file parser: any text parses or is an error at a
//! `line:column` inside the text, never a panic. (Validation, which may
//! resolve host names, is left to the property tests' controlled values.)
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use rrproxy::config::{ConfigError, LoadedFile};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match LoadedFile::parse(text.to_string(), Path::new("fuzz.toml")) {
        Ok(_) => {}
        Err(ConfigError::Parse {
            line,
            column,
            message,
            ..
        }) => {
            let lines: Vec<&str> = text.split('\n').collect();
            assert!(line >= 1 && line <= lines.len(), "line {line}");
            let width = lines[line - 1].chars().count();
            assert!(
                column >= 1 && column <= width + 1,
                "column {column} of {width}"
            );
            assert!(!message.contains('\n'));
        }
        Err(other) => panic!("not a parse error: {other}"),
    }
});
