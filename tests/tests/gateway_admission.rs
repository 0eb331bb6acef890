//! Room rules at the gateway, in local mode with real shards: every refusal gets its code
//! and leaves the participants already in the room exactly as they were, media included.

use anyhow::{Result, ensure};
use serde_json::{Value, json};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tutti_sfu::signal::protocol::ServerMessage;
use tutti_signaling::admission::{JoinClaims, TokenKeys};
use tutti_signaling::config::{LocalRooms, RoomsFile};
use tutti_tests::gateway::{GatewayClient, JWT_SECRET, http_get, local_options, start, ws_url};
use tutti_tests::init_logs;
use tutti_tests::participant::{Participant, ParticipantConfig, TrackRecord};

const WAIT: Duration = Duration::from_secs(15);

fn rooms() -> Result<LocalRooms> {
    let file: RoomsFile = toml::from_str(
        r#"
        autoCreate = false
        [[rooms]]
        name = "ensemble"
        maxParticipants = 3
        password = "allegro"
        [[rooms]]
        name = "open"
        "#,
    )?;
    LocalRooms::from_file(file, false).map_err(anyhow::Error::msg)
}

fn token(room: &str, name: &str, exp_from_now: i64, secret: &str) -> Result<String> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs() as i64;
    let keys = TokenKeys::new(secret.as_bytes())?;
    Ok(keys.issue(&JoinClaims {
        room: room.into(),
        name: name.into(),
        publish: true,
        subscribe: true,
        exp: (now + exp_from_now) as u64,
        nbf: None,
        record: false,
    })?)
}

fn video_packets(records: &std::collections::HashMap<String, TrackRecord>) -> u64 {
    records
        .values()
        .filter(|r| r.video)
        .map(|r| r.packets)
        .sum()
}

