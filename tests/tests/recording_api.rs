//! Recordings over the gateway's HTTP API in local mode: who may start and stop one (a
//! join token for the room with the `record` grant), every refusal with its status, and a
//! recording of a publishing participant, run by the control loop on the shard holding
//! the room, whose status shows its files growing, then stopped with its files complete.

use anyhow::{Result, ensure};
use serde_json::Value;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tutti_signaling::admission::{JoinClaims, TokenKeys};
use tutti_signaling::config::{LocalRooms, RoomsFile};
use tutti_tests::eventually::eventually;
use tutti_tests::gateway::{
    JWT_SECRET, http_delete_with, http_get_with, http_post_with, local_options, start,
};
use tutti_tests::init_logs;
use tutti_tests::participant::{Participant, ParticipantConfig};

fn token(room: &str, record: bool) -> Result<String> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    Ok(TokenKeys::new(JWT_SECRET.as_bytes())?.issue(&JoinClaims {
        room: room.into(),
        name: "Organiser".into(),
        publish: false,
        subscribe: false,
        exp: now + 600,
        nbf: None,
        record,
    })?)
}

fn rooms() -> Result<LocalRooms> {
    let file: RoomsFile = toml::from_str("autoCreate = false\n[[rooms]]\nname = \"lesson\"\n")?;
    LocalRooms::from_file(file, false).map_err(anyhow::Error::msg)
}

fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("tutti-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recordings_are_started_and_stopped_only_with_the_record_grant() -> Result<()> {
    init_logs();
    let dir = temp_dir("recording-api");
    let mut options = local_options(rooms()?);
    options.record_dir = Some(dir.clone());
    let system = start(options).await?;
    let addr = system.server.addr;
    let path = "/v1/rooms/lesson/recording";
    let granted = token("lesson", true)?;

    // Refusals: no token, a token without the grant, a token for another room, a room
    // that does not exist, nothing to stop.
    ensure!(http_post_with(addr, path, None).await?.0 == 401);
    ensure!(http_post_with(addr, path, Some("not-a-token")).await?.0 == 401);
    ensure!(
        http_post_with(addr, path, Some(&token("lesson", false)?))
            .await?
            .0
            == 403
    );
    ensure!(
        http_post_with(addr, path, Some(&token("other", true)?))
            .await?
            .0
            == 403
    );
    let (status, body) = http_post_with(
        addr,
        "/v1/rooms/other/recording",
        Some(&token("other", true)?),
    )
    .await?;
    ensure!(
        status == 404 && body.contains("room_not_found"),
        "{status} {body}"
    );
    let (status, body) = http_get_with(addr, path, Some(&granted)).await?;
    ensure!(
        status == 404 && body.contains("not_recording"),
        "{status} {body}"
    );
    ensure!(http_delete_with(addr, path, Some(&granted)).await?.0 == 404);

    // Started once; a second start conflicts.
    let (status, body) = http_post_with(addr, path, Some(&granted)).await?;
    ensure!(status == 201, "start: {status} {body}");
    let started: Value = serde_json::from_str(&body)?;
    ensure!(
        started["phase"] == "Pending" && started["room"] == "lesson",
        "{started}"
    );
    ensure!(http_post_with(addr, path, Some(&granted)).await?.0 == 409);

    // A participant publishes: its two tracks' files appear and grow.
    let url = format!("ws://{addr}/v1/ws");
    let mut config = ParticipantConfig::new("lesson", "cello");
    config.gateway_join =
        Some(serde_json::json!({"v":1,"type":"join","room":"lesson","name":"Cello"}));
    let cello = Participant::join(&url, "", config).await?;
    eventually(
        Duration::from_secs(20),
        "two files with a second of media",
        || {
            let granted = granted.clone();
            async move {
                let (code, body) = http_get_with(addr, path, Some(&granted)).await?;
                let status: Value = serde_json::from_str(&body)?;
                let files = status["files"].as_array().cloned().unwrap_or_default();
                Ok(code == 200
                    && files.len() == 2
                    && files
                        .iter()
                        .all(|f| f["durationMs"].as_u64().unwrap_or(0) >= 1_000))
            }
        },
    )
    .await?;
    let status: Value = serde_json::from_str(&http_get_with(addr, path, Some(&granted)).await?.1)?;
    ensure!(status["phase"] == "Recording", "{status}");
    let kinds: Vec<&str> = status["files"]
        .as_array()
        .map(|f| f.iter().filter_map(|f| f["kind"].as_str()).collect())
        .unwrap_or_default();
    ensure!(
        kinds.contains(&"audio") && kinds.contains(&"video"),
        "{status}"
    );
    ensure!(
        status["files"]
            .as_array()
            .is_some_and(|f| f.iter().all(|f| f["name"] == "Cello"))
    );

    // Stopped: every file complete, the status kept, its files private on disk.
    let (code, body) = http_delete_with(addr, path, Some(&granted)).await?;
    ensure!(code == 200, "stop: {code} {body}");
    let stopped: Value = serde_json::from_str(&body)?;
    ensure!(
        stopped["phase"] == "Stopped" && stopped["endedAtMs"].is_u64(),
        "{stopped}"
    );
    let files = stopped["files"].as_array().cloned().unwrap_or_default();
    ensure!(
        files.len() == 2 && files.iter().all(|f| f["complete"] == true),
        "{stopped}"
    );
    let (code, body) = http_get_with(addr, path, Some(&granted)).await?;
    ensure!(code == 200 && body.contains("\"Stopped\""), "{code} {body}");
    let recording = dir.join(stopped["path"].as_str().unwrap_or_default());
    for file in &files {
        let file = recording.join(file["file"].as_str().unwrap_or_default());
        let mode =
            std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&file)?.permissions());
        ensure!(mode & 0o777 == 0o600, "{} is mode {mode:o}", file.display());
    }
    cello.leave().await;
    system.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_without_a_record_dir_says_it_records_nothing() -> Result<()> {
    init_logs();
    let system = start(local_options(rooms()?)).await?;
    let (code, body) = http_post_with(
        system.server.addr,
        "/v1/rooms/lesson/recording",
        Some(&token("lesson", true)?),
    )
    .await?;
    ensure!(
        code == 501 && body.contains("not_available"),
        "{code} {body}"
    );
    system.stop().await;
    Ok(())
}
