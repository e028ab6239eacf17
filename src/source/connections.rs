//! Connection slots, for the sources that accept connections: `tcp`, and the acknowledged
//! sources to come (Fluent Forward, HTTP), which wrap their sockets the same way.
//!
//! A source serves at most `max_connections` connections at once. A connection that sends
//! nothing for `idle_timeout` is closed, and a connection that arrives while every slot is
//! taken is served by closing the one idle longest, so that idle sockets cannot lock a
//! shipper out. A connection silent for less than [`EVICTABLE_AFTER`] is active, not idle,
//! and is never evicted: with every slot held by active shippers, a new connection waits
//! for a slot as before. Closing ends the source's input from that connection as its end
//! would (EOF): a partial last line is handled as at the end of a connection.
//!
//! Idle means that the source waits for bytes and none come. A connection the source is
//! not reading (it hands on what it read, or waits for room in the sinks: back-pressure) is
//! busy however long that lasts, whatever its shipper sent meanwhile: it is neither timed
//! out nor evicted, and its idle time starts again when the source reads it again.
//!
//! Eviction is asked, not forced: the connection's reader ([`Tracked`]) closes the next time
//! it finds nothing to read. If bytes arrived in between, the connection was not idle after
//! all: the request is withdrawn and the source looks again.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::task::AtomicWaker;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};

/// The most `max_connections` of a listening source: each is a file descriptor, and far
/// more than one process serves in practice.
const MAX_CONNECTIONS: usize = 65_536;
/// The longest `idle_timeout`.
const MAX_IDLE_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

/// Checks a listening source's `max_connections` and `idle_timeout` (at `key`, the
/// source's); `example` is a correct `max_connections` line for the message.
pub(crate) fn check_limits(
    key: &str,
    max_connections: usize,
    idle_timeout: Duration,
    example: &str,
) -> anyhow::Result<()> {
    crate::config::check_count(
        &format!("{key}.max_connections"),
        max_connections,
        1..=MAX_CONNECTIONS,
        example,
    )?;
    crate::config::check_duration(
        &format!("{key}.idle_timeout"),
        idle_timeout,
        MAX_IDLE_TIMEOUT,
        "idle_timeout = \"5m\"",
    )
}

/// A connection silent for less than this is active: a new connection does not cut it off
/// between two writes of its shipper.
pub(crate) const EVICTABLE_AFTER: Duration = Duration::from_secs(1);

/// While a new connection waits for a slot and no connection is idle long enough to be
/// evicted, how often to look again.
const LOOK_AGAIN: Duration = Duration::from_millis(250);

/// A source's `max_connections` slots and the connections holding them.
#[derive(Debug)]
pub(crate) struct ConnectionSlots {
    permits: Arc<Semaphore>,
    idle_timeout: Duration,
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    /// Every connection with a slot (and those read at shutdown, see
    /// [`ConnectionSlots::extra`]), by id.
    open: Mutex<HashMap<u64, Arc<Entry>>>,
    next_id: AtomicU64,
    /// A connection asked to close had bytes to read after all.
    withdrawn: Notify,
}

/// One connection, as its source sees it.
#[derive(Debug)]
struct Entry {
    activity: Mutex<Activity>,
    /// Wakes its reader when it is asked to close.
    waker: AtomicWaker,
}

#[derive(Debug)]
struct Activity {
    state: State,
    /// The source asked it to close, to make room for a new connection.
    close_asked: bool,
}

#[derive(Debug, Clone, Copy)]
enum State {
    /// The source waits for its bytes, since then.
    Waiting { since: Instant },
    /// The source is not reading it: it hands on what it read, or waits for room.
    Busy,
    /// It was closed; its slot is free once its task ends.
    Closed,
}

impl Entry {
    fn activity(&self) -> MutexGuard<'_, Activity> {
        self.activity.lock().expect("no code panics holding it")
    }
}

impl ConnectionSlots {
    pub(crate) fn new(max_connections: usize, idle_timeout: Duration) -> Self {
        ConnectionSlots {
            permits: Arc::new(Semaphore::new(max_connections)),
            idle_timeout,
            shared: Arc::new(Shared {
                open: Mutex::new(HashMap::new()),
                next_id: AtomicU64::new(0),
                withdrawn: Notify::new(),
            }),
        }
    }

