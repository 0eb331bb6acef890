//! TURN for networks where nothing else gets through: a real coturn with the TURN REST
//! API secret, credentials from the gateway's endpoint, and aiortc peers that may only
//! use relay candidates, publishing and decoding video through coturn to the shard.

use anyhow::{Result, ensure};
use serde_json::Value;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tutti_signaling::admission::{JoinClaims, TokenKeys};
use tutti_signaling::config::{LocalRooms, RoomsFile};
use tutti_tests::aiortc;
use tutti_tests::coturn::Coturn;
use tutti_tests::gateway::{JWT_SECRET, http_get_with, local_options, start, ws_url};

const TURN_SECRET: &str = "turn-shared-secret-for-tests";

fn token(room: &str, name: &str) -> Result<String> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    Ok(TokenKeys::new(JWT_SECRET.as_bytes())?.issue(&JoinClaims {
        room: room.into(),
        name: name.into(),
        publish: true,
        subscribe: true,
        exp: now + 600,
        nbf: None,
        record: false,
    })?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_only_peers_reach_the_shard_through_coturn() -> Result<()> {
    let coturn = Coturn::start(TURN_SECRET).await?;
    let mut options = local_options(
        LocalRooms::from_file(RoomsFile::default(), false).map_err(anyhow::Error::msg)?,
    );
    options.common.ice.turn_urls = vec![coturn.url()];
    options.common.ice.turn_secret = Some(TURN_SECRET.into());
    let system = start(options).await?;
    let addr = system.server.addr;

    // The endpoint wants a join token, and hands out credentials of the REST API's shape.
    let (status, _) = http_get_with(addr, "/v1/ice-servers", None).await?;
    ensure!(status == 401, "no token: {status}");
    let (status, _) = http_get_with(addr, "/v1/ice-servers", Some("forged.token.x")).await?;
    ensure!(status == 401, "bad token: {status}");
    let mut servers = Vec::new();
    for name in ["Pianist", "Listener"] {
        let (status, body) =
            http_get_with(addr, "/v1/ice-servers", Some(&token("recital", name)?)).await?;
        ensure!(status == 200, "ice-servers: {status} {body}");
        let answer: Value = serde_json::from_str(&body)?;
        let turn = &answer["iceServers"][0];
        let username = turn["username"].as_str().unwrap_or_default();
        let expiry: u64 = username.split(':').next().unwrap_or("0").parse()?;
        let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
        ensure!(
            expiry > now && expiry <= now + 601,
            "expiry {expiry} vs now {now}"
        );
        ensure!(turn["urls"][0] == coturn.url(), "{answer}");
        servers.push(answer["iceServers"].to_string());
    }

    let url = ws_url(&system);
    let common = [
        "--gateway",
        "--url",
        url.as_str(),
        "--room",
        "recital",
        "--relay",
    ];
    let pianist_token = token("recital", "Pianist")?;
    let mut publisher = aiortc::spawn_publisher(
        &[
            &common[..],
            &[
                "--id",
                "pianist",
                "--join-token",
                &pianist_token,
                "--ice-servers",
                &servers[0],
            ],
            &["--width", "320", "--height", "240"],
        ]
        .concat(),
    )?;
    let listener_token = token("recital", "Listener")?;
    let result = aiortc::run_subscriber(
        &[
            &common[..],
            &[
                "--id",
                "listener",
                "--join-token",
                &listener_token,
                "--ice-servers",
                &servers[1],
            ],
            &["--frames", "30", "--timeout", "40"],
        ]
        .concat(),
        Duration::from_secs(90),
    )
    .await?;
    println!("relayed subscriber: {result}");
    ensure!(
        result["frames"].as_u64().unwrap_or(0) >= 30,
        "frames through TURN: {result}"
    );
    ensure!(
        result["width"] == 320 && result["height"] == 240,
        "{result}"
    );
    ensure!(
        result["candidate"] == "relay",
        "media must have flowed through coturn: {result}"
    );

    // With a forged credential (the publisher still playing), coturn refuses the allocation and relay-only media never flows.
    let mut wrong = servers[1].clone();
    let bad: Value = serde_json::from_str(&wrong)?;
    let credential = bad[0]["credential"].as_str().unwrap_or_default().to_owned();
    wrong = wrong.replace(&credential, "AAAAAAAAAAAAAAAAAAAAAAAAAAA=");
    let refused = aiortc::run_subscriber(
        &[
            &common[..],
            &[
                "--id",
                "intruder",
                "--join-token",
                &token("recital", "Intruder")?,
            ],
            &["--ice-servers", &wrong, "--frames", "1", "--timeout", "8"],
        ]
        .concat(),
        Duration::from_secs(60),
    )
    .await?;
    let _ = publisher.kill().await;
    ensure!(
        refused["frames"] == 0,
        "a forged TURN credential worked: {refused}"
    );
    system.stop().await;
    coturn.stop().await;
    Ok(())
}
