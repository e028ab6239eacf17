//! The line splitter (`flaghook::source::lines::LineSplitter`), fed in arbitrary chunks.
//!
//! The input is a small header (`max_line_bytes`, the stream's first offset, the chunk sizes)
//! and the stream. Besides "no panic", every byte of the stream is accounted for: walking
//! the lines in order, each line is the stream's next bytes up to a newline (an oversized
//! line by its length, with an excerpt that is its start), numbers count from 1, `end` is
//! the offset just past the line, and after `finish` the lines cover the whole stream.
#![no_main]

use flaghook::event::{Line, LineKind};
use flaghook::source::lines::{LineSplitter, OVERSIZED_EXCERPT};
use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;

struct Plan<'a> {
    max_line_bytes: usize,
    first_offset: u64,
    /// Bytes per read, cycled; 0 is a read that returned nothing.
    chunks: Vec<usize>,
    stream: &'a [u8],
}

fn plan(mut u: Unstructured<'_>) -> Result<Plan<'_>> {
    // Mostly small limits, so that short inputs have oversized lines; sometimes past the
    // excerpt's length.
    let max_line_bytes = match u.int_in_range(0..=3u8)? {
        0 => u.int_in_range(OVERSIZED_EXCERPT - 8..=OVERSIZED_EXCERPT + 8)?,
        _ => u.int_in_range(1..=64)?,
    };
    let first_offset = u.int_in_range(0..=1u64 << 48)?;
    let n = u.int_in_range(1..=8usize)?;
    let mut chunks = Vec::with_capacity(n);
    for _ in 0..n {
        chunks.push(u.int_in_range(0..=200usize)?);
    }
    if chunks.iter().all(|&c| c == 0) {
        chunks.push(1);
    }
    Ok(Plan {
        max_line_bytes,
        first_offset,
        chunks,
        stream: u.take_rest(),
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(plan) = plan(Unstructured::new(data)) else {
        return;
    };
    let mut splitter = LineSplitter::new(plan.max_line_bytes, plan.first_offset);
    let mut lines = Vec::new();
    let mut fed = 0;
    for &chunk in plan.chunks.iter().cycle() {
        if fed == plan.stream.len() {
            break;
        }
        let take = chunk.min(plan.stream.len() - fed);
        splitter
            .buffer()
            .extend_from_slice(&plan.stream[fed..fed + take]);
        fed += take;
        splitter.split_own(&mut lines);
        // Nothing is held beyond the limit (plus the read that crossed it).
        assert!(
            splitter.pending() <= plan.max_line_bytes,
            "buffered past the limit"
        );
        let handed_out = splitter.offset() - plan.first_offset;
        assert!(handed_out + splitter.pending() as u64 <= fed as u64);
    }
    splitter.finish(&mut lines);
    account(&plan, &lines);
    assert_eq!(
        splitter.offset(),
        plan.first_offset + plan.stream.len() as u64
    );
    assert_eq!(splitter.pending(), 0);
});

/// Walks the stream alongside the lines: each must be the stream's next line.
fn account(plan: &Plan, lines: &[Line]) {
    let stream = plan.stream;
    let mut at = 0usize;
    for (i, line) in lines.iter().enumerate() {
        let (number, end, oversized) = match line.kind {
            LineKind::Text { number, end } => (number, end, None),
            LineKind::Oversized { number, end, len } => (number, end, Some(len)),
            LineKind::Unreadable { .. } | LineKind::Torn { .. } | LineKind::Bad { .. } => {
                panic!("the splitter made an unreadable, torn or bad line")
            }
        };
        assert_eq!(number, i as u64 + 1, "line numbers");
        assert!(at < stream.len(), "a line past the end of the stream");
        let len = stream[at..]
            .iter()
            .position(|&b| b == b'\n')
            .unwrap_or(stream.len() - at);
        let real = &stream[at..at + len];
        let bytes = line.bytes.of(&[]);
        match oversized {
            None => {
                assert_eq!(bytes, real, "line {number} differs");
                assert!(
                    len <= plan.max_line_bytes,
                    "a long line not marked oversized"
                );
            }
            Some(total) => {
                assert_eq!(total, len as u64, "oversized length");
                assert!(len > plan.max_line_bytes, "a short line marked oversized");
                assert!(real.starts_with(bytes), "excerpt is not the line's start");
                let shortest = (plan.max_line_bytes + 1).min(OVERSIZED_EXCERPT);
                assert!(
                    (shortest..=OVERSIZED_EXCERPT).contains(&bytes.len()),
                    "excerpt of {} bytes",
                    bytes.len()
                );
            }
        }
        at += len;
        if at < stream.len() {
            at += 1; // the newline
        }
        assert_eq!(end, plan.first_offset + at as u64, "line {number} end");
    }
    assert_eq!(at, stream.len(), "bytes not accounted for");
}
