//! The `fanout` benchmark: real WebRTC peers through a shard child process, or through
//! Janus VideoRoom (`--sfu janus`) under the same load, measured the same way.

use super::report::{Measurement, Report};
use super::{RunArgs, own_cpu_seconds, pin_self};
use crate::janus::JanusServer;
use crate::lean_viewer::LeanViewer;
use crate::participant::{Participant, ParticipantConfig};
use crate::shard::{ChildShard, SIGNAL_TOKEN, process_usage};
use crate::synth::Epoch;
use anyhow::{Context, Result};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tutti_sfu::shard::api::PipelineSpec;

const ROOM: &str = "bench";
/// The VideoRoom room the Janus run creates.
const JANUS_ROOM: u64 = 4242;

/// Which SFU `fanout` measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Sfu {
    /// A Tutti shard (this executable's `serve-shard`).
    Tutti,
    /// Janus VideoRoom, Debian's package, with a generated minimal configuration.
    Janus,
}

/// What `fanout`'s subscribers are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SubscribersAs {
    /// Full WebRTC peers (the async `webrtc` crate with its default interceptors), as
    /// against Janus.
    Full,
    /// Lean viewers (Tutti's signaling only): rtc for ICE, DTLS and RTCP, Tutti's SRTP for
    /// media, the same negotiation and feedback as a full peer, and the kernel's receive
    /// time of every packet, so latency is the shard's and not the load generator's.
    Lean,
}

/// `fanout`'s arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct FanoutArgs {
    #[command(flatten)]
    pub run: RunArgs,
    /// The SFU to measure.
    #[arg(long, value_enum, default_value_t = Sfu::Tutti)]
    pub sfu: Sfu,
    /// What the subscribers are (lean only with Tutti).
    #[arg(long, value_enum, default_value_t = SubscribersAs::Full)]
    pub subscribers_as: SubscribersAs,
}

fn sent_total(publishers: &[Participant]) -> u64 {
    publishers
        .iter()
        .map(|p| {
            p.sent().audio_packets.load(Ordering::SeqCst)
                + p.sent().video_packets.load(Ordering::SeqCst)
        })
        .sum()
}

/// Runs the benchmark and returns its report.
pub async fn run(args: &FanoutArgs) -> Result<Report> {
    match (args.sfu, args.subscribers_as) {
        (Sfu::Tutti, kind) => run_tutti(&args.run, kind, None).await,
        (Sfu::Janus, SubscribersAs::Full) => run_janus(&args.run).await,
        (Sfu::Janus, SubscribersAs::Lean) => {
            anyhow::bail!(
                "lean subscribers speak Tutti's signaling only: use --subscribers-as full with --sfu janus"
            )
        }
    }
}

/// Subscribers joining at once: more only queue up behind the shard's DTLS handshakes.
const CONCURRENT_JOINS: usize = 32;

/// The subscribers of a run, either kind.
enum Subscribers {
    Full(Vec<(Instant, Participant)>),
    Lean(Vec<LeanViewer>),
}

