//! Splitting a byte stream into lines without a copy per line.
//!
//! Data is read straight into a `BytesMut`; the complete lines of a read are split off it
//! in one `Bytes`, each line a range of it (see [`crate::event::Block`]); for a journal,
//! [`LineSplitter::split_text`] gives them as that one piece, and
//! [`LineSplitter::split_own`] each as bytes of its own. A line longer than `max_line_bytes` is never
//! buffered whole: past the limit its bytes are counted and dropped until its newline,
//! and it comes out as an oversized line holding only its first bytes (for the log and
//! the dead letter).
//!
//! Lines that share the read buffer keep all of it alive, however little of it the read
//! filled. So when the complete lines fill less than half of the buffer (a slow writer:
//! one event per read into a buffer sized for thousands), they are copied out together
//! into one allocation of their own size, and the read buffer stays free for the next
//! read (not by `split_text`, whose piece goes to the journal's writer and is let go as soon
//! as it is written). The lines of a read then hold at most about twice their own bytes.

use bytes::{Buf, Bytes, BytesMut};

use crate::event::{Line, LineKind, Piece};

/// How much of an oversized line is kept, to show in logs and dead letters.
pub const OVERSIZED_EXCERPT: usize = 1024;

/// Complete lines cut off the buffer in one piece, each with its newline.
#[derive(Debug)]
pub struct TextLines {
    pub bytes: Bytes,
    /// How many lines `bytes` holds.
    pub count: usize,
}

/// Cuts lines out of the bytes appended to [`LineSplitter::buffer`].
#[derive(Debug)]
pub struct LineSplitter {
    buf: BytesMut,
    max_line_bytes: usize,
    /// Bytes of `buf` already searched for a newline.
    scanned: usize,
    /// The next line's number (1-based).
    next_number: u64,
    /// Offset in the stream of `buf[0]`.
    offset: u64,
    /// Set while dropping the rest of an oversized line: its excerpt and length so far.
    oversized: Option<(Bytes, u64)>,
}

impl LineSplitter {
    /// A splitter for a stream whose next byte is at `offset`.
    pub fn new(max_line_bytes: usize, offset: u64) -> Self {
        LineSplitter {
            buf: BytesMut::new(),
            max_line_bytes,
            scanned: 0,
            next_number: 1,
            offset,
            oversized: None,
        }
    }

    /// The buffer to read into; reserve before reading.
    pub fn buffer(&mut self) -> &mut BytesMut {
        &mut self.buf
    }

    /// Offset just past the last complete line handed out.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Bytes buffered that are not yet a complete line.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    /// Moves every complete line now in the buffer into `out`, and returns the buffer
    /// they lie in: a line is a range of it ([`Piece::InBlock`]), an oversized line's
    /// excerpt its own bytes. `out` must hold no line in another buffer.
    pub fn split(&mut self, out: &mut Vec<Line>) -> Bytes {
        let mut lines = Bytes::new();
        if let Some(last) = memchr::memrchr(b'\n', &self.buf[self.scanned..]) {
            lines = self.take_complete(self.scanned + last + 1);
            let (mut start, mut from) = (0, self.scanned);
            while let Some(pos) = memchr::memchr(b'\n', &lines[start + from..]) {
                let len = from + pos;
                let (kind, excerpt) = self.emit(&lines[start..start + len], len as u64 + 1);
                let bytes = excerpt.unwrap_or(Piece::InBlock { start, len });
                out.push(Line { bytes, kind });
                start += len + 1;
                from = 0;
            }
        }
        self.scanned = self.buf.len();
        if self.buf.len() > self.max_line_bytes {
            self.drop_overflow();
        }
        lines
    }

    /// [`LineSplitter::split`], each line with its own bytes (a slice of the read buffer):
    /// for a reader that hands lines on outside a block, or gathers those of several reads.
    pub fn split_own(&mut self, out: &mut Vec<Line>) {
        let from = out.len();
        let buffer = self.split(out);
        for line in &mut out[from..] {
            if let Piece::InBlock { start, len } = line.bytes {
                line.bytes = Piece::Own(buffer.slice(start..start + len));
            }
        }
    }