    /// A slot for a new connection: a free one, or the one freed by closing the connection
    /// idle longest. Waits while every connection is active. Cancel-safe.
    pub(crate) async fn acquire(&self) -> Slot {
        loop {
            if let Ok(permit) = self.permits.clone().try_acquire_owned() {
                return self.register(Some(permit));
            }
            self.ask_longest_idle_to_close();
            tokio::select! {
                permit = self.permits.clone().acquire_owned() => {
                    return self.register(Some(permit.expect("the semaphore is never closed")));
                }
                _ = self.shared.withdrawn.notified() => {}
                _ = tokio::time::sleep(LOOK_AGAIN) => {}
            }
        }
    }

    /// A slot beyond `max_connections`, for the connections read at shutdown (when none is
    /// evicted any more).
    pub(crate) fn extra(&self) -> Slot {
        self.register(None)
    }

    fn register(&self, permit: Option<OwnedSemaphorePermit>) -> Slot {
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        let entry = Arc::new(Entry {
            activity: Mutex::new(Activity {
                state: State::Waiting {
                    since: Instant::now(),
                },
                close_asked: false,
            }),
            waker: AtomicWaker::new(),
        });
        self.open().insert(id, entry.clone());
        Slot {
            id,
            entry,
            shared: self.shared.clone(),
            idle_timeout: self.idle_timeout,
            _permit: permit,
        }
    }

    fn open(&self) -> MutexGuard<'_, HashMap<u64, Arc<Entry>>> {
        self.shared.open.lock().expect("no code panics holding it")
    }

    /// Asks the connection idle longest (and at least [`EVICTABLE_AFTER`]) to close, unless
    /// one is closing already: one new connection closes one old one.
    fn ask_longest_idle_to_close(&self) {
        let now = Instant::now();
        let open = self.open();
        let mut longest: Option<(Instant, &Arc<Entry>)> = None;
        for entry in open.values() {
            let mut activity = entry.activity();
            match activity.state {
                State::Closed => return,
                State::Waiting { .. } if activity.close_asked => return,
                // Asked while waiting, busy since: it is not idle any more.
                State::Busy => activity.close_asked = false,
                State::Waiting { since } => {
                    let idle_enough = now.saturating_duration_since(since) >= EVICTABLE_AFTER;
                    if idle_enough && longest.is_none_or(|(first, _)| since < first) {
                        longest = Some((since, entry));
                    }
                }
            }
        }
        if let Some((since, entry)) = longest {
            let mut activity = entry.activity();
            // Still waiting since then: it received nothing in between.
            if matches!(activity.state, State::Waiting { since: s } if s == since) {
                activity.close_asked = true;
                drop(activity);
                entry.waker.wake();
            }
        }
    }
}

/// A connection's place among a source's connections; frees it when dropped.
#[derive(Debug)]
pub(crate) struct Slot {
    id: u64,
    entry: Arc<Entry>,
    shared: Arc<Shared>,
    idle_timeout: Duration,
    /// Counts it in `max_connections` (none for [`ConnectionSlots::extra`]).
    _permit: Option<OwnedSemaphorePermit>,
}

impl Slot {
    /// Wraps the connection's stream so that its reads keep the slot's activity.
    pub(crate) fn track<IO>(self, io: IO) -> Tracked<IO> {
        Tracked {
            io,
            idle: Box::pin(tokio::time::sleep(self.idle_timeout)),
            slot: self,
            waiting: false,
            closed: None,
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        // The permit (a field) is released after this: the entry is gone by then.
        self.shared
            .open
            .lock()
            .expect("no code panics holding it")
            .remove(&self.id);
    }
}

/// Why a [`Tracked`] connection was closed by its source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CloseReason {
    /// Nothing came for `idle_timeout`.
    IdleTimeout,
    /// It was idle longest when a new connection found every slot taken.
    Evicted,
}

