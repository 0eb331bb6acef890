//! The `fanout` benchmark: real WebRTC peers through a shard child process.

use super::report::{Measurement, Report};
use super::{RunArgs, own_cpu_seconds, pin_self};
use crate::participant::{Participant, ParticipantConfig};
use crate::shard::{ChildShard, SIGNAL_TOKEN, process_usage};
use crate::synth::Epoch;
use anyhow::{Context, Result};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tutti_sfu::shard::api::PipelineSpec;

const ROOM: &str = "bench";

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
pub async fn run(args: &RunArgs) -> Result<Report> {
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
        let mut config = ParticipantConfig::new(ROOM, &format!("pub{i}"));
        config.subscribe = false;
        config.record_packets = false;
        config.video_bitrate = args.video_bitrate;
        config.epoch = epoch;
        let publisher = Participant::join(&url, SIGNAL_TOKEN, config).await?;
        publisher.wait_publishing(Duration::from_secs(30)).await?;
        publishers.push(publisher);
    }
    eprintln!("bench: connecting {} subscribers", args.subscribers);
    let mut joins = Vec::new();
    for i in 0..args.subscribers {
        let url = url.clone();
        joins.push(tokio::spawn(async move {
            let mut config = ParticipantConfig::new(ROOM, &format!("sub{i}"));
            config.audio = false;
            config.video = false;
            config.record_packets = false;
            config.epoch = epoch;
            let started = Instant::now();
            Participant::join_with(&url, SIGNAL_TOKEN, config, true)
                .await
                .map(|p| (started, p))
        }));
    }
    let mut subscribers = Vec::new();
    for join in joins {
        subscribers.push(join.await??);
    }
    let tracks = 2 * args.publishers;
    for (_, subscriber) in &subscribers {
        subscriber
            .wait_for(Duration::from_secs(60), "every track", |records, _| {
                records.len() >= tracks && records.values().all(|r| r.packets > 0)
            })
            .await?;
    }
    let mut join_ms = Vec::new();
    for (started, subscriber) in &subscribers {
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

    let forwarded_series = "tutti_sfu_rtp_forwarded_packets_total";
    let forwarded_start = shard.admin.metric(forwarded_series).await?;
    let (cpu_start, _) = process_usage(pid).context("shard usage")?;
    let own_start = own_cpu_seconds();
    let sent_start = sent_total(&publishers);
    let window_start = epoch.now_ns();
    tokio::time::sleep(args.window()).await;
    let window_end = epoch.now_ns();
    let sent_end = sent_total(&publishers);
    let (cpu_end, rss) = process_usage(pid).context("shard usage")?;
    let own_end = own_cpu_seconds();
    let forwarded_end = shard.admin.metric(forwarded_series).await?;

    // Let packets sent inside the window finish arriving.
    super::until_arrivals_settle(|| async {
        let mut count = 0;
        for (_, subscriber) in &subscribers {
            count += subscriber.packets_received().await;
        }
        count
    })
    .await;
    let mut received = 0u64;
    let mut latencies = Vec::new();
    for (_, subscriber) in &subscribers {
        for record in subscriber.records().await.values() {
            for &(sent_ns, latency_ns) in &record.arrivals {
                if (window_start..window_end).contains(&sent_ns) {
                    received += 1;
                    latencies.push(latency_ns as f64 / 1e6);
                }
            }
        }
    }
    let report = Report::new(
        "fanout",
        args,
        Measurement {
            window_ns: window_end - window_start,
            sent: sent_end - sent_start,
            received,
            latencies_ms: latencies,
            cpu_seconds: cpu_end - cpu_start,
            forwarded: (forwarded_end - forwarded_start).max(0.0) as u64,
            rss_bytes: rss,
            join_ms,
            loadgen_cpu_seconds: own_end - own_start,
        },
    );
    for publisher in publishers {
        publisher.leave().await;
    }
    for (_, subscriber) in subscribers {
        subscriber.leave().await;
    }
    shard.stop().await;
    Ok(report)
}
