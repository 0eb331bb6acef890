//! The `baseline` benchmark: the same packets, sizes and fan-out through a plain UDP relay.
//!
//! The relay is a child process with the shard's own batched I/O (`recvmmsg`, `sendmmsg`,
//! GSO) and nothing else: no ICE, DTLS, SRTP or RTP processing. Its cost per forwarded
//! packet is what moving a datagram costs on this machine.

use super::report::{Measurement, Report};
use super::{RunArgs, own_cpu_seconds, pin_self};
use crate::shard::process_usage;
use crate::synth::{self, Epoch, OpusSource, VideoCodec, VideoSource};
use anyhow::{Context, Result, bail};
use bytes::BytesMut;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, BufReader, Interest};
use tokio::net::UdpSocket;
use tokio::sync::Mutex;
use tutti_sfu::udp::{RecvBatch, SendBatcher};

const AUDIO_PT: u8 = 111;
const VIDEO_PT: u8 = 96;

/// Runs the relay until killed: `SUB` registers a subscriber, `STATS` asks for the count of
/// forwarded datagrams, anything else is sent to every subscriber.
pub async fn relay() -> Result<()> {
    let socket = UdpSocket::bind("127.0.0.1:0").await?;
    println!("relay: udp {}", socket.local_addr()?);
    let fd = socket.as_raw_fd();
    let mut recv = RecvBatch::new(32);
    let mut sender = SendBatcher::new(true);
    let mut subscribers: Vec<SocketAddr> = Vec::new();
    let mut outgoing: Vec<(SocketAddr, BytesMut)> = Vec::new();
    let mut spare: Vec<BytesMut> = Vec::new();
    let mut forwarded = 0u64;
    loop {
        socket.readable().await?;
        // As the shard does: read until the socket is empty (at most 8 batches), then send.
        for _ in 0..8 {
            let count = match socket.try_io(tokio::io::Interest::READABLE, || recv.recv(fd)) {
                Ok(count) => count,
                Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(err) => return Err(err.into()),
            };
            for index in 0..count {
                let Some(datagram) = recv.datagram(index) else {
                    continue;
                };
                let (from, bytes) = (datagram.source, datagram.bytes);
                if bytes == b"SUB" {
                    if !subscribers.contains(&from) {
                        subscribers.push(from);
                    }
                } else if bytes == b"STATS" {
                    socket
                        .send_to(forwarded.to_string().as_bytes(), from)
                        .await?;
                } else {
                    for subscriber in &subscribers {
                        // Buffers are reused, as the shard reuses its own.
                        let mut buf = spare.pop().unwrap_or_else(|| BytesMut::with_capacity(1500));
                        buf.extend_from_slice(bytes);
                        outgoing.push((*subscriber, buf));
                    }
                }
            }
        }
        while !outgoing.is_empty() {
            let outcome = sender.send(fd, &mut outgoing, |_| None);
            forwarded += outcome.sent as u64;
            let done = if outcome.would_block {
                outcome.sent + outcome.failed
            } else {
                outgoing.len()
            };
            for (_, mut buf) in outgoing.drain(..done) {
                buf.clear();
                spare.push(buf);
            }
            if !outcome.would_block {
                break;
            }
            socket.writable().await?;
        }
    }
}

struct RelayChild {
    child: tokio::process::Child,
    addr: SocketAddr,
}

async fn spawn_relay(pin: bool) -> Result<RelayChild> {
    let exe = std::env::current_exe()?;
    let mut command = if pin {
        let mut c = tokio::process::Command::new("taskset");
        c.args(["-c", "1"]).arg(&exe);
        c
    } else {
        tokio::process::Command::new(&exe)
    };
    command
        .arg("relay")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    let mut child = command.spawn()?;
    let stdout = child.stdout.take().context("relay stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let addr = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(line) = lines.next_line().await? {
            if let Some(addr) = line.strip_prefix("relay: udp ") {
                return Ok::<_, anyhow::Error>(addr.trim().parse()?);
            }
        }
        bail!("relay exited")
    })
    .await??;
    Ok(RelayChild { child, addr })
}

