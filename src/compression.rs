//! `Content-Encoding` of request bodies: the sink compresses a body once, before it is
//! signed (the signature covers the bytes sent), and `flaghook receive` decodes it within a
//! size bound. Pure functions over bytes, no I/O.

use std::io::{Read, Write};

use bytes::Bytes;

/// How a sink encodes its request bodies (`compression` in a webhook sink).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Compression {
    /// Plain JSON, as GO Feature Flag's receivers expect.
    #[default]
    None,
    Gzip,
    Zstd,
}

/// gzip's level: the fastest. GO Feature Flag's JSON events repeat their field names, so the
/// fastest level already takes most of the gain, and the sink's CPU bounds its throughput.
const GZIP_LEVEL: u32 = 1;
/// zstd's level: its fastest standard one, for the same reason.
const ZSTD_LEVEL: i32 = 1;

impl std::str::FromStr for Compression {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "none" => Ok(Compression::None),
            "gzip" => Ok(Compression::Gzip),
            "zstd" => Ok(Compression::Zstd),
            _ => Err("use \"none\", \"gzip\" or \"zstd\"".to_owned()),
        }
    }
}

impl Compression {
    /// The `Content-Encoding` value; `None` for plain bodies.
    pub fn content_encoding(self) -> Option<&'static str> {
        match self {
            Compression::None => None,
            Compression::Gzip => Some("gzip"),
            Compression::Zstd => Some("zstd"),
        }
    }

    /// The name used in the config and in `receive`'s report.
    pub fn as_str(self) -> &'static str {
        self.content_encoding().unwrap_or("none")
    }

    /// The encoding of a `Content-Encoding` value (`identity` is plain); `None` for one not
    /// supported.
    pub fn from_header(value: &str) -> Option<Compression> {
        match value.trim().to_ascii_lowercase().as_str() {
            "" | "identity" => Some(Compression::None),
            "gzip" | "x-gzip" => Some(Compression::Gzip),
            "zstd" => Some(Compression::Zstd),
            _ => None,
        }
    }

    /// `body` encoded. Compressing into memory cannot fail: the writers only fail when
    /// their output does, and a `Vec` does not.
    pub fn encode(self, body: Bytes) -> Bytes {
        match self {
            Compression::None => body,
            Compression::Gzip => {
                let level = flate2::Compression::new(GZIP_LEVEL);
                let out = Vec::with_capacity(body.len() / 4);
                let mut encoder = flate2::write::GzEncoder::new(out, level);
                encoder.write_all(&body).expect("writing to memory");
                Bytes::from(encoder.finish().expect("writing to memory"))
            }
            Compression::Zstd => Bytes::from(
                zstd::bulk::compress(&body, ZSTD_LEVEL).expect("zstd compresses any input"),
            ),
        }
    }

    /// `body` decoded, at most `limit` bytes of it.
    pub fn decode(self, body: &[u8], limit: u64) -> Result<Vec<u8>, DecodeError> {
        let mut out = Vec::new();
        let read = match self {
            Compression::None => return bounded(body.to_vec(), limit),
            Compression::Gzip => flate2::read::MultiGzDecoder::new(body)
                .take(limit.saturating_add(1))
                .read_to_end(&mut out),
            Compression::Zstd => zstd::stream::read::Decoder::new(body)
                .and_then(|d| d.take(limit.saturating_add(1)).read_to_end(&mut out)),
        };
        read.map_err(|e| DecodeError::Invalid(format!("not valid {}: {e}", self.as_str())))?;
        bounded(out, limit)
    }
}

fn bounded(body: Vec<u8>, limit: u64) -> Result<Vec<u8>, DecodeError> {
    if body.len() as u64 > limit {
        return Err(DecodeError::TooLarge);
    }
    Ok(body)
}

/// Why a body could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// It decodes to more than the limit.
    TooLarge,
    /// It is not in its encoding.
    Invalid(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    const BODY: &[u8] = br#"{"meta":{"hostname":"h"},"events":[{"kind":"feature","key":"k"},{"kind":"feature","key":"k"}]}"#;

    #[test]
    fn each_encoding_round_trips_and_shrinks_repetitive_json() {
        let body = Bytes::from(BODY.repeat(50));
        for c in [Compression::Gzip, Compression::Zstd] {
            let sent = c.encode(body.clone());
            assert!(sent.len() < body.len() / 10, "{c:?}: {} bytes", sent.len());
            assert_eq!(c.decode(&sent, 1 << 20).unwrap(), body, "{c:?}");
        }
        assert_eq!(Compression::None.encode(body.clone()), body);
    }

    #[test]
    fn the_formats_are_the_standard_ones() {
        let gzip = Compression::Gzip.encode(Bytes::from_static(BODY));
        assert_eq!(gzip[..2], [0x1f, 0x8b], "gzip magic");
        let zstd = Compression::Zstd.encode(Bytes::from_static(BODY));
        assert_eq!(zstd[..4], [0x28, 0xb5, 0x2f, 0xfd], "zstd frame magic");
    }

    #[test]
    fn decoding_stops_at_the_limit_and_names_bad_input() {
        let big = Bytes::from(vec![b'a'; 100_000]);
        for c in [Compression::Gzip, Compression::Zstd, Compression::None] {
            let sent = c.encode(big.clone());
            assert_eq!(c.decode(&sent, 99_999), Err(DecodeError::TooLarge), "{c:?}");
            assert_eq!(c.decode(&sent, 100_000).unwrap().len(), 100_000);
        }
        let err = Compression::Gzip.decode(b"plain text", 1000).unwrap_err();
        assert!(matches!(&err, DecodeError::Invalid(why) if why.starts_with("not valid gzip")));
        let err = Compression::Zstd.decode(b"plain text", 1000).unwrap_err();
        assert!(matches!(&err, DecodeError::Invalid(why) if why.starts_with("not valid zstd")));
    }

    #[test]
    fn header_values() {
        assert_eq!(Compression::from_header("GZIP"), Some(Compression::Gzip));
        assert_eq!(Compression::from_header("zstd"), Some(Compression::Zstd));
        assert_eq!(
            Compression::from_header("identity"),
            Some(Compression::None)
        );
        assert_eq!(Compression::from_header("br"), None);
    }
}
