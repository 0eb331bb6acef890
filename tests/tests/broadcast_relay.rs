//! A broadcast relayed from an origin shard to an edge shard over WebRTC: the edge's
//! viewers receive the presenter's media intact and in order, nobody sees the relay or the
//! other viewers, and a storm of keyframe requests from the edge reaches the presenter as
//! a trickle.

use anyhow::{Context, Result, ensure};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tutti_sfu::shard::api::PipelineSpec;
use tutti_sfu::signal::protocol::{ClientMessage, ServerMessage};
use tutti_shard_api::admin::RelaySpec;
use tutti_tests::init_logs;
use tutti_tests::participant::{Participant, ParticipantConfig};
use tutti_tests::shard::{SIGNAL_TOKEN, TestShard};

const WAIT: Duration = Duration::from_secs(20);

fn viewer(room: &str, id: &str) -> ParticipantConfig {
    let mut config = ParticipantConfig::new(room, id);
    config.audio = false;
    config.video = false;
    config
}

fn audience() -> PipelineSpec {
    PipelineSpec {
        audience: true,
        max_participants: 50,
        ..PipelineSpec::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_relays_the_origin_to_its_viewers_and_throttles_keyframe_requests() -> Result<()> {
    init_logs();
    let origin = TestShard::start().await?;
    let edge = TestShard::start().await?;
    let mut origin_spec = audience();
    origin_spec.max_participants = 2;
    origin.admin.put_pipeline("concert", &origin_spec).await?;
    let mut edge_spec = audience();
    edge_spec.relay = Some(RelaySpec {
        from: origin.signal_url(),
        room: "concert".into(),
        layers: 1,
    });
    edge.admin.put_pipeline("concert", &edge_spec).await?;

    let presenter = Participant::join(
        &origin.signal_url(),
        SIGNAL_TOKEN,
        ParticipantConfig::new("concert", "pianist"),
    )
    .await?;
    presenter.wait_publishing(WAIT).await?;
    let mut viewers = Vec::new();
    for i in 0..4 {
        viewers.push(
            Participant::join(
                &edge.signal_url(),
                SIGNAL_TOKEN,
                viewer("concert", &format!("v{i}")),
            )
            .await?,
        );
    }
    let (audio_stream, video_stream) = presenter.stream_ids();
    for v in &viewers {
        v.wait_for(
            WAIT,
            "the pianist's audio and video through the edge",
            |records, _| {
                records
                    .values()
                    .any(|r| r.streams.contains(&video_stream) && r.packets >= 100)
                    && records
                        .values()
                        .any(|r| r.streams.contains(&audio_stream) && r.packets >= 50)
            },
        )
        .await?;
    }
    // Intact and in order across two hops.
    for v in &viewers {
        let records = v.records().await;
        for (_, record) in records.iter() {
            let delivery = record.delivery(
                record
                    .log
                    .iter()
                    .map(|r| u64::from(r.index) + 1)
                    .max()
                    .unwrap_or(0),
            );
            ensure!(
                delivery.intact && delivery.in_order,
                "{}: {delivery:?}",
                v.id
            );
            ensure!(delivery.ratio > 0.95, "{}: {delivery:?}", v.id);
        }
    }
    // The viewers see the pianist (relayed), not the relay, not each other.
    for v in &viewers {
        let events = v.events().await;
        let seen: Vec<String> = events
            .iter()
            .flat_map(|e| match e {
                ServerMessage::Joined { participants, .. } => {
                    participants.iter().map(|p| p.id.clone()).collect()
                }
                ServerMessage::ParticipantJoined { participant } => vec![participant.id.clone()],
                _ => Vec::new(),
            })
            .collect();
        ensure!(seen == ["pianist"], "{} saw {seen:?}", v.id);
    }
    // The pianist shares their screen: every viewer of the edge is told, and a viewer who
    // comes later finds it in `joined`.
    presenter.send(ClientMessage::ScreenShare { active: true });
    for v in &viewers {
        v.wait_for(WAIT, "the pianist's screen share through the edge", |_, events| events.iter().any(|e| {
            matches!(e, ServerMessage::ScreenShare { participant, active: true } if participant == "pianist")
        }))
        .await?;
    }
    let late =
        Participant::join(&edge.signal_url(), SIGNAL_TOKEN, viewer("concert", "late")).await?;
    late.wait_for(
        WAIT,
        "the share in the late viewer's joined",
        |_, events| {
            events.iter().any(|e| {
                matches!(e, ServerMessage::Joined { participants, .. }
            if participants.iter().any(|p| p.id == "pianist" && p.screen_sharing))
            })
        },
    )
    .await?;
    presenter.send(ClientMessage::ScreenShare { active: false });
    late.wait_for(WAIT, "the share's end through the edge", |_, events| events.iter().any(|e| {
        matches!(e, ServerMessage::ScreenShare { participant, active: false } if participant == "pianist")
    }))
    .await?;
    drop(late);

    // The origin hosts one seat-taking participant: the relay takes no seat.
    let origin_load = origin.admin.pipelines().await?;
    ensure!(origin_load[0].participants == 1, "{origin_load:?}");

    // Every viewer asks for keyframes ten times a second for three seconds.
    let video_track = viewers[0]
        .records()
        .await
        .into_iter()
        .find(|(_, r)| r.streams.contains(&video_stream))
        .map(|(id, _)| id)
        .context("video track")?;
    let plis_before = presenter.sent().plis.load(Ordering::SeqCst);
    let started = Instant::now();
    let mut asked = 0;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    while started.elapsed() < Duration::from_secs(3) {
        tick.tick().await;
        for v in &viewers {
            let track = v
                .records()
                .await
                .into_iter()
                .find(|(_, r)| r.streams.contains(&video_stream))
                .map(|(id, _)| id)
                .unwrap_or_else(|| video_track.clone());
            v.request_keyframe(&track).await?;
            asked += 1;
        }
    }
    // Let any deferred request land, then count what reached the presenter.
    let keyframes = viewers[0]
        .records()
        .await
        .values()
        .map(|r| r.keyframes)
        .sum::<u64>();
    viewers[0]
        .wait_for(WAIT, "a key frame after the storm", |records, _| {
            records.values().map(|r| r.keyframes).sum::<u64>() > keyframes
        })
        .await?;
    let seconds = started.elapsed().as_secs_f64();
    let reached = presenter.sent().plis.load(Ordering::SeqCst) - plis_before;
    println!(
        "{asked} keyframe requests from the edge's viewers in {seconds:.1} s; {reached} reached the presenter"
    );
    ensure!(asked >= 100);
    // One per 500 ms per hop at most, plus one deferred at the end.
    ensure!(
        (reached as f64) <= seconds * 2.0 + 2.0,
        "{reached} PLIs reached the presenter"
    );
    Ok(())
}

/// The rids the presenter was last told to encode, if told at all.
fn last_publish_layers(events: &[ServerMessage]) -> Option<Vec<String>> {
    events.iter().rev().find_map(|e| match e {
        ServerMessage::PublishLayers { active, .. } => Some(active.clone()),
        _ => None,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_layer_no_viewer_at_the_edge_needs_is_paused_at_the_presenter_and_resumed_when_asked()
-> Result<()> {
    relayed_dynacast(1).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hops_down_a_layer_nobody_needs_is_paused_at_the_presenter_too() -> Result<()> {
    relayed_dynacast(2).await
}

/// A simulcast presenter at an origin, `hops` shards relaying it in a chain, one viewer at
/// the last: the viewer picks low, and the presenter is told to encode only that layer;
/// it picks high, and the top layer comes back all the way down.
async fn relayed_dynacast(hops: usize) -> Result<()> {
    use tutti_sfu::media::simulcast::Quality;
    use tutti_tests::participant::{layer_stream, track_of};
    init_logs();
    let origin = TestShard::start().await?;
    origin.admin.put_pipeline("concert", &audience()).await?;
    let mut relays: Vec<TestShard> = Vec::new();
    for _ in 0..hops {
        let shard = TestShard::start().await?;
        let mut spec = audience();
        spec.relay = Some(RelaySpec {
            from: relays.last().unwrap_or(&origin).signal_url(),
            room: "concert".into(),
            layers: 3,
        });
        shard.admin.put_pipeline("concert", &spec).await?;
        relays.push(shard);
    }
    let edge = relays.last().context("at least one hop")?;
    let mut config = ParticipantConfig::new("concert", "pianist");
    config.audio = false;
    config.simulcast = true;
    let presenter = Participant::join(&origin.signal_url(), SIGNAL_TOKEN, config).await?;
    presenter.wait_publishing(WAIT).await?;
    let base = presenter.stream_ids().1;
    let [q, f] = [0, 2].map(|layer| layer_stream(base, layer, 3));
    let packets = |records: &std::collections::HashMap<_, _>, stream| {
        track_of(records, stream).map_or(0, |(_, record)| record.packets)
    };
    let viewer =
        Participant::join(&edge.signal_url(), SIGNAL_TOKEN, viewer("concert", "v0")).await?;
    viewer
        .wait_for(WAIT, "the top layer through the edge", |records, _| {
            packets(records, f) >= 60
        })
        .await?;
    let (track, _) = track_of(&viewer.records().await, f).context("the relayed video")?;
    // The layers nobody watches may have been paused by now, but never the top one.
    let told: Vec<Vec<String>> = presenter
        .events()
        .await
        .iter()
        .filter_map(|e| match e {
            ServerMessage::PublishLayers { active, .. } => Some(active.clone()),
            _ => None,
        })
        .collect();
    ensure!(
        told.iter()
            .all(|active| active.iter().any(|rid| rid == "f")),
        "the presenter was told to pause the layer the viewer watches: {told:?}"
    );
    // The only viewer shows the video small: the edge needs only the low layer, turns the
    // others off upstream, and the origin, whose only subscribers are the edge's links,
    // tells the presenter to stop encoding them (3 s at each shard before a pause).
    viewer.send(ClientMessage::SetQuality {
        track: track.clone(),
        quality: Quality::Low,
    });
    let asked = Instant::now();
    presenter
        .wait_for(
            Duration::from_secs(20 + 10 * hops as u64),
            "told to encode only the low layer",
            |_, events| last_publish_layers(events).is_some_and(|a| a == ["q"]),
        )
        .await?;
    let paused_after = asked.elapsed();
    let low_before = packets(&viewer.records().await, q);
    viewer
        .wait_for(WAIT, "the low layer meanwhile", |records, _| {
            packets(records, q) >= low_before + 30
        })
        .await?;
    // Shown large again: the top layer is resumed at once, all the way up.
    viewer.send(ClientMessage::SetQuality {
        track: track.clone(),
        quality: Quality::High,
    });
    let asked = Instant::now();
    presenter
        .wait_for(WAIT, "told to encode the top layer again", |_, events| {
            last_publish_layers(events).is_some_and(|a| a.iter().any(|rid| rid == "f"))
        })
        .await?;
    let resumed_after = asked.elapsed();
    let top_before = packets(&viewer.records().await, f);
    viewer
        .wait_for(WAIT, "the top layer again", |records, _| {
            packets(records, f) >= top_before + 60
        })
        .await?;
    let layers = last_publish_layers(&presenter.events().await).unwrap_or_default();
    // The low layer is paused again 3 s after the viewer left it (at each shard), so it may
    // or may not be among them by now.
    ensure!(
        layers.iter().any(|rid| rid == "f") && !layers.iter().any(|rid| rid == "h"),
        "the middle layer, which nobody needs, stays paused: {layers:?}"
    );
    println!(
        "relayed dynacast over {hops} hop(s): the presenter was told to pause after {paused_after:.1?}, to resume after {resumed_after:.1?}"
    );
    Ok(())
}
