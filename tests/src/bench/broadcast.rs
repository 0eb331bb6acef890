//! The `broadcast` benchmark: one presenter on an origin shard, E edge shards relaying it
//! (the tree the operator's cascade planner draws), and N real WebRTC viewers seated over
//! the edges, all in this process.
//!
//! A probe viewer on the origin itself gives the latency without a relay hop, so
//! `per_hop_latency_ms` is what one relay adds. With `--pli-every-ms`, every viewer asks
//! for a keyframe that often; `presenter_plis` counts what reaches the presenter.
//! `cpu_seconds_per_shard` is each shard's media thread (forwarding, SRTP, I/O); relay
//! clients and signaling share the process's async runtime and are in `loadgen`'s share.

use super::report::{loss_ratio, quantile};
use crate::participant::{Participant, ParticipantConfig};
use crate::shard::{ADMIN_TOKEN, SIGNAL_TOKEN};
use crate::synth::Epoch;
use anyhow::{Context, Result};
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tutti_control::cascade::{CascadeParams, Demand, plan::plan};
use tutti_sfu::server::{RunningShard, ShardOptions, start};
use tutti_sfu::shard::CoreConfig;
use tutti_sfu::shard::api::PipelineSpec;
use tutti_shard_api::admin::RelaySpec;

const ROOM: &str = "concert";

/// Parameters of `tutti-bench broadcast`.
#[derive(Debug, Clone, clap::Args)]
pub struct BroadcastArgs {
    /// Viewers, seated evenly over the edges.
    #[arg(long, default_value_t = 20)]
    pub viewers: usize,
    /// Edge shards relaying the origin.
    #[arg(long, default_value_t = 2)]
    pub edges: usize,
    /// Length of the measurement window.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Every viewer asks for a keyframe this often (0: never).
    #[arg(long, default_value_t = 0)]
    pub pli_every_ms: u64,
    /// The presenter's video bitrate, bit/s.
    #[arg(long, default_value_t = 1_000_000)]
    pub video_bitrate: u64,
}

/// The last line of a `broadcast` run.
#[derive(Debug, Clone, Serialize)]
pub struct BroadcastReport {
    /// Always `broadcast`.
    pub mode: String,
    /// Viewers connected.
    pub viewers: usize,
    /// Viewers that got media within 5 s of connecting.
    pub viewers_receiving: usize,
    /// From a viewer's join to its first audio and video packets, median.
    pub first_media_p50_ms: f64,
    /// The same, slowest viewer.
    pub first_media_max_ms: f64,
    /// Edge shards.
    pub edges: usize,
    /// Relay hops from the origin to the farthest edge.
    pub cascade_depth: usize,
    /// Length of the window.
    pub seconds: f64,
    /// Packets the presenter sent in the window.
    pub sent_packets: u64,
    /// `sent_packets` × viewers.
    pub expected_packets: u64,
    /// Of those, packets viewers received.
    pub received_packets: u64,
    /// `1 - received / expected`.
    pub loss_ratio: f64,
    /// Presenter send to edge viewer receive, median.
    pub latency_p50_ms: f64,
    /// The same, 99th percentile.
    pub latency_p99_ms: f64,
    /// What one relay hop adds to the median (edge viewers minus a viewer on the origin).
    pub per_hop_latency_ms: f64,
    /// Keyframe requests viewers sent in the window.
    pub viewer_keyframe_requests: u64,
    /// Keyframe requests that reached the presenter in the window.
    pub presenter_plis: u64,
    /// `presenter_plis` per second.
    pub presenter_plis_per_second: f64,
    /// CPU seconds of each shard's media thread in the window.
    pub cpu_seconds_per_shard: BTreeMap<String, f64>,
    /// CPU seconds of the rest of the process (viewers, presenter, relay clients).
    pub loadgen_cpu_seconds: f64,
}

/// A shard named `name`: an edge's relay identity at its parent is its shard's name.
async fn shard(name: &str) -> Result<RunningShard> {
    let udp = "127.0.0.1:0".parse()?;
    Ok(start(ShardOptions {
        http: "127.0.0.1:0".parse()?,
        udp,
        advertise_ip: None,
        advertise_port: None,
        ice_tcp: false,
        admin_token: ADMIN_TOKEN.into(),
        signal_token: SIGNAL_TOKEN.into(),
        core: CoreConfig::new(udp),
        name: name.into(),
        registration: None,
    })
    .await?)
}

fn signal_url(shard: &RunningShard) -> String {
    format!("ws://{}/v1/signal", shard.http_addr)
}

