//! The few pieces of HTTP/1.1 the tools speak, over blocking sockets: a read buffer, request
//! heads (the receiver), sized and chunked bodies, and responses (the load check and the
//! stats/reset/wait commands). Hand-made rather than hyper so that the receiver costs as little
//! CPU as possible next to the tool measured, and so that a request is answered in one write.

use std::io::{self, Read};

/// Longest request or response head accepted.
const MAX_HEAD: usize = 64 * 1024;

fn bad(message: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message.to_string())
}

/// A growable read buffer: data lives in `buf[pos..filled]`.
pub(crate) struct ReadBuf {
    buf: Vec<u8>,
    pos: usize,
    filled: usize,
}

impl ReadBuf {
    pub(crate) fn new(cap: usize) -> ReadBuf {
        ReadBuf {
            buf: vec![0; cap],
            pos: 0,
            filled: 0,
        }
    }

    /// The bytes read and not consumed yet.
    pub(crate) fn data(&self) -> &[u8] {
        &self.buf[self.pos..self.filled]
    }

    pub(crate) fn len(&self) -> usize {
        self.filled - self.pos
    }

    /// Marks the first `n` bytes of `data()` consumed.
    pub(crate) fn consume(&mut self, n: usize) {
        debug_assert!(n <= self.len());
        self.pos += n;
    }

    /// The first `n` bytes of `data()`, consumed.
    pub(crate) fn take(&mut self, n: usize) -> &[u8] {
        let start = self.pos;
        self.consume(n);
        &self.buf[start..start + n]
    }

    /// Makes room for `n` contiguous bytes from `pos`.
    fn reserve(&mut self, n: usize) {
        if self.buf.len() - self.pos < n {
            self.buf.copy_within(self.pos..self.filled, 0);
            self.filled -= self.pos;
            self.pos = 0;
            if self.buf.len() < n {
                self.buf.resize(n.next_power_of_two(), 0);
            }
        }
    }

    /// Reads once more from `r`; Ok(false) at EOF.
    pub(crate) fn fill(&mut self, r: &mut impl Read) -> io::Result<bool> {
        if self.pos == self.filled {
            self.pos = 0;
            self.filled = 0;
        }
        if self.filled == self.buf.len() {
            self.reserve(self.len() + 64 * 1024);
        }
        let n = r.read(&mut self.buf[self.filled..])?;
        self.filled += n;
        Ok(n > 0)
    }

