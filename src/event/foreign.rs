//! Lines that are clearly another format than JSON lines, recognised so that the reason a
//! line is rejected says what to change. Only called once a line has failed to decode: the
//! hot path never pays for it.
//!
//! Each recogniser is conservative: it needs a format's own marks (a magic number, a syslog
//! header, a msgpack record header, `;`-separated fields), and the reason says "looks like",
//! followed by the decode error itself.

use super::{invalid, Invalid};

/// The reason a line is not an event, led by what to change when the line is clearly
/// another format (CSV, parquet, syslog, msgpack). Only for lines that failed to decode.
pub(crate) fn explain(line: &[u8], why: Invalid) -> Invalid {
    match Foreign::recognise(line) {
        Some(format) => invalid(format!("{}; {why}", format.advice())),
        None => why,
    }
}

/// A format that flaghook does not read, seen in a line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Foreign {
    /// GO Feature Flag's `csv` exporter format.
    GoffCsv,
    /// GO Feature Flag's `parquet` exporter format.
    Parquet,
    /// A syslog header (`<PRI>` then a timestamp) before the message.
    Syslog,
    /// msgpack records, as Fluent Bit's `tcp` output sends by default.
    FluentBitMsgpack,
}

impl Foreign {
    /// The format `line` clearly is, if any.
    fn recognise(line: &[u8]) -> Option<Foreign> {
        if is_parquet(line) {
            Some(Foreign::Parquet)
        } else if is_fluent_bit_msgpack(line) {
            Some(Foreign::FluentBitMsgpack)
        } else if is_syslog(line) {
            Some(Foreign::Syslog)
        } else if is_csv(line) {
            Some(Foreign::GoffCsv)
        } else {
            None
        }
    }

    /// What the line looks like and what to change.
    fn advice(self) -> &'static str {
        match self {
            Foreign::GoffCsv => {
                "looks like GO Feature Flag's CSV format (`;`-separated fields), not JSON \
                 lines: set the exporter's `format` to `json` (GO Feature Flag's JSON format, \
                 one event per line)"
            }
            Foreign::Parquet => {
                "looks like a parquet file (`PAR1` magic), not JSON lines: set the GO Feature \
                 Flag exporter's `format` to `json` (GO Feature Flag's JSON format, one event \
                 per line)"
            }
            Foreign::Syslog => {
                "looks like a syslog-framed line (a `<PRI>` header before the message), not a \
                 JSON line: forward the message alone, e.g. syslog-ng `template(\"$MSG\\n\")` \
                 in the destination"
            }
            Foreign::FluentBitMsgpack => {
                "looks like msgpack from Fluent Bit's `tcp` output (its default `Format \
                 msgpack`), not JSON lines: set `Format json_lines` in that [OUTPUT] section"
            }
        }
    }
}

/// A byte that text never holds: a control character other than tab, or DEL.
fn is_binary(b: u8) -> bool {
    (b < 0x20 && b != b'\t') || b == 0x7f
}

/// Parquet files start and end with the magic `PAR1`; binary data follows (or precedes) it.
fn is_parquet(line: &[u8]) -> bool {
    const MAGIC: &[u8] = b"PAR1";
    let binary = || line.iter().any(|&b| is_binary(b) || b >= 0x80);
    line == MAGIC || ((line.starts_with(MAGIC) || line.ends_with(MAGIC)) && binary())
}

/// Fluent Bit's records are `[time, record]` or, since Fluent Bit 2.1, `[[time, metadata],
/// record]`: fixarray(2), maybe another fixarray(2), then the time as an EventTime
/// (fixext8 of type 0) or, from older versions, a float or integer of seconds, then a map.
/// Records follow each other with no separator, and a 0x0a byte anywhere (often in a
/// timestamp) cuts the stream into "lines": so a record header is looked for at the start
/// and, with an EventTime (distinctive enough), anywhere in a line that is not UTF-8.
fn is_fluent_bit_msgpack(line: &[u8]) -> bool {
    if msgpack_record_at(line, true) {
        return true;
    }
    std::str::from_utf8(line).is_err()
        && (1..line.len())
            .filter(|&i| line[i] == FIXARRAY_2)
            .any(|i| msgpack_record_at(&line[i..], false))
}

const FIXARRAY_2: u8 = 0x92;

