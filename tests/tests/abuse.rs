//! What one hostile client can do, against real processes on 127.0.0.1, bounded in count
//! and time. Each test prints what it measured.

use anyhow::{Context, Result, ensure};
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

/// Waits until `broadcast` has an edge to seat viewers on; its stage's route.
async fn on_the_air(
    system: &tutti_signaling::local::LocalSystem,
    broadcast: &str,
) -> Result<tutti_store::Route> {
    use tutti_store::LiveView;
    let store = &system.store;
    tutti_tests::eventually::eventually(
        std::time::Duration::from_secs(20),
        "the broadcast to get an edge",
        || async move {
            Ok(store.route(broadcast).is_some()
                && store
                    .cascade(broadcast)
                    .is_some_and(|c| !c.edges.is_empty()))
        },
    )
    .await?;
    store.route(broadcast).context("the stage's route")
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seat_held_by_a_socket_that_never_sends_media_is_released_within_a_minute() -> Result<()>
{
    let system = start(local_options(rooms(
        "[[rooms]]\nname = \"duet\"\nmaxParticipants = 2\n",
    )?))
    .await?;
    let url = ws_url(&system);
    // Two squatters take both seats and never do ICE.
    let mut squatters = Vec::new();
    for name in ["Squat1", "Squat2"] {
        let mut client = GatewayClient::connect(&url).await?;
        client.join(json!({"room": "duet", "name": name})).await?;
        squatters.push(client);
    }
    let squatted = Instant::now();
    let mut player = GatewayClient::connect(&url).await?;
    let first = player.join(json!({"room": "duet", "name": "Player"})).await;
    ensure!(
        matches!(&first, Err(err) if err.to_string() == "room_full"),
        "both seats are taken at first: {first:?}"
    );
    // The player tries again every second, as the web client does on `room_full` (on a
    // fresh socket: a socket that has not joined within 30 s is closed).
    let mut tries = 1;
    let joined = loop {
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        tries += 1;
        player = GatewayClient::connect(&url).await?;
        match player.join(json!({"room": "duet", "name": "Player"})).await {
            Ok(joined) => break joined,
            Err(err) if err.to_string() == "room_full" => {}
            Err(err) => {
                println!("try {tries}: {err}");
                return Err(err);
            }
        }
        ensure!(
            squatted.elapsed() < std::time::Duration::from_secs(60),
            "the seat is still squatted after a minute"
        );
    };
    let released_after = squatted.elapsed();
    // The squatter that lost its seat is told so and the other keeps its own.
    let told = squatters[0]
        .until("left", std::time::Duration::from_secs(5))
        .await;
    println!(
        "abuse: 2 WebSocket-only squatters filled a 2-seat room; a player got in after {:.1} s ({tries} tries); the evicted squatter got {}",
        released_after.as_secs_f64(),
        told.as_ref()
            .map(|f| f["reason"].to_string())
            .unwrap_or_else(|e| e.to_string())
    );
    ensure!(
        joined["participants"]
            .as_array()
            .is_some_and(|p| p.len() == 1)
    );
    ensure!(released_after >= tutti_sfu::shard::SEAT_GRACE);
    squatters[1].send(json!({"type": "ping"}));
    squatters[1]
        .until("pong", std::time::Duration::from_secs(5))
        .await?;
    system.stop().await;
    Ok(())
}

fn resident_bytes() -> u64 {
    tutti_tests::shard::process_usage(std::process::id()).map_or(0, |(_, rss)| rss)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offer_with_a_thousand_simulcast_layers_is_refused_with_bounded_memory() -> Result<()> {
    let system = start(local_options(rooms(
        "[[rooms]]\nname = \"lesson\"\nmaxParticipants = 4\n",
    )?))
    .await?;
    let url = ws_url(&system);
    let mut attacker = GatewayClient::connect(&url).await?;
    attacker
        .join(json!({"room": "lesson", "name": "Layers"}))
        .await?;
    let mut sdp = String::from(
        "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\na=sendonly\r\na=ice-ufrag:abcd\r\na=ice-pwd:abcdefghijklmnopqrstuvwx\r\na=fingerprint:sha-256 00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF\r\na=setup:actpass\r\na=rtpmap:96 VP8/90000\r\n",
    );
    for layer in 0..1000 {
        sdp.push_str(&format!("a=rid:r{layer} send\r\n"));
    }
    let before = resident_bytes();
    attacker.send(json!({"type": "offer", "pc": "publisher", "sdp": sdp}));
    let reply = attacker
        .until("error", std::time::Duration::from_secs(10))
        .await?;
    let after = resident_bytes();
    println!(
        "abuse: an offer of {} bytes with 1,000 a=rid lines: {} ({}); process RSS {:.1} -> {:.1} MiB",
        sdp.len(),
        reply["code"],
        reply["message"],
        before as f64 / 1048576.0,
        after as f64 / 1048576.0
    );
    ensure!(
        reply["message"]
            .as_str()
            .is_some_and(|m| m.contains("a=rid")),
        "refused for its layers: {reply}"
    );
    // The attacker's session goes on, nothing was set up for it.
    attacker.send(json!({"type": "ping"}));
    attacker
        .until("pong", std::time::Duration::from_secs(5))
        .await?;
    system.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewers_state_message_flood_is_refused_and_disconnects_nobody() -> Result<()> {
    let system = start(local_options(rooms(
        "[[broadcasts]]\nname = \"concert\"\npassword = \"stage-door\"\n",
    )?))
    .await?;
    let url = ws_url(&system);
    let mut presenter = GatewayClient::connect(&url).await?;
    presenter
        .join(json!({"room": "concert", "name": "Pianist", "password": "stage-door"}))
        .await?;
    // Viewers are seated once the broadcast's edges are up.
    on_the_air(&system, "concert").await?;
    let mut viewers = Vec::new();
    for _ in 0..3 {
        let mut viewer = GatewayClient::connect(&url).await?;
        viewer
            .join(json!({"room": "concert", "watch": true}))
            .await?;
        viewers.push(viewer);
    }
    let flooder = &viewers[0];
    for i in 0..400 {
        if i % 2 == 0 {
            flooder.send(json!({"type": "screen_share", "active": i % 4 == 0}));
        } else {
            flooder.send(json!({"type": "mute", "track": "t1", "muted": i % 4 == 1}));
        }
    }
    // Every message gets an answer: a refusal, or `rate_limited` from the gateway's own
    // budget (burst 200). Count the 400 answers, then ping until the budget lets it in.
    let mut codes = std::collections::BTreeMap::<String, u32>::new();
    let mut flooder = viewers.remove(0);
    let mut answers = 0;
    while answers < 400 {
        let frame = flooder.next(std::time::Duration::from_secs(10)).await?;
        if frame["type"] == "error" {
            answers += 1;
            *codes.entry(frame["code"].to_string()).or_default() += 1;
        }
    }
    let mut pinged = 0;
    loop {
        flooder.send(json!({"type": "ping"}));
        pinged += 1;
        let frame = flooder.next(std::time::Duration::from_secs(10)).await?;
        if frame["type"] == "pong" {
            break;
        }
        ensure!(pinged < 50, "the flooder's budget never refilled: {frame}");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    // Everyone else: still connected, and told nothing of it.
    let mut announcements = 0;
    for (index, watcher) in viewers
        .iter_mut()
        .chain(std::iter::once(&mut presenter))
        .enumerate()
    {
        watcher.send(json!({"type": "ping"}));
        loop {
            let frame = watcher
                .next(std::time::Duration::from_secs(10))
                .await
                .with_context(|| format!("watcher {index} answers a ping"))?;
            match frame["type"].as_str() {
                Some("pong") => break,
                Some("screen_share" | "mute") => announcements += 1,
                _ => {}
            }
        }
    }
    println!(
        "abuse: a viewer sent 200 screen_share and 200 mute messages: answers {codes:?}; announcements reaching the 2 other viewers and the presenter: {announcements}"
    );
    ensure!(announcements == 0, "a viewer's state reached others");
    ensure!(
        !codes.is_empty()
            && codes
                .keys()
                .all(|c| ["forbidden", "rate_limited", "track_not_found"]
                    .iter()
                    .any(|k| c.contains(k))),
        "{codes:?}"
    );
    system.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_flood_does_not_move_a_broadcast_stage_away_from_its_edges() -> Result<()> {
    use tutti_store::LiveView;
    let mut options = local_options(rooms(
        "[[broadcasts]]\nname = \"concert\"\npassword = \"stage-door\"\n",
    )?);
    options.common.rooms_per_client = 0;
    // Room enough for the flood: each room reserves its 16 seats, as in a cluster.
    options.shard_max_participants = 1000;
    let system = start(options).await?;
    let url = ws_url(&system);
    // The stage on one shard, an edge on the other.
    let stage = on_the_air(&system, "concert").await?;
    let (origin, epoch) = (stage.shard, stage.epoch);
    // A presenter makes the stage's shard the busier one; 30 new rooms make it busier in
    // rooms too, so that a stage placed again would go to the other shard.
    let mut presenter = GatewayClient::connect(&url).await?;
    presenter
        .join(json!({"room": "concert", "name": "Pianist", "password": "stage-door"}))
        .await?;
    let mut flood = Vec::new();
    for i in 0..30 {
        let mut client = GatewayClient::connect(&url).await?;
        client
            .join(json!({"room": format!("flood-{i}"), "name": "Flooder"}))
            .await?;
        flood.push(client);
    }
    // The stage's route was deleted after two occupancy polls (2 s apart) that took its
    // edge for it: watch for four polls.
    let watching = Instant::now();
    while watching.elapsed() < std::time::Duration::from_secs(8) {
        let route = system.store.route("concert").context("the stage's route")?;
        ensure!(
            route.shard == origin && route.epoch == epoch,
            "the stage moved from {origin}@{epoch} to {}@{}",
            route.shard,
            route.epoch
        );
        if let Some(cascade) = system.store.cascade("concert") {
            ensure!(
                cascade.origin == origin
                    && cascade
                        .edges
                        .iter()
                        .all(|e| e.shard != origin && e.parent != e.shard),
                "the tree went wrong: {cascade:?}"
            );
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    println!(
        "abuse: with 30 new rooms and a presenter on its shard, the stage stayed on {origin} for {:.0} s",
        watching.elapsed().as_secs_f64()
    );
    system.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn turn_credentials_are_named_and_rationed_per_address() -> Result<()> {
    let mut options = local_options(rooms(
        "[[broadcasts]]\nname = \"concert\"\npassword = \"stage-door\"\n",
    )?);
    options.common.ice.stun_urls = vec!["stun:turn.example:3478".into()];
    options.common.ice.turn_urls = vec!["turn:turn.example:3478?transport=udp".into()];
    options.common.ice.turn_secret = Some("coturn-shared-secret".into());
    options.common.turn_grants_per_client = 3;
    let system = start(options).await?;
    let url = ws_url(&system);
    let mut presenter = GatewayClient::connect(&url).await?;
    presenter
        .join(json!({"room": "concert", "name": "Pianist", "password": "stage-door"}))
        .await?;
    // Anonymous viewers from one address, one socket each, as a credential harvester.
    let turn_user = |joined: &serde_json::Value| {
        joined["ice_servers"]
            .as_array()
            .and_then(|servers| servers.iter().find_map(|s| s["username"].as_str()))
            .map(str::to_owned)
    };
    let source: std::net::IpAddr = "127.0.0.7".parse()?;
    on_the_air(&system, "concert").await?;
    let mut users = Vec::new();
    for _ in 0..5 {
        let mut viewer = GatewayClient::connect_from(&url, source).await?;
        let joined = viewer
            .join(json!({"room": "concert", "watch": true}))
            .await?;
        ensure!(
            joined["ice_servers"]
                .as_array()
                .is_some_and(|s| !s.is_empty()),
            "STUN at least: {joined}"
        );
        users.push(turn_user(&joined));
    }
    let mut elsewhere = GatewayClient::connect_from(&url, "127.0.0.8".parse()?).await?;
    let other = turn_user(
        &elsewhere
            .join(json!({"room": "concert", "watch": true}))
            .await?,
    );
    println!(
        "abuse: TURN usernames of 5 viewers from one address: {users:?}; from another: {other:?}"
    );
    ensure!(
        users[..3]
            .iter()
            .all(|u| u.as_deref().is_some_and(|u| u.contains(":concert/"))),
        "the first three get credentials named after the broadcast: {users:?}"
    );
    ensure!(
        users[3..].iter().all(Option::is_none),
        "then STUN only: {users:?}"
    );
    ensure!(other.is_some(), "another address is not affected");
    system.stop().await;
    Ok(())
}
