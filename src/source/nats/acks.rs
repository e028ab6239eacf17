//! A nats source's JetStream messages, held until every sink reading the source has
//! delivered (or dead-lettered) all their lines.
//!
//! Each message fetched is numbered, and its lines carry that number as their "file" with
//! the byte offset of their end in the message ([`crate::event::Ack`]), so the sinks
//! acknowledge them through the same path as a file's lines ([`crate::sink::ack`]). A sink
//! acknowledges through its [`NatsAckHandle`]; once every sink has acknowledged a
//! message's last line, the message is acked to JetStream.
//!
//! Invariant: a message is acked only when every sink delivered or dead-lettered every
//! line of it. Until then it is held, and the [`Acker`] sends it an in-progress ack
//! (`+WPI`) every half of the consumer's `ack_wait`, so the server does not hand it to
//! another instance while a sink retries (or while it waits for room in a sink's budget).
//! When the source and every sink are done (the last handle dropped), what is still held
//! is NAKed, for another instance to take at once.
//!
//! When the consumer is gone (deleted, or its stream recreated), the messages held from it
//! are forgotten ([`Messages::forget`]): their acks would go nowhere, or to a new consumer
//! of the same name, where they could ack another message of the same sequence. The sinks
//! deliver their lines all the same, and JetStream hands those not acked to the new
//! consumer again (at least once).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::Subject;
use bytes::Bytes;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

/// What the [`Acker`] sends to a message's reply subject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reply {
    Ack,
    Progress,
    Nak,
}

impl Reply {
    fn payload(self) -> Bytes {
        Bytes::from_static(match self {
            Reply::Ack => b"+ACK",
            Reply::Progress => b"+WPI",
            Reply::Nak => b"-NAK",
        })
    }
}

/// The messages of one nats source that are not acked yet. Shared by the source (which
/// holds each message it fetched) and every sink's [`NatsAckHandle`].
#[derive(Debug)]
pub(crate) struct Messages {
    held: Arc<Mutex<Held>>,
    /// To the [`Acker`]: the messages to ack, with the consumer they came from. It ends
    /// once this is dropped, that is, once the source and every sink are done.
    acks: mpsc::UnboundedSender<(Consumer, Subject)>,
    /// The other end, until the source starts its [`Acker`].
    pending: Mutex<Option<mpsc::UnboundedReceiver<(Consumer, Subject)>>>,
}

#[derive(Debug, Default)]
struct Held {
    /// How many sinks read the source; a message is acked when all of them acknowledged it.
    readers: usize,
    next: u64,
    /// The consumer messages are fetched from now; an ack for an earlier one is not sent.
    consumer: Consumer,
    messages: HashMap<u64, Message>,
}

/// Which of the consumers the source read in turn (the first is 0): one more each time
/// the consumer was gone and the source looked it up again.
type Consumer = u64;

#[derive(Debug)]
struct Message {
    /// Where its acks go.
    reply: Subject,
    /// The end of its last line: the length of its payload.
    end: u64,
    /// Acknowledged offset, per reading sink.
    acked: Vec<u64>,
    /// Fetched, or last told in progress.
    touched: Instant,
}

/// One sink's right to acknowledge a nats source's lines, given by
/// [`Messages::subscribe`].
#[derive(Debug, Clone)]
pub struct NatsAckHandle {
    messages: Arc<Messages>,
    slot: usize,
}

impl NatsAckHandle {
    /// This sink delivered or dead-lettered the lines of message `id` before `offset`.
    pub(crate) fn ack(&self, id: u64, offset: u64) {
        self.messages.ack(id, self.slot, offset);
    }
}

impl Messages {
    pub(crate) fn new() -> Arc<Self> {
        let (acks, pending) = mpsc::unbounded_channel();
        Arc::new(Messages {
            held: Arc::default(),
            acks,
            pending: Mutex::new(Some(pending)),
        })
    }