async fn forwarded(relay: SocketAddr) -> Result<u64> {
    let socket = UdpSocket::bind("127.0.0.1:0").await?;
    socket.send_to(b"STATS", relay).await?;
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(2), socket.recv(&mut buf)).await??;
    Ok(std::str::from_utf8(&buf[..n])?.parse()?)
}

fn rtp(
    payload_type: u8,
    marker: bool,
    seq: u16,
    timestamp: u32,
    ssrc: u32,
    payload: &[u8],
) -> Vec<u8> {
    let mut packet = Vec::with_capacity(12 + payload.len());
    packet.push(0x80);
    packet.push(payload_type | if marker { 0x80 } else { 0 });
    packet.extend_from_slice(&seq.to_be_bytes());
    packet.extend_from_slice(&timestamp.to_be_bytes());
    packet.extend_from_slice(&ssrc.to_be_bytes());
    packet.extend_from_slice(payload);
    packet
}

async fn publish(
    relay: SocketAddr,
    stream: u32,
    video_bitrate: u64,
    epoch: Epoch,
    sent: Arc<AtomicU64>,
) -> Result<()> {
    let socket = UdpSocket::bind("127.0.0.1:0").await?;
    let audio = {
        let socket = UdpSocket::bind("127.0.0.1:0").await?;
        let sent = sent.clone();
        tokio::spawn(async move {
            let mut source = OpusSource::new(stream);
            let mut seq = 0u16;
            let mut ticker = tokio::time::interval(OpusSource::INTERVAL);
            loop {
                ticker.tick().await;
                let p = source.next(epoch.now_ns());
                let packet = rtp(AUDIO_PT, p.marker, seq, p.timestamp, stream, &p.payload);
                seq = seq.wrapping_add(1);
                if socket.send_to(&packet, relay).await.is_err() {
                    return;
                }
                sent.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    let mut source = VideoSource::new(
        VideoCodec::Vp8,
        stream | 1,
        video_bitrate,
        Duration::from_secs(2),
    );
    let mut seq = 0u16;
    let mut ticker = tokio::time::interval(VideoSource::INTERVAL);
    let result: Result<()> = async {
        loop {
            ticker.tick().await;
            for p in source.next_frame(epoch.now_ns()) {
                let packet = rtp(VIDEO_PT, p.marker, seq, p.timestamp, stream | 1, &p.payload);
                seq = seq.wrapping_add(1);
                socket.send_to(&packet, relay).await?;
                sent.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    .await;
    audio.abort();
    result
}

/// (sent, read latency, socket latency) of each packet, in ns.
type Arrivals = Arc<Mutex<Vec<(u64, u64, u64)>>>;

async fn subscribe(
    relay: SocketAddr,
    epoch: Epoch,
    arrivals: Arrivals,
    first: tokio::sync::watch::Sender<Option<Instant>>,
) -> Result<()> {
    let socket = UdpSocket::bind("127.0.0.1:0").await?;
    let clock = crate::lean_viewer::SocketClock::enable(&socket, epoch)?;
    socket.send_to(b"SUB", relay).await?;
    let mut buf = vec![0u8; 2048];
    let mut control = crate::lean_viewer::SocketClock::control_buffer();
    let fd = socket.as_raw_fd();
    loop {
        socket.readable().await?;
        let (n, queued_ns) = match socket.try_io(Interest::READABLE, || {
            crate::lean_viewer::recv_timestamped(fd, &mut buf, &mut control)
        }) {
            Ok((n, _, at)) => (n, clock.queued_ns(at)),
            Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(err) => return Err(err.into()),
        };
        let received_ns = epoch.now_ns();
        if n < 12 {
            continue;
        }
        let codec = (buf[1] & 0x7F == VIDEO_PT).then_some(VideoCodec::Vp8);
        let payload = &buf[12..n];
        if let Some(probe) = synth::probe(payload, synth::header_len(codec, payload)) {
            first.send_if_modified(|at| at.is_none() && at.replace(Instant::now()).is_none());
            let queued_ns = queued_ns.unwrap_or(received_ns);
            arrivals.lock().await.push((
                probe.sent_ns,
                received_ns.saturating_sub(probe.sent_ns),
                queued_ns.saturating_sub(probe.sent_ns),
            ));
        }
    }
}

/// Runs the baseline and returns its report.
pub async fn run(args: &RunArgs) -> Result<Report> {
    let mut relay = spawn_relay(args.pin).await?;
    if args.pin {
        pin_self(0)?;
    }
    let pid = relay.child.id().context("relay pid")?;
    let epoch = Epoch::default();
    let mut subscribers = Vec::new();
    let mut tasks = Vec::new();
    for _ in 0..args.subscribers {
        let arrivals: Arrivals = Arc::new(Mutex::new(Vec::new()));
        let (first_tx, first) = tokio::sync::watch::channel(None);
        let started = Instant::now();
        tasks.push(tokio::spawn(subscribe(
            relay.addr,
            epoch,
            arrivals.clone(),
            first_tx,
        )));
        subscribers.push((started, arrivals, first));
    }
    let sent = Arc::new(AtomicU64::new(0));
    for i in 0..args.publishers {
        let stream = (i as u32 + 1) << 8;
        tasks.push(tokio::spawn({
            let sent = sent.clone();
            let bitrate = args.video_bitrate;
            async move {
                let _ = publish(relay.addr, stream, bitrate, epoch, sent).await;
                Ok(())
            }
        }));
    }
    // Registration is one datagram; a subscriber is in once media reaches it.
    let mut join_ms = Vec::new();
    for (started, _, first) in &mut subscribers {
        let at = tokio::time::timeout(Duration::from_secs(30), first.wait_for(Option::is_some))
            .await
            .context("a subscriber never received anything from the relay")??
            .unwrap_or_else(Instant::now);
        join_ms.push((at - *started).as_secs_f64() * 1e3);
    }
    let forwarded_start = forwarded(relay.addr).await?;
    let (cpu_start, _) = process_usage(pid).context("relay usage")?;
    let own_start = own_cpu_seconds();
    let sent_start = sent.load(Ordering::SeqCst);
    let window_start = epoch.now_ns();
    tokio::time::sleep(args.window()).await;
    let window_end = epoch.now_ns();
    let sent_end = sent.load(Ordering::SeqCst);
    let (cpu_end, rss) = process_usage(pid).context("relay usage")?;
    let own_end = own_cpu_seconds();
    let forwarded_end = forwarded(relay.addr).await?;
    // Let packets sent inside the window finish arriving.
    super::until_arrivals_settle(|| async {
        let mut count = 0;
        for (_, arrivals, _) in &subscribers {
            count += arrivals.lock().await.len();
        }
        count
    })
    .await;
    for task in &tasks {
        task.abort();
    }
    let mut received = 0u64;
    let mut latencies = Vec::new();
    let mut socket_latencies = Vec::new();
    for (_, arrivals, _) in &subscribers {
        for &(sent_ns, read_ns, socket_ns) in arrivals.lock().await.iter() {
            if (window_start..window_end).contains(&sent_ns) {
                received += 1;
                latencies.push(read_ns as f64 / 1e6);
                socket_latencies.push(socket_ns as f64 / 1e6);
            }
        }
    }
    let _ = relay.child.kill().await;
    Ok(Report::new(
        "baseline",
        "relay",
        "raw",
        args,
        Measurement {
            window_ns: window_end - window_start,
            sent: sent_end - sent_start,
            received,
            latencies_ms: latencies,
            socket_latencies_ms: Some(socket_latencies),
            cpu_seconds: cpu_end - cpu_start,
            forwarded: forwarded_end.saturating_sub(forwarded_start),
            rss_bytes: rss,
            join_ms,
            loadgen_cpu_seconds: own_end - own_start,
            subscribers_estimated: None,
        },
    ))
}
