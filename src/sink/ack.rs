//! A sink's acknowledgements: once items are delivered or dead-lettered, their positions (in
//! tailed files and journal segments) move their sources' checkpoints, and the checkpoint
//! writer saves them before the sink's next request, so a crash re-sends at most the
//! batches in flight.
//!
//! [`InOrder`] keeps them in the order batches were first sent: with several requests in
//! flight (`request_concurrency`), a batch may be delivered before an earlier one, and its
//! positions then wait until every earlier batch is settled.

use std::collections::{BTreeMap, HashSet};

use tokio::sync::oneshot;

use crate::event::Ack;
use crate::source::file::checkpoint::Persist;
use crate::source::SourceAck;

#[derive(Debug)]
pub(crate) struct Acknowledger {
    /// Per input ([`Ack::input`]): the source's handle (its files' or journal's
    /// checkpoints, or JetStream's acks).
    handles: Vec<SourceAck>,
    /// Files whose offsets stay where they are for the rest of the run, by (input, file):
    /// a dead letter of theirs could not be written.
    left_in_files: HashSet<(usize, u64)>,
    persist: Persist,
    /// The write asked for by the last acknowledgement.
    persisting: Option<oneshot::Receiver<()>>,
}

impl Acknowledger {
    pub(crate) fn new(handles: Vec<SourceAck>, persist: Persist) -> Self {
        Acknowledger {
            handles,
            left_in_files: HashSet::new(),
            persist,
            persisting: None,
        }
    }

    /// The lines up to `acks` (the last of each run from one file, see
    /// [`crate::batch::Batch::last_per_file`])
    /// were delivered or dead-lettered (their dead letters are on the disk): moves their
    /// files' offsets and asks for them to be saved.
    fn apply(&mut self, acks: &[Ack]) {
        let mut moved = false;
        for ack in acks {
            if !self.left_in_files.contains(&(ack.input, ack.file)) {
                moved |= self.ack(*ack);
            }
        }
        if moved {
            self.persisting = Some(self.persist.request());
        }
    }

    fn ack(&self, ack: Ack) -> bool {
        let Some(handle) = self.handles.get(ack.input) else {
            return false;
        };
        handle.ack(ack.file, ack.offset)
    }

    /// Waits until the last acknowledgement is saved.
    pub(crate) async fn persisted(&mut self) {
        if let Some(write) = self.persisting.take() {
            // The writer outlives every sink; only its panic ends it sooner.
            write.await.expect("the checkpoint writer stopped");
        }
    }

    /// The lines of `acks` are left for the next run (given up at shutdown, or their dead
    /// letters could not be written): their files' offsets stay where they are for the rest
    /// of the run (the next start reads the lines again).
    fn leave(&mut self, acks: &[Ack]) {
        self.left_in_files
            .extend(acks.iter().map(|a| (a.input, a.file)));
    }
}

/// A batch's place in the order of acknowledgements, given when it is first sent.
pub(crate) type Seq = u64;

/// An [`Acknowledger`] that applies each batch's acknowledgements in the order the batches
/// were first sent (their [`Seq`]).
///
/// Invariant: the acknowledgements of a batch are applied only once every batch sent
/// before it is settled (delivered, dead-lettered or left for the next run), so a file's
/// checkpoint advances only over a contiguous prefix of delivered lines, however the
/// responses of the requests in flight come back. The oldest unsettled batch (`head`)
/// applies its own at once.
#[derive(Debug)]
pub(crate) struct InOrder {
    acks: Acknowledger,
    /// The oldest batch not settled.
    head: Seq,
    /// The next batch's.
    next: Seq,
    /// Batches after `head` that acknowledged something, or settled, before it.
    later: BTreeMap<Seq, Later>,
}

#[derive(Debug, Default)]
struct Later {
    /// In the order they were asked for.
    steps: Vec<Step>,
    settled: bool,
}

#[derive(Debug)]
enum Step {
    Acknowledge(Vec<Ack>),
    LeaveInFiles(Vec<Ack>),
}

impl InOrder {
    pub(crate) fn new(acks: Acknowledger) -> Self {
        InOrder {
            acks,
            head: 0,
            next: 0,
            later: BTreeMap::new(),
        }
    }

