//! The benchmark binary runs end to end and prints the promised keys. (Its figures are
//! read by people, from release builds; nothing here judges speed.)

use anyhow::{Context, Result, ensure};

const KEYS: [&str; 13] = [
    "publishers",
    "subscribers",
    "seconds",
    "sent_packets",
    "expected_packets",
    "received_packets",
    "loss_ratio",
    "latency_p50_ms",
    "latency_p99_ms",
    "sfu_cpu_seconds",
    "sfu_cpu_us_per_forwarded_packet",
    "sfu_rss_mib",
    "join_ms_p50",
];

async fn run(mode: &str) -> Result<serde_json::Value> {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_tutti-bench"))
        .args([
            mode,
            "--publishers",
            "1",
            "--subscribers",
            "3",
            "--seconds",
            "2",
        ])
        .kill_on_drop(true)
        .output()
        .await?;
    ensure!(
        output.status.success(),
        "{mode}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8(output.stdout)?;
    let last = stdout.lines().last().context("no output")?;
    Ok(serde_json::from_str(last)?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_and_baseline_print_one_json_report() -> Result<()> {
    for mode in ["fanout", "baseline"] {
        let report = run(mode).await?;
        println!("{mode}: {report}");
        for key in KEYS {
            ensure!(
                report.get(key).is_some(),
                "{mode} report lacks {key}: {report}"
            );
        }
        ensure!(
            report["received_packets"].as_u64().unwrap_or(0) > 0,
            "{mode}: nothing received"
        );
        ensure!(
            report["expected_packets"].as_u64() == report["sent_packets"].as_u64().map(|s| s * 3),
            "{mode}: expected is not sent × fan-out"
        );
    }
    Ok(())
}
