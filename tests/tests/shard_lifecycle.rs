//! Rooms over their lifetime on one shard: tracks that come and go by renegotiation,
//! codecs, the active speaker, pipelines released by the operator or by their empty
//! timeout, and a shard that stops.

use anyhow::{Context, Result, ensure};
use std::time::Duration;
use tutti_sfu::shard::api::PipelineSpec;
use tutti_sfu::signal::protocol::{ServerMessage, TrackKind};
use tutti_tests::eventually::eventually;
use tutti_tests::participant::{Participant, ParticipantConfig};
use tutti_tests::shard::{SIGNAL_TOKEN, TestShard};
use tutti_tests::synth::VideoCodec;

const WAIT: Duration = Duration::from_secs(15);

fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "off".into()))
        .with_test_writer()
        .try_init();
}

fn listener(room: &str, id: &str) -> ParticipantConfig {
    let mut config = ParticipantConfig::new(room, id);
    config.audio = false;
    config.video = false;
    config
}

async fn shard_with(room: &str, spec: PipelineSpec) -> Result<TestShard> {
    init_logs();
    let shard = TestShard::start().await?;
    shard.admin.put_pipeline(room, &spec).await?;
    Ok(shard)
}

fn published(events: &[ServerMessage], kind: TrackKind) -> Vec<String> {
    events
        .iter()
        .flat_map(|e| match e {
            ServerMessage::TrackPublished { track, .. } => vec![track.clone()],
            ServerMessage::Joined { participants, .. } => {
                participants.iter().flat_map(|p| p.tracks.clone()).collect()
            }
            _ => vec![],
        })
        .filter(|t| t.kind == kind)
        .map(|t| t.id)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_track_removed_by_renegotiation_is_unpublished_and_the_rest_flows() -> Result<()> {
    let shard = shard_with("lesson", PipelineSpec::default()).await?;
    let url = shard.signal_url();
    let mut teacher = Participant::join(
        &url,
        SIGNAL_TOKEN,
        ParticipantConfig::new("lesson", "teacher"),
    )
    .await?;
    let student = Participant::join(&url, SIGNAL_TOKEN, listener("lesson", "student")).await?;
    student
        .wait_for(WAIT, "audio and video", |records, _| {
            records.len() == 2 && records.values().all(|r| r.packets > 30)
        })
        .await?;
    let video = published(&student.events().await, TrackKind::Video);
    let audio = published(&student.events().await, TrackKind::Audio);
    ensure!(video.len() == 1 && audio.len() == 1);
    // The teacher turns the camera off.
    teacher.unpublish_video().await?;
    student
        .wait_for(WAIT, "the video track's removal", |_, events| {
            events
                .iter()
                .any(|e| matches!(e, ServerMessage::TrackUnpublished { track, .. } if *track == video[0]))
        })
        .await?;
    let audio_now = student
        .records()
        .await
        .get(&audio[0])
        .map_or(0, |r| r.packets);
    student
        .wait_for(WAIT, "audio going on", |records, _| {
            records
                .get(&audio[0])
                .is_some_and(|r| r.packets >= audio_now + 50)
        })
        .await?;
    let load = shard.admin.load().await?;
    ensure!(load.tracks == 1 && load.forwarded_streams == 1, "{load:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h264_is_forwarded_when_both_sides_support_it() -> Result<()> {
    let shard = shard_with("h264", PipelineSpec::default()).await?;
    let url = shard.signal_url();
    let mut config = ParticipantConfig::new("h264", "camera");
    config.audio = false;
    config.video_codec = VideoCodec::H264;
    let camera = Participant::join(&url, SIGNAL_TOKEN, config).await?;
    camera.wait_publishing(WAIT).await?;
    let viewer = Participant::join(&url, SIGNAL_TOKEN, listener("h264", "viewer")).await?;
    viewer
        .wait_for(WAIT, "H.264 video", |records, _| {
            records.values().any(|r| r.video && r.packets >= 100)
        })
        .await?;
    let record = viewer
        .records()
        .await
        .into_values()
        .find(|r| r.video)
        .context("video")?;
    ensure!(record.codec == "video/H264", "negotiated {}", record.codec);
    ensure!(
        record.first_was_keyframe == Some(true),
        "did not start on an IDR frame"
    );
    ensure!(record.corrupt == 0);
    let announced = viewer.events().await.iter().any(|e| match e {
        ServerMessage::Joined { participants, .. } => participants
            .iter()
            .flat_map(|p| &p.tracks)
            .any(|t| t.codec.eq_ignore_ascii_case("video/H264")),
        ServerMessage::TrackPublished { track, .. } => {
            track.codec.eq_ignore_ascii_case("video/H264")
        }
        _ => false,
    });
    ensure!(announced, "the track was not announced as H.264");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn releasing_a_pipeline_ends_its_sessions_and_frees_the_shard() -> Result<()> {
    let shard = shard_with("doomed", PipelineSpec::default()).await?;
    let url = shard.signal_url();
    let teacher = Participant::join(
        &url,
        SIGNAL_TOKEN,
        ParticipantConfig::new("doomed", "teacher"),
    )
    .await?;
    let student = Participant::join(&url, SIGNAL_TOKEN, listener("doomed", "student")).await?;
    student
        .wait_for(WAIT, "media", |records, _| {
            records.values().any(|r| r.packets > 20)
        })
        .await?;
    ensure!(shard.admin.release("doomed").await? == hyper::StatusCode::NO_CONTENT);
    for p in [&teacher, &student] {
        // Released by the control plane, the room is elsewhere now (or gone, which the
        // gateway says on the rejoin): each session is told to join again.
        p.wait_for(WAIT, "being told the room was released", |_, events| {
            events
                .iter()
                .any(|e| matches!(e, ServerMessage::Left { reason, reconnect: true } if reason.contains("released")))
        })
        .await?;
    }
    let load = shard.admin.load().await?;
    ensure!(
        load.pipelines == 0 && load.participants == 0 && load.tracks == 0,
        "{load:?}"
    );
    ensure!(shard.admin.release("doomed").await? == hyper::StatusCode::NOT_FOUND);
    // Joining the released room is refused with a clear code.
    let refused = Participant::join(&url, SIGNAL_TOKEN, listener("doomed", "latecomer")).await;
    let message = format!("{:#}", refused.err().context("join should fail")?);
    ensure!(message.contains("RoomNotFound"), "{message}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_pipeline_is_released_after_its_timeout_and_a_full_one_refuses_joins() -> Result<()>
{
    let spec = PipelineSpec {
        max_participants: 2,
        empty_timeout_seconds: 1,
        ..PipelineSpec::default()
    };
    let shard = shard_with("short", spec).await?;
    let url = shard.signal_url();
    let a = Participant::join(&url, SIGNAL_TOKEN, listener("short", "a")).await?;
    let b = Participant::join(&url, SIGNAL_TOKEN, listener("short", "b")).await?;
    let third = Participant::join(&url, SIGNAL_TOKEN, listener("short", "c")).await;
    let message = format!("{:#}", third.err().context("a third join should fail")?);
    ensure!(message.contains("RoomFull"), "{message}");
    // Occupied: it stays however long the timeout.
    let admin = shard.admin.clone();
    eventually(WAIT, "two participants listed", || {
        let admin = admin.clone();
        async move {
            Ok(admin
                .pipelines()
                .await?
                .first()
                .is_some_and(|p| p.participants == 2))
        }
    })
    .await?;
    a.leave().await;
    b.leave().await;
    eventually(WAIT, "the empty pipeline's release", || {
        let admin = admin.clone();
        async move { Ok(admin.pipelines().await?.is_empty()) }
    })
    .await?;
    ensure!(
        admin
            .metric("tutti_sfu_pipelines_released_empty_total")
            .await?
            == 1.0
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_shard_tells_every_session_to_reconnect() -> Result<()> {
    let shard = shard_with("finale", PipelineSpec::default()).await?;
    let url = shard.signal_url();
    let player = Participant::join(
        &url,
        SIGNAL_TOKEN,
        ParticipantConfig::new("finale", "player"),
    )
    .await?;
    let listener = Participant::join(&url, SIGNAL_TOKEN, listener("finale", "listener")).await?;
    listener
        .wait_for(WAIT, "media", |records, _| {
            records.values().any(|r| r.packets > 20)
        })
        .await?;
    shard.shard.stop().await;
    for p in [&player, &listener] {
        p.wait_for(WAIT, "the reconnect notice", |_, events| {
            events.iter().any(|e| {
                matches!(
                    e,
                    ServerMessage::Left {
                        reconnect: true,
                        ..
                    }
                )
            })
        })
        .await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn participants_without_udp_reach_the_shard_over_ice_tcp() -> Result<()> {
    let shard = shard_with("firewalled", PipelineSpec::default()).await?;
    let url = shard.signal_url();
    let mut presenter = ParticipantConfig::new("firewalled", "office");
    presenter.tcp_only = true;
    let mut viewer = listener("firewalled", "hotel");
    viewer.tcp_only = true;
    let presenter = Participant::join(&url, SIGNAL_TOKEN, presenter).await?;
    presenter.wait_publishing(WAIT).await?;
    let viewer = Participant::join(&url, SIGNAL_TOKEN, viewer).await?;
    let (audio, video) = presenter.stream_ids();
    viewer
        .wait_for(WAIT, "audio and video over TCP", |records, _| {
            records
                .values()
                .any(|r| r.streams.contains(&audio) && r.packets >= 50)
                && records
                    .values()
                    .any(|r| r.streams.contains(&video) && r.packets >= 100)
        })
        .await?;
    let records = viewer.records().await;
    let video = records
        .values()
        .find(|r| r.streams.contains(&video))
        .context("video")?;
    let delivery = video.delivery(
        presenter
            .sent()
            .video_packets
            .load(std::sync::atomic::Ordering::SeqCst),
    );
    ensure!(delivery.intact && delivery.in_order, "{delivery:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn liveness_fails_once_the_media_thread_is_gone() -> Result<()> {
    let shard = TestShard::start().await?;
    let addr = shard.shard.http_addr;
    let (status, _) = tutti_tests::gateway::http_get(addr, "/healthz").await?;
    ensure!(status == 200, "a working shard is alive: {status}");
    // The media thread stops (as if it had died); HTTP goes on serving.
    shard.shard.handle.shutdown().await;
    eventually(Duration::from_secs(10), "liveness to fail", || async move {
        let (status, body) = tutti_tests::gateway::http_get(addr, "/healthz").await?;
        Ok(status == 503 && body.contains("media thread"))
    })
    .await?;
    let (status, _) = tutti_tests::gateway::http_get(addr, "/readyz").await?;
    ensure!(status == 503, "not ready either: {status}");
    Ok(())
}