/// A connection's stream that ends (reads return 0, as at EOF) once the connection is idle
/// for `idle_timeout` or is evicted. Writes go through untouched.
#[derive(Debug)]
pub(crate) struct Tracked<IO> {
    io: IO,
    slot: Slot,
    /// Fires `idle_timeout` after the current wait for bytes began.
    idle: Pin<Box<Sleep>>,
    /// A read is waiting for bytes (the last poll returned `Pending`).
    waiting: bool,
    closed: Option<CloseReason>,
}

impl<IO> Tracked<IO> {
    /// Why the source closed it, if it did.
    pub(crate) fn closed(&self) -> Option<CloseReason> {
        self.closed
    }

    /// The first poll of a read: from now on the source waits for bytes.
    fn begin_waiting(&mut self) {
        let now = Instant::now();
        self.waiting = true;
        self.idle.as_mut().reset(now + self.slot.idle_timeout);
        self.slot.entry.activity().state = State::Waiting { since: now };
    }

    /// The read returned: bytes, the end, or an error.
    fn read_returned(&mut self, got_bytes: bool) {
        self.waiting = false;
        let mut activity = self.slot.entry.activity();
        activity.state = State::Busy;
        if activity.close_asked && got_bytes {
            activity.close_asked = false;
            drop(activity);
            self.slot.shared.withdrawn.notify_one();
        }
    }

    /// Nothing to read: closes the connection if it was asked to or its time is up.
    fn close_if_idle(&mut self, cx: &mut Context<'_>) -> Option<CloseReason> {
        // Registered before the flag is read, so that a request made after is not missed.
        self.slot.entry.waker.register(cx.waker());
        let mut activity = self.slot.entry.activity();
        let reason = if activity.close_asked {
            CloseReason::Evicted
        } else if self.idle.as_mut().poll(cx).is_ready() {
            CloseReason::IdleTimeout
        } else {
            return None;
        };
        activity.state = State::Closed;
        self.closed = Some(reason);
        Some(reason)
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Tracked<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.closed.is_some() {
            return Poll::Ready(Ok(()));
        }
        if !this.waiting {
            this.begin_waiting();
        }
        let before = buf.filled().len();
        if let Poll::Ready(read) = Pin::new(&mut this.io).poll_read(cx, buf) {
            let got_bytes = read.is_ok() && buf.filled().len() > before;
            this.read_returned(got_bytes);
            return Poll::Ready(read);
        }
        match this.close_if_idle(cx) {
            Some(_) => Poll::Ready(Ok(())),
            None => Poll::Pending,
        }
    }
}