    /// Ensures at least `n` bytes are available from `pos`; Ok(false) on EOF before that.
    pub(crate) fn fill_to(&mut self, r: &mut impl Read, n: usize) -> io::Result<bool> {
        self.reserve(n);
        while self.len() < n {
            if !self.fill(r)? {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

/// Reads until `rb` holds a whole head (up to and with its empty line); returns its length, or
/// None when the peer closed first.
pub(crate) fn fill_head(r: &mut impl Read, rb: &mut ReadBuf) -> io::Result<Option<usize>> {
    loop {
        if let Some(i) = memchr::memmem::find(rb.data(), b"\r\n\r\n") {
            return Ok(Some(i + 4));
        }
        if rb.len() > MAX_HEAD {
            return Err(bad("head too long"));
        }
        if !rb.fill(r)? {
            return Ok(None);
        }
    }
}

/// What the receiver needs from a request head.
pub(crate) struct Head {
    pub(crate) method: String,
    pub(crate) path: String,
    pub(crate) content_length: Option<usize>,
    pub(crate) chunked: bool,
    pub(crate) expect_continue: bool,
    /// close the connection after the response
    pub(crate) close: bool,
    /// `X-Hub-Signature-256`
    pub(crate) signature: Option<String>,
    /// `Content-Encoding`, lowercase
    pub(crate) content_encoding: Option<String>,
}

/// Parses a request head (without its final empty line).
pub(crate) fn parse_head(head: &[u8]) -> io::Result<Head> {
    let text = std::str::from_utf8(head).map_err(|_| bad("request head is not UTF-8"))?;
    let mut lines = text.split("\r\n");
    let mut parts = lines.next().unwrap_or("").split(' ');
    let method = parts.next().unwrap_or("").to_string();
    let path = parts
        .next()
        .ok_or_else(|| bad("bad request line"))?
        .to_string();
    let version = parts.next().unwrap_or("");
    let mut h = Head {
        method,
        path,
        content_length: None,
        chunked: false,
        expect_continue: false,
        close: version == "HTTP/1.0",
        signature: None,
        content_encoding: None,
    };
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        h.header(&name.to_ascii_lowercase(), value.trim())?;
    }
    Ok(h)
}

impl Head {
    fn header(&mut self, name: &str, value: &str) -> io::Result<()> {
        match name {
            "content-length" => {
                self.content_length = Some(value.parse().map_err(|_| bad("bad content-length"))?)
            }
            "transfer-encoding" => self.chunked = value.to_ascii_lowercase().contains("chunked"),
            "expect" => self.expect_continue = value.eq_ignore_ascii_case("100-continue"),
            "connection" => {
                let v = value.to_ascii_lowercase();
                if v.contains("close") {
                    self.close = true;
                } else if v.contains("keep-alive") {
                    self.close = false;
                }
            }
            "x-hub-signature-256" => self.signature = Some(value.to_string()),
            "content-encoding" => self.content_encoding = Some(value.to_ascii_lowercase()),
            _ => {}
        }
        Ok(())
    }
}

/// Reads a body of `len` bytes into `rb` (then `rb.take(len)` is the body), passing each part to
/// `arrived` as it comes, so that hashing overlaps the transfer. Ok(false) when the peer closed
/// first.
pub(crate) fn read_sized_body(
    r: &mut impl Read,
    rb: &mut ReadBuf,
    len: usize,
    mut arrived: impl FnMut(&[u8]),
) -> io::Result<bool> {
    rb.reserve(len);
    let mut seen = 0;
    loop {
        let avail = rb.len().min(len);
        arrived(&rb.data()[seen..avail]);
        seen = avail;
        if avail == len {
            return Ok(true);
        }
        if !rb.fill(r)? {
            return Ok(false);
        }
    }
}

/// Decodes a chunked body into `out` (trailers are read and ignored).
pub(crate) fn read_chunked(
    r: &mut impl Read,
    rb: &mut ReadBuf,
    out: &mut Vec<u8>,
) -> io::Result<()> {
    loop {
        let line_len = loop {
            if let Some(i) = memchr::memmem::find(rb.data(), b"\r\n") {
                break i;
            }
            if !rb.fill(r)? {
                return Err(bad("EOF in chunked body"));
            }
        };
        let line =
            std::str::from_utf8(&rb.data()[..line_len]).map_err(|_| bad("bad chunk size"))?;
        let size = usize::from_str_radix(line.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| bad("bad chunk size"))?;
        rb.consume(line_len + 2);
        if size == 0 {
            return skip_trailers(r, rb);
        }
        if !rb.fill_to(r, size + 2)? {
            return Err(bad("EOF in chunk"));
        }
        out.extend_from_slice(&rb.data()[..size]);
        rb.consume(size + 2);
    }
}

/// The trailers of a chunked body, up to the empty line.
fn skip_trailers(r: &mut impl Read, rb: &mut ReadBuf) -> io::Result<()> {
    loop {
        if !rb.fill_to(r, 2)? {
            return Err(bad("EOF in chunked trailer"));
        }
        if let Some(i) = memchr::memmem::find(rb.data(), b"\r\n") {
            rb.consume(i + 2);
            if i == 0 {
                return Ok(());
            }
        } else if !rb.fill(r)? {
            return Err(bad("EOF in chunked trailer"));
        }
    }
}

/// Reads one response (skipping `100 Continue`); returns (status, body). Only `Content-Length`
/// bodies: the receiver sends nothing else.
pub(crate) fn read_response(r: &mut impl Read, rb: &mut ReadBuf) -> io::Result<(u16, Vec<u8>)> {
    loop {
        let head_len =
            fill_head(r, rb)?.ok_or_else(|| bad("connection closed before the response"))?;
        let head =
            std::str::from_utf8(&rb.data()[..head_len]).map_err(|_| bad("bad response head"))?;
        let status: u16 = head
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| bad("bad status line"))?;
        let len = head
            .split("\r\n")
            .filter_map(|l| l.split_once(':'))
            .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.trim().parse::<usize>().ok())
            .unwrap_or(0);
        rb.consume(head_len);
        if status == 100 {
            continue;
        }
        if !rb.fill_to(r, len)? {
            return Err(bad("connection closed in the response body"));
        }
        return Ok((status, rb.take(len).to_vec()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reader that hands out its bytes a few at a time, as a socket may.
    struct Trickle<'a>(&'a [u8], usize);
    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.0.len().min(self.1).min(buf.len());
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    #[test]
    fn chunked_body_with_trailers_decodes_across_small_reads() {
        let wire = b"4;ext=1\r\nWiki\r\n5\r\npedia\r\n0\r\nX-Trailer: a\r\n\r\nNEXT";
        for step in [1, 3, 7, 100] {
            let mut r = Trickle(wire, step);
            let mut rb = ReadBuf::new(4);
            let mut out = Vec::new();
            read_chunked(&mut r, &mut rb, &mut out).unwrap();
            assert_eq!(out, b"Wikipedia", "step {step}");
            rb.fill_to(&mut r, 4).unwrap();
            assert_eq!(rb.data(), b"NEXT", "step {step}");
        }
    }

    #[test]
    fn sized_body_is_seen_once_in_order() {
        let wire: Vec<u8> = (0..200u8).collect();
        for step in [1, 13, 200] {
            let mut r = Trickle(&wire, step);
            let mut rb = ReadBuf::new(8);
            let mut seen = Vec::new();
            assert!(read_sized_body(&mut r, &mut rb, 150, |p| seen.extend_from_slice(p)).unwrap());
            assert_eq!(seen, &wire[..150]);
            assert_eq!(rb.take(150), &wire[..150]);
        }
        let mut short = Trickle(&wire[..10], 4);
        let mut rb = ReadBuf::new(8);
        assert!(!read_sized_body(&mut short, &mut rb, 150, |_| {}).unwrap());
    }

    #[test]
    fn head_fields() {
        let h = parse_head(
            b"POST /hook HTTP/1.1\r\nContent-Length: 12\r\nEXPECT: 100-continue\r\n\
              x-hub-signature-256: sha256=ab\r\nConnection: close",
        )
        .unwrap();
        assert_eq!((h.method.as_str(), h.path.as_str()), ("POST", "/hook"));
        assert_eq!(h.content_length, Some(12));
        assert!(h.expect_continue && h.close && !h.chunked);
        assert_eq!(h.signature.as_deref(), Some("sha256=ab"));
        let h = parse_head(b"GET /stats HTTP/1.0\r\nTransfer-Encoding: chunked").unwrap();
        assert!(h.close && h.chunked);
        assert!(parse_head(b"POST /hook HTTP/1.1\r\ncontent-length: x").is_err());
    }
}
