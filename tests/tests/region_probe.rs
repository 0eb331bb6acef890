//! Round-trip probes on a shard's media port, asked by a STUN client Tutti did not write
//! (coturn's `turnutils_stunclient`): the shard answers a plain Binding request with the
//! client's address, and the gateway lists where to send them.

use anyhow::{Context, Result, ensure};
use serde_json::Value;
use tutti_signaling::config::{LocalRooms, RoomsFile};
use tutti_store::LiveWriter;
use tutti_tests::gateway::{http_get_with, local_options, start};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_independent_stun_client_learns_its_address_from_a_shards_probe() -> Result<()> {
    let system = start(local_options(
        LocalRooms::from_file(RoomsFile::default(), false).map_err(anyhow::Error::msg)?,
    ))
    .await?;
    let (_, shard) = system.shards.first().context("a shard")?;
    let probe = shard.advertised;
    // The client waits for ever when nothing answers: bounded here.
    let output = tokio::process::Command::new("timeout")
        .args(["10", "turnutils_stunclient"])
        .arg("-p")
        .arg(probe.port().to_string())
        .arg(probe.ip().to_string())
        .output()
        .await
        .context("turnutils_stunclient (Debian package coturn)")?;
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    ensure!(
        text.contains("UDP reflexive addr: 127.0.0.1:"),
        "no reflexive address from the shard: {text}"
    );

    // Local mode's shards have no region: nothing to measure.
    let (status, body) = http_get_with(system.server.addr, "/v1/regions", None).await?;
    ensure!(status == 200, "{status} {body}");
    let regions: Value = serde_json::from_str(&body)?;
    ensure!(regions["regions"] == serde_json::json!([]), "{regions}");
    // Shards that carry regions are listed with their probe, one per region.
    for (id, region) in [("far-1", "me-central-1"), ("near-1", "eu-west-1")] {
        let mut record = tutti_store::ShardRecord::new(id, "http://127.0.0.1:9", 10);
        record.region = Some(region.into());
        record.probe = Some(probe.to_string());
        system
            .store
            .heartbeat(record, std::time::Duration::from_secs(30))
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    let (_, body) = http_get_with(system.server.addr, "/v1/regions", None).await?;
    let regions: Value = serde_json::from_str(&body)?;
    ensure!(
        regions["regions"]
            == serde_json::json!([
                {"region": "eu-west-1", "probe": format!("stun:{probe}")},
                {"region": "me-central-1", "probe": format!("stun:{probe}")},
            ]),
        "{regions}"
    );
    Ok(())
}