    /// Adds a reader. Every reader subscribes before the source fetches.
    pub(crate) fn subscribe(self: &Arc<Self>) -> NatsAckHandle {
        let mut held = self.lock();
        held.readers += 1;
        NatsAckHandle {
            messages: self.clone(),
            slot: held.readers - 1,
        }
    }

    /// Holds a message fetched, whose lines end at `end` (its payload's length), until every
    /// sink acknowledged them; gives the number its lines' acks carry. A message without a
    /// line is acked at once.
    pub(crate) fn hold(&self, reply: Subject, end: u64) -> u64 {
        let mut held = self.lock();
        let id = held.next;
        held.next += 1;
        if end == 0 {
            let _ = self.acks.send((held.consumer, reply));
            return id;
        }
        let readers = held.readers.max(1);
        held.messages.insert(
            id,
            Message {
                reply,
                end,
                acked: vec![0; readers],
                touched: Instant::now(),
            },
        );
        id
    }

    /// The reader in `slot` delivered or dead-lettered message `id`'s lines before
    /// `offset`: once every reader has all of them, the message is acked.
    fn ack(&self, id: u64, slot: usize, offset: u64) {
        let mut held = self.lock();
        let Some(message) = held.messages.get_mut(&id) else {
            return;
        };
        if let Some(acked) = message.acked.get_mut(slot) {
            *acked = (*acked).max(offset);
        }
        if message.acked.iter().all(|&a| a >= message.end) {
            let message = held.messages.remove(&id).expect("held");
            // The acker outlives every handle; if it panicked, the source reports it.
            let _ = self.acks.send((held.consumer, message.reply));
        }
    }

    /// The consumer is gone: forgets the messages held from it (none of them is acked, told
    /// in progress or NAKed any more, and acks already queued for them are not sent).
    /// Returns how many were held.
    pub(crate) fn forget(&self) -> usize {
        let mut held = self.lock();
        held.consumer += 1;
        let forgotten = held.messages.len();
        held.messages.clear();
        forgotten
    }

