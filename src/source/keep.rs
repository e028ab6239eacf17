//! The one point where an acknowledged source (`fluent`, `http`) learns that it may answer
//! for lines: the Forward protocol's `{"ack": chunk}`, an HTTP 200.
//!
//! Both sources hand their lines on through a [`Keeper`] and answer their client only
//! after it returned `Ok`. What "kept" means lives here alone: the lines are in the
//! source's journal and fsynced (`crate::journal`), whatever `journal_fsync` says, so that
//! nothing acknowledged is lost to a `kill -9`, an OOM kill or a power loss. The sinks read
//! the journal back through its tail, as they do a `tcp` source's.

use tokio_util::sync::CancellationToken;

use crate::event::Line;
use crate::journal::{Appender, NotAppended, NotWritten};
use crate::source::lines::TextLines;

/// Hands an acknowledged source's lines to its journal, and says when the source may
/// answer for them.
#[derive(Debug, Clone)]
pub(crate) struct Keeper {
    journal: Appender,
    stop: CancellationToken,
}

/// Why lines were not kept: the source answers nothing (`fluent`) or an error (`http`), and
/// the client sends them again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NotKept {
    /// The journal holds `journal_max_bytes` (only [`Keeper::keep_or_refuse`]).
    Full,
    /// The journal could not be written, or fsynced, before shutdown gave up on it.
    NotWritten,
}

impl From<NotAppended> for NotKept {
    fn from(e: NotAppended) -> Self {
        match e {
            NotAppended::Full => NotKept::Full,
            NotAppended::NotWritten => NotKept::NotWritten,
        }
    }
}

impl Keeper {
    pub(crate) fn new(journal: Appender, stop: CancellationToken) -> Self {
        Keeper { journal, stop }
    }

    /// Returns `Ok` once `lines` are in the journal and fsynced, so that the source may
    /// acknowledge them. While the journal holds `journal_max_bytes` it waits (the source
    /// reads nothing meanwhile: back-pressure); once `stop` is cancelled the lines no
    /// longer wait for room, as for `tcp`.
    pub(crate) async fn keep(&self, lines: &[Line]) -> Result<(), NotWritten> {
        self.journal.append_synced(lines, &self.stop).await
    }

    /// [`Keeper::keep`], refused at once with [`NotKept::Full`] (nothing appended) while
    /// the journal holds `journal_max_bytes`: for a client that is told to come back (an
    /// HTTP 503 with `Retry-After`) rather than kept waiting.
    pub(crate) async fn keep_or_refuse(&self, lines: &[Line]) -> Result<(), NotKept> {
        let appended = self.journal.try_append_synced(lines, &self.stop).await;
        appended.map_err(NotKept::from)
    }

    /// [`Keeper::keep_or_refuse`] for lines that came in one piece, each ending in `\n`:
    /// appended as they are (see `Appender::append_text`).
    pub(crate) async fn keep_text_or_refuse(&self, text: TextLines) -> Result<(), NotKept> {
        let appended = self.journal.try_append_synced_text(text, &self.stop).await;
        appended.map_err(NotKept::from)
    }

    /// Appends lines the source will not acknowledge (a Forward entry without `chunk`,
    /// bytes that are not the protocol): as `tcp` does, durable as `journal_fsync` says.
    pub(crate) async fn hand_on(&self, lines: &[Line]) -> Result<(), NotWritten> {
        self.journal.append(lines, &self.stop).await
    }
}
