//! The `baseline` benchmark: the same packets, sizes and fan-out through a plain UDP relay.
//!
//! The relay is a child process with the shard's own batched I/O (`recvmmsg`, `sendmmsg`,
//! GSO) and nothing else: no ICE, DTLS, SRTP or RTP processing. Its cost per forwarded
//! packet is what moving a datagram costs on this machine.

use super::report::{Measurement, Report};
use super::{RunArgs, own_cpu_seconds, pin_self};
use crate::receiver_feedback::{self, ReceiverFeedback};
use crate::shard::process_usage;
use crate::synth::{self, Epoch, OpusSource, VideoCodec, VideoSource};
use anyhow::{Context, Result, bail};
use bytes::BytesMut;
use rtc::shared::marshal::Marshal;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, BufReader, Interest};
use tokio::net::UdpSocket;
use tokio::sync::Mutex;
use tutti_sfu::media_socket::MediaSocket;
use tutti_sfu::udp::{RecvBatch, SendBatcher};

const AUDIO_PT: u8 = 111;
const VIDEO_PT: u8 = 96;

/// Runs the relay until killed: `SUB` registers a subscriber, `STATS` asks for the counts of
/// forwarded and read datagrams, RTCP (the subscribers' feedback) is read and dropped, anything else
/// is sent to every subscriber.
///
/// Like the shard's media loop, it runs on a thread of its own with a single-threaded
/// runtime and the shard's socket registration ([`MediaSocket`]), so the two differ in
/// what they do with a datagram, not in how they wait for one.
pub async fn relay() -> Result<()> {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0")?;
    println!("relay: udp {}", socket.local_addr()?);
    let thread = std::thread::Builder::new()
        .name("relay-media".into())
        .spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(relay_loop(socket))
        })?;
    tokio::task::spawn_blocking(move || thread.join())
        .await?
        .map_err(|_| anyhow::anyhow!("the relay thread panicked"))?
}