impl Subscribers {
    fn kind(&self) -> &'static str {
        match self {
            Self::Full(_) => "full",
            Self::Lean(_) => "lean",
        }
    }

    /// Waits until each receives `tracks` tracks.
    async fn wait_every_track(&self, tracks: usize) -> Result<()> {
        let timeout = Duration::from_secs(60);
        match self {
            Self::Full(subscribers) => {
                for (_, subscriber) in subscribers {
                    subscriber
                        .wait_for(timeout, "every track", |records, _| {
                            records.len() >= tracks && records.values().all(|r| r.packets > 0)
                        })
                        .await?;
                }
            }
            Self::Lean(viewers) => {
                for viewer in viewers {
                    viewer
                        .wait_for(timeout, "every track", |r| r.streams.len() >= tracks)
                        .await?;
                }
            }
        }
        Ok(())
    }

    /// Each one's time from connecting to its first media packet, ms.
    async fn join_ms(&self) -> Result<Vec<f64>> {
        let mut join_ms = Vec::new();
        match self {
            Self::Full(subscribers) => {
                for (started, subscriber) in subscribers {
                    let first = subscriber
                        .records()
                        .await
                        .values()
                        .filter_map(|r| r.first_at)
                        .min()
                        .context("first packet")?;
                    join_ms.push((first - *started).as_secs_f64() * 1e3);
                }
            }
            Self::Lean(viewers) => {
                for viewer in viewers {
                    let first = viewer
                        .with_reception(|r| r.streams.values().map(|s| s.first_at).min())?
                        .context("first packet")?;
                    join_ms.push((first - viewer.started).as_secs_f64() * 1e3);
                }
            }
        }
        Ok(join_ms)
    }

    /// Media packets received so far, by all.
    async fn packets(&self) -> usize {
        match self {
            Self::Full(subscribers) => {
                let mut count = 0;
                for (_, subscriber) in subscribers {
                    count += subscriber.packets_received().await;
                }
                count
            }
            Self::Lean(viewers) => viewers.iter().map(|v| v.packets().unwrap_or(0)).sum(),
        }
    }

    /// Of the packets sent in `window`: how many arrived, their read latencies and (lean
    /// viewers) their socket latencies, ms.
    async fn arrivals(
        &self,
        window: std::ops::Range<u64>,
    ) -> Result<(u64, Vec<f64>, Option<Vec<f64>>)> {
        let mut received = 0;
        let mut latencies = Vec::new();
        match self {
            Self::Full(subscribers) => {
                for (_, subscriber) in subscribers {
                    for record in subscriber.records().await.values() {
                        for &(sent_ns, latency_ns) in &record.arrivals {
                            if window.contains(&sent_ns) {
                                received += 1;
                                latencies.push(latency_ns as f64 / 1e6);
                            }
                        }
                    }
                }
                Ok((received, latencies, None))
            }
            Self::Lean(viewers) => {
                let mut socket = Vec::new();
                for viewer in viewers {
                    viewer.with_reception(|r| {
                        for arrival in r.arrivals.iter().filter(|a| window.contains(&a.sent_ns)) {
                            received += 1;
                            latencies.push(arrival.read_latency_ns as f64 / 1e6);
                            socket.push(arrival.socket_latency_ns as f64 / 1e6);
                        }
                    })?;
                }
                Ok((received, latencies, Some(socket)))
            }
        }
    }

    async fn leave(self) {
        match self {
            Self::Full(subscribers) => {
                for (_, subscriber) in subscribers {
                    subscriber.leave().await;
                }
            }
            Self::Lean(viewers) => viewers.into_iter().for_each(LeanViewer::leave),
        }
    }
}

fn publisher_config(room: &str, index: usize, args: &RunArgs, epoch: Epoch) -> ParticipantConfig {
    let mut config = ParticipantConfig::new(room, &format!("pub{index}"));
    config.subscribe = false;
    config.record_packets = false;
    config.video_bitrate = args.video_bitrate;
    config.epoch = epoch;
    config.aes128_gcm_only = true;
    config
}

fn subscriber_config(room: &str, index: usize, epoch: Epoch) -> ParticipantConfig {
    let mut config = ParticipantConfig::new(room, &format!("sub{index}"));
    config.audio = false;
    config.video = false;
    config.record_packets = false;
    config.epoch = epoch;
    config.aes128_gcm_only = true;
    config
}

