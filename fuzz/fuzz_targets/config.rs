//! The config loader (`flaghook::config::parse_with_env`) over arbitrary text, with a fixed
//! environment that holds secrets.
//!
//! Besides "no panic": no error message shows an environment value, whole or in part. Each
//! value is built from marker words that appear nowhere else (split by digits, spaces and
//! punctuation, so that a piece cut out of a value is caught too); a marker is looked for
//! in the message unless the config text itself contains it.
#![no_main]

use std::ffi::OsString;
use std::net::SocketAddr;
use std::os::unix::ffi::OsStringExt;
use std::path::Path;

use libfuzzer_sys::fuzz_target;

/// (name, value): text secrets with quotes, backslashes and a newline, hex, base64, a URL,
/// a letters-only word (a duration's unit), and values the check leaves alone.
const ENV: &[(&str, &str)] = &[
    ("WEBHOOK_SECRET", "whsecALPHA whsecBRAVO-4217"),
    ("QUOTED", "qtCHARLIE\"'\\\nqtDELTA\t$${X}"),
    ("SECRET_HEX", "0a1b2c3d4e5f"),
    ("SECRET_B64", "cXhFQ0hPLXNlY3JldA=="), // "qxECHO-secret"
    ("HOST", "https://hostFOXTROT.example:8443/hostGOLF?x=1"),
    ("UNIT", "unitHOTEL unitINDIA"),
    ("EMPTY", ""),
    ("PORT", "9000"),
];

/// Words of the values above that no error may show (the base64 one decoded, too).
const MARKERS: &[&str] = &[
    "whsecALPHA",
    "whsecBRAVO",
    "qtCHARLIE",
    "qtDELTA",
    "0a1b2c3d4e5f",
    "cXhFQ0hPLXNlY3JldA",
    "qxECHO",
    "hostFOXTROT",
    "hostGOLF",
    "unitHOTEL",
    "unitINDIA",
];

fn lookup(name: &str) -> Option<OsString> {
    if name == "BINARY" {
        return Some(OsString::from_vec(b"bin\xffIGNORED".to_vec()));
    }
    ENV.iter()
        .find(|(n, _)| *n == name)
        .map(|(_, v)| OsString::from(*v))
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if resolves_a_host_name(&text) {
        return;
    }
    let Err(e) = flaghook::config::parse_with_env(&text, Path::new("/fuzz/flaghook.toml"), lookup)
        .and_then(flaghook::topology::Plan::build)
    else {
        return;
    };
    let message = format!("{e:#} {e:?}");
    for marker in MARKERS {
        if message.contains(marker) && !text.contains(marker) {
            panic!("an error shows the environment value that holds {marker:?}:\n{message}");
        }
    }
});

/// Whether validating would resolve a host name (a tcp source's `address` that is not an
/// IP address): that asks DNS, and fuzzing must not send traffic off the machine.
fn resolves_a_host_name(text: &str) -> bool {
    let Ok(mut table) = toml::from_str::<toml::Table>(text) else {
        return false;
    };
    if flaghook::config::substitute_env(&mut table, lookup).is_err() {
        return false;
    }
    let Some(sources) = table.get("sources").and_then(toml::Value::as_table) else {
        return false;
    };
    sources.values().any(|source| {
        source
            .get("address")
            .and_then(toml::Value::as_str)
            .is_some_and(|a| a.parse::<SocketAddr>().is_err())
    })
}
