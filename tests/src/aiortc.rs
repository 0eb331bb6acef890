//! aiortc peers (`tests/aiortc/peer.py`), a WebRTC stack written by nobody on this
//! project, run as child processes.

use anyhow::{Context, Result, ensure};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

/// The Python with aiortc installed: `TUTTI_PYTHON`, else the venv the test script makes.
pub fn python() -> Result<PathBuf> {
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

/// `peer.py MODE ARGS…`, killed when dropped.
pub fn peer(mode: &str, args: &[&str]) -> Result<tokio::process::Command> {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("aiortc/peer.py");
    let mut command = tokio::process::Command::new(python()?);
    command.arg(script).arg(mode).args(args).kill_on_drop(true);
    Ok(command)
}

/// Starts a publisher that runs until killed.
pub fn spawn_publisher(args: &[&str]) -> Result<tokio::process::Child> {
    peer("publish", args)?
        .stdout(Stdio::null())
        .spawn()
        .context("start the aiortc publisher")
}

/// Runs a subscriber to the end; its one-line JSON result.
pub async fn run_subscriber(args: &[&str], deadline: Duration) -> Result<serde_json::Value> {
    let subscriber = peer("subscribe", args)?
        .stdout(Stdio::piped())
        .spawn()
        .context("start the aiortc subscriber")?;
    let output = tokio::time::timeout(deadline, subscriber.wait_with_output())
        .await
        .context("the aiortc subscriber did not finish")??;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout
        .lines()
        .last()
        .context("no result from the subscriber")?;
    Ok(serde_json::from_str(line)?)
}
