//! Local mode as a user runs it: rooms placed on the embedded shards as a cluster's
//! operator places them, the room list,
//! health, readiness and metrics, and a graceful stop that tells clients to reconnect.

use anyhow::{Result, ensure};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::time::Duration;
use tutti_signaling::config::{LocalRooms, RoomsFile};
use tutti_store::LiveView;
use tutti_tests::gateway::{GatewayClient, http_get, local_options, start, ws_url};
use tutti_tests::participant::{Participant, ParticipantConfig};

const WAIT: Duration = Duration::from_secs(15);

fn rooms(text: &str) -> Result<LocalRooms> {
    let file: RoomsFile = toml::from_str(text)?;
    LocalRooms::from_file(file, false).map_err(anyhow::Error::msg)
}

fn metric(text: &str, series: &str) -> f64 {
    tutti_tests::metric_value(text, series).unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_are_packed_on_shards_as_in_a_cluster_and_the_list_shows_them() -> Result<()> {
    let mut options = local_options(rooms(
        "[[rooms]]\nname = \"Violin-Lesson\"\nmaxParticipants = 2\npassword = \"arco\"",
    )?);
    // 40 seats per shard: the declared room (2 seats) and two rooms created on first join
    // (16 seats each) fill one; the next two go to the other.
    options.shard_max_participants = 40;
    let system = start(options).await?;
    let url = ws_url(&system);
    let mut clients = Vec::new();
    for (room, name) in [
        ("jam", "A"),
        ("choir", "B"),
        ("quartet", "C"),
        ("trio", "D"),
        ("jam", "E"),
    ] {
        let mut client = GatewayClient::connect(&url).await?;
        client.join(json!({"room": room, "name": name})).await?;
        clients.push(client);
    }
    let mut per_shard: HashMap<String, Vec<String>> = HashMap::new();
    for route in system.store.routes() {
        per_shard.entry(route.shard).or_default().push(route.room);
    }
    let mut groups: Vec<Vec<String>> = per_shard.into_values().collect();
    for group in &mut groups {
        group.sort();
    }
    groups.sort();
    ensure!(
        groups
            == [
                vec!["Violin-Lesson", "choir", "jam"],
                vec!["quartet", "trio"]
            ],
        "packed by reserved seats, as the operator packs them: {groups:?}"
    );

    // The list shows declared and hosted rooms with their occupancy, busiest first.
    let addr = system.server.addr;
    let deadline = tokio::time::Instant::now() + WAIT;
    let list = loop {
        let (status, body) = http_get(addr, "/v1/rooms").await?;
        ensure!(status == 200, "{status} {body}");
        let list: Value = serde_json::from_str(&body)?;
        if list["rooms"][0]["name"] == "jam" && list["rooms"][0]["participants"] == 2 {
            break list;
        }
        ensure!(
            tokio::time::Instant::now() < deadline,
            "room list never caught up: {list}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let names: Vec<&str> = list["rooms"]
        .as_array()
        .map(|rows| rows.iter().filter_map(|r| r["name"].as_str()).collect())
        .unwrap_or_default();
    ensure!(
        names.len() == 5 && names.contains(&"Violin-Lesson"),
        "{list}"
    );
    let (_, found) = http_get(addr, "/v1/rooms?q=violin").await?;
    let found: Value = serde_json::from_str(&found)?;
    ensure!(
        found["rooms"].as_array().map(Vec::len) == Some(1)
            && found["rooms"][0]["hasPassword"] == true
            && found["rooms"][0]["maxParticipants"] == 2,
        "{found}"
    );
    let (status, _) = http_get(addr, "/v1/rooms/jam").await?;
    ensure!(status == 200);
    let (status, _) = http_get(addr, "/v1/rooms/nowhere").await?;
    ensure!(status == 404);
    for bad in [
        "/v1/rooms?limit=0",
        "/v1/rooms?limit=abc",
        &format!("/v1/rooms?q={}", "x".repeat(65)),
    ] {
        let (status, body) = http_get(addr, bad).await?;
        ensure!(status == 400, "{bad}: {status} {body}");
    }
    system.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_readiness_and_metrics_report_the_system() -> Result<()> {
    let system = start(local_options(rooms("")?)).await?;
    let addr = system.server.addr;
    ensure!(http_get(addr, "/healthz").await?.0 == 200);
    ensure!(http_get(addr, "/readyz").await?.0 == 200);
    let url = ws_url(&system);
    let mut publisher = ParticipantConfig::new("metrics-room", "pub");
    publisher.gateway_join = Some(json!({"v":1,"type":"join","room":"metrics-room","name":"Pub"}));
    let _publisher = Participant::join(&url, "", publisher).await?;
    let mut listener = ParticipantConfig::new("metrics-room", "sub");
    listener.audio = false;
    listener.video = false;
    listener.gateway_join = Some(json!({"v":1,"type":"join","room":"metrics-room","name":"Sub"}));
    let listener = Participant::join(&url, "", listener).await?;
    listener
        .wait_for(WAIT, "media", |records, _| {
            records.values().map(|r| r.packets).sum::<u64>() > 100
        })
        .await?;
    let mut refused = GatewayClient::connect(&url).await?;
    ensure!(
        refused
            .join(json!({"room":"metrics-room","name":"pub"}))
            .await
            .is_err()
    );
    let (_, text) = http_get(addr, "/metrics").await?;
    ensure!(
        metric(&text, "tutti_gateway_participants") == 2.0,
        "participants"
    );
    ensure!(metric(&text, "tutti_gateway_rooms") == 1.0, "rooms");
    ensure!(
        metric(&text, "tutti_gateway_errors_total{code=\"nickname_taken\"}") == 1.0,
        "errors by code"
    );
    let forwarded: f64 = ["local-0", "local-1"]
        .iter()
        .map(|s| {
            metric(
                &text,
                &format!("tutti_sfu_rtp_forwarded_packets_total{{shard=\"{s}\"}}"),
            )
        })
        .sum();
    let bytes: f64 = ["local-0", "local-1"]
        .iter()
        .map(|s| {
            metric(
                &text,
                &format!("tutti_sfu_rtp_forwarded_bytes_total{{shard=\"{s}\"}}"),
            )
        })
        .sum();
    ensure!(
        forwarded > 100.0 && bytes > forwarded * 50.0,
        "{forwarded} packets, {bytes} bytes"
    );
    system.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_tells_every_client_to_reconnect() -> Result<()> {
    let system = start(local_options(rooms("")?)).await?;
    let url = ws_url(&system);
    let mut a = GatewayClient::connect(&url).await?;
    a.join(json!({"room":"goodbye","name":"A"})).await?;
    let mut idle = GatewayClient::connect(&url).await?;
    let addr = system.server.addr;
    let stopping = tokio::spawn(system.stop());
    let told = a.until("reconnect", WAIT).await?;
    ensure!(
        told["reason"]
            .as_str()
            .is_some_and(|r| r.contains("restarting")),
        "{told}"
    );
    ensure!(idle.until("reconnect", WAIT).await?["type"] == "reconnect");
    a.wait_closed(WAIT).await?;
    stopping.await?;
    ensure!(
        http_get(addr, "/healthz").await.is_err(),
        "the server is gone after stop"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_can_live_on_a_port_of_their_own() -> Result<()> {
    let probe = std::net::TcpListener::bind("127.0.0.1:0")?;
    let metrics_addr = probe.local_addr()?;
    drop(probe);
    let mut options = local_options(
        LocalRooms::from_file(RoomsFile::default(), false).map_err(anyhow::Error::msg)?,
    );
    options.common.metrics_listen = Some(metrics_addr);
    let system = start(options).await?;
    let (status, _) = http_get(system.server.addr, "/metrics").await?;
    ensure!(
        status == 404,
        "the public port does not serve metrics: {status}"
    );
    let (status, body) = http_get(metrics_addr, "/metrics").await?;
    ensure!(
        status == 200 && body.contains("tutti_gateway_sockets"),
        "{status}"
    );
    Ok(())
}