/// Whether a Fluent Bit record header starts `b`, as far as `b` goes: at least up to the
/// time's type, then the whole time and a map when the line holds them.
fn msgpack_record_at(b: &[u8], any_time: bool) -> bool {
    let Some(mut rest) = b.strip_prefix(&[FIXARRAY_2]) else {
        return false;
    };
    let nested = rest.first() == Some(&FIXARRAY_2);
    if nested {
        rest = &rest[1..];
    }
    let time_len = match rest {
        [0xd7, 0x00, ..] => 10,             // fixext8 of type 0: EventTime
        [0xcb | 0xcf, ..] if any_time => 9, // float64, uint64
        [0xce, ..] if any_time => 5,        // uint32: msgpack packs integers small
        _ => return false,
    };
    match rest.get(time_len) {
        None => true, // the line was cut inside the header
        Some(&b) => is_map(b),
    }
}

/// fixmap, map16, map32.
fn is_map(b: u8) -> bool {
    matches!(b, 0x80..=0x8f | 0xde | 0xdf)
}

/// An RFC 3164 (`<13>Nov 29 12:00:00 host tag: msg`) or RFC 5424 (`<13>1 2024-11-29T...`)
/// header, possibly after an RFC 6587 octet count (`123 <13>...`).
fn is_syslog(line: &[u8]) -> bool {
    let digits = line.iter().take_while(|b| b.is_ascii_digit()).count();
    let line = match line.get(digits) {
        Some(b' ') if digits > 0 => &line[digits + 1..],
        _ => line,
    };
    let Some(rest) = line.strip_prefix(b"<") else {
        return false;
    };
    let pri_len = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    let pri = std::str::from_utf8(&rest[..pri_len]).ok();
    let valid_pri = (1..=3).contains(&pri_len)
        && (pri_len == 1 || rest[0] != b'0')
        && pri
            .and_then(|p| p.parse::<u8>().ok())
            .is_some_and(|p| p <= 191);
    if !valid_pri || rest.get(pri_len) != Some(&b'>') {
        return false;
    }
    let after = &rest[pri_len + 1..];
    const MONTHS: [&[u8]; 12] = [
        b"Jan ", b"Feb ", b"Mar ", b"Apr ", b"May ", b"Jun ", b"Jul ", b"Aug ", b"Sep ", b"Oct ",
        b"Nov ", b"Dec ",
    ];
    // RFC 5424's version `1 `, or a timestamp (some senders put an ISO date after `<PRI>`).
    MONTHS.iter().any(|m| after.starts_with(m))
        || after.starts_with(b"1 ")
        || after.len() >= 5 && after[..4].iter().all(u8::is_ascii_digit) && after[4] == b'-'
}

/// `;`-separated fields (GO Feature Flag's default CSV template has nine, e.g.
/// `feature;anonymousUser;ABCD;1617970547;random-key;Default;YO;false;SERVER`, and a header
/// line would be `kind;contextKind;userKey;...`): at least four, and not JSON-like.
fn is_csv(line: &[u8]) -> bool {
    let start = line.iter().position(|b| !b.is_ascii_whitespace());
    let json_like = start.is_some_and(|i| matches!(line[i], b'{' | b'[' | b'"'));
    !json_like && line.iter().filter(|&&b| b == b';').count() >= 3
}

#[cfg(test)]
mod tests {
    use crate::event::fixtures::*;

    /// The reason for a line that is not an event.
    fn reason(line: &[u8]) -> String {
        decode(&mut goff(), line).unwrap_err().0
    }

    fn assert_advice(line: &[u8], looks_like: &str, fix: &str) {
        let why = reason(line);
        let shown = String::from_utf8_lossy(line);
        assert!(why.starts_with("looks like "), "{shown:?}: {why}");
        assert!(why.contains(looks_like), "{shown:?}: {why}");
        assert!(why.contains(fix), "{shown:?}: {why}");
        // The decode error itself is still there.
        assert!(why.contains("not valid "), "{shown:?}: {why}");
    }

    fn assert_no_advice(line: &[u8]) {
        let why = reason(line);
        assert!(
            !why.contains("looks like"),
            "{:?}: {why}",
            String::from_utf8_lossy(line)
        );
    }

    #[test]
    fn goff_csv_lines_are_recognised() {
        let csv = "GO Feature Flag's CSV format";
        let fix = "set the exporter's `format` to `json`";
        for line in [
            "feature;anonymousUser;ABCD;1617970547;random-key;Default;YO;false;SERVER",
            "kind;contextKind;userKey;creationDate;key;variation;value;default;source",
            "tracking;user;ABCD;1617970547;map[targetingKey:ABCD];map[event:123]",
            "feature;user;caf\u{e9};1;k\r",
        ] {
            assert_advice(line.as_bytes(), csv, fix);
        }
        assert_advice(b"feature;user;\xe9t\xe9;1;k", csv, fix); // Latin-1: not UTF-8
        for line in [
            "feature;user",
            "a;b;c",
            r#"{"kind":"feature";"userKey":"a;b;c"}"#,
            r#"  ["a;b;c;d"]x"#,
            r#""a;b;c;d""#,
        ] {
            assert_no_advice(line.as_bytes());
        }
    }

