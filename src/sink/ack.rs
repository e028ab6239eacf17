//! A sink's acknowledgements: once items are delivered or dead-lettered, their positions (in
//! tailed files and journal segments) move their sources' checkpoints, and the checkpoint
//! writer saves them before the sink's next request, so a crash re-sends at most the batch
//! in flight.

use std::collections::HashSet;

use tokio::sync::oneshot;

use crate::event::{Ack, Item};
use crate::source::file::checkpoint::{AckHandle, Persist};

#[derive(Debug)]
pub(crate) struct Acknowledger {
    /// Per input ([`Ack::input`]): the source's handle.
    handles: Vec<AckHandle>,
    /// Files whose offsets stay where they are for the rest of the run, by (input, file):
    /// a dead letter of theirs could not be written.
    left_in_files: HashSet<(usize, u64)>,
    persist: Persist,
    /// The write asked for by the last acknowledgement.
    persisting: Option<oneshot::Receiver<()>>,
}

impl Acknowledger {
    pub(crate) fn new(handles: Vec<AckHandle>, persist: Persist) -> Self {
        Acknowledger {
            handles,
            left_in_files: HashSet::new(),
            persist,
            persisting: None,
        }
    }

    /// `items` were delivered or dead-lettered (their dead letters are on the disk): moves
    /// their files' offsets and asks for them to be saved. Within one file offsets only
    /// grow, so the last item of each run from the same file is enough.
    pub(crate) fn acknowledge(&mut self, items: &[Item]) {
        let mut moved = false;
        let mut pending: Option<Ack> = None;
        let acks = items.iter().map(Item::ack);
        for ack in acks.filter(|a| !self.left_in_files.contains(&(a.input, a.file))) {
            if let Some(p) = pending.filter(|p| (p.input, p.file) != (ack.input, ack.file)) {
                moved |= self.ack(p);
            }
            pending = Some(ack);
        }
        if let Some(p) = pending {
            moved |= self.ack(p);
        }
        if moved {
            self.persisting = Some(self.persist.request());
        }
    }

    fn ack(&self, ack: Ack) -> bool {
        let Some(handle) = self.handles.get(ack.input) else {
            return false;
        };
        handle.ack(ack.file, ack.offset);
        true
    }

    /// Waits until the last acknowledgement is saved.
    pub(crate) async fn persisted(&mut self) {
        if let Some(write) = self.persisting.take() {
            // The writer outlives every sink; only its panic ends it sooner.
            write.await.expect("the checkpoint writer stopped");
        }
    }

    /// The dead letters of `items` could not be written: their files' offsets stay where
    /// they are for the rest of the run (the next start reads the lines again).
    pub(crate) fn leave_in_files(&mut self, items: &[Item]) {
        let files = items.iter().map(Item::ack).map(|a| (a.input, a.file));
        self.left_in_files.extend(files);
    }
}
