//! A shard's recordings over its admin API, as the control plane drives them: started by
//! a spec naming the room and the signaling URL of the shard holding it, moved by a new
//! spec, reported, stopped with every file complete; every bad request refused with its
//! status, and a shard without `--record-dir` saying it records nothing.

use anyhow::{Result, ensure};
use hyper::Method;
use serde_json::{Value, json};
use std::time::Duration;
use tutti_sfu::shard::api::PipelineSpec;
use tutti_tests::eventually::eventually;
use tutti_tests::init_logs;
use tutti_tests::participant::{Participant, ParticipantConfig};
use tutti_tests::shard::{ADMIN_TOKEN, SIGNAL_TOKEN, TestShard};

const WAIT: Duration = Duration::from_secs(20);

async fn call(
    shard: &TestShard,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> Result<(u16, Value)> {
    let (status, text) = shard
        .admin
        .request(method, path, Some(ADMIN_TOKEN), body.map(|b| b.to_string()))
        .await?;
    Ok((
        status.as_u16(),
        serde_json::from_str(&text).unwrap_or(Value::Null),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_records_a_room_it_holds_as_the_control_plane_asks() -> Result<()> {
    init_logs();
    let dir = std::env::temp_dir().join(format!("tutti-shard-recording-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let shard = TestShard::start_recording(dir.clone()).await?;
    shard
        .admin
        .put_pipeline("lesson", &PipelineSpec::default())
        .await?;
    let from = shard.signal_url();
    let spec = json!({ "room": "lesson", "from": from });

    // Refusals: no token, a bad name, a bad spec, nothing to show or stop.
    let (status, _) = shard
        .admin
        .request(
            Method::PUT,
            "/v1/recordings/r1",
            None,
            Some(spec.to_string()),
        )
        .await?;
    ensure!(status.as_u16() == 401, "without the admin token: {status}");
    ensure!(
        call(
            &shard,
            Method::PUT,
            "/v1/recordings/a%20b",
            Some(spec.clone())
        )
        .await?
        .0 == 400
    );
    let bad = json!({ "room": "lesson", "from": "http://elsewhere/" });
    ensure!(
        call(&shard, Method::PUT, "/v1/recordings/r1", Some(bad))
            .await?
            .0
            == 400
    );
    let unknown = json!({ "room": "lesson", "from": from, "extra": 1 });
    ensure!(
        call(&shard, Method::PUT, "/v1/recordings/r1", Some(unknown))
            .await?
            .0
            == 400
    );
    ensure!(
        call(&shard, Method::GET, "/v1/recordings/r1", None)
            .await?
            .0
            == 404
    );
    ensure!(
        call(&shard, Method::DELETE, "/v1/recordings/r1", None)
            .await?
            .0
            == 404
    );

    // Started; asked again, the same recording; another room under its name conflicts.
    let (code, started) =
        call(&shard, Method::PUT, "/v1/recordings/r1", Some(spec.clone())).await?;
    ensure!(
        code == 201 && started["phase"] == "Recording",
        "{code} {started}"
    );
    ensure!(
        call(&shard, Method::PUT, "/v1/recordings/r1", Some(spec.clone()))
            .await?
            .0
            == 200
    );
    let other = json!({ "room": "other", "from": from });
    ensure!(
        call(&shard, Method::PUT, "/v1/recordings/r1", Some(other))
            .await?
            .0
            == 409
    );
    let (code, list) = call(&shard, Method::GET, "/v1/recordings", None).await?;
    ensure!(code == 200 && list["running"] == json!(["r1"]), "{list}");

    // A participant publishes: two files, growing.
    let url = shard.signal_url();
    let cello = Participant::join(
        &url,
        SIGNAL_TOKEN,
        ParticipantConfig::new("lesson", "cello"),
    )
    .await?;
    eventually(WAIT, "two files with a second of media each", || async {
        let (code, status) = call(&shard, Method::GET, "/v1/recordings/r1", None).await?;
        let files = status["files"].as_array().cloned().unwrap_or_default();
        Ok(code == 200
            && files.len() == 2
            && files
                .iter()
                .all(|f| f["durationMs"].as_u64().unwrap_or(0) >= 1_000))
    })
    .await?;

    // Stopped: every file complete, then still reported.
    let (code, stopped) = call(&shard, Method::DELETE, "/v1/recordings/r1", None).await?;
    ensure!(
        code == 200 && stopped["phase"] == "Stopped",
        "{code} {stopped}"
    );
    let files = stopped["files"].as_array().cloned().unwrap_or_default();
    ensure!(
        files.len() == 2 && files.iter().all(|f| f["complete"] == true),
        "{stopped}"
    );
    let (code, again) = call(&shard, Method::GET, "/v1/recordings/r1", None).await?;
    ensure!(code == 200 && again["phase"] == "Stopped", "{again}");
    let recording = dir.join(stopped["path"].as_str().unwrap_or_default());
    ensure!(recording.join("manifest.json").exists());
    cello.leave().await;
    shard.shard.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_without_a_record_dir_records_nothing() -> Result<()> {
    init_logs();
    let shard = TestShard::start().await?;
    let spec = json!({ "room": "lesson", "from": shard.signal_url() });
    let (code, body) = call(&shard, Method::PUT, "/v1/recordings/r1", Some(spec)).await?;
    ensure!(
        code == 501 && body["error"] == "not_available",
        "{code} {body}"
    );
    shard.shard.stop().await;
    Ok(())
}
