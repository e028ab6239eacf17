//! Reading a stream that cannot be read again (a TCP connection, stdin) into its source's
//! journal, and the drain at shutdown.

use std::time::Duration;

use futures::future::Either;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::lines::LineSplitter;
use crate::event::Line;
use crate::journal::{Appender, NotWritten};

/// How long a connection (or stdin) may stay silent before the drain at shutdown counts it
/// idle: everything its shipper had sent has then been read.
pub(super) const DRAIN_IDLE: Duration = Duration::from_millis(150);

/// The longest the drain at shutdown reads, for a shipper that never goes idle. A
/// receive queue holds a few megabytes at most and is read in milliseconds; this bound
/// only stops a shipper that keeps sending from keeping flaghook running.
pub(super) const DRAIN_LIMIT: Duration = Duration::from_secs(2);

const READ_SIZE: usize = 128 * 1024;

/// Reads `reader` to its end, appending its lines to `journal`, one read at a time: the
/// next read waits until the last one is in the journal, so what flaghook took from the
/// kernel is on its way to the disk before more is taken, and a journal at its cap (or a
/// full disk) stops the reading. `origin` names the stream in logs.
///
/// At shutdown, what the shipper already sent is still read: it sits in the kernel's
/// buffers, already acknowledged to the shipper, and closing unread would drop it. The
/// drain reads until the input is idle for `DRAIN_IDLE`, ends, or `DRAIN_LIMIT` passes,
/// and its lines go to the journal past its cap. An append still waiting for room when
/// shutdown comes goes on while the drain reads, so neither waits for the other.
pub async fn pump<R>(
    mut reader: R,
    max_line_bytes: usize,
    origin: &str,
    journal: &Appender,
    shutdown: &CancellationToken,
) -> std::io::Result<()>
where
    R: AsyncRead + Unpin,
{
    let mut splitter = LineSplitter::new(max_line_bytes, 0);
    loop {
        splitter.buffer().reserve(READ_SIZE);
        let n = tokio::select! {
            biased;
            _ = shutdown.cancelled() => {
                let nothing_pending = async { Ok(()) };
                return drain_and_append(reader, splitter, origin, journal, shutdown, nothing_pending).await;
            }
            n = reader.read_buf(splitter.buffer()) => match n {
                Ok(n) => n,
                Err(e) => {
                    // The partial last line is a line, as at the end of input: a line cut
                    // short is dead-lettered, never dropped without a trace.
                    let mut lines = Vec::new();
                    splitter.finish(&mut lines);
                    let _ = journal.append(&lines, shutdown).await;
                    return Err(e);
                }
            },
        };
        // Nearly always the lines go to the journal as they came, in one piece.
        let text = if n > 0 { splitter.split_text() } else { None };
        let append = match text {
            Some(text) => Either::Left(journal.append_text(text, shutdown)),
            None => {
                let mut lines = Vec::new();
                if n == 0 {
                    splitter.finish(&mut lines);
                } else {
                    splitter.split_own(&mut lines);
                }
                Either::Right(journal.append(&lines, shutdown))
            }
        };
        tokio::pin!(append);
        let appended = tokio::select! {
            biased;
            appended = &mut append => appended,
            _ = shutdown.cancelled() => {
                return drain_and_append(reader, splitter, origin, journal, shutdown, append).await;
            }
        };
        if appended.is_err() || n == 0 {
            return Ok(());
        }
    }
}

/// Shutdown: drains `reader` while `pending` (the append going on, if any) finishes, then
/// appends the drained lines after it.
async fn drain_and_append<R>(
    mut reader: R,
    mut splitter: LineSplitter,
    origin: &str,
    journal: &Appender,
    shutdown: &CancellationToken,
    pending: impl std::future::Future<Output = Result<(), NotWritten>>,
) -> std::io::Result<()>
where
    R: AsyncRead + Unpin,
{
    let (appended, (lines, end)) = tokio::join!(pending, drain(&mut reader, &mut splitter));
    let read = lines.len();
    if appended.is_ok() && read > 0 {
        // Only a journal that could not be written for seconds fails (logged there).
        let _ = journal.append(&lines, shutdown).await;
    }
    let end = end?;
    tracing::debug!(
        origin,
        lines = read,
        ?end,
        "read at shutdown what was already sent"
    );
    if end == Drained::Limit {
        tracing::warn!(
            origin,
            "not idle after {} of reading at shutdown; what it sends from now on is not read",
            humantime::format_duration(DRAIN_LIMIT)
        );
    }
    Ok(())
}

/// How the drain at shutdown ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Drained {
    /// The input ended (EOF).
    End,
    /// Nothing came for [`DRAIN_IDLE`].
    Idle,
    /// [`DRAIN_LIMIT`] passed before the input was idle.
    Limit,
}

/// Reads what is left in `reader` (see [`pump`]) into lines. The partial last line, if any,
/// becomes a line, as at the end of input: a shipper's last line without its newline is
/// still a line, and one cut short is dead-lettered as bad input, never silently lost.
/// On a read error, the lines read before it are returned with it.
async fn drain<R>(
    reader: &mut R,
    splitter: &mut LineSplitter,
) -> (Vec<Line>, std::io::Result<Drained>)
where
    R: AsyncRead + Unpin,
{
    let deadline = Instant::now() + DRAIN_LIMIT;
    let mut lines = Vec::new();
    let end = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break Ok(Drained::Limit);
        }
        splitter.buffer().reserve(READ_SIZE);
        match tokio::time::timeout(DRAIN_IDLE.min(left), reader.read_buf(splitter.buffer())).await {
            Ok(Ok(0)) => break Ok(Drained::End),
            Ok(Ok(_)) => splitter.split_own(&mut lines),
            Ok(Err(e)) => break Err(e),
            Err(_) if left <= DRAIN_IDLE => break Ok(Drained::Limit),
            Err(_) => break Ok(Drained::Idle),
        }
    };
    splitter.finish(&mut lines);
    (lines, end)
}