/// Runs a shard under the load of `args` with `kind` subscribers; with `start`, its window
/// opens when every party to it is ready (see [`super::side_by_side`]).
pub(super) async fn run_tutti(
    args: &RunArgs,
    kind: SubscribersAs,
    start: Option<&super::WindowStart>,
) -> Result<Report> {
    let exe = match &args.shard_exe {
        Some(exe) => exe.clone(),
        None => std::env::current_exe()?,
    };
    let shard = ChildShard::spawn(&exe, &["serve-shard"], args.pin.then_some(1)).await?;
    if args.pin {
        pin_self(0)?;
    }
    let pid = shard.pid().context("shard pid")?;
    let spec = PipelineSpec {
        max_participants: (args.publishers + args.subscribers + 4).clamp(2, 10_000) as u32,
        ..PipelineSpec::default()
    };
    shard.admin.put_pipeline(ROOM, &spec).await?;
    let url = shard.signal_url();
    let epoch = Epoch::default();
    eprintln!(
        "bench: shard pid {pid} at {url}; starting {} publishers",
        args.publishers
    );
    let mut publishers = Vec::new();
    for i in 0..args.publishers {
        let publisher =
            Participant::join(&url, SIGNAL_TOKEN, publisher_config(ROOM, i, args, epoch)).await?;
        publisher.wait_publishing(Duration::from_secs(30)).await?;
        publishers.push(publisher);
    }
    eprintln!("bench: connecting {} subscribers", args.subscribers);
    let subscribers = match kind {
        SubscribersAs::Full => {
            let mut joins = Vec::new();
            for i in 0..args.subscribers {
                let url = url.clone();
                joins.push(tokio::spawn(async move {
                    let started = Instant::now();
                    let config = subscriber_config(ROOM, i, epoch);
                    Participant::join_with(&url, SIGNAL_TOKEN, config, true)
                        .await
                        .map(|p| (started, p))
                }));
            }
            let mut subscribers = Vec::new();
            for join in joins {
                subscribers.push(join.await??);
            }
            Subscribers::Full(subscribers)
        }
        SubscribersAs::Lean => {
            let joining = Arc::new(tokio::sync::Semaphore::new(CONCURRENT_JOINS));
            let mut joins = Vec::new();
            for i in 0..args.subscribers {
                let url = url.clone();
                let joining = joining.clone();
                joins.push(tokio::spawn(async move {
                    let _permit = joining.acquire_owned().await?;
                    let viewer =
                        LeanViewer::join(&url, SIGNAL_TOKEN, ROOM, &format!("sub{i}"), epoch)
                            .await?;
                    // The permit is held until media arrives (or not): what it limits is
                    // the handshakes, which come after the join.
                    let _ = viewer
                        .wait_for(Duration::from_secs(10), "media", |r| !r.streams.is_empty())
                        .await;
                    anyhow::Ok(viewer)
                }));
            }
            let mut viewers = Vec::new();
            for join in joins {
                viewers.push(join.await??);
            }
            Subscribers::Lean(viewers)
        }
    };
    let measurement = measure(
        args,
        pid,
        epoch,
        &publishers,
        &subscribers,
        Some(&shard.admin),
        start,
    )
    .await?;
    for publisher in publishers {
        publisher.leave().await;
    }
    let kind = subscribers.kind();
    subscribers.leave().await;
    shard.stop().await;
    Ok(Report::new("fanout", "tutti", kind, args, measurement))
}

async fn run_janus(args: &RunArgs) -> Result<Report> {
    let janus = JanusServer::start().await?;
    let pid = janus.pid().context("janus pid")?;
    if args.pin {
        super::pin_process(pid, 1)?;
        pin_self(0)?;
    }
    let control = janus.api().session().await?;
    let handle = control.attach().await?;
    control
        .message(
            handle,
            serde_json::json!({
                "request": "create",
                "room": JANUS_ROOM,
                "publishers": args.publishers + 1,
                "audiocodec": "opus",
                "videocodec": "vp8",
                "bitrate": 0,
            }),
            None,
        )
        .await
        .with_context(|| format!("creating the room; janus log: {}", janus.log_tail()))?;
    let epoch = Epoch::default();
    eprintln!(
        "bench: janus pid {pid} with media on {}; starting {} publishers",
        janus.ip, args.publishers
    );
    let mut publishers = Vec::new();
    let mut feeds = Vec::new();
    for i in 0..args.publishers {
        let mut config = publisher_config(ROOM, i, args, epoch);
        config.bind_ip = janus.ip;
        let session = janus.api().session().await?;
        let (publisher, id) = Participant::join_janus(session, JANUS_ROOM, config, false, &[])
            .await
            .with_context(|| format!("publishing; janus log: {}", janus.log_tail()))?;
        publisher.wait_publishing(Duration::from_secs(30)).await?;
        feeds.push(id.context("janus gave the publisher no id")?);
        publishers.push(publisher);
    }
    eprintln!("bench: connecting {} subscribers", args.subscribers);
    let mut joins = Vec::new();
    for i in 0..args.subscribers {
        let api = janus.api().clone();
        let feeds = feeds.clone();
        let ip = janus.ip;
        joins.push(tokio::spawn(async move {
            let mut config = subscriber_config(ROOM, i, epoch);
            config.bind_ip = ip;
            let started = Instant::now();
            let session = api.session().await?;
            Participant::join_janus(session, JANUS_ROOM, config, true, &feeds)
                .await
                .map(|(p, _)| (started, p))
        }));
    }
    let mut subscribers = Vec::new();
    for join in joins {
        subscribers.push(
            join.await?
                .with_context(|| format!("subscribing; janus log: {}", janus.log_tail()))?,
        );
    }
    let subscribers = Subscribers::Full(subscribers);
    let measurement = measure(args, pid, epoch, &publishers, &subscribers, None, None).await?;
    for publisher in publishers {
        publisher.leave().await;
    }
    subscribers.leave().await;
    control.destroy().await;
    janus.stop().await;
    Ok(Report::new("fanout", "janus", "full", args, measurement))
}

