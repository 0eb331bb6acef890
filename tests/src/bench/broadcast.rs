//! The `broadcast` benchmark: one presenter on an origin shard, E edge shards relaying it
//! (the tree the operator's cascade planner draws), and N viewers seated over the edges.
//!
//! Every shard is a child process (this executable's `serve-shard`), so its CPU time and
//! memory are its own: media, signaling and its relay links together. The presenter is a
//! full WebRTC peer; the viewers are [`LeanViewer`]s, which do ICE and DTLS for real and
//! then decrypt media with Tutti's own SRTP receiver, so that a thousand of them fit on
//! the machine beside the shards.
//!
//! A probe viewer on the origin itself gives the latency without a relay hop, so
//! `per_hop_latency_ms` is what one relay adds. With `--pli-every-ms`, every viewer asks
//! for a keyframe that often; `presenter_plis` counts what reaches the presenter.

use super::report::{loss_ratio, quantile};
use crate::lean_viewer::{LeanViewer, Reception};
use crate::participant::{Participant, ParticipantConfig, stream_id};
use crate::shard::{ChildShard, SIGNAL_TOKEN, process_usage};
use crate::synth::Epoch;
use anyhow::{Context, Result};
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tutti_control::cascade::{CascadeParams, Demand, plan::plan};
use tutti_sfu::shard::api::PipelineSpec;
use tutti_shard_api::admin::RelaySpec;

const ROOM: &str = "concert";
const PRESENTER: &str = "presenter";

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
    /// Niceness of the load generator (presenter and viewers) once the shards are
    /// started: at 19 the shards, which would have machines of their own, never wait for
    /// a core behind a thousand viewers' receive work; 0 lets the two compete as equals.
    #[arg(long, default_value_t = 19)]
    pub loadgen_nice: i32,
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
    /// From a viewer's join to its first audio packet, median (video waits for a key
    /// frame; audio shows how long joining itself takes).
    pub first_audio_p50_ms: f64,
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
    /// Media packets viewers refused (SRTP authentication or replay).
    pub rejected_packets: u64,
    /// Presenter send to the kernel queueing the packet on an edge viewer's socket
    /// (`SO_TIMESTAMPNS`), median.
    pub latency_p50_ms: f64,
    /// The same, 99th percentile.
    pub latency_p99_ms: f64,
    /// Presenter send to the viewer reading the packet, median: adds the load
    /// generator's own queueing behind the other viewers on the same cores.
    pub read_latency_p50_ms: f64,
    /// The same, 99th percentile.
    pub read_latency_p99_ms: f64,
    /// What one relay hop adds to the median (edge viewers minus a viewer on the origin).
    pub per_hop_latency_ms: f64,
    /// Edge viewers their edge holds a downlink estimate for at the end, from their
    /// transport-cc feedback (lean viewers send it as a browser does).
    pub viewers_estimated: usize,
    /// Keyframe requests viewers sent in the window.
    pub viewer_keyframe_requests: u64,
    /// Keyframe requests that reached the presenter in the window.
    pub presenter_plis: u64,
    /// `presenter_plis` per second.
    pub presenter_plis_per_second: f64,
    /// CPU seconds of each shard process in the window (media, signaling, relay links).
    pub cpu_seconds_per_shard: BTreeMap<String, f64>,
    /// Resident memory of each shard process at the end of the window, MiB.
    pub rss_mib_per_shard: BTreeMap<String, f64>,
    /// CPU seconds of the load generator (presenter and viewers) in the window.
    pub loadgen_cpu_seconds: f64,
    /// The load generator's niceness (`--loadgen-nice`).
    pub loadgen_nice: i32,
}

/// Viewers joining at once: more only queue up behind the shards' DTLS handshakes.
const CONCURRENT_JOINS: usize = 32;