/// For the sources that answer on the connection (Fluent Forward acknowledgements, HTTP
/// responses).
impl<IO: AsyncWrite + Unpin> AsyncWrite for Tracked<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{duplex, AsyncReadExt, AsyncWriteExt, DuplexStream};

    const IDLE: Duration = Duration::from_secs(10);

    /// A tracked connection and its shipper's end.
    async fn connect(slots: &ConnectionSlots) -> (Tracked<DuplexStream>, DuplexStream) {
        let (shipper, source) = duplex(1024);
        (slots.acquire().await.track(source), shipper)
    }

    /// Reads until the end; returns what was read and why it ended.
    async fn read_all(mut conn: Tracked<DuplexStream>) -> (Vec<u8>, Option<CloseReason>) {
        let mut read = Vec::new();
        conn.read_to_end(&mut read).await.unwrap();
        (read, conn.closed())
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_connection_is_closed_after_idle_timeout() {
        let slots = ConnectionSlots::new(4, IDLE);
        let (conn, _shipper) = connect(&slots).await;
        let start = Instant::now();
        assert_eq!(
            read_all(conn).await,
            (vec![], Some(CloseReason::IdleTimeout))
        );
        assert_eq!(start.elapsed(), IDLE);
    }

    #[tokio::test(start_paused = true)]
    async fn bytes_start_the_idle_time_again() {
        let slots = ConnectionSlots::new(4, IDLE);
        let (conn, mut shipper) = connect(&slots).await;
        let reader = tokio::spawn(read_all(conn));
        for _ in 0..5 {
            tokio::time::sleep(IDLE - Duration::from_secs(1)).await;
            shipper.write_all(b"x\n").await.unwrap();
        }
        let last = Instant::now();
        let (read, closed) = reader.await.unwrap();
        assert_eq!((read.len(), closed), (10, Some(CloseReason::IdleTimeout)));
        assert_eq!(last.elapsed(), IDLE);
    }

    /// Back-pressure: the source does not read for longer than `idle_timeout` while its
    /// shipper's bytes wait. Neither timed out nor evicted; its idle time starts when the
    /// source reads again.
    #[tokio::test(start_paused = true)]
    async fn a_connection_the_source_is_not_reading_is_not_idle() {
        let slots = ConnectionSlots::new(1, IDLE);
        let (mut conn, mut shipper) = connect(&slots).await;
        shipper.write_all(b"a\n").await.unwrap();
        let mut buf = [0; 16];
        assert_eq!(conn.read(&mut buf).await.unwrap(), 2);

        tokio::time::sleep(IDLE * 3).await; // the sinks are full: no read
        shipper.write_all(b"b\n").await.unwrap();
        let newcomer = tokio::time::timeout(IDLE, slots.acquire()).await;
        assert!(newcomer.is_err(), "a busy connection was evicted");

        assert_eq!(
            conn.read(&mut buf).await.unwrap(),
            2,
            "closed instead of read"
        );
        let resumed = Instant::now();
        assert_eq!(conn.read(&mut buf).await.unwrap(), 0);
        assert_eq!(conn.closed(), Some(CloseReason::IdleTimeout));
        assert_eq!(resumed.elapsed(), IDLE);
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_connection_at_the_limit_closes_the_longest_idle() {
        let slots = ConnectionSlots::new(2, Duration::from_secs(300));
        let (first, _a) = connect(&slots).await;
        let first = tokio::spawn(read_all(first));
        tokio::time::sleep(Duration::from_secs(5)).await;
        let (second, mut b) = connect(&slots).await;
        let second = tokio::spawn(read_all(second));
        tokio::time::sleep(Duration::from_secs(5)).await;

        let start = Instant::now();
        let _newcomer = slots.acquire().await;
        assert!(start.elapsed() < LOOK_AGAIN, "the new connection waited");
        assert_eq!(first.await.unwrap(), (vec![], Some(CloseReason::Evicted)));
        b.write_all(b"still here\n").await.unwrap();
        drop(b);
        assert_eq!(second.await.unwrap(), (b"still here\n".to_vec(), None));
    }

    #[tokio::test(start_paused = true)]
    async fn active_connections_are_not_evicted() {
        let slots = ConnectionSlots::new(1, Duration::from_secs(300));
        let (conn, mut shipper) = connect(&slots).await;
        let reader = tokio::spawn(read_all(conn));
        let newcomer = tokio::spawn(async move { slots.acquire().await });
        for _ in 0..20 {
            tokio::time::sleep(EVICTABLE_AFTER / 2).await;
            shipper.write_all(b"x\n").await.unwrap();
        }
        assert!(!newcomer.is_finished(), "an active connection was evicted");
        drop(shipper);
        assert_eq!(reader.await.unwrap(), (b"x\n".repeat(20), None));
        newcomer.await.unwrap();
    }

    /// Bytes arrived between the request to close and the reader's turn: the connection
    /// was not idle after all. It goes on; the newcomer waits.
    #[tokio::test(start_paused = true)]
    async fn a_request_to_close_is_withdrawn_when_bytes_arrived() {
        let slots = ConnectionSlots::new(1, Duration::from_secs(300));
        let (mut conn, mut shipper) = connect(&slots).await;
        let mut buf = [0; 16];
        let waiting = tokio::time::timeout(Duration::from_secs(5), conn.read(&mut buf)).await;
        assert!(waiting.is_err(), "nothing was sent");
        shipper.write_all(b"late\n").await.unwrap();
        let newcomer = tokio::time::timeout(Duration::from_millis(10), slots.acquire()).await;
        assert!(newcomer.is_err());
        assert!(slots.open().values().all(|e| e.activity().close_asked));

        assert_eq!(conn.read(&mut buf).await.unwrap(), 5);
        assert_eq!(conn.closed(), None);
        assert!(!slots.open().values().any(|e| e.activity().close_asked));
    }
}
