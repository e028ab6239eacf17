//! The one point where an acknowledged source (`fluent`, `http`) learns that it may answer
//! for lines: the Forward protocol's `{"ack": chunk}`, an HTTP 200.
//!
//! Both sources hand their lines on through [`Keeper::keep`] and answer their client only
//! after it returned `Ok`. What "kept" means lives here alone, so that a stronger promise
//! changes this file and not the sources.

use tokio_util::sync::CancellationToken;

use super::{Closed, Output};
use crate::event::Block;

/// Hands an acknowledged source's lines on, and says when the source may answer for them.
#[derive(Debug, Clone)]
pub(crate) struct Keeper {
    output: Output,
}

impl Keeper {
    pub(crate) fn new(output: Output) -> Self {
        Keeper { output }
    }

    /// Returns `Ok` once flaghook answers for `block`'s lines, so that the source may
    /// acknowledge them to its client; `Err` when no sink reads them any more (the source
    /// then answers nothing, and the client sends them again).
    ///
    /// Today the lines are kept once every sink that reads the source holds them in memory
    /// (as for `tcp`): they are delivered, retried, dead-lettered, or spilled at a graceful
    /// stop, but a crash (kill -9, OOM) before delivery loses them although they were
    /// acknowledged. Waiting for room in the sinks' budgets is the back-pressure: the
    /// source reads nothing meanwhile. Once `stop` is cancelled the lines no longer wait
    /// for room (see [`Output::send_or_overdraw`]).
    ///
    /// JOURNAL (issue 10): this is where the disk journal plugs in. With it, `keep` appends
    /// the lines to the source's journal and returns only once that append is fsynced
    /// (`journal_fsync = "always"`); the sinks then read the journal, not this call. A
    /// full journal makes it wait (a `fluent` connection is not read, an `http` request
    /// waits) or fail so that `http` answers 503 with `Retry-After`.
    pub(crate) async fn keep(&self, block: Block, stop: &CancellationToken) -> Result<(), Closed> {
        self.output.send_or_overdraw(block, stop).await
    }
}