/// Runs the benchmark.
pub async fn run(args: &BroadcastArgs) -> Result<BroadcastReport> {
    let edges = args.edges.max(1);
    let origin = shard("origin").await?;
    let mut shards: BTreeMap<String, RunningShard> = BTreeMap::new();
    let mut ids = vec!["origin".to_owned()];
    for i in 0..edges {
        ids.push(format!("edge-{i}"));
    }
    shards.insert("origin".into(), origin);
    for id in &ids[1..] {
        shards.insert(id.clone(), shard(id).await?);
    }
    let per_edge = args.viewers.div_ceil(edges).max(1) as u32;
    let tree = plan(
        None,
        &Demand {
            expected_audience: args.viewers as u32,
            viewers: BTreeMap::new(),
            max_viewers_per_shard: per_edge,
        },
        &ids,
        CascadeParams {
            headroom: 0.0,
            ..CascadeParams::default()
        },
    )?;
    let admin = |id: &str| -> Result<crate::admin::AdminClient> {
        let shard = shards.get(id).context("shard")?;
        Ok(crate::admin::AdminClient::new(shard.http_addr, ADMIN_TOKEN))
    };
    let spec = PipelineSpec {
        audience: true,
        max_participants: (per_edge + 4).max(2),
        ..PipelineSpec::default()
    };
    admin(&tree.origin)?.put_pipeline(ROOM, &spec).await?;
    for edge in &tree.edges {
        let parent = shards.get(&edge.parent).context("parent")?;
        let mut edge_spec = spec.clone();
        edge_spec.relay = Some(RelaySpec {
            from: signal_url(parent),
            room: ROOM.into(),
            layers: 1,
        });
        admin(&edge.shard)?.put_pipeline(ROOM, &edge_spec).await?;
    }
    let epoch = Epoch::default();
    let origin_url = signal_url(shards.get(&tree.origin).context("origin")?);
    let mut presenter_config = ParticipantConfig::new(ROOM, "presenter");
    presenter_config.subscribe = false;
    presenter_config.record_packets = false;
    presenter_config.video_bitrate = args.video_bitrate;
    presenter_config.epoch = epoch;
    let presenter = Participant::join(&origin_url, SIGNAL_TOKEN, presenter_config).await?;
    presenter.wait_publishing(Duration::from_secs(30)).await?;
    let viewer = |id: String| {
        let mut config = ParticipantConfig::new(ROOM, &id);
        config.audio = false;
        config.video = false;
        config.record_packets = false;
        config.epoch = epoch;
        config
    };
    let probe =
        Participant::join_with(&origin_url, SIGNAL_TOKEN, viewer("probe".into()), true).await?;
    eprintln!(
        "bench: origin and {} edges (depth {}); seating {} viewers",
        tree.edges.len(),
        tree.depth(),
        args.viewers
    );
    let mut joins = Vec::new();
    for i in 0..args.viewers {
        let edge = &tree.edges[i % tree.edges.len()];
        let url = signal_url(shards.get(&edge.shard).context("edge")?);
        let config = viewer(format!("viewer{i}"));
        joins.push(tokio::spawn(async move {
            let started = Instant::now();
            Participant::join_with(&url, SIGNAL_TOKEN, config, true)
                .await
                .map(|p| (started, p))
        }));
    }
    let mut viewers = Vec::new();
    for join in joins {
        viewers.push(join.await??);
    }
    // A viewer receives when both the audio and the video reach it: video through an edge
    // starts at the first key frame the edge passes on, so it can trail the audio.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut receiving = 0;
    let mut first_media_ms = Vec::new();
    for (started, viewer) in &viewers {
        let left = deadline.saturating_duration_since(Instant::now());
        let _ = viewer
            .wait_for(left, "audio and video", |records, _| {
                [false, true]
                    .iter()
                    .all(|video| records.values().any(|r| r.video == *video && r.packets > 0))
            })
            .await;
        let records = viewer.records().await;
        let firsts: Vec<Option<Instant>> = [false, true]
            .iter()
            .map(|video| {
                records
                    .values()
                    .filter(|r| r.video == *video)
                    .filter_map(|r| r.first_at)
                    .min()
            })
            .collect();
        if let [Some(audio), Some(video)] = firsts[..] {
            let last = audio.max(video).duration_since(*started);
            first_media_ms.push(last.as_secs_f64() * 1e3);
            if last <= Duration::from_secs(5) {
                receiving += 1;
            }
        }
    }
    eprintln!(
        "bench: {receiving}/{} viewers received within 5 s; measuring for {}s",
        viewers.len(),
        args.seconds
    );

    let cpu = |shards: &BTreeMap<String, RunningShard>| -> BTreeMap<String, f64> {
        shards
            .iter()
            .map(|(id, s)| (id.clone(), s.media_cpu_seconds().unwrap_or(0.0)))
            .collect()
    };
    let sent = || {
        presenter.sent().audio_packets.load(Ordering::SeqCst)
            + presenter.sent().video_packets.load(Ordering::SeqCst)
    };
    let cpu_start = cpu(&shards);
    let own_start = super::own_cpu_seconds();
    let plis_start = presenter.sent().plis.load(Ordering::SeqCst);
    let sent_start = sent();
    let window_start = epoch.now_ns();
    let started = Instant::now();
    let mut requests = 0u64;
    if args.pli_every_ms > 0 {
        let mut tick = tokio::time::interval(Duration::from_millis(args.pli_every_ms));
        while started.elapsed() < Duration::from_secs(args.seconds) {
            tick.tick().await;
            for (_, viewer) in &viewers {
                let video = viewer
                    .records()
                    .await
                    .into_iter()
                    .find(|(_, r)| r.video)
                    .map(|(id, _)| id);
                if let Some(track) = video
                    && viewer.request_keyframe(&track).await.is_ok()
                {
                    requests += 1;
                }
            }
        }
    } else {
        tokio::time::sleep(Duration::from_secs(args.seconds)).await;
    }
    let window_end = epoch.now_ns();
    let seconds = started.elapsed().as_secs_f64();
    let sent_in_window = sent() - sent_start;
    let plis = presenter.sent().plis.load(Ordering::SeqCst) - plis_start;
    let cpu_end = cpu(&shards);
    let own = super::own_cpu_seconds() - own_start;
    // Let packets sent inside the window finish arriving.
    super::until_arrivals_settle(|| async {
        let mut count = 0;
        for (_, viewer) in &viewers {
            count += viewer.packets_received().await;
        }
        count
    })
    .await;
    let in_window = |arrivals: &[(u64, u64)]| -> Vec<f64> {
        arrivals
            .iter()
            .filter(|(sent, _)| (window_start..window_end).contains(sent))
            .map(|(_, latency)| *latency as f64 / 1e6)
            .collect()
    };
    let mut received = 0u64;
    let mut latencies = Vec::new();
    for (_, viewer) in &viewers {
        for record in viewer.records().await.values() {
            let got = in_window(&record.arrivals);
            received += got.len() as u64;
            latencies.extend(got);
        }
    }
    let mut probe_latencies: Vec<f64> = Vec::new();
    for record in probe.records().await.values() {
        probe_latencies.extend(in_window(&record.arrivals));
    }
    let expected = sent_in_window * viewers.len() as u64;
    let p50 = quantile(&mut latencies, 0.5);
    let cpu_seconds_per_shard = cpu_end
        .iter()
        .map(|(id, end)| (id.clone(), end - cpu_start.get(id).copied().unwrap_or(0.0)))
        .collect::<BTreeMap<_, _>>();
    let shard_cpu: f64 = cpu_seconds_per_shard.values().sum();
    let report = BroadcastReport {
        mode: "broadcast".into(),
        viewers: viewers.len(),
        viewers_receiving: receiving,
        first_media_p50_ms: quantile(&mut first_media_ms, 0.5),
        first_media_max_ms: quantile(&mut first_media_ms, 1.0),
        edges: tree.edges.len(),
        cascade_depth: tree.depth(),
        seconds,
        sent_packets: sent_in_window,
        expected_packets: expected,
        received_packets: received,
        loss_ratio: loss_ratio(expected, received),
        latency_p50_ms: p50,
        latency_p99_ms: quantile(&mut latencies, 0.99),
        per_hop_latency_ms: (p50 - quantile(&mut probe_latencies, 0.5)).max(0.0),
        viewer_keyframe_requests: requests,
        presenter_plis: plis,
        presenter_plis_per_second: plis as f64 / seconds.max(1e-9),
        cpu_seconds_per_shard,
        loadgen_cpu_seconds: (own - shard_cpu).max(0.0),
    };
    for (_, viewer) in viewers {
        viewer.leave().await;
    }
    probe.leave().await;
    presenter.leave().await;
    for (_, shard) in shards {
        shard.stop().await;
    }
    Ok(report)
}
