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

async fn run(mode: &str, extra: &[&str]) -> Result<serde_json::Value> {
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
        .args(extra)
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
    // The same load through a shard, through Janus VideoRoom (Debian's package, which the
    // test command installs), and through the plain relay.
    for (mode, extra, sfu, subscribers_as) in [
        ("fanout", &[][..], "tutti", "full"),
        ("fanout", &["--subscribers-as", "lean"][..], "tutti", "lean"),
        ("fanout", &["--sfu", "janus"][..], "janus", "full"),
        ("baseline", &[][..], "relay", "raw"),
    ] {
        let report = run(mode, extra).await?;
        println!("{mode} {sfu} {subscribers_as}: {report}");
        ensure!(report["sfu"] == sfu, "{mode}: sfu {}", report["sfu"]);
        ensure!(
            report["subscribers_as"] == subscribers_as,
            "{mode}: subscribers {}",
            report["subscribers_as"]
        );
        // Latency at the socket wherever the load generator owns the sockets.
        ensure!(
            report["socket_latency_p99_ms"].is_f64() == (subscribers_as != "full"),
            "{mode} {subscribers_as}: socket latency {}",
            report["socket_latency_p99_ms"]
        );
        // The shard reads every subscriber's congestion feedback, lean or full.
        if sfu == "tutti" {
            ensure!(
                report["subscribers_estimated"] == 3,
                "{mode} {subscribers_as}: {} subscribers with a downlink estimate",
                report["subscribers_estimated"]
            );
        }
        // The forwarder reads its subscribers' feedback besides the media (a receiver
        // report a second at least, from each of the 3), the plain relay as well.
        if sfu != "janus" {
            let read = report["datagrams_read_per_second"].as_f64().unwrap_or(0.0);
            let seconds = report["seconds"].as_f64().unwrap_or(1.0).max(1e-3);
            let media = report["sent_packets"].as_f64().unwrap_or(0.0) / seconds;
            ensure!(
                read > media + 3.0,
                "{mode} {subscribers_as}: {read:.0} datagrams/s read for {media:.0} media packets/s: no feedback"
            );
        }
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn side_by_side_reports_both_windows_and_their_ratio() -> Result<()> {
    // The shard under test is named by path, as an older build would be.
    let exe = env!("CARGO_BIN_EXE_tutti-bench");
    let report = run("side-by-side", &["--shard-exe", exe]).await?;
    println!("side-by-side: {report}");
    ensure!(report["mode"] == "side-by-side", "mode {}", report["mode"]);
    ensure!(report["tutti"]["sfu"] == "tutti", "{report}");
    ensure!(report["tutti"]["subscribers_as"] == "lean", "{report}");
    ensure!(report["relay"]["sfu"] == "relay", "{report}");
    for side in ["tutti", "relay"] {
        ensure!(
            report[side]["received_packets"].as_u64().unwrap_or(0) > 0,
            "{side}: nothing received"
        );
        for key in KEYS {
            ensure!(report[side].get(key).is_some(), "{side} lacks {key}");
        }
    }
    let ratio = report["cpu_ratio"].as_f64().unwrap_or(0.0);
    let expected = report["tutti"]["sfu_cpu_us_per_forwarded_packet"]
        .as_f64()
        .unwrap_or(0.0)
        / report["relay"]["sfu_cpu_us_per_forwarded_packet"]
            .as_f64()
            .unwrap_or(f64::NAN);
    ensure!(
        (ratio - expected).abs() < 1e-9,
        "ratio {ratio}, expected {expected}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcast_prints_one_json_report() -> Result<()> {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_tutti-bench"))
        .args([
            "broadcast",
            "--viewers",
            "4",
            "--edges",
            "2",
            "--seconds",
            "2",
            "--pli-every-ms",
            "200",
            // The other smoke tests run beside this one at the default niceness; at 19 its
            // viewers could starve behind them. 0 still goes through `renice`.
            "--loadgen-nice",
            "0",
        ])
        .env("RUST_LOG", "warn")
        .kill_on_drop(true)
        .output()
        .await?;
    ensure!(
        output.status.success(),
        "broadcast: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8(output.stdout)?;
    let report: serde_json::Value =
        serde_json::from_str(stdout.lines().last().context("no output")?)?;
    println!("broadcast: {report}");
    for key in [
        "viewers",
        "viewers_receiving",
        "loss_ratio",
        "latency_p50_ms",
        "latency_p99_ms",
        "per_hop_latency_ms",
        "presenter_plis",
        "cpu_seconds_per_shard",
    ] {
        ensure!(report.get(key).is_some(), "report lacks {key}: {report}");
    }
    ensure!(report["viewers"] == 4, "viewers: {report}");
    ensure!(report["edges"] == 2, "edges: {report}");
    ensure!(report["loadgen_nice"] == 0, "loadgen_nice: {report}");
    ensure!(
        report["received_packets"].as_u64().unwrap_or(0) > 0,
        "nothing received: {report}"
    );
    // Four viewers: one that received nothing would make the loss at least a quarter.
    let loss = report["loss_ratio"].as_f64().unwrap_or(1.0);
    ensure!(loss < 0.2, "loss {loss}: {report}");
    ensure!(
        report["rejected_packets"] == 0,
        "viewers refused packets: {report}"
    );
    // Lean viewers send transport-cc feedback, and each edge reads its viewers'.
    ensure!(
        report["viewers_estimated"] == 4,
        "viewers with a downlink estimate: {report}"
    );
    for key in ["cpu_seconds_per_shard", "rss_mib_per_shard"] {
        let per_shard = report[key].as_object().context("per shard")?;
        ensure!(
            per_shard.len() == 3,
            "{key}: origin and two edges: {report}"
        );
    }
    // 4 viewers asking 5 times a second for 2 s: 40 requests, and the hops let through
    // about one a second.
    let requests = report["viewer_keyframe_requests"].as_u64().unwrap_or(0);
    let plis = report["presenter_plis"].as_u64().unwrap_or(u64::MAX);
    ensure!(
        requests >= 20 && plis <= 4,
        "{requests} requests reached the presenter as {plis}: {report}"
    );
    Ok(())
}
