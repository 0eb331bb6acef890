//! Interoperability with aiortc, a WebRTC stack written by nobody on this project: an
//! aiortc publisher's VP8 video, forwarded by the shard, is decoded by an aiortc
//! subscriber at the resolution it was sent.

use anyhow::{Result, ensure};
use std::time::Duration;
use tutti_sfu::shard::api::PipelineSpec;
use tutti_tests::aiortc;
use tutti_tests::shard::{SIGNAL_TOKEN, TestShard};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aiortc_publisher_to_aiortc_subscriber_decodes_frames_at_the_sent_resolution() -> Result<()>
{
    let shard = TestShard::start().await?;
    shard
        .admin
        .put_pipeline("interop", &PipelineSpec::default())
        .await?;
    let url = shard.signal_url();
    let common = [
        "--url",
        url.as_str(),
        "--token",
        SIGNAL_TOKEN,
        "--room",
        "interop",
    ];
    let mut publisher = aiortc::spawn_publisher(
        &[
            &common[..],
            &["--id", "aiortc-pub", "--width", "352", "--height", "288"],
        ]
        .concat(),
    )?;
    let result = aiortc::run_subscriber(
        &[
            &common[..],
            &["--id", "aiortc-sub", "--frames", "45", "--timeout", "40"],
        ]
        .concat(),
        Duration::from_secs(90),
    )
    .await?;
    let load = shard.admin.load().await?;
    let _ = publisher.kill().await;
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
