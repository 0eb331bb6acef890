//! The media thread: the only place the shard core meets its UDP socket and the clock.
//!
//! One thread owns the socket and the core. Each turn it waits for whichever comes
//! first: datagrams, a command from the control plane, or the core's next deadline. It
//! reads datagrams in batches (`recvmmsg`), lets the core act on them, then sends
//! everything the core produced in one batched flush (`sendmmsg` + GSO). Keeping the
//! core single-threaded means no locks on the forwarding path.

use crate::shard::ShardCore;
use crate::shard::api::Command;
use crate::udp::{RecvBatch, SendBatcher};
use bytes::BytesMut;
use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::time::Instant;
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

/// Datagrams read per `recvmmsg`.
const RECV_BATCH: usize = 32;
/// Batches handled before the loop looks at commands and timers again.
const MAX_BATCHES_PER_TURN: usize = 8;

/// Runs the media thread until a `Shutdown` command, or until every command sender is gone.
pub fn spawn(
    socket: std::net::UdpSocket,
    core: ShardCore,
    commands: mpsc::Receiver<Command>,
) -> io::Result<std::thread::JoinHandle<()>> {
    socket.set_nonblocking(true)?;
    std::thread::Builder::new()
        .name("tutti-media".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(err) => {
                    tracing::error!(%err, "cannot start the media runtime");
                    return;
                }
            };
            runtime.block_on(async move {
                match UdpSocket::from_std(socket) {
                    Ok(socket) => media_loop(socket, core, commands).await,
                    Err(err) => tracing::error!(%err, "cannot register the media socket"),
                }
            });
        })
}

async fn media_loop(socket: UdpSocket, mut core: ShardCore, mut commands: mpsc::Receiver<Command>) {
    let mut recv = RecvBatch::new(RECV_BATCH);
    let mut sender = SendBatcher::new(true);
    let mut outgoing: Vec<(SocketAddr, BytesMut)> = Vec::new();
    loop {
        let deadline = tokio::time::Instant::from_std(core.poll_timeout());
        tokio::select! {
            biased;
            command = commands.recv() => match command {
                Some(command) => core.handle_command(Instant::now(), command),
                None => break,
            },
            ready = socket.readable() => {
                if let Err(err) = ready {
                    tracing::error!(%err, "media socket failed");
                    break;
                }
                read_available(&socket, &mut recv, &mut core);
            }
            _ = tokio::time::sleep_until(deadline) => {}
        }
        core.handle_timeout(Instant::now());
        core.take_transmits(&mut outgoing);
        flush(&socket, &mut sender, &mut outgoing, &core).await;
        if core.is_stopped() {
            break;
        }
    }
    core.take_transmits(&mut outgoing);
    flush(&socket, &mut sender, &mut outgoing, &core).await;
    tracing::info!("media thread stopped");
}

/// Reads and handles what the socket holds now; returns how many datagrams.
fn read_available(socket: &UdpSocket, recv: &mut RecvBatch, core: &mut ShardCore) -> usize {
    let fd = socket.as_raw_fd();
    let mut total = 0;
    for _ in 0..MAX_BATCHES_PER_TURN {
        match socket.try_io(Interest::READABLE, || recv.recv(fd)) {
            Ok(count) => {
                total += count;
                let now = Instant::now();
                for index in 0..count {
                    match recv.datagram(index) {
                        Some((from, bytes)) => core.handle_datagram(now, from, bytes),
                        None => core
                            .metrics()
                            .dropped(crate::metrics::DropReason::Truncated),
                    }
                }
                if count < recv.capacity() {
                    break;
                }
            }
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => break,
            Err(err) => {
                tracing::warn!(%err, "recvmmsg failed");
                break;
            }
        }
    }
    total
}

async fn flush(
    socket: &UdpSocket,
    sender: &mut SendBatcher,
    outgoing: &mut Vec<(SocketAddr, BytesMut)>,
    core: &ShardCore,
) {
    let fd = socket.as_raw_fd();
    let metrics = core.metrics();
    while !outgoing.is_empty() {
        let outcome = sender.send(fd, outgoing);
        metrics.datagrams_sent.inc_by(outcome.sent as u64);
        metrics.send_failures.inc_by(outcome.failed as u64);
        metrics.send_syscalls.inc_by(outcome.syscalls as u64);
        if !outcome.would_block {
            break;
        }
        outgoing.drain(..outcome.sent + outcome.failed);
        // The kernel's send buffer is full: wait until it drains rather than drop media.
        if socket.writable().await.is_err() {
            outgoing.clear();
            break;
        }
    }
}
