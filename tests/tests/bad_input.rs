//! Hostile and broken input reaching a shard while a lesson is in progress. Each kind is
//! dropped and counted, nothing panics, and the lesson's media keeps flowing.

use anyhow::{Context, Result, ensure};
use hyper::{Method, StatusCode};
use std::time::Duration;
use tokio::net::UdpSocket;
use tutti_sfu::shard::api::PipelineSpec;
use tutti_sfu::signal::protocol::{ErrorCode, MAX_MESSAGE_BYTES, ServerMessage};
use tutti_tests::participant::{Participant, ParticipantConfig};
use tutti_tests::raw_peer::RawSubscriber;
use tutti_tests::shard::{ADMIN_TOKEN, SIGNAL_TOKEN, TestShard};
use tutti_tests::signal_client::{Outgoing, SignalClient};

const WAIT: Duration = Duration::from_secs(15);

/// A STUN Binding request with a USERNAME and a MESSAGE-INTEGRITY that proves nothing.
fn stun_request(username: &str) -> Vec<u8> {
    let mut attrs = Vec::new();
    let name = username.as_bytes();
    attrs.extend_from_slice(&0x0006u16.to_be_bytes());
    attrs.extend_from_slice(&(name.len() as u16).to_be_bytes());
    attrs.extend_from_slice(name);
    attrs.resize(attrs.len().div_ceil(4) * 4, 0);
    attrs.extend_from_slice(&0x0008u16.to_be_bytes());
    attrs.extend_from_slice(&20u16.to_be_bytes());
    attrs.extend_from_slice(&[0xAB; 20]);
    let mut message = Vec::new();
    message.extend_from_slice(&0x0001u16.to_be_bytes());
    message.extend_from_slice(&(attrs.len() as u16).to_be_bytes());
    message.extend_from_slice(&[0x21, 0x12, 0xA4, 0x42]);
    message.extend_from_slice(&rand::random::<[u8; 12]>());
    message.extend_from_slice(&attrs);
    message
}

