//! HLS in a cluster: the control loops have the shard holding a broadcast's stage package
//! it (ffmpeg, from Debian); when that shard dies and the stage is placed on the other,
//! the other packages it; when the broadcast stops asking, the packager and its files go.
//! Real shards, an aiortc presenter (real VP8 and Opus, which ffmpeg must decode), the
//! memory store and the loops local mode runs.

use anyhow::{Result, ensure};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tutti_control::loops::{self, LoopSettings, Quiet};
use tutti_shard_api::client::{ShardAdmin, http_client};
use tutti_store::{BroadcastRecord, LiveView, LiveWriter, MemoryStore, RoomRecord};
use tutti_tests::aiortc;
use tutti_tests::eventually::eventually;
use tutti_tests::init_logs;
use tutti_tests::shard::{ADMIN_TOKEN, SIGNAL_TOKEN, TestShard};

const WAIT: Duration = Duration::from_secs(45);
const BEAT: Duration = Duration::from_millis(200);
const TTL: Duration = Duration::from_secs(1);

/// The playlist `shard` serves for the broadcast, once it lists a segment.
async fn playlist(shard: &TestShard) -> Option<String> {
    let base = format!("http://{}", shard.shard.http_addr);
    let body = ShardAdmin::with_client(&base, SIGNAL_TOKEN, http_client())
        .hls_file("concert", "index.m3u8")
        .await
        .ok()?;
    let text = String::from_utf8_lossy(&body).into_owned();
    text.contains("#EXTINF").then_some(text)
}

/// An aiortc presenter of camera and microphone on the stage at `shard`.
fn present(shard: &TestShard) -> Result<tokio::process::Child> {
    aiortc::spawn_publisher(&[
        "--url",
        &shard.signal_url(),
        "--token",
        SIGNAL_TOKEN,
        "--room",
        "stage",
        "--id",
        "pianist",
        "--audio",
    ])
}

async fn packaged(shard: &TestShard) -> Vec<String> {
    let base = format!("http://{}", shard.shard.http_addr);
    ShardAdmin::new(&base, ADMIN_TOKEN)
        .packagings()
        .await
        .map(|list| list.into_iter().map(|p| p.broadcast).collect())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broadcast_is_packaged_on_its_stages_shard_wherever_that_is() -> Result<()> {
    init_logs();
    let base = std::env::temp_dir().join(format!("tutti-hls-moves-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    let store = MemoryStore::new();
    let shards = [
        TestShard::start_packaging(base.join("s1")).await?,
        TestShard::start_packaging(base.join("s2")).await?,
    ];
    let beats: Vec<CancellationToken> = (0..2).map(|_| CancellationToken::new()).collect();
    for (i, shard) in shards.iter().enumerate() {
        shard.heartbeat_into(
            store.clone(),
            &format!("s{}", i + 1),
            BEAT,
            TTL,
            beats[i].clone(),
        );
    }
    let stop = CancellationToken::new();
    let settings = LoopSettings {
        admin_token: ADMIN_TOKEN.into(),
        strategy: Default::default(),
        gc_period: Duration::from_secs(30),
        gc_grace: Duration::from_secs(60),
        shard_poll: BEAT,
        compact_every: Duration::from_secs(3600),
        cascade: Default::default(),
    };
    let control = tokio::spawn(loops::run(
        store.clone(),
        settings,
        Arc::new(Quiet),
        stop.clone(),
    ));

    store.put_room(RoomRecord::with_defaults("stage")).await?;
    let mut broadcast = BroadcastRecord {
        name: "concert".into(),
        stage: "stage".into(),
        expected_audience: 0,
        max_viewers_per_shard: 500,
        layers: 1,
        owner: None,
        hls: true,
        max_webrtc_viewers: None,
    };
    store.put_broadcast(broadcast.clone()).await?;
    eventually(WAIT, "the stage placed", || async {
        Ok(store.route("stage").is_some())
    })
    .await?;
    let first = store.route("stage").map(|r| r.shard).unwrap_or_default();
    let (first_index, second) = if first == "s1" { (0, "s2") } else { (1, "s1") };
    let presenter = present(&shards[first_index])?;
    eventually(WAIT, "a playlist on the stage's shard", || async {
        Ok(playlist(&shards[first_index]).await.is_some())
    })
    .await?;
    ensure!(
        packaged(&shards[1 - first_index]).await.is_empty(),
        "only the stage's shard packages"
    );

    // The stage's shard dies; the stage is placed on the other, the presenter comes back,
    // and the other packages it.
    let [a, b] = shards;
    let (dead, alive) = if first_index == 0 { (a, b) } else { (b, a) };
    beats[first_index].cancel();
    drop(presenter);
    dead.shard.stop().await;
    eventually(WAIT, "the stage placed on the other shard", || async {
        Ok(store.route("stage").is_some_and(|r| r.shard == second))
    })
    .await?;
    let presenter = present(&alive)?;
    eventually(WAIT, "a playlist on the other shard", || async {
        Ok(playlist(&alive).await.is_some())
    })
    .await?;

    // No longer asked for: the packager stops and its files go.
    broadcast.hls = false;
    store.put_broadcast(broadcast).await?;
    eventually(WAIT, "the packager stopped", || async {
        Ok(packaged(&alive).await.is_empty())
    })
    .await?;
    ensure!(playlist(&alive).await.is_none());
    ensure!(
        !base.join(second).join("concert").exists(),
        "its files removed"
    );
    drop(presenter);
    stop.cancel();
    let _ = control.await;
    beats[1 - first_index].cancel();
    alive.shard.stop().await;
    let _ = std::fs::remove_dir_all(&base);
    Ok(())
}