async fn relay_loop(socket: std::net::UdpSocket) -> Result<()> {
    let socket = MediaSocket::new(socket)?;
    let fd = socket.fd();
    let mut recv = RecvBatch::new(32);
    let mut sender = SendBatcher::new(true);
    let mut subscribers: Vec<SocketAddr> = Vec::new();
    let mut outgoing: Vec<(SocketAddr, BytesMut)> = Vec::new();
    let mut spare: Vec<BytesMut> = Vec::new();
    let mut forwarded = 0u64;
    let mut read = 0u64;
    let mut stats_requests: Vec<SocketAddr> = Vec::new();
    loop {
        let mut ready = socket.readable().await?;
        // As the shard does: read until the socket is empty (at most 8 batches), then send.
        MediaSocket::read_until_empty(&mut ready, 8, |fd| {
            let count = recv.recv(fd)?;
            read += count as u64;
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
                    stats_requests.push(from);
                } else if is_rtcp(bytes) {
                    // A relay has no use for receivers' feedback; reading it is the cost.
                } else {
                    for subscriber in &subscribers {
                        // Buffers are reused, as the shard reuses its own.
                        let mut buf = spare.pop().unwrap_or_else(|| BytesMut::with_capacity(1500));
                        buf.extend_from_slice(bytes);
                        outgoing.push((*subscriber, buf));
                    }
                }
            }
            Ok(())
        })?;
        drop(ready);
        for to in stats_requests.drain(..) {
            // Not through the batch: `forwarded` counts media only. A reply that cannot go
            // now is not worth stopping the relay for: the asker times out and says so.
            if let Err(err) = socket
                .socket()
                .send_to(format!("{forwarded} {read}").as_bytes(), to)
            {
                eprintln!("relay: STATS reply to {to} not sent: {err}");
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

/// RTCP packet types 200–207 (RFC 5761 §4: what tells RTCP from RTP on one port).
fn is_rtcp(packet: &[u8]) -> bool {
    packet.len() >= 8 && packet[0] >> 6 == 2 && (200..=207).contains(&packet[1])
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

/// The relay's counts so far: datagrams forwarded, datagrams read.
async fn relay_counts(relay: SocketAddr) -> Result<(u64, u64)> {
    let socket = UdpSocket::bind("127.0.0.1:0").await?;
    socket.send_to(b"STATS", relay).await?;
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(2), socket.recv(&mut buf)).await??;
    let text = std::str::from_utf8(&buf[..n])?;
    let (forwarded, read) = text.split_once(' ').context("relay counts")?;
    Ok((forwarded.parse()?, read.parse()?))
}

/// The extension id the publisher writes transport-wide sequence numbers under.
const TRANSPORT_CC_ID: u8 = 3;

/// An RTP packet carrying a transport-wide sequence number (one-byte header extension,
/// RFC 8285), so the subscribers can send the transport-cc feedback they send a shard.
fn rtp(
    payload_type: u8,
    marker: bool,
    (seq, transport_seq): (u16, u16),
    timestamp: u32,
    ssrc: u32,
    payload: &[u8],
) -> Vec<u8> {
    let mut packet = Vec::with_capacity(20 + payload.len());
    packet.push(0x90);
    packet.push(payload_type | if marker { 0x80 } else { 0 });
    packet.extend_from_slice(&seq.to_be_bytes());
    packet.extend_from_slice(&timestamp.to_be_bytes());
    packet.extend_from_slice(&ssrc.to_be_bytes());
    packet.extend_from_slice(&[0xBE, 0xDE, 0, 1, TRANSPORT_CC_ID << 4 | 1]);
    packet.extend_from_slice(&transport_seq.to_be_bytes());
    packet.push(0);
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
    // Transport-wide: one sequence across both streams, as a WebRTC sender numbers them.
    let transport_seq = Arc::new(AtomicU16::new(0));
    let audio = {
        let socket = UdpSocket::bind("127.0.0.1:0").await?;
        let sent = sent.clone();
        let transport_seq = transport_seq.clone();
        tokio::spawn(async move {
            let mut source = OpusSource::new(stream);
            let mut seq = 0u16;
            let mut ticker = tokio::time::interval(OpusSource::INTERVAL);
            loop {
                ticker.tick().await;
                let p = source.next(epoch.now_ns());
                let seqs = (seq, transport_seq.fetch_add(1, Ordering::Relaxed));
                let packet = rtp(AUDIO_PT, p.marker, seqs, p.timestamp, stream, &p.payload);
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
                let seqs = (seq, transport_seq.fetch_add(1, Ordering::Relaxed));
                let packet = rtp(
                    VIDEO_PT,
                    p.marker,
                    seqs,
                    p.timestamp,
                    stream | 1,
                    &p.payload,
                );
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
    // What a lean viewer sends a shard, so the relay reads the same datagrams the shard does.
    let mut feedback = ReceiverFeedback::new(rand::random(), Some(TRANSPORT_CC_ID));
    let mut media_ssrc = None;
    let (mut transport_cc_tick, mut report_tick) = receiver_feedback::feedback_intervals();
    loop {
        tokio::select! {
            ready = socket.readable() => ready?,
            _ = transport_cc_tick.tick() => {
                for packet in feedback.transport_cc(media_ssrc.unwrap_or(0)) {
                    send_rtcp(&socket, relay, &packet).await;
                }
                continue;
            }
            _ = report_tick.tick() => {
                let now_us = i64::try_from(epoch.now_ns() / 1000).unwrap_or(i64::MAX);
                if let Some(report) = feedback.receiver_report(now_us) {
                    send_rtcp(&socket, relay, &report).await;
                }
                continue;
            }
        }
        let (n, queued_ns) = match socket.try_io(Interest::READABLE, || {
            crate::lean_viewer::recv_timestamped(fd, &mut buf, &mut control)
        }) {
            Ok((n, _, at)) => (n, clock.queued_ns(at)),
            Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(err) => return Err(err.into()),
        };
        let received_ns = epoch.now_ns();
        let Some(header_len) = tutti_sfu::srtp::rtp_header_len(&buf[..n]) else {
            continue;
        };
        let queued_ns = queued_ns.unwrap_or(received_ns);
        feedback.on_rtp(
            &buf[..n],
            i64::try_from(queued_ns / 1000).unwrap_or(i64::MAX),
            None,
        );
        let ssrc = u32::from_be_bytes([buf[8], buf[9], buf[10], buf[11]]);
        media_ssrc = Some(media_ssrc.map_or(ssrc, |known: u32| known.min(ssrc)));
        let codec = (buf[1] & 0x7F == VIDEO_PT).then_some(VideoCodec::Vp8);
        let payload = &buf[header_len..n];
        if let Some(probe) = synth::probe(payload, synth::header_len(codec, payload)) {
            first.send_if_modified(|at| at.is_none() && at.replace(Instant::now()).is_none());
            arrivals.lock().await.push((
                probe.sent_ns,
                received_ns.saturating_sub(probe.sent_ns),
                queued_ns.saturating_sub(probe.sent_ns),
            ));
        }
    }
}

/// Sends one RTCP packet in the clear (the relay has no keys); a failure is logged and the
/// subscriber carries on, as a browser would.
async fn send_rtcp(socket: &UdpSocket, relay: SocketAddr, packet: &impl Marshal) {
    let sent = match packet.marshal() {
        Ok(bytes) => socket.send_to(&bytes, relay).await.map(drop),
        Err(err) => Err(std::io::Error::other(err.to_string())),
    };
    if let Err(err) = sent {
        tracing::debug!(%err, "baseline subscriber: feedback not sent");
    }
}

/// Runs the baseline and returns its report.
pub async fn run(args: &RunArgs) -> Result<Report> {
    run_with(args, None).await
}

/// Runs the baseline; with `start`, its window opens when every party to it is ready (see
/// [`super::side_by_side`]).
pub(super) async fn run_with(args: &RunArgs, start: Option<&super::WindowStart>) -> Result<Report> {
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
    if let Some(start) = start {
        start.ready().await?;
    }
    let (forwarded_start, read_start) = relay_counts(relay.addr).await?;
    let (cpu_start, _) = process_usage(pid).context("relay usage")?;
    let own_start = own_cpu_seconds();
    let sent_start = sent.load(Ordering::SeqCst);
    let window_start = epoch.now_ns();
    tokio::time::sleep(args.window()).await;
    let window_end = epoch.now_ns();
    let sent_end = sent.load(Ordering::SeqCst);
    let (cpu_end, rss) = process_usage(pid).context("relay usage")?;
    let own_end = own_cpu_seconds();
    let (forwarded_end, read_end) = relay_counts(relay.addr).await?;
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
            datagrams_read: Some(read_end.saturating_sub(read_start)),
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtc::rtcp::receiver_report::ReceiverReport;

    #[test]
    fn publisher_packets_carry_the_transport_wide_sequence() {
        let packet = rtp(VIDEO_PT, true, (7, 0xABCD), 90_000, 0x101, b"payload");
        assert_eq!(tutti_sfu::srtp::rtp_header_len(&packet), Some(20));
        assert_eq!(
            crate::receiver_feedback::find_extension(&packet, TRANSPORT_CC_ID),
            Some(&[0xAB, 0xCD][..])
        );
        assert_eq!(&packet[20..], b"payload");
        assert!(!is_rtcp(&packet));
        assert!(!is_rtcp(&rtp(AUDIO_PT, true, (1, 2), 3, 4, b"x")));
    }

    #[test]
    fn feedback_is_told_from_media() {
        let report = ReceiverReport {
            ssrc: 1,
            ..Default::default()
        };
        let bytes = report.marshal().unwrap();
        assert!(is_rtcp(&bytes));
        assert!(!is_rtcp(&bytes[..4]));
        assert!(!is_rtcp(b"SUB"));
    }
}
