use std::time::Duration;
use tutti_sfu::shard::api::PipelineSpec;
use tutti_tests::participant::{Participant, ParticipantConfig};
use tutti_tests::shard::{SIGNAL_TOKEN, TestShard};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_publisher_one_subscriber() -> anyhow::Result<()> {
    let _ = tracing_subscriber::fmt().with_env_filter("info,tutti_sfu=debug").try_init();
    let shard = TestShard::start().await?;
    shard.admin.put_pipeline("room1", &PipelineSpec::default()).await?;
    let url = shard.signal_url();
    let publisher = Participant::join(&url, SIGNAL_TOKEN, ParticipantConfig::new("room1", "alice")).await?;
    publisher.wait_publishing(Duration::from_secs(10)).await?;
    let mut config = ParticipantConfig::new("room1", "bob");
    config.audio = false;
    config.video = false;
    let subscriber = Participant::join(&url, SIGNAL_TOKEN, config).await?;
    subscriber
        .wait_for(Duration::from_secs(10), "two tracks with 50 packets", |records, _| {
            records.len() == 2 && records.values().all(|r| r.packets >= 50)
        })
        .await?;
    let records = subscriber.records().await;
    for (id, r) in &records {
        println!("{id}: video={} packets={} corrupt={} keyframes={}", r.video, r.packets, r.corrupt, r.keyframes);
    }
    Ok(())
}