    /// The place of a batch sent for the first time.
    pub(crate) fn open(&mut self) -> Seq {
        self.next += 1;
        self.next - 1
    }

    /// Batch `seq` delivered or dead-lettered the lines up to `acks` (the last of each
    /// run from one file).
    pub(crate) fn acknowledge(&mut self, seq: Seq, acks: Vec<Ack>) {
        self.step(seq, Step::Acknowledge(acks));
    }

    /// Batch `seq` leaves the lines of `acks` (and the rest of their files) for the next
    /// run.
    pub(crate) fn leave_in_files(&mut self, seq: Seq, acks: Vec<Ack>) {
        self.step(seq, Step::LeaveInFiles(acks));
    }

    fn step(&mut self, seq: Seq, step: Step) {
        if seq == self.head {
            self.apply(step);
        } else {
            self.later.entry(seq).or_default().steps.push(step);
        }
    }

    fn apply(&mut self, step: Step) {
        match step {
            Step::Acknowledge(acks) => self.acks.apply(&acks),
            Step::LeaveInFiles(acks) => self.acks.leave(&acks),
        }
    }

    /// Batch `seq` is settled: nothing of it is acknowledged any more. When it is the
    /// oldest, the batches after it that waited apply theirs, up to the next one not
    /// settled.
    pub(crate) fn settle(&mut self, seq: Seq) {
        if seq != self.head {
            self.later.entry(seq).or_default().settled = true;
            return;
        }
        self.head += 1;
        while let Some(later) = self.later.remove(&self.head) {
            for step in later.steps {
                self.apply(step);
            }
            if !later.settled {
                break;
            }
            self.head += 1;
        }
    }

    /// Whether a batch sent after `seq` acknowledged file positions that wait for `seq`:
    /// were `seq` left in its files, they would be read and sent again at the next start.
    pub(crate) fn acknowledged_after(&self, seq: Seq) -> bool {
        let waiting = |later: &Later| {
            (later.steps.iter()).any(|s| matches!(s, Step::Acknowledge(acks) if !acks.is_empty()))
        };
        self.later.range(seq + 1..).any(|(_, later)| waiting(later))
    }

    /// Waits until the last acknowledgement applied is saved.
    pub(crate) async fn persisted(&mut self) {
        self.acks.persisted().await;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::source::file::checkpoint::{CheckpointWriter, Checkpointer, Fingerprint};

    /// The line of file 1 that ends at `offset`.
    fn line(offset: u64) -> Vec<Ack> {
        vec![Ack {
            input: 0,
            file: 1,
            offset,
        }]
    }

    /// Three batches in flight, answered out of order: the checkpoint moves only over the
    /// batches delivered from the first on, and a batch left for the next run stops it for
    /// good.
    #[test]
    fn positions_move_in_the_order_batches_were_sent() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("a.log");
        std::fs::write(&log, b"0123456789").unwrap();
        let cp = Arc::new(Checkpointer::load(dir.path().join("cp.json")));
        let handle = cp.subscribe();
        let file = std::fs::File::open(&log).unwrap();
        cp.register(1, Fingerprint::of(&file).unwrap(), &log, 0);
        let (_writer, persist) = CheckpointWriter::spawn(vec![cp.clone()]).unwrap();
        let mut acks = InOrder::new(Acknowledger::new(vec![handle.into()], persist));
        let (a, b, c, d) = (acks.open(), acks.open(), acks.open(), acks.open());

        acks.acknowledge(c, line(6));
        acks.settle(c);
        acks.acknowledge(b, line(4));
        assert_eq!(
            cp.committed(1),
            Some(0),
            "nothing before batch a is delivered"
        );
        acks.acknowledge(a, line(1));
        assert_eq!(cp.committed(1), Some(1), "a, the oldest, moves at once");
        acks.acknowledge(a, line(2));
        acks.settle(a);
        assert_eq!(
            cp.committed(1),
            Some(4),
            "then b's half, which came meanwhile"
        );
        acks.leave_in_files(b, line(5));
        acks.settle(b);
        assert_eq!(
            cp.committed(1),
            Some(4),
            "b left a line for the next run: c waits"
        );
        acks.acknowledge(d, line(8));
        acks.settle(d);
        assert_eq!(cp.committed(1), Some(4), "and so does everything after it");
    }
}
