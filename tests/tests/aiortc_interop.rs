//! Interoperability with aiortc, a WebRTC stack written by nobody on this project: an
//! aiortc publisher's VP8 video, forwarded by the shard, is decoded by an aiortc
//! subscriber at the resolution it was sent.

use anyhow::{Result, ensure};
use std::time::Duration;
use tutti_sfu::shard::api::PipelineSpec;
use tutti_tests::aiortc;
use tutti_tests::shard::{SIGNAL_TOKEN, TestShard};

/// Creates `room` on `shard`; the arguments that bring an aiortc peer into it.
async fn open_room(shard: &TestShard, room: &str) -> Result<Vec<String>> {
    shard
        .admin
        .put_pipeline(room, &PipelineSpec::default())
        .await?;
    Ok([
        "--url",
        &shard.signal_url(),
        "--token",
        SIGNAL_TOKEN,
        "--room",
        room,
    ]
    .map(str::to_owned)
    .to_vec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aiortc_publisher_to_aiortc_subscriber_decodes_frames_at_the_sent_resolution() -> Result<()>
{
    let shard = TestShard::start().await?;
    let common = open_room(&shard, "interop").await?;
    let common: Vec<&str> = common.iter().map(String::as_str).collect();
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

/// An aiortc publisher whose uplink loses 5 % of its RTP: the shard, which reads a
/// publisher's packets itself, must ask for each gap, and aiortc answers with RTX on the
/// stream its SDP declares (`a=ssrc-group:FID`). Its viewer, another aiortc peer, must
/// get the video whole, and the shard's metrics count the asks and the repairs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aiortc_publisher_on_a_lossy_uplink_is_repaired_for_its_viewer() -> Result<()> {
    let shard = TestShard::start().await?;
    let common = open_room(&shard, "lossy-uplink").await?;
    let common: Vec<&str> = common.iter().map(String::as_str).collect();
    let mut publisher = aiortc::spawn_publisher(
        &[&common[..], &["--id", "lossy", "--uplink-loss", "0.05"]].concat(),
    )?;
    let result = aiortc::run_subscriber(
        &[
            &common[..],
            &["--id", "viewer", "--frames", "300", "--timeout", "60"],
        ]
        .concat(),
        Duration::from_secs(90),
    )
    .await?;
    let asked = shard
        .admin
        .metric("tutti_sfu_publisher_packets_asked_total")
        .await?;
    let repaired = shard
        .admin
        .metric("tutti_sfu_publisher_packets_repaired_total")
        .await?;
    let _ = publisher.kill().await;
    println!(
        "aiortc on a lossy uplink: {result}; the shard asked for {asked}, {repaired} repaired"
    );
    ensure!(
        result["frames"].as_u64().unwrap_or(0) >= 300,
        "the video did not play: {result}"
    );
    let packets = result["video_packets"].as_u64().unwrap_or(0);
    ensure!(packets >= 300, "only {packets} video packets: {result}");
    ensure!(
        asked > 0.0 && repaired > 0.0,
        "the shard asked for {asked} packets and saw {repaired} repaired"
    );
    // Without the shard's NACKs the viewer would miss about one packet in twenty.
    ensure!(
        result["video_missing"] == 0,
        "the viewer's video has gaps: {result}"
    );
    Ok(())
}

/// An aiortc subscriber written from the protocol's reference turns the video off, as a
/// hidden tile does: no frame arrives while it is off, and once it asks again the video
/// resumes with a frame its decoder can start from. It is also told each participant's
/// connection quality.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aiortc_subscriber_turns_a_video_off_and_on_again() -> Result<()> {
    let shard = TestShard::start().await?;
    let common = open_room(&shard, "hidden-tile").await?;
    let common: Vec<&str> = common.iter().map(String::as_str).collect();
    let mut publisher = aiortc::spawn_publisher(&[&common[..], &["--id", "camera"]].concat())?;
    let result = aiortc::run_subscriber(
        &[
            &common[..],
            &[
                "--id",
                "viewer",
                "--frames",
                "20",
                "--pause-for",
                "3",
                "--timeout",
                "60",
            ],
        ]
        .concat(),
        Duration::from_secs(90),
    )
    .await?;
    let _ = publisher.kill().await;
    println!("aiortc subscriber, video off and on: {result}");
    ensure!(
        result["frames_while_off"] == 0,
        "frames arrived while off: {result}"
    );
    ensure!(
        result["frames_after_resume"].as_u64().unwrap_or(0) >= 15,
        "the video did not come back: {result}"
    );
    // Told how each connection is doing, its own too, on loopback good.
    ensure!(
        result["qualities"]["viewer"] == "good" && result["qualities"]["camera"] == "good",
        "connection quality: {result}"
    );
    Ok(())
}

/// The shard keeps sending to a peer for the whole consent lifetime (RFC 7675: 30 s after
/// its last check). aiortc checks every 4–6 s, so a shard that gave up 5 s after a check
/// left holes in the audio until the next one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aiortc_subscriber_with_its_own_consent_timing_hears_40_s_of_audio_without_a_gap()
-> Result<()> {
    let shard = TestShard::start().await?;
    let common = open_room(&shard, "consent").await?;
    let common: Vec<&str> = common.iter().map(String::as_str).collect();
    let mut publisher = aiortc::spawn_publisher(
        &[&common[..], &["--id", "tone", "--audio", "--no-video"]].concat(),
    )?;
    let result = aiortc::run_subscriber(
        &[
            &common[..],
            &[
                "--id",
                "listener",
                "--frames",
                "0",
                "--audio-seconds",
                "40",
                "--timeout",
                "80",
            ],
        ]
        .concat(),
        Duration::from_secs(120),
    )
    .await?;
    let _ = publisher.kill().await;
    println!("aiortc listener: {result}");
    let packets = result["audio_packets"].as_u64().unwrap_or(0);
    let window = result["audio_window_s"].as_f64().unwrap_or(0.0);
    // 20 ms frames: 50 a second.
    ensure!(
        window >= 39.0 && packets as f64 >= window * 50.0 * 0.95,
        "{packets} audio packets in {window} s: {result}"
    );
    ensure!(
        result["audio_missing"] == 0,
        "sequence numbers missing: {result}"
    );
    // The shard's first offer names its tracks in a way every client reads.
    ensure!(
        result["first_offer_msid_semantic"] == true,
        "first offer without a=msid-semantic: {result}"
    );
    let named_by_msid = |ids: &serde_json::Value| ids.as_array().cloned().unwrap_or_default();
    let msid = named_by_msid(&result["msid_track_ids"]);
    let tracks = named_by_msid(&result["track_ids"]);
    ensure!(
        !tracks.is_empty() && tracks.iter().all(|t| msid.contains(t)),
        "aiortc did not take the track ids from a=msid: {result}"
    );
    Ok(())
}

/// A shard bound to every address (`0.0.0.0`, the default) answers each check from the
/// address it was sent to. aiortc fails a check whose response comes from elsewhere
/// (RFC 8445 §7.2.5.2.1): here the shard is reached at 127.0.0.2 while the route back to
/// the peer (127.0.0.1) would pick 127.0.0.1 as the source.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_ice_peers_reach_a_shard_bound_to_every_address() -> Result<()> {
    let shard = TestShard::start_wildcard([127, 0, 0, 2].into()).await?;
    ensure!(
        shard.shard.advertised.ip() == std::net::IpAddr::from([127, 0, 0, 2]),
        "advertised {}",
        shard.shard.advertised
    );
    let common = open_room(&shard, "strict").await?;
    let common: Vec<&str> = common.iter().map(String::as_str).collect();
    let mut publisher =
        aiortc::spawn_publisher(&[&common[..], &["--id", "strict-pub", "--audio"]].concat())?;
    let result = aiortc::run_subscriber(
        &[
            &common[..],
            &[
                "--id",
                "strict-sub",
                "--frames",
                "30",
                "--audio-seconds",
                "3",
                "--timeout",
                "40",
            ],
        ]
        .concat(),
        Duration::from_secs(90),
    )
    .await?;
    let _ = publisher.kill().await;
    println!("aiortc subscriber through a wildcard bind: {result}");
    ensure!(
        result["frames"].as_u64().unwrap_or(0) >= 30,
        "video did not flow: {result}"
    );
    ensure!(
        result["audio_packets"].as_u64().unwrap_or(0) > 0,
        "audio did not flow: {result}"
    );
    ensure!(result["candidate"] == "host", "{result}");
    // Everything came from the address the peer sent to, and that is the pair it uses.
    let advertised = shard.shard.advertised.to_string();
    ensure!(
        result["selected_remote"] == advertised.as_str(),
        "selected {} instead of {advertised}: {result}",
        result["selected_remote"]
    );
    ensure!(
        result["sources"] == serde_json::json!([advertised]),
        "datagrams from other addresses than {advertised}: {result}"
    );
    Ok(())
}
