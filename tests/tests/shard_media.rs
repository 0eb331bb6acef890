//! Real WebRTC peers (DTLS-SRTP, the async `webrtc` crate) against one shard over
//! loopback, on free ports. Every assertion is on what a participant observes: packets and
//! key frames received, signaling events, the shard's reported load.

use anyhow::{Context, Result, ensure};
use std::time::{Duration, Instant};
use tutti_sfu::shard::api::PipelineSpec;
use tutti_sfu::signal::protocol::ServerMessage;
use tutti_shard_api::admin::Reception;
use tutti_tests::init_logs;
use tutti_tests::participant::{Participant, ParticipantConfig, track_of};
use tutti_tests::shard::{SIGNAL_TOKEN, TestShard};

const WAIT: Duration = Duration::from_secs(15);

async fn shard_with_rooms(rooms: &[&str]) -> Result<TestShard> {
    init_logs();
    let shard = TestShard::start().await?;
    for room in rooms {
        shard
            .admin
            .put_pipeline(room, &PipelineSpec::default())
            .await?;
    }
    Ok(shard)
}

fn subscriber_only(room: &str, id: &str) -> ParticipantConfig {
    let mut config = ParticipantConfig::new(room, id);
    config.audio = false;
    config.video = false;
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_publisher_eight_subscribers_receive_every_packet_intact_and_in_order() -> Result<()> {
    let shard = shard_with_rooms(&["fanout"]).await?;
    let url = shard.signal_url();
    let mut subscribers = Vec::new();
    for i in 0..8 {
        subscribers.push(
            Participant::join(
                &url,
                SIGNAL_TOKEN,
                subscriber_only("fanout", &format!("sub{i}")),
            )
            .await?,
        );
    }
    let mut publisher = Participant::join(
        &url,
        SIGNAL_TOKEN,
        ParticipantConfig::new("fanout", "teacher"),
    )
    .await?;
    publisher.wait_publishing(WAIT).await?;
    let (audio_stream, video_stream) = publisher.stream_ids();
    for sub in &subscribers {
        sub.wait_for(WAIT, "both tracks flowing", |records, _| {
            track_of(records, audio_stream).is_some_and(|(_, r)| r.packets >= 50)
                && track_of(records, video_stream).is_some_and(|(_, r)| r.packets >= 100)
        })
        .await?;
    }
    // Media keeps flowing for a while, then the publisher stops and the tails drain.
    let (audio_sent, video_sent) = {
        let start = Instant::now();
        subscribers[0]
            .wait_for(WAIT, "three more seconds of video", |records, _| {
                track_of(records, video_stream).is_some_and(|(_, r)| r.packets >= 400)
            })
            .await?;
        let sent = publisher.stop_media().await;
        println!("published for {:?} after join", start.elapsed());
        sent
    };
    for sub in &subscribers {
        sub.wait_for(Duration::from_secs(5), "the last packets", |records, _| {
            let last = |stream, sent: u64| {
                track_of(records, stream)
                    .is_some_and(|(_, r)| r.log.iter().any(|p| u64::from(p.index) + 1 == sent))
            };
            last(audio_stream, audio_sent) && last(video_stream, video_sent)
        })
        .await
        .ok();
    }
    for sub in &subscribers {
        let records = sub.records().await;
        for (stream, sent, kind) in [
            (audio_stream, audio_sent, "audio"),
            (video_stream, video_sent, "video"),
        ] {
            let (_, record) =
                track_of(&records, stream).with_context(|| format!("{} got no {kind}", sub.id))?;
            let delivery = record.delivery(sent);
            println!("{} {kind}: {delivery:?}", sub.id);
            ensure!(delivery.ratio >= 0.99, "{} {kind}: {delivery:?}", sub.id);
            ensure!(delivery.intact, "{} {kind}: payload bytes changed", sub.id);
            ensure!(
                delivery.in_order,
                "{} {kind}: out of order by sequence number",
                sub.id
            );
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_joiner_starts_on_a_keyframe_promptly() -> Result<()> {
    let shard = shard_with_rooms(&["late"]).await?;
    let url = shard.signal_url();
    let mut config = ParticipantConfig::new("late", "presenter");
    config.audio = false;
    config.keyframe_interval = Duration::from_secs(600);
    let publisher = Participant::join(&url, SIGNAL_TOKEN, config).await?;
    publisher.wait_publishing(WAIT).await?;
    let early = Participant::join(&url, SIGNAL_TOKEN, subscriber_only("late", "early")).await?;
    // The stream has long left its first key frame behind when the late viewer arrives.
    early
        .wait_for(WAIT, "two seconds of video", |records, _| {
            records.values().any(|r| r.video && r.packets >= 240)
        })
        .await?;
    let joined = Instant::now();
    let late = Participant::join(&url, SIGNAL_TOKEN, subscriber_only("late", "late")).await?;
    late.wait_for(WAIT, "video", |records, _| {
        records.values().any(|r| r.video && r.packets > 0)
    })
    .await?;
    let record = late
        .records()
        .await
        .into_values()
        .find(|r| r.video)
        .context("video")?;
    let delay = record.first_at.context("first packet")? - joined;
    println!("late joiner: first video packet {delay:?} after joining");
    ensure!(
        record.first_was_keyframe == Some(true),
        "the first packet was not a key frame"
    );
    ensure!(
        delay < Duration::from_secs(2),
        "first key frame took {delay:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_publisher_removes_its_tracks_and_disturbs_nothing_else() -> Result<()> {
    let shard = shard_with_rooms(&["band"]).await?;
    let url = shard.signal_url();
    let violin =
        Participant::join(&url, SIGNAL_TOKEN, ParticipantConfig::new("band", "violin")).await?;
    let piano =
        Participant::join(&url, SIGNAL_TOKEN, ParticipantConfig::new("band", "piano")).await?;
    let listener =
        Participant::join(&url, SIGNAL_TOKEN, subscriber_only("band", "listener")).await?;
    let (violin_audio, violin_video) = violin.stream_ids();
    let (piano_audio, piano_video) = piano.stream_ids();
    listener
        .wait_for(WAIT, "four tracks flowing", |records, _| {
            [violin_audio, violin_video, piano_audio, piano_video]
                .iter()
                .all(|s| track_of(records, *s).is_some_and(|(_, r)| r.packets >= 20))
        })
        .await?;
    let before = listener.records().await;
    let (violin_video_track, _) = track_of(&before, violin_video).context("violin video")?;
    let (violin_audio_track, _) = track_of(&before, violin_audio).context("violin audio")?;
    violin.kill().await;
    listener
        .wait_for(WAIT, "violin's departure and track removal", |_, events| {
            let left = events
                .iter()
                .any(|e| matches!(e, ServerMessage::ParticipantLeft { participant } if participant == "violin"));
            let removed = |track: &str| {
                events
                    .iter()
                    .any(|e| matches!(e, ServerMessage::TrackUnpublished { track: t, .. } if t == track))
            };
            left && removed(&violin_video_track) && removed(&violin_audio_track)
        })
        .await?;
    // The renegotiation that followed no longer sends the violin's tracks.
    listener
        .wait_for(WAIT, "an offer without the violin's tracks", |_, events| {
            events
                .iter()
                .rev()
                .find_map(|e| match e {
                    ServerMessage::Offer { sdp, .. } => Some(sdp.clone()),
                    _ => None,
                })
                .is_some_and(|sdp| {
                    !sends_track(&sdp, &violin_video_track)
                        && !sends_track(&sdp, &violin_audio_track)
                })
        })
        .await?;
    let at_kill = listener.records().await;
    let piano_before = track_of(&at_kill, piano_video).map_or(0, |(_, r)| r.packets);
    let violin_frozen = track_of(&at_kill, violin_video).map_or(0, |(_, r)| r.packets);
    // The piano keeps playing to the listener, and to nobody's surprise, the violin does not.
    listener
        .wait_for(WAIT, "more piano video", |records, _| {
            track_of(records, piano_video).is_some_and(|(_, r)| r.packets >= piano_before + 150)
        })
        .await?;
    let after = listener.records().await;
    ensure!(track_of(&after, violin_video).map_or(0, |(_, r)| r.packets) <= violin_frozen + 5);
    piano
        .wait_for(WAIT, "the piano hears the violin leave", |_, events| {
            events
                .iter()
                .any(|e| matches!(e, ServerMessage::ParticipantLeft { participant } if participant == "violin"))
        })
        .await?;
    let load = shard.admin.load().await?;
    ensure!(
        load.participants == 2,
        "load reports {} participants",
        load.participants
    );
    ensure!(load.tracks == 2, "load reports {} tracks", load.tracks);
    Ok(())
}

/// Whether an SDP has a section that sends the track with this id.
fn sends_track(sdp: &str, track: &str) -> bool {
    sdp.split("\nm=").any(|section| {
        section.contains(track)
            && (section.contains("a=sendonly") || section.contains("a=sendrecv"))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_rooms_on_one_shard_are_isolated() -> Result<()> {
    let shard = shard_with_rooms(&["lesson-a", "lesson-b"]).await?;
    let url = shard.signal_url();
    let teacher_a = Participant::join(
        &url,
        SIGNAL_TOKEN,
        ParticipantConfig::new("lesson-a", "teacher-a"),
    )
    .await?;
    let teacher_b = Participant::join(
        &url,
        SIGNAL_TOKEN,
        ParticipantConfig::new("lesson-b", "teacher-b"),
    )
    .await?;
    let student_a =
        Participant::join(&url, SIGNAL_TOKEN, subscriber_only("lesson-a", "student-a")).await?;
    let student_b =
        Participant::join(&url, SIGNAL_TOKEN, subscriber_only("lesson-b", "student-b")).await?;
    let (a_audio, a_video) = teacher_a.stream_ids();
    let (b_audio, b_video) = teacher_b.stream_ids();
    for (student, audio, video) in [
        (&student_a, a_audio, a_video),
        (&student_b, b_audio, b_video),
    ] {
        student
            .wait_for(WAIT, "own teacher's media", |records, _| {
                track_of(records, audio).is_some_and(|(_, r)| r.packets >= 100)
                    && track_of(records, video).is_some_and(|(_, r)| r.packets >= 200)
            })
            .await?;
    }
    for (student, foreign, own_teacher, other_teacher) in [
        (&student_a, [b_audio, b_video], "teacher-a", "teacher-b"),
        (&student_b, [a_audio, a_video], "teacher-b", "teacher-a"),
    ] {
        let records = student.records().await;
        ensure!(
            records.len() == 2,
            "{} receives {} tracks",
            student.id,
            records.len()
        );
        ensure!(
            foreign.iter().all(|s| track_of(&records, *s).is_none()),
            "{} got the other room's media",
            student.id
        );
        let events = student.events().await;
        let mentions = |who: &str| {
            events.iter().any(|e| match e {
                ServerMessage::Joined { participants, .. } => {
                    participants.iter().any(|p| p.id == who)
                }
                ServerMessage::ParticipantJoined { participant } => participant.id == who,
                ServerMessage::TrackPublished { participant, .. } => participant == who,
                _ => false,
            })
        };
        ensure!(
            mentions(own_teacher),
            "{} never heard of {own_teacher}",
            student.id
        );
        ensure!(
            !mentions(other_teacher),
            "{} heard of {other_teacher}",
            student.id
        );
    }
    let pipelines = shard.admin.pipelines().await?;
    ensure!(
        pipelines
            .iter()
            .all(|p| p.participants == 2 && p.tracks == 2),
        "{pipelines:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receiver_reports_of_unrepairable_loss_reach_the_admin_api() -> Result<()> {
    use tutti_tests::eventually::eventually;
    use tutti_tests::raw_peer::{LossModel, RawSubscriber};
    let shard = shard_with_rooms(&["reports"]).await?;
    let url = shard.signal_url();
    let mut config = ParticipantConfig::new("reports", "presenter");
    config.audio = false;
    let publisher = Participant::join(&url, SIGNAL_TOKEN, config).await?;
    publisher.wait_publishing(WAIT).await?;
    let healthy =
        Participant::join(&url, SIGNAL_TOKEN, subscriber_only("reports", "healthy")).await?;
    healthy
        .wait_for(WAIT, "video", |records, _| {
            records.values().any(|r| r.packets > 60)
        })
        .await?;
    let admin = shard.admin.clone();
    let loss = || {
        let admin = admin.clone();
        async move {
            Ok::<_, anyhow::Error>(
                admin
                    .pipelines()
                    .await?
                    .first()
                    .map_or(0.0, |p| p.max_subscriber_loss_percent),
            )
        }
    };
    // A clean loopback: nobody reports loss.
    ensure!(loss().await? == 0.0);
    // One in ten packets, and every retransmission of it, lost on the way to this viewer.
    let _lossy = RawSubscriber::join_lossy(
        &url,
        SIGNAL_TOKEN,
        "reports",
        "lossy",
        LossModel::Sequence(10),
    )
    .await?;
    eventually(WAIT, "about 10 % loss reported", || {
        let loss = loss();
        async move { Ok((6.0..=14.0).contains(&loss.await?)) }
    })
    .await?;
    // Per subscriber: the lossy one is no longer "good", the healthy one is.
    let subscribers = admin.subscribers("reports").await?;
    let find = |who: &str| subscribers.iter().find(|s| s.name == who);
    let lossy = find("lossy").context("the lossy viewer listed")?;
    ensure!((6.0..=14.0).contains(&lossy.loss_percent), "{lossy:?}");
    ensure!(lossy.reception != Reception::Good, "{lossy:?}");
    let healthy = find("healthy").context("the healthy viewer listed")?;
    ensure!(healthy.loss_percent == 0.0, "{healthy:?}");
    ensure!(healthy.reception == Reception::Good, "{healthy:?}");
    ensure!(
        admin.subscribers("no-such-room").await.is_err(),
        "an unknown pipeline is not found"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_without_simulcast_forwards_only_the_top_layer() -> Result<()> {
    use tutti_sfu::media::simulcast::Quality;
    use tutti_sfu::shard::api::MediaPolicy;
    use tutti_sfu::signal::protocol::ClientMessage;
    use tutti_tests::participant::layer_stream;
    init_logs();
    let shard = TestShard::start().await?;
    let spec = PipelineSpec {
        media: MediaPolicy {
            simulcast: false,
            ..MediaPolicy::default()
        },
        ..PipelineSpec::default()
    };
    shard.admin.put_pipeline("plain", &spec).await?;
    let url = shard.signal_url();
    let mut config = ParticipantConfig::new("plain", "camera");
    config.audio = false;
    config.simulcast = true;
    let publisher = Participant::join(&url, SIGNAL_TOKEN, config).await?;
    publisher.wait_publishing(WAIT).await?;
    let base = publisher.stream_ids().1;
    let [q, _h, f] = [0, 1, 2].map(|layer| layer_stream(base, layer, 3));
    let viewer = Participant::join(&url, SIGNAL_TOKEN, subscriber_only("plain", "viewer")).await?;
    viewer
        .wait_for(WAIT, "the top layer", |records, _| {
            track_of(records, f).is_some_and(|(_, r)| r.packets >= 60)
        })
        .await?;
    let (track, _) = track_of(&viewer.records().await, f).context("track")?;
    let announced = viewer.events().await.iter().find_map(|e| match e {
        ServerMessage::Joined { participants, .. } => {
            participants.iter().flat_map(|p| &p.tracks).next().cloned()
        }
        ServerMessage::TrackPublished { track, .. } => Some(track.clone()),
        _ => None,
    });
    ensure!(
        announced.is_some_and(|t| t.layers == ["f"]),
        "only the forwarded layer is announced"
    );
    // Asking for less changes nothing: there is nothing else to switch to.
    viewer.send(ClientMessage::SetQuality {
        track: track.clone(),
        quality: Quality::Low,
    });
    let before = viewer.records().await.get(&track).map_or(0, |r| r.packets);
    viewer
        .wait_for(WAIT, "more of the top layer", |records, _| {
            records
                .get(&track)
                .is_some_and(|r| r.packets >= before + 60)
        })
        .await?;
    let streams = viewer
        .records()
        .await
        .get(&track)
        .map(|r| r.streams.clone())
        .unwrap_or_default();
    ensure!(
        streams == std::collections::HashSet::from([f]),
        "received {streams:?}"
    );
    ensure!(!streams.contains(&q));
    Ok(())
}