/// Runs the benchmark.
pub async fn run(args: &BroadcastArgs) -> Result<BroadcastReport> {
    let edges = args.edges.max(1);
    let exe = std::env::current_exe().context("own executable")?;
    let mut ids = vec!["origin".to_owned()];
    for i in 0..edges {
        ids.push(format!("edge-{i}"));
    }
    let mut shards: BTreeMap<String, ChildShard> = BTreeMap::new();
    for id in &ids {
        let shard = ChildShard::spawn(&exe, &["serve-shard", "--shard-id", id], None).await?;
        shards.insert(id.clone(), shard);
    }
    // After the shards are started, so that they keep their own priority.
    super::renice_self(args.loadgen_nice)?;
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
    let shard = |id: &str| shards.get(id).with_context(|| format!("no shard {id}"));
    let spec = PipelineSpec {
        audience: true,
        max_participants: (per_edge + 4).max(2),
        ..PipelineSpec::default()
    };
    shard(&tree.origin)?.admin.put_pipeline(ROOM, &spec).await?;
    for edge in &tree.edges {
        let mut edge_spec = spec.clone();
        edge_spec.relay = Some(RelaySpec {
            from: shard(&edge.parent)?.signal_url(),
            room: ROOM.into(),
            layers: 1,
        });
        shard(&edge.shard)?
            .admin
            .put_pipeline(ROOM, &edge_spec)
            .await?;
    }
    let epoch = Epoch::default();
    let origin_url = shard(&tree.origin)?.signal_url();
    let mut presenter_config = ParticipantConfig::new(ROOM, PRESENTER);
    presenter_config.subscribe = false;
    presenter_config.record_packets = false;
    presenter_config.video_bitrate = args.video_bitrate;
    presenter_config.epoch = epoch;
    let presenter = Participant::join(&origin_url, SIGNAL_TOKEN, presenter_config).await?;
    presenter.wait_publishing(Duration::from_secs(30)).await?;
    let probe = LeanViewer::join(&origin_url, SIGNAL_TOKEN, ROOM, "probe", epoch).await?;
    eprintln!(
        "bench: origin and {} edges (depth {}) as child processes; seating {} viewers",
        tree.edges.len(),
        tree.depth(),
        args.viewers
    );
    let joining = Arc::new(tokio::sync::Semaphore::new(CONCURRENT_JOINS));
    let mut joins = Vec::new();
    for i in 0..args.viewers {
        let edge = &tree.edges[i % tree.edges.len()];
        let url = shard(&edge.shard)?.signal_url();
        let joining = joining.clone();
        joins.push(tokio::spawn(async move {
            let _permit = joining.acquire_owned().await?;
            let viewer =
                LeanViewer::join(&url, SIGNAL_TOKEN, ROOM, &format!("viewer{i}"), epoch).await?;
            // The permit is held until the viewer receives (or gives up), so that the
            // next joins do not slow this one's handshakes.
            let _ = viewer
                .wait_for(Duration::from_secs(10), "audio and video", receives_both)
                .await;
            anyhow::Ok(viewer)
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
    let mut first_audio_ms = Vec::new();
    for viewer in &viewers {
        let left = deadline.saturating_duration_since(Instant::now());
        let _ = viewer
            .wait_for(left, "audio and video", receives_both)
            .await;
        let (audio, video) = viewer.with_reception(|r| {
            let first = |video: bool| {
                r.streams
                    .get(&stream_id(PRESENTER, video))
                    .map(|s| s.first_at.duration_since(viewer.started))
            };
            (first(false), first(true))
        })?;
        if let Some(audio) = audio {
            first_audio_ms.push(audio.as_secs_f64() * 1e3);
        }
        if let (Some(audio), Some(video)) = (audio, video) {
            let after = audio.max(video);
            first_media_ms.push(after.as_secs_f64() * 1e3);
            if after <= Duration::from_secs(5) {
                receiving += 1;
            }
        }
    }
    probe
        .wait_for(Duration::from_secs(10), "audio and video", receives_both)
        .await
        .context("the probe viewer on the origin")?;
    eprintln!(
        "bench: {receiving}/{} viewers received within 5 s; measuring for {}s",
        viewers.len(),
        args.seconds
    );

    let usage = |shards: &BTreeMap<String, ChildShard>| -> BTreeMap<String, (f64, u64)> {
        shards
            .iter()
            .filter_map(|(id, s)| Some((id.clone(), process_usage(s.pid()?)?)))
            .collect()
    };
    let sent = || {
        presenter.sent().audio_packets.load(Ordering::SeqCst)
            + presenter.sent().video_packets.load(Ordering::SeqCst)
    };
    let usage_start = usage(&shards);
    let own_start = super::own_cpu_seconds();
    let plis_start = presenter.sent().plis.load(Ordering::SeqCst);
    let sent_start = sent();
    let window_start = epoch.now_ns();
    let started = Instant::now();
    let mut requests = 0u64;
    if args.pli_every_ms > 0 {
        let video = stream_id(PRESENTER, true);
        let mut tick = tokio::time::interval(Duration::from_millis(args.pli_every_ms));
        while started.elapsed() < Duration::from_secs(args.seconds) {
            tick.tick().await;
            for viewer in &viewers {
                if viewer.request_keyframe(video)? {
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
    let usage_end = usage(&shards);
    let loadgen_cpu_seconds = super::own_cpu_seconds() - own_start;
    // Let packets sent inside the window finish arriving.
    super::until_arrivals_settle(|| async {
        viewers.iter().map(|v| v.packets().unwrap_or(0)).sum()
    })
    .await;
    // (at the socket, when read) in ms, of each packet sent in the window.
    let in_window = |reception: &Reception| -> Vec<(f64, f64)> {
        reception
            .arrivals
            .iter()
            .filter(|a| (window_start..window_end).contains(&a.sent_ns))
            .map(|a| {
                (
                    a.socket_latency_ns as f64 / 1e6,
                    a.read_latency_ns as f64 / 1e6,
                )
            })
            .collect()
    };
    let mut latencies = Vec::new();
    let mut read_latencies = Vec::new();
    let mut rejected = 0;
    for viewer in &viewers {
        viewer.with_reception(|r| {
            for (socket, read) in in_window(r) {
                latencies.push(socket);
                read_latencies.push(read);
            }
            rejected += r.rejected;
        })?;
    }
    let received = latencies.len() as u64;
    let mut viewers_estimated = 0;
    for edge in &tree.edges {
        viewers_estimated += shard(&edge.shard)?
            .admin
            .subscribers(ROOM)
            .await?
            .iter()
            .filter(|s| s.downlink_bps.is_some())
            .count();
    }
    let mut probe_latencies: Vec<f64> = probe
        .with_reception(in_window)?
        .into_iter()
        .map(|(socket, _)| socket)
        .collect();
    let expected = sent_in_window * viewers.len() as u64;
    let p50 = quantile(&mut latencies, 0.5);
    let cpu_seconds_per_shard = usage_end
        .iter()
        .map(|(id, (end, _))| {
            let start = usage_start.get(id).map_or(0.0, |(cpu, _)| *cpu);
            (id.clone(), end - start)
        })
        .collect::<BTreeMap<_, _>>();
    let rss_mib_per_shard = usage_end
        .iter()
        .map(|(id, (_, rss))| (id.clone(), *rss as f64 / (1024.0 * 1024.0)))
        .collect();
    let report = BroadcastReport {
        mode: "broadcast".into(),
        viewers: viewers.len(),
        viewers_receiving: receiving,
        first_media_p50_ms: quantile(&mut first_media_ms, 0.5),
        first_media_max_ms: quantile(&mut first_media_ms, 1.0),
        first_audio_p50_ms: quantile(&mut first_audio_ms, 0.5),
        edges: tree.edges.len(),
        cascade_depth: tree.depth(),
        seconds,
        sent_packets: sent_in_window,
        expected_packets: expected,
        received_packets: received,
        loss_ratio: loss_ratio(expected, received),
        rejected_packets: rejected,
        latency_p50_ms: p50,
        latency_p99_ms: quantile(&mut latencies, 0.99),
        read_latency_p50_ms: quantile(&mut read_latencies, 0.5),
        read_latency_p99_ms: quantile(&mut read_latencies, 0.99),
        per_hop_latency_ms: (p50 - quantile(&mut probe_latencies, 0.5)).max(0.0),
        viewers_estimated,
        viewer_keyframe_requests: requests,
        presenter_plis: plis,
        presenter_plis_per_second: plis as f64 / seconds.max(1e-9),
        cpu_seconds_per_shard,
        rss_mib_per_shard,
        loadgen_cpu_seconds,
        loadgen_nice: args.loadgen_nice,
    };
    for viewer in viewers {
        viewer.leave();
    }
    probe.leave();
    presenter.leave().await;
    for (_, shard) in shards {
        shard.stop().await;
    }
    Ok(report)
}

/// Whether a viewer has both of the presenter's streams.
fn receives_both(reception: &Reception) -> bool {
    [false, true].iter().all(|video| {
        reception
            .streams
            .contains_key(&stream_id(PRESENTER, *video))
    })
}