    /// Every complete line now in the buffer, cut off in one piece with their newlines, when
    /// none of them is longer than `max_line_bytes`: for a reader that hands the lines on
    /// as they came (the journal), checked and counted in one pass, without a `Bytes` and
    /// a [`Line`] each. `None` takes nothing: there is no complete line, or one is (or is
    /// becoming) oversized, and [`LineSplitter::split`] is the one to cut them.
    ///
    /// The piece shares the read buffer whatever its size: it is meant to be written and
    /// dropped before the next read, which then reuses the buffer.
    pub fn split_text(&mut self) -> Option<TextLines> {
        if self.oversized.is_some() {
            return None;
        }
        let end = self.scanned + memchr::memrchr(b'\n', &self.buf[self.scanned..])? + 1;
        // The buffer starts at a line's start. A line longer than `max_line_bytes` holds a
        // whole window of `window` bytes (windows counted from the buffer's start) without a
        // newline, so every window holding one means no line is too long. A long line
        // that is not too long may leave a window empty too: `split` then looks closer.
        let window = (self.max_line_bytes / 2).max(1);
        let mut count = 0;
        for lines in self.buf[..end].chunks(window) {
            match memchr::memchr_iter(b'\n', lines).count() {
                0 => return None,
                n => count += n,
            }
        }
        let bytes = self.buf.split_to(end).freeze();
        self.offset += end as u64;
        self.next_number += count as u64;
        self.scanned = self.buf.len();
        if self.buf.len() > self.max_line_bytes {
            self.drop_overflow();
        }
        Some(TextLines { bytes, count })
    }

    /// End of input: the partial last line, if any, becomes a line of its own bytes.
    pub fn finish(&mut self, out: &mut Vec<Line>) {
        if !self.buf.is_empty() || self.oversized.is_some() {
            let line = self.take_complete(self.buf.len());
            self.scanned = 0;
            let (kind, excerpt) = self.emit(&line, line.len() as u64);
            let bytes = excerpt.unwrap_or(Piece::Own(line));
            out.push(Line { bytes, kind });
        }
    }

    /// Forgets buffered bytes and restarts at `offset` (after a truncation).
    pub fn reset(&mut self, offset: u64) {
        *self = LineSplitter::new(self.max_line_bytes, offset);
    }

    /// Takes the first `n` bytes of the buffer: shared when they fill at least half of it,
    /// else copied (see the module doc).
    fn take_complete(&mut self, n: usize) -> Bytes {
        if n * 2 >= self.buf.capacity() {
            return self.buf.split_to(n).freeze();
        }
        let copy = Bytes::copy_from_slice(&self.buf[..n]);
        self.buf.advance(n);
        copy
    }

    fn drop_overflow(&mut self) {
        let dropped = self.buf.len() as u64;
        let (excerpt, total) = self.oversized.take().unwrap_or_else(|| {
            let keep = self.buf.len().min(OVERSIZED_EXCERPT);
            (Bytes::copy_from_slice(&self.buf[..keep]), 0)
        });
        self.oversized = Some((excerpt, total + dropped));
        self.offset += dropped;
        self.buf.clear();
        self.scanned = 0;
    }