fn counter(text: &str, series: &str) -> f64 {
    tutti_tests::metric_value(text, series).unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_datagrams_and_frames_are_dropped_counted_and_harmless() -> Result<()> {
    let shard = TestShard::start().await?;
    shard
        .admin
        .put_pipeline("calm", &PipelineSpec::default())
        .await?;
    let url = shard.signal_url();
    let teacher = Participant::join(
        &url,
        SIGNAL_TOKEN,
        ParticipantConfig::new("calm", "teacher"),
    )
    .await?;
    let mut student_config = ParticipantConfig::new("calm", "student");
    student_config.audio = false;
    student_config.video = false;
    let mut student_config2 = student_config.clone();
    student_config2.id = "student2".into();
    let student = Participant::join(&url, SIGNAL_TOKEN, student_config).await?;
    let (audio_stream, video_stream) = teacher.stream_ids();
    student
        .wait_for(WAIT, "the lesson flowing", |records, _| {
            records
                .values()
                .any(|r| r.streams.contains(&video_stream) && r.packets >= 60)
                && records
                    .values()
                    .any(|r| r.streams.contains(&audio_stream) && r.packets >= 20)
        })
        .await?;
    // The shard's ICE ufrag on the student's subscriber connection, from its offer.
    let shard_ufrag = student
        .events()
        .await
        .iter()
        .find_map(|e| match e {
            ServerMessage::Offer { sdp, .. } => sdp
                .lines()
                .find_map(|l| l.trim().strip_prefix("a=ice-ufrag:").map(str::to_owned)),
            _ => None,
        })
        .context("shard ufrag")?;

    // 1. Datagrams from a stranger.
    let media = shard.shard.udp_addr;
    let attacker = UdpSocket::bind("127.0.0.1:0").await?;
    let mut garbage = 0u64;
    for i in 0..600usize {
        let len = (i * 37) % 1400;
        let mut bytes: Vec<u8> = (0..len).map(|_| rand::random::<u8>()).collect();
        // Keep the first byte outside every protocol's range: pure garbage.
        if let Some(first) = bytes.first_mut() {
            *first = 64 + (*first % 64);
        }
        attacker.send_to(&bytes, media).await?;
        garbage += 1;
    }
    let truncated: [&[u8]; 5] = [
        &[0x80, 0x60, 0x00, 0x01, 0x00],       // RTP shorter than its header
        &[0x81, 0xC9, 0x00],                   // RTCP shorter than its header
        &[0x16, 0xFE, 0xFD],                   // DTLS shorter than a record header
        &[0x00, 0x01, 0x00, 0x00, 0x21, 0x12], // STUN shorter than its header
        &[],                                   // nothing at all
    ];
    for bytes in truncated {
        attacker.send_to(bytes, media).await?;
        garbage += 1;
    }
    // Well-formed headers from an address no peer owns.
    let mut rtp = vec![0x80, 0x60, 0x12, 0x34, 0, 0, 0, 1, 0xDE, 0xAD, 0xBE, 0xEF];
    rtp.extend_from_slice(&[0u8; 100]);
    let dtls = [
        0x16, 0xFE, 0xFD, 0, 0, 0, 0, 0, 0, 0, 0, 0, 5, 1, 2, 3, 4, 5,
    ];
    for _ in 0..50 {
        attacker.send_to(&rtp, media).await?;
        attacker.send_to(&dtls, media).await?;
    }
    for _ in 0..20 {
        attacker
            .send_to(&stun_request("nosuchufrag:evil"), media)
            .await?;
        attacker
            .send_to(&stun_request(&format!("{shard_ufrag}:evil")), media)
            .await?;
    }

    // 2. Junk from an authenticated participant's own address.
    let mut rogue = RawSubscriber::join(&url, SIGNAL_TOKEN, "calm", "rogue").await?;
    rogue.wait_connected(WAIT).await?;
    for i in 0..300u32 {
        let mut srtp = vec![0x80, 0x60];
        srtp.extend_from_slice(&(i as u16).to_be_bytes());
        srtp.extend_from_slice(&i.to_be_bytes());
        srtp.extend_from_slice(&rand::random::<u32>().to_be_bytes());
        srtp.extend((0..(i % 200)).map(|_| rand::random::<u8>()));
        rogue.send_raw(srtp);
        rogue.send_raw(vec![0x81, 0xC9, 0x00, 0x07, 1, 2, 3, 4]);
        rogue.send_raw(vec![
            0x17, 0xFE, 0xFD, 0, 1, 0, 0, 0, 0, 0, 9, 0, 3, 1, 2, 3,
        ]);
        rogue.send_raw(vec![0x80]);
    }

    // 3. Broken signaling, on its own connection.
    let mut bad = SignalClient::connect(&url, SIGNAL_TOKEN).await?;
    let frames = [
        Outgoing::Raw("this is not json".into()),
        Outgoing::Raw("{\"v\":1,\"type\":\"teleport\"}".into()),
        Outgoing::Raw("{\"v\":7,\"type\":\"ping\"}".into()),
        Outgoing::Raw("{\"v\":1,\"type\":\"join\",\"room\":\"calm\"}".into()),
        Outgoing::Raw(format!(
            "{{\"v\":1,\"type\":\"offer\",\"pc\":\"publisher\",\"sdp\":\"{}\"}}",
            "a".repeat(MAX_MESSAGE_BYTES + 10)
        )),
        Outgoing::Binary(vec![1, 2, 3]),
        Outgoing::Raw("{\"v\":1,\"type\":\"answer\",\"pc\":\"subscriber\",\"sdp\":\"v=0\"}".into()),
    ];
    let expected = [
        ErrorCode::BadMessage,
        ErrorCode::BadMessage,
        ErrorCode::UnsupportedVersion,
        ErrorCode::BadMessage,
        ErrorCode::MessageTooLarge,
        ErrorCode::BadMessage,
        ErrorCode::NotJoined,
    ];
    for frame in frames {
        bad.tx.send(frame)?;
    }
    for want in expected {
        let got = tokio::time::timeout(WAIT, bad.rx.recv())
            .await?
            .context("signaling closed")?;
        match got {
            ServerMessage::Error { code, .. } => {
                ensure!(code == want, "expected {want:?}, got {code:?}")
            }
            other => anyhow::bail!("expected an error, got {other:?}"),
        }
    }
    // A joined session that sends nonsense SDP keeps its seat.
    bad.send(tutti_sfu::signal::protocol::ClientMessage::Join {
        room: "calm".into(),
        participant: "confused".into(),
        name: None,
        publish: None,
        subscribe: Some(false),
        relay: None,
        pipe: None,
        recorder: None,
        offer_subscriber: None,
    });
    let joined = tokio::time::timeout(WAIT, bad.rx.recv())
        .await?
        .context("closed")?;
    ensure!(matches!(joined, ServerMessage::Joined { .. }), "{joined:?}");
    bad.send(tutti_sfu::signal::protocol::ClientMessage::Offer {
        pc: tutti_sfu::signal::protocol::PeerTarget::Publisher,
        sdp: "v=0\r\nthis is not sdp\r\nm=video nonsense\r\n".into(),
    });
    let rejected = tokio::time::timeout(WAIT, bad.rx.recv())
        .await?
        .context("closed")?;
    ensure!(
        matches!(
            rejected,
            ServerMessage::Error {
                code: ErrorCode::SdpRejected,
                ..
            }
        ),
        "{rejected:?}"
    );
    // An offer asking for more media sections than a participant may publish.
    let many = (0..20).fold(
        String::from("v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n"),
        |sdp, i| sdp + &format!("m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:{i}\r\na=sendonly\r\n"),
    );
    bad.send(tutti_sfu::signal::protocol::ClientMessage::Offer {
        pc: tutti_sfu::signal::protocol::PeerTarget::Publisher,
        sdp: many,
    });
    let rejected = tokio::time::timeout(WAIT, bad.rx.recv())
        .await?
        .context("closed")?;
    ensure!(
        matches!(&rejected, ServerMessage::Error { code: ErrorCode::SdpRejected, message } if message.contains("media sections")),
        "{rejected:?}"
    );
    // An offer asking for a thousand simulcast layers (each would get buffers up front).
    let rids = (0..1000).fold(
        String::from("v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:0\r\na=sendonly\r\n"),
        |sdp, i| sdp + &format!("a=rid:r{i} send\r\n"),
    );
    bad.send(tutti_sfu::signal::protocol::ClientMessage::Offer {
        pc: tutti_sfu::signal::protocol::PeerTarget::Publisher,
        sdp: rids,
    });
    let rejected = tokio::time::timeout(WAIT, bad.rx.recv())
        .await?
        .context("closed")?;
    ensure!(
        matches!(&rejected, ServerMessage::Error { code: ErrorCode::SdpRejected, message } if message.contains("a=rid")),
        "{rejected:?}"
    );
    // A frame beyond the WebSocket layer's hard limit closes only that connection.
    let mut huge = SignalClient::connect(&url, SIGNAL_TOKEN).await?;
    huge.tx.send(Outgoing::Raw("x".repeat(2 * 1024 * 1024)))?;
    let closed = tokio::time::timeout(WAIT, huge.rx.recv()).await?;
    ensure!(
        closed.is_none(),
        "the huge frame's connection stayed open: {closed:?}"
    );
    // Sockets without the token never reach the protocol.
    ensure!(SignalClient::connect(&url, "wrong-token").await.is_err());
    let (status, _) = shard
        .admin
        .request(Method::GET, "/v1/pipelines", Some("wrong"), None)
        .await?;
    ensure!(status == StatusCode::UNAUTHORIZED);
    let (status, _) = shard
        .admin
        .request(
            Method::PUT,
            "/v1/pipelines/calm",
            Some(ADMIN_TOKEN),
            Some("{\"maxParticipants\":\"lots\"}".into()),
        )
        .await?;
    ensure!(status == StatusCode::BAD_REQUEST);
    let (status, _) = shard
        .admin
        .request(
            Method::PUT,
            "/v1/pipelines/no%20spaces",
            Some(ADMIN_TOKEN),
            None,
        )
        .await?;
    ensure!(status == StatusCode::BAD_REQUEST);

    // The lesson went on: a second student joining now gets a complete stream, the first
    // student's video kept arriving, and the rogue's connection is still served.
    let before = student
        .records()
        .await
        .values()
        .find(|r| r.streams.contains(&video_stream))
        .map_or(0, |r| r.packets);
    student
        .wait_for(WAIT, "more video after the attack", |records, _| {
            records
                .values()
                .any(|r| r.streams.contains(&video_stream) && r.packets >= before + 120)
        })
        .await?;
    let records = student.records().await;
    let video = records
        .values()
        .find(|r| r.streams.contains(&video_stream))
        .context("video")?;
    let sent = teacher
        .sent()
        .video_packets
        .load(std::sync::atomic::Ordering::SeqCst);
    let delivery = video.delivery(sent);
    println!("student video through the attack: {delivery:?}");
    ensure!(delivery.intact && delivery.in_order, "{delivery:?}");
    ensure!(delivery.ratio >= 0.97, "{delivery:?}");
    let late = Participant::join(&url, SIGNAL_TOKEN, student_config2).await?;
    late.wait_for(WAIT, "media for a new student", |records, _| {
        records.values().any(|r| r.packets >= 30)
    })
    .await?;
    ensure!(rogue.rtp_received.load(std::sync::atomic::Ordering::SeqCst) > 0);

    // Every kind was counted.
    let metrics = shard.admin.metrics().await?;
    let dropped = |reason: &str| {
        counter(
            &metrics,
            &format!("tutti_sfu_datagrams_dropped_total{{reason=\"{reason}\"}}"),
        )
    };
    let errors = |code: &str| {
        counter(
            &metrics,
            &format!("tutti_sfu_signaling_errors_total{{code=\"{code}\"}}"),
        )
    };
    println!(
        "dropped: garbage={} unknown_source={} unknown_ufrag={} bad_integrity={} bad_srtcp={}",
        dropped("garbage"),
        dropped("unknown_source"),
        dropped("unknown_ufrag"),
        dropped("bad_integrity"),
        dropped("bad_srtcp")
    );
    ensure!(
        dropped("garbage") >= garbage as f64,
        "garbage not all counted: {}",
        dropped("garbage")
    );
    ensure!(dropped("unknown_source") >= 100.0);
    ensure!(dropped("unknown_ufrag") >= 20.0);
    ensure!(dropped("bad_integrity") >= 20.0);
    // The rogue's RTCP-shaped junk reached the shard's own SRTCP check, not its connection.
    // How many of the 300 arrive depends on the machine: they go in one burst with 900
    // other datagrams, and a busy receive buffer drops what does not fit.
    ensure!(
        dropped("bad_srtcp") >= 1.0,
        "bad_srtcp: {}",
        dropped("bad_srtcp")
    );
    ensure!(errors("bad_message") >= 4.0 && errors("message_too_large") >= 1.0);
    ensure!(errors("unsupported_version") >= 1.0 && errors("sdp_rejected") >= 1.0);
    ensure!(errors("unauthorized") >= 1.0);
    ensure!(counter(&metrics, "tutti_sfu_peer_panics_total") == 0.0);
    let load = shard.admin.load().await?;
    ensure!(
        load.participants == 5,
        "participants: {}",
        load.participants
    );
    Ok(())
}
