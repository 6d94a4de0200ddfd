//! A control socket line, as the server takes it apart: UTF-8 check, trim,
//! words, the command table, then the argument parsers that need no running
//! proxy (policy names, networks). Nothing panics; every refusal is one
//! line of bounded length; an accepted command has the number of arguments
//! its table row says, and every alias leads to a command.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rrproxy::acl::Cidr;
use rrproxy::control::table::{Action, action, lookup};
use rrproxy::policy::PolicyName;

/// One line, and short enough to read: echoed input is truncated.
fn one_line(msg: &str, limit: usize) {
    assert!(!msg.contains('\n'), "{msg:?}");
    assert!(msg.chars().count() <= limit, "{} chars: {msg:?}", msg.len());
}

fuzz_target!(|line: &[u8]| {
    let Ok(text) = std::str::from_utf8(line) else {
        return;
    };
    let words: Vec<&str> = text.trim().split_whitespace().collect();
    match lookup(&words) {
        Err(msg) => one_line(&msg, 400),
        Ok((spec, act, args)) => {
            assert_eq!(act, action(spec));
            let named = spec.name.split(' ').count();
            assert_eq!(&words[named..], args);
            let synopsis: Vec<&str> = spec.args.split_whitespace().collect();
            let optional = synopsis.iter().filter(|w| w.starts_with('[')).count();
            assert!((synopsis.len() - optional..=synopsis.len()).contains(&args.len()));
            match (act, args) {
                (Action::Policy, [name]) => match name.parse::<PolicyName>() {
                    Ok(p) => assert_eq!(p.as_str(), *name),
                    Err(msg) => one_line(&msg, 100 + name.chars().count()),
                },
                (Action::AclAllow | Action::AclDeny | Action::AclRemove, [net]) => {
                    match net.parse::<Cidr>() {
                        Ok(c) => assert!(c.contains(c.addr())),
                        Err(e) => one_line(&e.to_string(), 200 + net.chars().count()),
                    }
                }
                _ => {}
            }
        }
    }
});