    /// The kind of the next line, `line`, and its excerpt when it is oversized (a copy:
    /// a slice would keep the whole line's buffer alive). `consumed` counts the line's
    /// bytes taken from the buffer, terminator included.
    fn emit(&mut self, line: &[u8], consumed: u64) -> (LineKind, Option<Piece>) {
        self.offset += consumed;
        let number = self.next_number;
        self.next_number += 1;
        let (excerpt, oversized) = match self.oversized.take() {
            Some((excerpt, dropped)) => (Some(excerpt), Some(dropped + line.len() as u64)),
            None if line.len() > self.max_line_bytes => {
                let keep = line.len().min(OVERSIZED_EXCERPT);
                let excerpt = Bytes::copy_from_slice(&line[..keep]);
                (Some(excerpt), Some(line.len() as u64))
            }
            None => (None, None),
        };
        let end = self.offset;
        let kind = match oversized {
            None => LineKind::Text { number, end },
            Some(len) => LineKind::Oversized { number, end, len },
        };
        (kind, excerpt.map(Piece::Own))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A line as `split` or `finish` cut it: its bytes, where they lie, its kind and end.
    #[derive(Debug)]
    struct Cut {
        bytes: Vec<u8>,
        ptr: *const u8,
        kind: LineKind,
        end: Option<u64>,
    }

    /// `lines`, which lie in `buffer`, as [`Cut`]s.
    fn cuts(buffer: &Bytes, lines: Vec<Line>) -> Vec<Cut> {
        (lines.into_iter())
            .map(|line| {
                let bytes = line.bytes.of(buffer);
                Cut {
                    bytes: bytes.to_vec(),
                    ptr: bytes.as_ptr(),
                    end: line.end(),
                    kind: line.kind,
                }
            })
            .collect()
    }

    fn feed(s: &mut LineSplitter, data: &[u8]) -> Vec<Cut> {
        let mut out = Vec::new();
        s.buffer().extend_from_slice(data);
        let buffer = s.split(&mut out);
        cuts(&buffer, out)
    }

    fn finish(s: &mut LineSplitter) -> Vec<Cut> {
        let mut out = Vec::new();
        s.finish(&mut out);
        assert!(out.iter().all(|l| matches!(l.bytes, Piece::Own(_))));
        cuts(&Bytes::new(), out)
    }

    #[test]
    fn splits_across_reads_with_offsets() {
        let mut s = LineSplitter::new(100, 10);
        let a = feed(&mut s, b"ab\ncd");
        assert_eq!(a.len(), 1);
        assert_eq!(
            (&a[0].bytes[..], &a[0].kind),
            (&b"ab"[..], &LineKind::Text { number: 1, end: 13 })
        );
        let b = feed(&mut s, b"e\n\nf");
        assert_eq!(
            b.iter().map(|l| &l.bytes[..]).collect::<Vec<_>>(),
            vec![&b"cde"[..], b""]
        );
        assert_eq!(b[1].end, Some(18));
        let out = finish(&mut s);
        assert_eq!(
            (&out[0].bytes[..], &out[0].kind),
            (&b"f"[..], &LineKind::Text { number: 4, end: 19 })
        );
    }

    /// Whether `line` lies in the `len` bytes from `start`.
    fn inside(line: &Cut, start: *const u8, len: usize) -> bool {
        let at = line.ptr as usize;
        (start as usize..start as usize + len).contains(&at)
    }

    #[test]
    fn lines_of_a_small_read_do_not_keep_the_read_buffer_alive() {
        let mut s = LineSplitter::new(100, 0);
        s.buffer().reserve(64 * 1024);
        let (start, capacity) = (s.buffer().as_ptr(), s.buffer().capacity());
        let out = feed(&mut s, b"ab\ncd\nef");
        assert_eq!(
            out.iter().map(|l| &l.bytes[..]).collect::<Vec<_>>(),
            vec![&b"ab"[..], b"cd"]
        );
        assert!(out.iter().all(|l| !inside(l, start, capacity)));
        assert_eq!(out[1].end, Some(6));
        // Nothing else holds the read buffer: the next read reuses it (its partial line
        // moves to the front to make room).
        s.buffer().reserve(capacity - 4);
        assert_eq!(s.buffer().as_ptr(), start);
        let out = feed(&mut s, b"\n");
        assert_eq!((&out[0].bytes[..], out[0].end), (&b"ef"[..], Some(9)));
    }

    #[test]
    fn lines_that_fill_the_read_buffer_share_it() {
        let mut s = LineSplitter::new(100, 0);
        let data = b"ab\ncd\nef".repeat(1000);
        s.buffer().reserve(data.len());
        let (start, capacity) = (s.buffer().as_ptr(), s.buffer().capacity());
        let out = feed(&mut s, &data);
        assert_eq!(out.len(), 2000);
        assert!(out.iter().all(|l| inside(l, start, capacity)));
    }

    /// A line as the tests compare them: its bytes (none for an oversized line, of which
    /// the excerpt kept depends on the reads) and its end.
    type Seen = (Option<Vec<u8>>, Option<u64>);

    fn seen(line: Cut) -> Seen {
        let text = matches!(line.kind, LineKind::Text { .. });
        (text.then_some(line.bytes), line.end)
    }

    /// Feeds `data` in reads of `size` bytes, taking the lines as [`LineSplitter::split_text`]
    /// cuts them, or as [`LineSplitter::split`] does when it does not.
    fn read_text(s: &mut LineSplitter, data: &[u8], size: usize) -> Vec<Seen> {
        let mut got = Vec::new();
        for read in data.chunks(size) {
            s.buffer().extend_from_slice(read);
            let start = s.offset();
            match s.split_text() {
                Some(text) => {
                    let lines: Vec<&[u8]> = text.bytes.split_inclusive(|b| *b == b'\n').collect();
                    assert_eq!(lines.len(), text.count);
                    let mut end = start;
                    for line in lines {
                        assert_eq!(line.last(), Some(&b'\n'));
                        end += line.len() as u64;
                        got.push((Some(line[..line.len() - 1].to_vec()), Some(end)));
                    }
                }
                None => got.extend(feed(s, b"").into_iter().map(seen)),
            }
        }
        got
    }

    proptest::proptest! {
        /// Read by read, `split_text` (with `split` where it declines) cuts the lines one
        /// `split` of the whole input cuts, and counts them on: long lines, lines of exactly
        /// `max_line_bytes` and one byte more, in reads of any size.
        #[test]
        fn split_text_cuts_what_split_cuts(
            lengths in proptest::collection::vec(0usize..40, 1..60),
            max in 1usize..20,
            size in 1usize..300,
        ) {
            let mut data = Vec::new();
            for (i, len) in lengths.iter().enumerate() {
                data.extend(std::iter::repeat_n(b'a' + (i % 26) as u8, *len));
                data.push(b'\n');
            }
            let mut whole = LineSplitter::new(max, 5);
            let want: Vec<_> = feed(&mut whole, &data).into_iter().map(seen).collect();
            let mut s = LineSplitter::new(max, 5);
            proptest::prop_assert_eq!(read_text(&mut s, &data, size), want);
            let out = feed(&mut s, b"\n");
            let number = lengths.len() as u64 + 1;
            let numbered = matches!(out[0].kind, LineKind::Text { number: n, .. } if n == number);
            proptest::prop_assert!(numbered, "the next line is number {}", number);
        }
    }

    #[test]
    fn split_text_leaves_an_oversized_line_to_split() {
        let mut s = LineSplitter::new(8, 0);
        s.buffer().extend_from_slice(b"ok\n0123456789\nfine\n");
        assert!(s.split_text().is_none());
        assert_eq!((s.offset(), s.pending()), (0, 19), "nothing taken");
        let out = feed(&mut s, b"");
        assert_eq!(out.len(), 3);
        assert!(matches!(out[1].kind, LineKind::Oversized { len: 10, .. }));
        // A partial line past the limit is dropped as `split` drops it.
        s.buffer().extend_from_slice(b"a\n0123456789");
        let text = s.split_text().expect("a short line");
        assert_eq!(&text.bytes[..], b"a\n");
        assert_eq!(s.pending(), 0, "the long line's bytes are dropped");
        assert!(
            s.split_text().is_none(),
            "the rest of the long line goes to split"
        );
        let out = feed(&mut s, b"xx\n");
        assert!(matches!(out[0].kind, LineKind::Oversized { len: 12, .. }));
    }

    #[test]
    fn oversized_lines_are_not_buffered_whole() {
        let mut s = LineSplitter::new(8, 0);
        assert!(feed(&mut s, b"0123456789").is_empty());
        assert_eq!(s.pending(), 0, "the long line's bytes are dropped");
        assert!(feed(&mut s, &[b'x'; 100]).is_empty());
        let out = feed(&mut s, b"yz\nok\n");
        assert_eq!(out.len(), 2);
        assert_eq!(
            out[0].kind,
            LineKind::Oversized {
                number: 1,
                end: 113,
                len: 112
            }
        );
        assert_eq!(&out[0].bytes[..], b"0123456789");
        assert_eq!(
            (&out[1].bytes[..], &out[1].kind),
            (
                &b"ok"[..],
                &LineKind::Text {
                    number: 2,
                    end: 116
                }
            )
        );
    }
}
