//! Lines that are clearly another format than JSON lines, recognised so that the reason a
//! line is rejected says what to change. Only called once a line has failed to decode: the
//! hot path never pays for it.
//!
//! Each recogniser is conservative: it needs a format's own marks (a magic number, a syslog
//! header, a msgpack record header, `;`-separated fields), and the reason says "looks like",
//! followed by the decode error itself.

/// A format that flaghook does not read, seen in a line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Foreign {
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
    pub(crate) fn recognise(line: &[u8]) -> Option<Foreign> {
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
    pub(crate) fn advice(self) -> &'static str {
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