    #[test]
    fn parquet_files_are_recognised() {
        let fix = "set the GO Feature Flag exporter's `format` to `json`";
        for line in [
            &b"PAR1\x15\x04\x15\xa0\x01\x15\x9c\x01L\x15"[..],
            b"PAR1\x15\x00\x15\x1c\x15\x1c,",
            b"\x19\x1c\x00\x00\x1cPAR1", // the footer: metadata length, then the magic
            b"PAR1",
        ] {
            assert_advice(line, "a parquet file (`PAR1` magic)", fix);
        }
        for line in ["PAR1 was the first step", "step PAR1", "xPAR1\t"] {
            assert_no_advice(line.as_bytes());
        }
    }

    #[test]
    fn syslog_framed_lines_are_recognised() {
        let fix = r#"syslog-ng `template("$MSG\n")`"#;
        for line in [
            format!("<13>Nov 29 12:00:00 web-1 goff: {E1}"),
            format!("<134>Jan  5 01:02:03 web-1 goff[42]: {E1}"),
            format!("<14>1 2024-11-29T12:00:00.000Z web-1 goff - - - {E1}"),
            format!("<0>2024-11-29T12:00:00+01:00 web-1 goff: {E1}"),
            format!("312 <191>1 - - - - - - {E1}"),
            "<13>Nov 29 12:00:00 web-1 goff: feature;user;a;1;k".to_owned(),
        ] {
            assert_advice(line.as_bytes(), "a syslog-framed line", fix);
        }
        for line in [
            "<192>Nov 29 12:00:00 h t: x",
            "<013>Nov 29 12:00:00 h t: x",
            "<1a>Nov 29 12:00:00 h t: x",
            "<13>November rain",
            "<13> Nov 29",
            "<b>bold</b>",
            "12 13 <14>1 x",
        ] {
            assert_no_advice(line.as_bytes());
        }
    }

    /// A Fluent Bit record as its `tcp` output sends it with `Format msgpack`:
    /// `[time, {"log": line}]`, or `[[time, {}], {"log": line}]` since Fluent Bit 2.1.
    fn fluent_bit_record(time: &[u8], nested: bool, line: &str) -> Vec<u8> {
        let mut record = vec![0x92];
        if nested {
            record.push(0x92);
        }
        record.extend_from_slice(time);
        if nested {
            record.push(0x80);
        }
        record.extend_from_slice(&[0x81, 0xa3, b'l', b'o', b'g', 0xd9]);
        record.push(line.len() as u8);
        record.extend_from_slice(line.as_bytes());
        record
    }

    #[test]
    fn fluent_bit_msgpack_is_recognised() {
        const EVENT_TIME: &[u8] = b"\xd7\x00\x67\x49\x2c\x80\x1d\xcd\x65\x00";
        const FLOAT_TIME: &[u8] = b"\xcb\x41\xd9\xd2\x4b\x20\x07\x73\x59";
        const UINT_TIME: &[u8] = b"\xce\x67\x49\x2c\x80";
        let looks = "msgpack from Fluent Bit's `tcp` output";
        let fix = "set `Format json_lines`";
        let short = r#"{"kind":"feature"}"#;
        let one = fluent_bit_record(EVENT_TIME, false, short);
        let nested = fluent_bit_record(EVENT_TIME, true, short);
        for line in [
            one.clone(),
            nested.clone(),
            [one.clone(), nested.clone(), one.clone()].concat(),
            fluent_bit_record(FLOAT_TIME, false, short),
            fluent_bit_record(UINT_TIME, true, short),
            one[..5].to_vec(), // cut at a 0x0a byte inside the time
            // A piece of the stream that starts inside a record, after a cut.
            [&one[7..], &nested[..]].concat(),
        ] {
            assert_advice(&line, looks, fix);
        }
        let mut not_a_map = one.clone();
        not_a_map[11] = b'A';
        for line in [
            not_a_map,
            b"\x92\x41\x42".to_vec(),
            b"\x92\xd7\x01\x67\x49\x2c\x80\x1d\xcd\x65\x00\x81".to_vec(),
            // Float and integer times only count at the start of a line.
            [&b"\xff"[..], &fluent_bit_record(UINT_TIME, false, short)].concat(),
        ] {
            assert_no_advice(&line);
        }
        assert!(reason(b"\x92\x41\x42").starts_with("not valid UTF-8 (at byte 0)"));
    }
}