async fn refused(url: &str, join: Value) -> Result<String> {
    let mut client = GatewayClient::connect(url).await?;
    match client.join(join).await {
        Ok(joined) => anyhow::bail!("join unexpectedly admitted: {joined}"),
        Err(err) => Ok(err.to_string()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_have_their_codes_and_leave_the_room_untouched() -> Result<()> {
    init_logs();
    let system = start(local_options(rooms()?)).await?;
    let url = ws_url(&system);

    // Two musicians in a room for three, with its password; one plays, one listens.
    let mut cello = ParticipantConfig::new("ensemble", "cello");
    cello.gateway_join =
        Some(json!({"v":1,"type":"join","room":"ensemble","name":"Cello","password":"allegro"}));
    let cello = Participant::join(&url, "", cello).await?;
    let mut viola = ParticipantConfig::new("ensemble", "viola");
    viola.audio = false;
    viola.video = false;
    viola.gateway_join =
        Some(json!({"v":1,"type":"join","room":"ensemble","name":"Viola","password":"allegro"}));
    let viola = Participant::join(&url, "", viola).await?;
    viola
        .wait_for(WAIT, "the cello's video", |records, _| {
            video_packets(records) > 60
        })
        .await?;

    // Every way in that must fail, failing with its own code.
    let cases = [
        (
            json!({"room":"ensemble","name":"Flute","password":"adagio"}),
            "wrong_password",
        ),
        (
            json!({"room":"ensemble","name":"Flute"}),
            "password_required",
        ),
        (
            json!({"room":"ensemble","name":"cello","password":"allegro"}),
            "nickname_taken",
        ),
        (
            json!({"room":"ensemble","name":" VIOLA ","password":"allegro"}),
            "nickname_taken",
        ),
        (
            json!({"room":"no-such-room","name":"Flute"}),
            "room_not_found",
        ),
        (
            json!({"room":"ensemble","token": token("ensemble", "Flute", -120, JWT_SECRET)?}),
            "unauthorized",
        ),
        (
            json!({"room":"ensemble","token": token("ensemble", "Flute", 600, "a-forger-secret-also-32-bytes-long!!")?}),
            "unauthorized",
        ),
        (
            json!({"room":"ensemble","token": token("open", "Flute", 600, JWT_SECRET)?}),
            "unauthorized",
        ),
        (
            json!({"room":"ensemble","token":"eyJhbGciOiJub25lIn0.e30."}),
            "unauthorized",
        ),
    ];
    for (join, code) in cases {
        let got = refused(&url, join.clone()).await?;
        ensure!(got == code, "{join}: expected {code}, got {got}");
    }

    // A valid token opens the room without its password; then the room is full.
    let mut third = GatewayClient::connect(&url).await?;
    let joined = third
        .join(json!({"room":"ensemble","token": token("ensemble", "Flute", 600, JWT_SECRET)?}))
        .await?;
    ensure!(
        joined["name"] == "Flute",
        "the token's name is used: {joined}"
    );
    let full = refused(
        &url,
        json!({"room":"ensemble","name":"Oboe","password":"allegro"}),
    )
    .await?;
    ensure!(full == "room_full", "expected room_full, got {full}");

    // The two musicians noticed nothing but the flute coming in: still joined, still
    // receiving media, nobody left.
    let before = video_packets(&viola.records().await);
    viola
        .wait_for(WAIT, "more of the cello's video", |records, _| {
            video_packets(records) > before + 60
        })
        .await?;
    for musician in [&cello, &viola] {
        let events = musician.events().await;
        ensure!(
            !events
                .iter()
                .any(|e| matches!(e, ServerMessage::Left { .. })),
            "{} was disturbed: {events:?}",
            musician.id
        );
        let joins = events
            .iter()
            .filter(|e| matches!(e, ServerMessage::ParticipantJoined { .. }))
            .count();
        ensure!(joins <= 2, "{}: refused joins were announced", musician.id);
    }
    system.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_oversized_messages_get_bad_message_and_close_only_their_socket() -> Result<()>
{
    init_logs();
    let system = start(local_options(rooms()?)).await?;
    let url = ws_url(&system);
    let mut member = GatewayClient::connect(&url).await?;
    member.join(json!({"room":"open","name":"Member"})).await?;

    let mut rude = GatewayClient::connect(&url).await?;
    rude.join(json!({"room":"open","name":"Rude"})).await?;
    member.until("participant_joined", WAIT).await?;
    for frame in [
        "not json".to_owned(),
        "[1,2,3]".to_owned(),
        r#"{"v":1,"type":"fly"}"#.to_owned(),
        r#"{"v":1,"type":"chat"}"#.to_owned(),
        r#"{"v":1,"type":"offer","pc":"publisher","sdp":""}"#.to_owned(),
        format!(
            r#"{{"v":1,"type":"chat","text":"{}"}}"#,
            "x".repeat(70 * 1024)
        ),
    ] {
        rude.send_raw(frame.clone());
        let reply = rude.next(WAIT).await?;
        ensure!(
            reply["type"] == "error" && reply["code"] == "bad_message",
            "{}: {reply}",
            &frame[..frame.len().min(40)]
        );
    }
    rude.send_raw(r#"{"v":2,"type":"ping"}"#.to_owned());
    ensure!(rude.next(WAIT).await?["code"] == "unsupported_version");
    // Still connected and still in the room after all that.
    rude.send(json!({"type":"ping"}));
    ensure!(rude.until("pong", WAIT).await?["type"] == "pong");
    rude.send(json!({"type":"chat","text":"sorry"}));
    let chat = member.until("chat", WAIT).await?;
    ensure!(chat["text"] == "sorry", "{chat}");

    // Beyond what the WebSocket layer buffers (128 KiB), the sender's socket is closed...
    rude.send_raw("y".repeat(2 * 1024 * 1024));
    rude.wait_closed(WAIT).await?;
    // ...its participant leaves, and nobody else is touched.
    let left = member.until("participant_left", WAIT).await?;
    ensure!(left["type"] == "participant_left");
    member.send(json!({"type":"ping"}));
    member.until("pong", WAIT).await?;
    ensure!(!member.is_closed());
    let (_, metrics) = http_get(system.server.addr, "/metrics").await?;
    ensure!(
        metrics.contains("tutti_gateway_errors_total{code=\"bad_message\"} 6"),
        "bad messages counted: {}",
        metrics
            .lines()
            .filter(|l| l.contains("bad_message"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    system.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_lived_tokens_and_resume_tokens_from_before_a_password_change_are_refused()
-> Result<()> {
    let mut options = local_options(rooms()?);
    options.common.jwt_secret = Some(JWT_SECRET.into());
    let system = start(options).await?;
    let url = ws_url(&system);
    // A token valid for a month is refused; one for a day opens the room.
    let month = token("open", "Visitor", 30 * 24 * 3600, JWT_SECRET)?;
    ensure!(refused(&url, json!({"room": "open", "token": month})).await? == "unauthorized");
    let day = token("open", "Visitor", 24 * 3600, JWT_SECRET)?;
    let mut client = GatewayClient::connect(&url).await?;
    client.join(json!({"room": "open", "token": day})).await?;

    // A resume token names the room's password at the time: once the password changes,
    // it brings nobody back.
    let mut member = GatewayClient::connect(&url).await?;
    let joined = member
        .join(json!({"room": "ensemble", "name": "Cellist", "password": "allegro"}))
        .await?;
    let resume = joined["resume"].as_str().unwrap_or_default().to_owned();
    drop(member);
    // Before the change it brings the cellist back without the password.
    let mut back = GatewayClient::connect(&url).await?;
    back.join(json!({"room": "ensemble", "resume": resume.clone()}))
        .await?;
    drop(back);
    let mut record = tutti_store::LiveView::room(&system.store, "ensemble")
        .ok_or_else(|| anyhow::anyhow!("no record"))?;
    record.password_hash =
        Some(tutti_store::password::hash_password("vivace").map_err(anyhow::Error::msg)?);
    tutti_store::LiveWriter::put_room(&system.store, record)
        .await
        .map_err(anyhow::Error::msg)?;
    let answer = refused(
        &url,
        json!({"room": "ensemble", "name": "Cellist", "resume": resume}),
    )
    .await?;
    ensure!(answer == "password_required", "{answer}");
    Ok(())
}
