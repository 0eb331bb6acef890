//! What client sockets may hold of messages they have not finished sending.
//!
//! A WebSocket buffers a message until its last byte arrives, so 20,000 sockets that each
//! start a long message and stall would hold gigabytes. Each socket may hold a few KiB of
//! an unfinished message on its own (joins, candidates and chat fit); beyond that it
//! borrows from one pool shared by the whole gateway, for a limited time. A socket that
//! finds the pool empty, or keeps its loan too long, is closed: the gateway's memory stays
//! bounded whatever the number of attackers, and a socket that sends a long message
//! honestly finishes it in milliseconds.
//!
//! The accounting sits under the WebSocket, on the bytes read ([`Metered`]); the session
//! settles it each time a whole frame comes out ([`Meter::settle`]).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Unfinished bytes a socket holds without borrowing.
pub const FREE_PER_SOCKET: usize = 4 * 1024;
/// The pool all sockets of a gateway borrow from, by default.
pub const DEFAULT_POOL: usize = 64 * 1024 * 1024;
/// How long a socket may keep a loan before it is closed.
pub const LOAN_TIMEOUT: Duration = Duration::from_secs(10);

/// The gateway's pool.
#[derive(Debug)]
pub struct ReadBudget {
    capacity: usize,
    lent: AtomicUsize,
}

impl ReadBudget {
    /// A pool of `capacity` bytes.
    pub fn new(capacity: usize) -> Arc<Self> {
        Arc::new(Self {
            capacity,
            lent: AtomicUsize::new(0),
        })
    }

    /// Bytes lent out now.
    pub fn lent(&self) -> usize {
        self.lent.load(Ordering::Relaxed)
    }

    fn borrow(&self, bytes: usize) -> bool {
        self.lent
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |lent| {
                lent.checked_add(bytes)
                    .filter(|&after| after <= self.capacity)
            })
            .is_ok()
    }

    fn give_back(&self, bytes: usize) {
        self.lent.fetch_sub(bytes, Ordering::AcqRel);
    }
}

/// One socket's account: bytes read since its last whole frame, and its loan.
#[derive(Debug)]
pub struct Meter {
    budget: Arc<ReadBudget>,
    unsettled: AtomicUsize,
    borrowed: AtomicUsize,
}

impl Meter {
    /// An account with `budget`.
    pub fn new(budget: Arc<ReadBudget>) -> Arc<Self> {
        Arc::new(Self {
            budget,
            unsettled: AtomicUsize::new(0),
            borrowed: AtomicUsize::new(0),
        })
    }

    /// A whole frame came out: what was read up to now is no longer held. (Bytes of the
    /// next frame read in the same chunk are forgiven: at most one read buffer.)
    pub fn settle(&self) {
        self.unsettled.store(0, Ordering::Release);
        let borrowed = self.borrowed.swap(0, Ordering::AcqRel);
        if borrowed > 0 {
            self.budget.give_back(borrowed);
        }
    }

    /// Counts `read` bytes; false when the socket must be closed (the pool is empty).
    fn read(&self, read: usize) -> bool {
        let unsettled = self.unsettled.fetch_add(read, Ordering::AcqRel) + read;
        let needed = unsettled.saturating_sub(FREE_PER_SOCKET);
        let borrowed = self.borrowed.load(Ordering::Acquire);
        if needed <= borrowed {
            return true;
        }
        if !self.budget.borrow(needed - borrowed) {
            return false;
        }
        self.borrowed.store(needed, Ordering::Release);
        true
    }

    fn in_debt(&self) -> bool {
        self.borrowed.load(Ordering::Acquire) > 0
    }
}

impl Drop for Meter {
    fn drop(&mut self) {
        let borrowed = *self.borrowed.get_mut();
        if borrowed > 0 {
            self.budget.give_back(borrowed);
        }
    }
}

/// A socket whose reads are counted against its [`Meter`].
pub struct Metered<IO> {
    io: IO,
    meter: Arc<Meter>,
    loan_deadline: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<IO> Metered<IO> {
    /// `io`, counted by `meter`.
    pub fn new(io: IO, meter: Arc<Meter>) -> Self {
        Self {
            io,
            meter,
            loan_deadline: None,
        }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Metered<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.meter.in_debt() {
            let deadline = this
                .loan_deadline
                .get_or_insert_with(|| Box::pin(tokio::time::sleep(LOAN_TIMEOUT)));
            if deadline.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "a message took too long to arrive",
                )));
            }
        } else {
            this.loan_deadline = None;
        }
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.io).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            let read = buf.filled().len() - before;
            if !this.meter.read(read) {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::OutOfMemory,
                    "the gateway holds as much of unfinished messages as it may",
                )));
            }
        }
        polled
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Metered<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn small_messages_are_free_and_long_ones_borrow_until_settled() {
        let budget = ReadBudget::new(10_000);
        let meter = Meter::new(budget.clone());
        assert!(meter.read(FREE_PER_SOCKET));
        assert_eq!(budget.lent(), 0);
        assert!(meter.read(6_000));
        assert_eq!(budget.lent(), 6_000);
        meter.settle();
        assert_eq!(budget.lent(), 0);
        // Two sockets mid-message share the pool; the one that would overdraw it is cut.
        let other = Meter::new(budget.clone());
        assert!(meter.read(FREE_PER_SOCKET + 7_000));
        assert!(!other.read(FREE_PER_SOCKET + 4_000));
        drop(meter);
        assert_eq!(budget.lent(), 0, "a closed socket's loan comes back");
        assert!(other.read(4_000));
    }

    #[tokio::test(start_paused = true)]
    async fn a_loan_kept_past_its_deadline_closes_the_socket() {
        let budget = ReadBudget::new(1 << 20);
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let meter = Meter::new(budget.clone());
        let mut metered = Metered::new(server, meter.clone());
        let mut buf = vec![0; 64 * 1024];
        client.write_all(&[7; 6 * 1024]).await.unwrap();
        let mut read = 0;
        while read < 6 * 1024 {
            read += metered.read(&mut buf).await.unwrap();
        }
        assert_eq!(budget.lent(), 2 * 1024);
        // Nothing more arrives: after the loan's time the read fails, on the virtual clock.
        let err = metered.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        // A settled socket reads on with no deadline.
        meter.settle();
        let (_client, idle) = tokio::io::duplex(16);
        let mut fresh = Metered::new(idle, Meter::new(budget));
        let waiting = tokio::time::timeout(LOAN_TIMEOUT * 2, fresh.read(&mut buf)).await;
        assert!(waiting.is_err(), "an idle socket without a loan just waits");
    }
}
