//! The `fanout` benchmark: real WebRTC peers through a shard child process, or through
//! Janus VideoRoom (`--sfu janus`) under the same load, measured the same way.

use super::report::{Measurement, Report};
use super::{RunArgs, own_cpu_seconds, pin_self};
use crate::janus::JanusServer;
use crate::participant::{Participant, ParticipantConfig};
use crate::shard::{ChildShard, SIGNAL_TOKEN, process_usage};
use crate::synth::Epoch;
use anyhow::{Context, Result};
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

/// `fanout`'s arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct FanoutArgs {
    #[command(flatten)]
    pub run: RunArgs,
    /// The SFU to measure.
    #[arg(long, value_enum, default_value_t = Sfu::Tutti)]
    pub sfu: Sfu,
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
    match args.sfu {
        Sfu::Tutti => run_tutti(&args.run).await,
        Sfu::Janus => run_janus(&args.run).await,
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

async fn run_tutti(args: &RunArgs) -> Result<Report> {
    let exe = std::env::current_exe()?;
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
    let mut joins = Vec::new();
    for i in 0..args.subscribers {
        let url = url.clone();
        joins.push(tokio::spawn(async move {
            let started = Instant::now();
            Participant::join_with(&url, SIGNAL_TOKEN, subscriber_config(ROOM, i, epoch), true)
                .await
                .map(|p| (started, p))
        }));
    }
    let mut subscribers = Vec::new();
    for join in joins {
        subscribers.push(join.await??);
    }
    let measurement = measure(
        args,
        pid,
        epoch,
        &publishers,
        &subscribers,
        Some(&shard.admin),
    )
    .await?;
    for publisher in publishers {
        publisher.leave().await;
    }
    for (_, subscriber) in subscribers {
        subscriber.leave().await;
    }
    shard.stop().await;
    Ok(Report::new("fanout", "tutti", args, measurement))
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
    let measurement = measure(args, pid, epoch, &publishers, &subscribers, None).await?;
    for publisher in publishers {
        publisher.leave().await;
    }
    for (_, subscriber) in subscribers {
        subscriber.leave().await;
    }
    control.destroy().await;
    janus.stop().await;
    Ok(Report::new("fanout", "janus", args, measurement))
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
    subscribers: &[(Instant, Participant)],
    shard: Option<&crate::admin::AdminClient>,
) -> Result<Measurement> {
    let forwarded = || async {
        match shard {
            Some(admin) => Ok::<u64, anyhow::Error>(
                admin
                    .metric("tutti_sfu_rtp_forwarded_packets_total")
                    .await?
                    .max(0.0) as u64,
            ),
            None => {
                let mut total = 0;
                for (_, subscriber) in subscribers {
                    total += subscriber
                        .records()
                        .await
                        .values()
                        .map(|r| r.packets)
                        .sum::<u64>();
                }
                Ok(total)
            }
        }
    };
    let tracks = 2 * args.publishers;
    for (_, subscriber) in subscribers {
        subscriber
            .wait_for(Duration::from_secs(60), "every track", |records, _| {
                records.len() >= tracks && records.values().all(|r| r.packets > 0)
            })
            .await?;
    }
    let mut join_ms = Vec::new();
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
    eprintln!(
        "bench: all subscribers receive; measuring for {}s",
        args.window().as_secs()
    );
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

    // Let packets sent inside the window finish arriving.
    super::until_arrivals_settle(|| async {
        let mut count = 0;
        for (_, subscriber) in subscribers {
            count += subscriber.packets_received().await;
        }
        count
    })
    .await;
    let mut received = 0u64;
    let mut latencies = Vec::new();
    for (_, subscriber) in subscribers {
        for record in subscriber.records().await.values() {
            for &(sent_ns, latency_ns) in &record.arrivals {
                if (window_start..window_end).contains(&sent_ns) {
                    received += 1;
                    latencies.push(latency_ns as f64 / 1e6);
                }
            }
        }
    }
    Ok(Measurement {
        window_ns: window_end - window_start,
        sent: sent_end - sent_start,
        received,
        latencies_ms: latencies,
        cpu_seconds: cpu_end - cpu_start,
        forwarded: forwarded_end.saturating_sub(forwarded_start),
        rss_bytes: rss,
        join_ms,
        loadgen_cpu_seconds: own_end - own_start,
    })
}
