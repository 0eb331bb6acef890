//! The media thread: the only place the shard core meets its sockets and the clock.
//!
//! One thread owns the UDP socket, the ICE-TCP listener and the core. Each turn it waits
//! for whichever comes first: datagrams, an ICE-TCP frame, a command from the control
//! plane, or the core's next deadline. It reads datagrams in batches (`recvmmsg`) until the
//! socket is empty, lets the core act on them, then sends everything the core produced in
//! one batched flush (`sendmmsg` + GSO). Keeping the core single-threaded means no locks on
//! the forwarding path. ICE-TCP connections are tasks on the same thread that pass whole frames in and
//! out through channels.

use crate::media_socket::MediaSocket;
use crate::shard::ShardCore;
use crate::shard::api::Command;
use crate::tcp::{FrameDecoder, encode};
use crate::udp::{RecvBatch, SendBatcher};
use bytes::{Bytes, BytesMut};
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// Datagrams read per `recvmmsg`.
const RECV_BATCH: usize = 32;
/// Batches handled before the loop looks at commands and timers again. The loop reads
/// until the socket is empty (or this many batches), and only then sends: the packets of a
/// video frame that arrive while the first is being copied are read in the same turn, so
/// each subscriber's copies of them leave as one GSO message (about 10 % less CPU per
/// copy in `tutti-bench fanout`, for the plain relay doing the same as well).
const MAX_BATCHES_PER_TURN: usize = 8;
/// ICE-TCP connections held at once.
const MAX_TCP_CONNECTIONS: usize = 4096;
/// Frames queued towards one ICE-TCP connection before new ones are dropped (a stalled
/// TCP peer must not hold the media thread's memory).
const TCP_QUEUE: usize = 512;
/// How long a new ICE-TCP connection may take to send its first whole frame, counted from
/// the accept (not per read: a byte every few seconds does not keep it open).
const TCP_FIRST_FRAME: Duration = Duration::from_secs(10);
/// Longest silence on an ICE-TCP connection after that: ICE consent checks come every
/// few seconds, and a peer whose consent lapsed (30 s) is gone.
const TCP_IDLE: Duration = Duration::from_secs(30);
/// ICE-TCP connections one address may hold (a browser uses one or two).
const MAX_TCP_PER_ADDRESS: usize = 16;

/// What ICE-TCP connection tasks tell the media loop.
enum TcpInput {
    Frame(SocketAddr, BytesMut),
    Closed(SocketAddr),
}

/// Runs the media thread until a `Shutdown` command, or until every command sender is gone.
pub fn spawn(
    socket: std::net::UdpSocket,
    tcp: Option<std::net::TcpListener>,
    core: ShardCore,
    commands: mpsc::Receiver<Command>,
    thread_id: std::sync::Arc<std::sync::atomic::AtomicU32>,
) -> io::Result<std::thread::JoinHandle<()>> {
    socket.set_nonblocking(true)?;
    let bound = socket.local_addr()?;
    if bound.ip().is_unspecified() {
        // Replies must leave from the address each peer reached (see crate::udp).
        crate::udp::enable_destination_info(socket.as_raw_fd(), bound.is_ipv6())?;
    }
    if let Some(listener) = &tcp {
        listener.set_nonblocking(true)?;
    }
    std::thread::Builder::new()
        .name("tutti-media".into())
        .spawn(move || {
            if let Some(id) = crate::procstat::current_thread_id() {
                thread_id.store(id, std::sync::atomic::Ordering::Relaxed);
            }
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
                let socket = match MediaSocket::new(socket) {
                    Ok(socket) => socket,
                    Err(err) => {
                        tracing::error!(%err, "cannot register the media socket");
                        return;
                    }
                };
                let tcp = tcp.and_then(|listener| match TcpListener::from_std(listener) {
                    Ok(listener) => Some(listener),
                    Err(err) => {
                        tracing::warn!(%err, "ICE-TCP disabled: cannot register its listener");
                        None
                    }
                });
                media_loop(socket, tcp, core, commands).await;
            });
        })
}