/// Waits until every subscriber receives every track, then measures one window: the
/// SFU's CPU (process `pid`) and forwarded packets, and every packet sent in the window
/// as its subscribers received it. A shard counts what it forwards (its admin API's
/// metrics); Janus does not, so for it the packets its subscribers received stand in.
async fn measure(
    args: &RunArgs,
    pid: u32,
    epoch: Epoch,
    publishers: &[Participant],
    subscribers: &Subscribers,
    shard: Option<&crate::admin::AdminClient>,
    start: Option<&super::WindowStart>,
) -> Result<Measurement> {
    let forwarded = || async {
        match shard {
            Some(admin) => Ok::<u64, anyhow::Error>(
                admin
                    .metric("tutti_sfu_rtp_forwarded_packets_total")
                    .await?
                    .max(0.0) as u64,
            ),
            None => Ok(subscribers.packets().await as u64),
        }
    };
    subscribers.wait_every_track(2 * args.publishers).await?;
    let join_ms = subscribers.join_ms().await?;
    if let Some(start) = start {
        start.ready().await?;
    }
    eprintln!(
        "bench: all subscribers receive; measuring for {}s",
        args.window().as_secs()
    );
    let read = || async {
        match shard {
            Some(admin) => Ok::<_, anyhow::Error>(Some(datagrams_read(&admin.metrics().await?))),
            None => Ok(None),
        }
    };
    let read_start = read().await?;
    let forwarded_start = forwarded().await?;
    let (cpu_start, _) = process_usage(pid).context("sfu usage")?;
    let own_start = own_cpu_seconds();
    let sent_start = sent_total(publishers);
    let window_start = epoch.now_ns();
    tokio::time::sleep(args.window()).await;
    let window_end = epoch.now_ns();
    let sent_end = sent_total(publishers);
    let (cpu_end, rss) = process_usage(pid).context("sfu usage")?;
    let own_end = own_cpu_seconds();
    let forwarded_end = forwarded().await?;
    let read_end = read().await?;

    // Let packets sent inside the window finish arriving.
    super::until_arrivals_settle(|| subscribers.packets()).await;
    let (received, latencies, socket_latencies) =
        subscribers.arrivals(window_start..window_end).await?;
    let subscribers_estimated = match shard {
        Some(admin) => Some(
            admin
                .subscribers(ROOM)
                .await?
                .iter()
                .filter(|s| s.downlink_bps.is_some())
                .count(),
        ),
        None => None,
    };
    Ok(Measurement {
        window_ns: window_end - window_start,
        sent: sent_end - sent_start,
        received,
        latencies_ms: latencies,
        socket_latencies_ms: socket_latencies,
        cpu_seconds: cpu_end - cpu_start,
        forwarded: forwarded_end.saturating_sub(forwarded_start),
        rss_bytes: rss,
        join_ms,
        loadgen_cpu_seconds: own_end - own_start,
        subscribers_estimated,
        datagrams_read: read_start
            .zip(read_end)
            .map(|(start, end)| end.saturating_sub(start)),
    })
}

/// Datagrams the shard has taken in, of every kind it routes, from its metrics text.
fn datagrams_read(metrics: &str) -> u64 {
    metrics
        .lines()
        .filter(|line| line.starts_with("tutti_sfu_datagrams_received_total"))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}
