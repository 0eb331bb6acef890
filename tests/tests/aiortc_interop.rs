//! Interoperability with aiortc, a WebRTC stack written by nobody on this project: an
//! aiortc publisher's VP8 video, forwarded by the shard, is decoded by an aiortc
//! subscriber at the resolution it was sent.

use anyhow::{Context, Result, ensure};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;
use tutti_sfu::shard::api::PipelineSpec;
use tutti_tests::shard::{SIGNAL_TOKEN, TestShard};

/// The Python with aiortc installed: `TUTTI_PYTHON`, else the venv the test script makes.
fn python() -> Result<PathBuf> {
    if let Ok(path) = std::env::var("TUTTI_PYTHON") {
        return Ok(PathBuf::from(path));
    }
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python3");
    ensure!(
        venv.exists(),
        "aiortc is not installed: run tests/run-all.sh (it creates .venv) or set TUTTI_PYTHON"
    );
    Ok(venv)
}

fn peer(
    python: &PathBuf,
    mode: &str,
    url: &str,
    id: &str,
    extra: &[&str],
) -> tokio::process::Command {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("aiortc/peer.py");
    let mut command = tokio::process::Command::new(python);
    command
        .arg(script)
        .args([
            mode,
            "--url",
            url,
            "--token",
            SIGNAL_TOKEN,
            "--room",
            "interop",
            "--id",
            id,
        ])
        .args(extra)
        .kill_on_drop(true);
    command
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aiortc_publisher_to_aiortc_subscriber_decodes_frames_at_the_sent_resolution() -> Result<()>
{
    let python = python()?;
    let shard = TestShard::start().await?;
    shard
        .admin
        .put_pipeline("interop", &PipelineSpec::default())
        .await?;
    let url = shard.signal_url();
    let mut publisher = peer(
        &python,
        "publish",
        &url,
        "aiortc-pub",
        &["--width", "352", "--height", "288"],
    )
    .stdout(Stdio::null())
    .spawn()
    .context("start the aiortc publisher")?;
    let subscriber = peer(
        &python,
        "subscribe",
        &url,
        "aiortc-sub",
        &["--frames", "45", "--timeout", "40"],
    )
    .stdout(Stdio::piped())
    .spawn()
    .context("start the aiortc subscriber")?;
    let output = tokio::time::timeout(Duration::from_secs(90), subscriber.wait_with_output())
        .await
        .context("the aiortc subscriber did not finish")??;
    let load = shard.admin.load().await?;
    let _ = publisher.kill().await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout
        .lines()
        .last()
        .context("no result from the subscriber")?;
    let result: serde_json::Value = serde_json::from_str(line)?;
    println!("aiortc subscriber: {result}");
    let frames = result["frames"].as_u64().unwrap_or(0);
    ensure!(frames > 0, "no frame decoded: {result}");
    ensure!(frames >= 45, "only {frames} frames decoded: {result}");
    ensure!(
        result["width"] == 352 && result["height"] == 288,
        "wrong resolution: {result}"
    );
    ensure!(load.tracks == 1, "the shard hosts {} tracks", load.tracks);
    Ok(())
}