/// Accepts from the listener when there is one; never resolves otherwise.
async fn accept(listener: &Option<TcpListener>) -> io::Result<(TcpStream, SocketAddr)> {
    match listener {
        Some(listener) => listener.accept().await,
        None => std::future::pending().await,
    }
}

async fn media_loop(
    socket: MediaSocket,
    tcp: Option<TcpListener>,
    mut core: ShardCore,
    mut commands: mpsc::Receiver<Command>,
) {
    let mut recv = RecvBatch::new(RECV_BATCH);
    let mut sender = SendBatcher::new(true);
    let mut outgoing: Vec<(SocketAddr, BytesMut)> = Vec::new();
    let mut tcp_outgoing: Vec<(SocketAddr, BytesMut)> = Vec::new();
    let mut tcp_closing: Vec<SocketAddr> = Vec::new();
    let (tcp_tx, mut tcp_rx) = mpsc::channel::<TcpInput>(1024);
    let mut tcp_writers: HashMap<SocketAddr, mpsc::Sender<Bytes>> = HashMap::new();
    // Only a wildcard bind needs each reply's source address named; a socket bound to one
    // address sends from it without the lookup per destination.
    let wildcard = socket
        .local_addr()
        .is_ok_and(|addr| addr.ip().is_unspecified());
    loop {
        let deadline = tokio::time::Instant::from_std(core.poll_timeout());
        tokio::select! {
            biased;
            command = commands.recv() => match command {
                Some(command) => core.handle_command(Instant::now(), command),
                None => break,
            },
            ready = socket.readable() => match ready {
                Ok(mut ready) => read_available(&mut ready, &mut recv, &mut core),
                Err(err) => {
                    tracing::error!(%err, "media socket failed");
                    break;
                }
            },
            input = tcp_rx.recv() => match input {
                // Nothing on a rejected connection reaches a peer: close it.
                Some(TcpInput::Frame(from, frame))
                    if !core.handle_tcp_frame(Instant::now(), from, &frame) =>
                {
                    tcp_writers.remove(&from);
                }
                Some(TcpInput::Frame(..)) => {}
                Some(TcpInput::Closed(from)) => {
                    tcp_writers.remove(&from);
                    core.tcp_closed(from);
                }
                None => {}
            },
            accepted = accept(&tcp) => match accepted {
                Ok((stream, from))
                    if tcp_writers.len() < MAX_TCP_CONNECTIONS
                        && tcp_writers.keys().filter(|a| a.ip() == from.ip()).count()
                            < MAX_TCP_PER_ADDRESS =>
                {
                    let (writer, frames) = mpsc::channel(TCP_QUEUE);
                    tcp_writers.insert(from, writer);
                    tokio::spawn(serve_tcp(stream, from, tcp_tx.clone(), frames));
                }
                Ok((stream, _)) => drop(stream),
                Err(err) => tracing::debug!(%err, "ICE-TCP accept failed"),
            },
            _ = tokio::time::sleep_until(deadline) => {}
        }
        core.handle_timeout(Instant::now());
        core.take_transmits(&mut outgoing, &mut tcp_outgoing);
        flush(&socket, &mut sender, &mut outgoing, &mut core, wildcard).await;
        send_tcp(&mut tcp_outgoing, &tcp_writers, &core);
        core.take_tcp_to_close(&mut tcp_closing);
        for from in tcp_closing.drain(..) {
            tcp_writers.remove(&from);
        }
        if core.is_stopped() {
            break;
        }
    }
    core.take_transmits(&mut outgoing, &mut tcp_outgoing);
    flush(&socket, &mut sender, &mut outgoing, &mut core, wildcard).await;
    send_tcp(&mut tcp_outgoing, &tcp_writers, &core);
    tracing::info!("media thread stopped");
}