    /// How many messages are held.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().messages.len()
    }

    /// The [`Acker`] of these messages, to run once the consumer's `ack_wait` is known; the
    /// source sends it the `ack_wait` of each consumer it reads (a consumer created again
    /// may have another) and each change of it (an owner may edit it in place). Called once.
    pub(crate) fn acker(
        &self,
        client: async_nats::Client,
        ack_wait: watch::Receiver<Duration>,
    ) -> Acker {
        let acks = self
            .pending
            .lock()
            .expect("nats acks lock")
            .take()
            .expect("one acker per source");
        Acker {
            held: self.held.clone(),
            acks,
            client,
            ack_wait,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Held> {
        self.held.lock().expect("nats acks lock")
    }
}

/// Ticks every quarter of `ack_wait` (its first tick at once).
fn ticker(ack_wait: Duration) -> tokio::time::Interval {
    let mut tick = tokio::time::interval((ack_wait / 4).max(Duration::from_millis(10)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick
}

/// Sends the acks of a nats source's messages: `+ACK` once delivered, `+WPI` while held,
/// `-NAK` at the end for what was not delivered.
#[derive(Debug)]
pub(crate) struct Acker {
    held: Arc<Mutex<Held>>,
    acks: mpsc::UnboundedReceiver<(Consumer, Subject)>,
    client: async_nats::Client,
    /// The `ack_wait` of the consumer read now.
    ack_wait: watch::Receiver<Duration>,
}

impl Acker {
    /// Runs until the source and every sink are done, then NAKs what is held. Returns how
    /// many messages it NAKed.
    pub(crate) async fn run(mut self, source: &str) -> usize {
        // A message is told in progress once half of `ack_wait` passed since it was fetched
        // or last told; checked every quarter, so it is told before three quarters passed.
        let mut ack_wait = *self.ack_wait.borrow_and_update();
        let mut tick = ticker(ack_wait);
        let mut watching = true;
        loop {
            tokio::select! {
                reply = self.acks.recv() => match reply {
                    Some((consumer, reply)) => if self.current(consumer) {
                        self.send(source, reply, Reply::Ack).await;
                    },
                    None => break,
                },
                // A consumer created again, or changed: its `ack_wait` from now on.
                changed = self.ack_wait.changed(), if watching => {
                    watching = changed.is_ok();
                    let now = *self.ack_wait.borrow_and_update();
                    if now != ack_wait {
                        ack_wait = now;
                        tick = ticker(ack_wait);
                    }
                }
                _ = tick.tick() => {
                    for reply in self.due(ack_wait / 2) {
                        self.send(source, reply, Reply::Progress).await;
                    }
                }
            }
        }
        let left: Vec<Subject> = {
            let mut held = self.held.lock().expect("nats acks lock");
            held.messages.drain().map(|(_, m)| m.reply).collect()
        };
        for reply in &left {
            self.send(source, reply.clone(), Reply::Nak).await;
        }
        if let Err(e) = self.client.flush().await {
            tracing::warn!(source, error = %e, "could not flush the last acks to the NATS server: their messages will be delivered again after ack_wait");
        }
        left.len()
    }

    /// Whether `consumer` is the one read now (an ack for a message of an earlier one is
    /// dropped: see [`Messages::forget`]).
    fn current(&self, consumer: Consumer) -> bool {
        self.held.lock().expect("nats acks lock").consumer == consumer
    }

    /// The held messages not told in progress for `half` of `ack_wait`, now told.
    fn due(&self, half: Duration) -> Vec<Subject> {
        let now = Instant::now();
        let mut held = self.held.lock().expect("nats acks lock");
        held.messages
            .values_mut()
            .filter(|m| now.saturating_duration_since(m.touched) >= half)
            .map(|m| {
                m.touched = now;
                m.reply.clone()
            })
            .collect()
    }

    async fn send(&self, source: &str, reply: Subject, what: Reply) {
        if let Err(e) = self.client.publish(reply, what.payload()).await {
            tracing::warn!(source, error = %e, ?what, "could not send an ack to the NATS server: the message will be delivered again after ack_wait");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A message is acked once every reader acknowledged its last line, and not before.
    #[test]
    fn a_message_is_acked_when_every_reader_acknowledged_all_its_lines() {
        let messages = Messages::new();
        let (a, b) = (messages.subscribe(), messages.subscribe());
        let mut acks = messages.pending.lock().unwrap().take().unwrap();
        let first = messages.hold(Subject::from("r.1"), 20);
        let second = messages.hold(Subject::from("r.2"), 10);
        a.ack(first, 20);
        b.ack(first, 12);
        a.ack(second, 10);
        assert!(
            acks.try_recv().is_err(),
            "b has not acknowledged all of either"
        );
        b.ack(second, 10);
        assert_eq!(acks.try_recv().unwrap().1.as_str(), "r.2");
        b.ack(first, 20);
        assert_eq!(acks.try_recv().unwrap().1.as_str(), "r.1");
        assert_eq!(messages.len(), 0);
        let empty = messages.hold(Subject::from("r.3"), 0);
        assert_eq!(empty, 2);
        assert_eq!(
            acks.try_recv().unwrap().1.as_str(),
            "r.3",
            "no line: acked at once"
        );
    }

    /// Once the consumer is gone, the messages held from it are no longer acked: the acks
    /// of the next consumer's messages carry its number.
    #[test]
    fn messages_of_a_consumer_gone_are_forgotten() {
        let messages = Messages::new();
        let a = messages.subscribe();
        let mut acks = messages.pending.lock().unwrap().take().unwrap();
        let old = messages.hold(Subject::from("r.old"), 10);
        assert_eq!(messages.forget(), 1);
        assert_eq!(messages.len(), 0);
        a.ack(old, 10);
        assert!(acks.try_recv().is_err(), "a forgotten message is not acked");
        let new = messages.hold(Subject::from("r.new"), 10);
        a.ack(new, 10);
        let (consumer, reply) = acks.try_recv().unwrap();
        assert_eq!((consumer, reply.as_str()), (1, "r.new"));
    }
}
