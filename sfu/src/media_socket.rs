//! The media socket's place in the event loop: registered for reading only, waited on for
//! write space only when a send would block.
//!
//! tokio registers a `UdpSocket` for both directions, edge-triggered. A busy UDP socket
//! gains write space after most turns (the kernel frees each sent datagram's buffer once
//! loopback or the NIC has taken it), so the media loop came back from `epoll_wait` a
//! second time for a write edge nobody waited for: in `tutti-bench fanout` at 50
//! subscribers, 38 % of the media thread's `epoll_wait` calls (2,958 calls for 1,820
//! sleeps in 5 s, `perf stat -t`). Write space matters
//! only when `sendmmsg` would block, which is rare, so that wait registers a second
//! descriptor of the same socket for the moment it lasts.
//!
//! `unsafe` here is only tokio's registration, whose contract (the descriptor stays open and
//! the same while registered) an owned `UdpSocket` keeps.
#![allow(unsafe_code)]

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use tokio::io::Interest;
use tokio::io::unix::{AsyncFd, AsyncFdReadyGuard};

/// How long a send waits before trying again when it cannot register for write space.
const WRITE_RETRY: std::time::Duration = std::time::Duration::from_millis(1);

/// A non-blocking UDP socket on the current tokio runtime, read-ready events only.
pub struct MediaSocket {
    read: AsyncFd<UdpSocket>,
}

impl MediaSocket {
    /// Makes the socket non-blocking and registers it for reading.
    pub fn new(socket: UdpSocket) -> io::Result<Self> {
        socket.set_nonblocking(true)?;
        // SAFETY: the `AsyncFd` owns the socket, whose descriptor stays open and the same
        // until the `AsyncFd` is dropped.
        let read = unsafe { AsyncFd::register_with_interest(socket, Interest::READABLE) };
        Ok(Self {
            read: read.map_err(io::Error::from)?,
        })
    }

    /// The socket's descriptor, for the batched syscalls of [`crate::udp`].
    pub fn fd(&self) -> RawFd {
        self.read.get_ref().as_raw_fd()
    }

    /// The socket, for a single datagram outside the batched path.
    pub fn socket(&self) -> &UdpSocket {
        self.read.get_ref()
    }

    /// The address the socket is bound to.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.read.get_ref().local_addr()
    }

    /// Waits until datagrams may be waiting. Read through the guard's `try_io`, which
    /// clears the readiness when a read would block.
    pub async fn readable(&self) -> io::Result<AsyncFdReadyGuard<'_, UdpSocket>> {
        self.read.readable().await
    }

    /// Reads through `read` until it would block or has run `max_reads` times; returns
    /// whether the socket was found empty (false: more may wait, or `read` failed).
    pub fn read_until_empty(
        guard: &mut AsyncFdReadyGuard<'_, UdpSocket>,
        max_reads: usize,
        mut read: impl FnMut(RawFd) -> io::Result<()>,
    ) -> io::Result<bool> {
        for _ in 0..max_reads {
            match guard.try_io(|socket| read(socket.get_ref().as_raw_fd())) {
                Ok(Ok(())) => {}
                Ok(Err(err)) => return Err(err),
                Err(_would_block) => return Ok(true),
            }
        }
        Ok(false)
    }

    /// Waits until the kernel's send buffer has room again.
    pub async fn writable(&self) -> io::Result<()> {
        match self.write_registration() {
            Ok(write) => {
                write.writable().await?.retain_ready();
            }
            Err(err) => {
                // Out of descriptors (EMFILE) or of epoll room: nothing can tell when room
                // comes back, so try again after a short pause rather than drop the batch.
                tracing::warn!(%err, "cannot wait for send-buffer room; retrying in 1 ms");
                tokio::time::sleep(WRITE_RETRY).await;
            }
        }
        Ok(())
    }

    /// A second descriptor of the socket, registered for write space: one epoll set holds
    /// a descriptor once, and the reading one must not hear of write space.
    fn write_registration(&self) -> io::Result<AsyncFd<UdpSocket>> {
        let duplicate = self.read.get_ref().try_clone()?;
        // SAFETY: as in `new`: the `AsyncFd` owns the duplicate descriptor.
        unsafe { AsyncFd::register_with_interest(duplicate, Interest::WRITABLE) }
            .map_err(io::Error::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::udp::RecvBatch;

    /// Waits for and reads datagrams, as the media loop does, until `want` have come.
    async fn receive(socket: &MediaSocket, batch: &mut RecvBatch, want: usize) -> Vec<Vec<u8>> {
        let mut got = Vec::new();
        while got.len() < want {
            let mut guard = socket.readable().await.unwrap();
            MediaSocket::read_until_empty(&mut guard, 8, |fd| {
                let count = batch.recv(fd)?;
                for index in 0..count {
                    got.push(batch.datagram(index).unwrap().bytes.to_vec());
                }
                Ok(())
            })
            .unwrap();
        }
        got
    }

    #[tokio::test]
    async fn reads_what_arrives_until_empty() {
        let socket = MediaSocket::new(UdpSocket::bind("127.0.0.1:0").unwrap()).unwrap();
        let to = socket.local_addr().unwrap();
        let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut batch = RecvBatch::new(4);
        for round in 0..3u8 {
            for i in 0..6u8 {
                peer.send_to(&[round, i], to).unwrap();
            }
            let got = receive(&socket, &mut batch, 6).await;
            let expected: Vec<Vec<u8>> = (0..6u8).map(|i| vec![round, i]).collect();
            assert_eq!(got, expected);
        }
    }

    #[tokio::test]
    async fn waiting_for_write_space_leaves_reading_alone() {
        let socket = MediaSocket::new(UdpSocket::bind("127.0.0.1:0").unwrap()).unwrap();
        let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
        // An idle socket has room: the wait ends at once, twice (the second descriptor is
        // gone after each wait, so registering it again works). A full send buffer cannot
        // be made on the host's loopback, which frees each datagram's buffer within the
        // send call: `tests/tests/send_backpressure.rs` makes one in a namespace of its own.
        for _ in 0..2 {
            tokio::time::timeout(std::time::Duration::from_secs(5), socket.writable())
                .await
                .expect("an idle socket has room")
                .unwrap();
        }
        peer.send_to(b"after", socket.local_addr().unwrap())
            .unwrap();
        let got = receive(&socket, &mut RecvBatch::new(4), 1).await;
        assert_eq!(got, vec![b"after".to_vec()]);
    }
}
