//! What one hostile client can do, against real processes on 127.0.0.1, bounded in count
//! and time. Each test prints what it measured.

use anyhow::{Result, ensure};
use serde_json::json;
use std::time::Instant;
use tutti_signaling::config::{LocalRooms, RoomsFile};
use tutti_tests::gateway::{GatewayClient, local_options, start, ws_url};

fn rooms(toml_text: &str) -> Result<LocalRooms> {
    let file: RoomsFile = toml::from_str(toml_text)?;
    LocalRooms::from_file(file, false).map_err(anyhow::Error::msg)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_guessing_over_many_sockets_is_throttled_per_address() -> Result<()> {
    let system = start(local_options(rooms(
        "[[rooms]]\nname = \"lesson\"\nmaxParticipants = 4\npassword = \"arco\"\n",
    )?))
    .await?;
    let url = ws_url(&system);
    // 60 guesses over 13 sockets, as fast as the gateway answers.
    let started = Instant::now();
    let (mut evaluated, mut throttled, mut other) = (0, 0, Vec::new());
    for socket in 0..13 {
        let mut client = GatewayClient::connect(&url).await?;
        for guess in 0..5 {
            if socket * 5 + guess >= 60 {
                break;
            }
            let reply = client
                .join(json!({"room": "lesson", "name": format!("g{socket}-{guess}"), "password": format!("guess-{socket}-{guess}")}))
                .await;
            match reply {
                Err(err) if err.to_string() == "wrong_password" => evaluated += 1,
                Err(err) if err.to_string() == "rate_limited" => throttled += 1,
                other_reply => other.push(format!("{other_reply:?}")),
            }
        }
    }
    let elapsed = started.elapsed();
    // The right password, from the same address, while it is locked out.
    let mut client = GatewayClient::connect(&url).await?;
    let right = client
        .join(json!({"room": "lesson", "name": "Attacker", "password": "arco"}))
        .await;
    println!(
        "abuse: 60 guesses over 13 sockets in {:.2} s: {evaluated} evaluated, {throttled} refused unevaluated, other {other:?}; the right password then: {}",
        elapsed.as_secs_f64(),
        match &right {
            Ok(_) => "joined".to_owned(),
            Err(err) => err.to_string(),
        }
    );
    ensure!(other.is_empty(), "unexpected replies: {other:?}");
    // 3 free, then one per lockout (2 s, 4 s, …): within a few seconds, about 4 checks.
    ensure!(
        evaluated <= 3 + 1 + elapsed.as_secs() as usize,
        "{evaluated} guesses evaluated in {elapsed:?}"
    );
    ensure!(
        matches!(&right, Err(err) if err.to_string() == "rate_limited"),
        "a locked-out address does not get its password checked: {right:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_creation_flood_from_one_address_stops_at_the_limit() -> Result<()> {
    let system = start(local_options(rooms("")?)).await?;
    let url = ws_url(&system);
    let pipelines_before: usize = pipelines(&system).await?;
    let started = Instant::now();
    let (mut created, mut refused) = (0, 0);
    for i in 0..300 {
        // A socket per join, closed right after, as a flooding script does.
        let mut client = GatewayClient::connect(&url).await?;
        match client
            .join(json!({"room": format!("flood-{i}"), "name": "Flooder"}))
            .await
        {
            Ok(_) => created += 1,
            Err(err) if err.to_string() == "rate_limited" => refused += 1,
            Err(err) => anyhow::bail!("unexpected refusal {err}"),
        }
    }
    let pipelines_after = pipelines(&system).await?;
    println!(
        "abuse: 300 joins to fresh room names in {:.2} s: {created} rooms created, {refused} refused; shard pipelines {pipelines_before} → {pipelines_after}",
        started.elapsed().as_secs_f64()
    );
    ensure!(
        created == tutti_signaling::guesses::DEFAULT_ROOMS_PER_CLIENT as usize,
        "{created} created"
    );
    ensure!(
        pipelines_after <= pipelines_before + created,
        "{pipelines_after} pipelines"
    );
    // Joining a room that exists is not creating one.
    let mut friend = GatewayClient::connect(&url).await?;
    friend
        .join(json!({"room": "flood-0", "name": "Friend"}))
        .await?;
    Ok(())
}

/// Pipelines the local system's shards host.
async fn pipelines(system: &tutti_signaling::local::LocalSystem) -> Result<usize> {
    let mut total = 0;
    for (_, shard) in &system.shards {
        total += shard
            .handle
            .list_pipelines()
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .len();
    }
    Ok(total)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_that_never_finish_their_headers_are_closed() -> Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let system = start(local_options(rooms("")?)).await?;
    let addr = system.server.addr;
    let started = Instant::now();
    let mut slow = Vec::new();
    for _ in 0..200 {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            .await?;
        slow.push(stream);
    }
    // Meanwhile an honest request is served.
    let (status, _) = tutti_tests::gateway::http_get(addr, "/healthz").await?;
    ensure!(status == 200, "{status}");
    // Every slow connection is closed by the gateway (read returns end of stream).
    let closings = slow.into_iter().map(|mut stream| async move {
        let mut buf = [0u8; 256];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return Ok::<_, anyhow::Error>(started.elapsed()),
                Ok(_) => {}
            }
        }
    });
    let closed = tokio::time::timeout(
        std::time::Duration::from_secs(60),
        futures_util::future::try_join_all(closings),
    )
    .await??;
    let last = closed.iter().max().copied().unwrap_or_default();
    println!(
        "abuse: 200 connections sending half a request: all closed by the gateway, the last after {:.1} s",
        last.as_secs_f64()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ice_tcp_drips_and_connection_hoards_are_cut() -> Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let shard = tutti_tests::shard::TestShard::start().await?;
    let addr = shard.shard.udp_addr;
    // A byte a second, never a whole frame: closed 10 s after it was accepted.
    let started = Instant::now();
    let mut drip = tokio::net::TcpStream::connect(addr).await?;
    // A frame of 100 bytes announced, then its bytes one by one.
    drip.write_all(&[0x00, 0x64]).await?;
    let closed_after = loop {
        if drip.write_all(&[0x01]).await.is_err() {
            break started.elapsed();
        }
        let mut buf = [0u8; 16];
        match tokio::time::timeout(std::time::Duration::from_secs(1), drip.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break started.elapsed(),
            _ => {}
        }
        ensure!(
            started.elapsed().as_secs() < 60,
            "the dripping connection stayed open"
        );
    };
    // One address opening 40 connections: the shard keeps at most 16.
    let mut held = Vec::new();
    for _ in 0..40 {
        held.push(tokio::net::TcpStream::connect(addr).await?);
    }
    let mut refused = 0;
    for stream in &mut held {
        let mut buf = [0u8; 1];
        if let Ok(Ok(0)) | Ok(Err(_)) =
            tokio::time::timeout(std::time::Duration::from_millis(500), stream.read(&mut buf)).await
        {
            refused += 1;
        }
    }
    println!(
        "abuse: ICE-TCP: a connection dripping a byte a second was closed after {:.1} s; of 40 connections from one address {refused} were closed at once",
        closed_after.as_secs_f64()
    );
    ensure!(refused >= 40 - 16, "{refused} of 40 refused");
    Ok(())
}