/// Hands ICE-TCP packets to their connections' writers, framed; drops what a stalled
/// connection cannot take.
fn send_tcp(
    outgoing: &mut Vec<(SocketAddr, BytesMut)>,
    writers: &HashMap<SocketAddr, mpsc::Sender<Bytes>>,
    core: &ShardCore,
) {
    for (to, packet) in outgoing.drain(..) {
        let sent = writers
            .get(&to)
            .zip(encode(&packet))
            .is_some_and(|(writer, frame)| writer.try_send(frame.freeze()).is_ok());
        if sent {
            core.metrics().datagrams_sent.inc();
        } else {
            core.metrics().send_failures.inc();
        }
    }
}

/// One ICE-TCP connection: frames in to the media loop, frames out from its queue.
async fn serve_tcp(
    stream: TcpStream,
    from: SocketAddr,
    input: mpsc::Sender<TcpInput>,
    mut frames: mpsc::Receiver<Bytes>,
) {
    let _ = stream.set_nodelay(true);
    let (mut reader, mut writer) = stream.into_split();
    let read = async {
        let mut decoder = FrameDecoder::default();
        let mut buf = vec![0u8; 4096];
        let mut deadline = tokio::time::Instant::now() + TCP_FIRST_FRAME;
        loop {
            let Ok(read) = tokio::time::timeout_at(deadline, reader.read(&mut buf)).await else {
                return;
            };
            let n = match read {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            decoder.push(&buf[..n]);
            loop {
                match decoder.next_frame() {
                    Ok(Some(frame)) => {
                        deadline = tokio::time::Instant::now() + TCP_IDLE;
                        if input.send(TcpInput::Frame(from, frame)).await.is_err() {
                            return;
                        }
                    }
                    Ok(None) => break,
                    Err(_) => return,
                }
            }
        }
    };
    let write = async {
        // Ends when the media loop drops this connection's sender (peer gone, rejected).
        while let Some(frame) = frames.recv().await {
            if writer.write_all(&frame).await.is_err() {
                return;
            }
        }
    };
    tokio::select! {
        _ = read => {}
        _ = write => {}
    }
    let _ = input.send(TcpInput::Closed(from)).await;
}

/// Reads and handles what the socket holds now.
fn read_available(
    ready: &mut tokio::io::unix::AsyncFdReadyGuard<'_, std::net::UdpSocket>,
    recv: &mut RecvBatch,
    core: &mut ShardCore,
) {
    let read = MediaSocket::read_until_empty(ready, MAX_BATCHES_PER_TURN, |fd| {
        let count = recv.recv(fd)?;
        let now = Instant::now();
        for index in 0..count {
            match recv.datagram(index) {
                Some(datagram) => {
                    core.handle_datagram(now, datagram.source, datagram.destination, datagram.bytes)
                }
                None => core
                    .metrics()
                    .dropped(crate::metrics::DropReason::Truncated),
            }
        }
        Ok(())
    });
    if let Err(err) = read {
        tracing::warn!(%err, "recvmmsg failed");
    }
}

async fn flush(
    socket: &MediaSocket,
    sender: &mut SendBatcher,
    outgoing: &mut Vec<(SocketAddr, BytesMut)>,
    core: &mut ShardCore,
    wildcard: bool,
) {
    let fd = socket.fd();
    while !outgoing.is_empty() {
        let outcome = sender.send(fd, outgoing, |to| {
            if wildcard {
                core.local_ip_for(to)
            } else {
                None
            }
        });
        let metrics = core.metrics();
        metrics.datagrams_sent.inc_by(outcome.sent as u64);
        metrics.send_failures.inc_by(outcome.failed as u64);
        metrics.send_syscalls.inc_by(outcome.syscalls as u64);
        if !outcome.would_block {
            // Their buffers carry the next turn's packets.
            core.recycle(outgoing.drain(..).map(|(_, buf)| buf));
            break;
        }
        core.recycle(
            outgoing
                .drain(..outcome.sent + outcome.failed)
                .map(|(_, buf)| buf),
        );
        // The kernel's send buffer is full: wait until it drains rather than drop media.
        if let Err(err) = socket.writable().await {
            tracing::error!(%err, "cannot wait for the media socket; dropping a batch");
            core.metrics().send_failures.inc_by(outgoing.len() as u64);
            core.recycle(outgoing.drain(..).map(|(_, buf)| buf));
            break;
        }
    }
}
