//! WHIP (RFC 9725) into a broadcast, against a local system on 127.0.0.1: an aiortc
//! publisher that speaks only WHIP (`tests/aiortc/whip.py`, written from the RFC) reaches an
//! aiortc viewer seated on the broadcast's edge, picture and sound decoded; the session
//! ends by DELETE and leaves nothing behind; every refusal has the status the RFC gives it.

use anyhow::{Context, Result, ensure};
use hyper::Method;
use serde_json::Value;
use std::process::Stdio;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tutti_signaling::admission::{JoinClaims, TokenKeys};
use tutti_signaling::config::{LocalRooms, RoomsFile};
use tutti_signaling::local::LocalSystem;
use tutti_store::LiveView;
use tutti_tests::eventually::eventually;
use tutti_tests::gateway::{GatewayClient, JWT_SECRET, http_send, local_options, start, ws_url};

const WAIT: Duration = Duration::from_secs(30);
const SDP: &str = "application/sdp";
const FRAGMENT: &str = "application/trickle-ice-sdpfrag";

fn rooms(toml_text: &str) -> Result<LocalRooms> {
    let file: RoomsFile = toml::from_str(toml_text)?;
    LocalRooms::from_file(file, true).map_err(anyhow::Error::msg)
}

fn token(secret: &str, room: &str, name: &str, publish: bool) -> Result<String> {
    let exp = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs() + 600;
    Ok(TokenKeys::new(secret.as_bytes())?.issue(&JoinClaims {
        room: room.into(),
        name: name.into(),
        publish,
        subscribe: true,
        exp,
        nbf: None,
        record: false,
    })?)
}

/// Waits until the broadcast's stage is placed and has an edge; the stage's shard.
async fn on_the_air(system: &LocalSystem, broadcast: &str) -> Result<String> {
    let store = &system.store;
    eventually(WAIT, "the broadcast to get an edge", || async move {
        Ok(store.route(broadcast).is_some()
            && store
                .cascade(broadcast)
                .is_some_and(|c| !c.edges.is_empty()))
    })
    .await?;
    Ok(store.route(broadcast).context("the stage's route")?.shard)
}

/// The next JSON line the WHIP client prints.
async fn next_event(
    lines: &mut tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
) -> Result<Value> {
    let line = tokio::time::timeout(WAIT, lines.next_line())
        .await
        .context("the WHIP client printed nothing")??
        .context("the WHIP client exited")?;
    Ok(serde_json::from_str(&line)?)
}

/// `tests/aiortc/whip.py` running: a WHIP publisher or a WHEP viewer.
struct Client {
    child: tokio::process::Child,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    stdin: tokio::process::ChildStdin,
}

impl Client {
    /// Starts `whip.py MODE --url URL ARGS…`; its first event (`created` or `refused`).
    async fn start(mode: &str, url: &str, args: &[&str]) -> Result<(Self, Value)> {
        let script = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("aiortc/whip.py");
        let mut child = tokio::process::Command::new(tutti_tests::aiortc::python()?)
            .arg(script)
            .args([mode, "--url", url])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("start the aiortc client")?;
        let lines = BufReader::new(child.stdout.take().context("stdout")?).lines();
        let stdin = child.stdin.take().context("stdin")?;
        let mut client = Self {
            child,
            lines,
            stdin,
        };
        let first = next_event(&mut client.lines).await?;
        Ok((client, first))
    }

    /// Sends a command line; the event it prints.
    async fn command(&mut self, line: &str) -> Result<Value> {
        self.stdin.write_all(format!("{line}\n").as_bytes()).await?;
        self.stdin.flush().await?;
        next_event(&mut self.lines).await
    }

    /// Reports until `accept` holds (every 200 ms, for at most [`WAIT`]); the last report.
    async fn report_until(&mut self, what: &str, accept: impl Fn(&Value) -> bool) -> Result<Value> {
        let deadline = tokio::time::Instant::now() + WAIT;
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        loop {
            tick.tick().await;
            let report = self.command("report").await?;
            if accept(&report) {
                return Ok(report);
            }
            ensure!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what}; last report {report}"
            );
        }
    }
}

/// An aiortc viewer `id` of the broadcast "concert" through the gateway at `url` (as
/// `/watch` seats one): its report once it decoded `frames` video frames and
/// `audio_seconds` of sound.
async fn watch_concert(url: &str, id: &str, frames: &str, audio_seconds: &str) -> Result<Value> {
    let args = [
        "--url",
        url,
        "--gateway",
        "--watch",
        "--room",
        "concert",
        "--id",
        id,
        "--frames",
        frames,
        "--audio-seconds",
        audio_seconds,
    ];
    tutti_tests::aiortc::run_subscriber(&args, Duration::from_secs(60)).await
}

/// Whether the stage holds no participant and the gateway no WHIP session.
async fn nothing_left(system: &LocalSystem, stage: &str) -> Result<()> {
    eventually(
        WAIT,
        "the WHIP session and its participant to go",
        || async {
            let participants = system
                .server
                .state()
                .gateway
                .rooms
                .summary(stage)
                .map_or(0, |s| s.participants);
            Ok(system.server.state().wish.is_empty() && participants == 0)
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whip_publisher_reaches_a_viewer_on_an_edge_with_sound_and_picture() -> Result<()> {
    tutti_tests::init_logs();
    let mut options = local_options(rooms(
        "[[broadcasts]]\nname = \"concert\"\npassword = \"stage-door\"\n",
    )?);
    options.common.ice.stun_urls = vec!["stun:stun.example.net:3478".into()];
    let system = start(options).await?;
    let addr = system.server.addr;
    let origin = on_the_air(&system, "concert").await?;
    let pianist = token(JWT_SECRET, "concert", "Pianist", true)?;

    let script = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("aiortc/whip.py");
    let endpoint = format!("http://{addr}/v1/whip/concert");
    let mut publisher = tokio::process::Command::new(tutti_tests::aiortc::python()?)
        .arg(script)
        .args(["publish", "--url", &endpoint, "--token", &pianist])
        .args(["--audio", "--trickle"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("start the aiortc WHIP client")?;
    let mut lines = BufReader::new(publisher.stdout.take().context("stdout")?).lines();
    let created = next_event(&mut lines).await?;
    println!("WHIP created: {created}");
    ensure!(created["event"] == "created", "{created}");
    let location = created["location"].as_str().unwrap_or_default().to_owned();
    let path = location
        .strip_prefix(&format!("http://{addr}"))
        .context("the Location is on the gateway")?
        .to_owned();
    ensure!(path.starts_with("/v1/whip/concert/"), "{location}");
    ensure!(created["content_type"][0] == SDP, "{created}");
    ensure!(created["accept_patch"][0] == FRAGMENT, "{created}");
    let etag = created["etag"].as_str().context("an ETag")?.to_owned();
    ensure!(
        created["links"][0] == "<stun:stun.example.net:3478>; rel=\"ice-server\"",
        "{created}"
    );
    let trickled = next_event(&mut lines).await?;
    ensure!(trickled["status"] == 204, "trickle: {trickled}");

    // A viewer on the edge (not the stage's shard) decodes the publisher's picture and
    // sound.
    let url = ws_url(&system);
    let viewer = watch_concert(&url, "listener", "30", "2");
    let store = &system.store;
    let origin_ref = &origin;
    let seated = eventually(WAIT, "the viewer to be counted on an edge", || async move {
        Ok(store.cascade("concert").is_some_and(|c| {
            c.edges
                .iter()
                .any(|e| &e.shard != origin_ref && e.viewers >= 1)
        }))
    });
    let (viewer, seated) = tokio::join!(viewer, seated);
    let viewer = viewer?;
    println!("viewer: {viewer}");
    seated?;
    ensure!(viewer["frames"].as_u64() >= Some(30), "frames: {viewer}");
    ensure!(
        viewer["width"] == 320 && viewer["height"] == 240,
        "size: {viewer}"
    );
    ensure!(
        viewer["audio_frames"].as_u64() > Some(25),
        "sound: {viewer}"
    );

    // The same name cannot present twice; a stale ICE session and a bad fragment are
    // refused without harming the session.
    let again = http_send(
        addr,
        Method::POST,
        "/v1/whip/concert",
        &[
            ("content-type", SDP),
            ("authorization", &format!("Bearer {pianist}")),
        ],
        b"v=0\r\n".to_vec(),
    )
    .await?;
    ensure!(again.status == 409, "same name twice: {again:?}");
    let candidate = "a=ice-ufrag:abcd\r\na=ice-pwd:abcdefghijklmnopqrstuvwx\r\nm=audio 9 UDP/TLS/RTP/SAVPF 0\r\na=mid:0\r\na=candidate:1 1 udp 1 127.0.0.1 9 typ host\r\n";
    let stale = http_send(
        addr,
        Method::PATCH,
        &path,
        &[("content-type", FRAGMENT), ("if-match", "\"stale\"")],
        b"a=mid:0\r\na=candidate:1 1 udp 1 127.0.0.1 9 typ host\r\n".to_vec(),
    )
    .await?;
    ensure!(stale.status == 412, "stale If-Match: {stale:?}");
    let restart_raced = http_send(
        addr,
        Method::PATCH,
        &path,
        &[("content-type", FRAGMENT), ("if-match", "\"stale\"")],
        candidate.as_bytes().to_vec(),
    )
    .await?;
    ensure!(
        restart_raced.status == 412,
        "stale restart: {restart_raced:?}"
    );
    let garbage = http_send(
        addr,
        Method::PATCH,
        &path,
        &[("content-type", FRAGMENT), ("if-match", &etag)],
        b"not a fragment".to_vec(),
    )
    .await?;
    ensure!(garbage.status == 400, "bad fragment: {garbage:?}");
    let wrong_type = http_send(
        addr,
        Method::PATCH,
        &path,
        &[("content-type", SDP)],
        candidate.as_bytes().to_vec(),
    )
    .await?;
    ensure!(wrong_type.status == 415, "PATCH of SDP: {wrong_type:?}");

    // None of those refusals touched the session: a new viewer still decodes the
    // publisher's picture and sound.
    let late = watch_concert(&url, "late-listener", "15", "1").await?;
    println!("viewer after the refused requests: {late}");
    ensure!(late["frames"].as_u64() >= Some(15), "frames: {late}");
    ensure!(late["audio_frames"].as_u64() > Some(10), "sound: {late}");

    // The client DELETEs its session: the stage is empty, the resource gone.
    let mut stdin = publisher.stdin.take().context("stdin")?;
    stdin.write_all(b"delete\n").await?;
    stdin.flush().await?;
    let deleted = next_event(&mut lines).await?;
    ensure!(deleted["status"] == 200, "DELETE: {deleted}");
    nothing_left(&system, "concert").await?;
    let gone = http_send(addr, Method::DELETE, &path, &[], Vec::new()).await?;
    ensure!(gone.status == 404, "DELETE again: {gone:?}");
    let gone = http_send(
        addr,
        Method::PATCH,
        &path,
        &[("content-type", FRAGMENT)],
        candidate.as_bytes().to_vec(),
    )
    .await?;
    ensure!(gone.status == 404, "PATCH after DELETE: {gone:?}");
    let _ = publisher.wait().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_refusal_has_the_status_the_rfc_gives_it() -> Result<()> {
    tutti_tests::init_logs();
    let mut options = local_options(rooms(
        "[[broadcasts]]\nname = \"concert\"\npassword = \"stage-door\"\n\n\
         [[rooms]]\nname = \"lesson\"\npassword = \"arco\"\n",
    )?);
    options.common.sockets.per_client = 2;
    let system = start(options).await?;
    let addr = system.server.addr;
    on_the_air(&system, "concert").await?;
    let good = token(JWT_SECRET, "concert", "Pianist", true)?;
    let viewer_only = token(JWT_SECRET, "concert", "Listener", false)?;
    let other_room = token(JWT_SECRET, "lesson", "Pianist", true)?;
    let forged = token(
        "another-secret-0123456789abcdef-01234",
        "concert",
        "P",
        true,
    )?;
    let post = |path: &'static str,
                content_type: &'static str,
                bearer: Option<String>,
                body: Vec<u8>| async move {
        let authorization = bearer.map(|t| format!("Bearer {t}"));
        let mut headers = vec![("content-type", content_type)];
        if let Some(value) = authorization.as_deref() {
            headers.push(("authorization", value));
        }
        http_send(addr, Method::POST, path, &headers, body).await
    };
    let offer = b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n".to_vec();

    // The preflight a browser sends first.
    let preflight = http_send(addr, Method::OPTIONS, "/v1/whip/concert", &[], Vec::new()).await?;
    ensure!(preflight.status == 204, "{preflight:?}");
    ensure!(preflight.header("access-control-allow-origin") == Some("*"));
    ensure!(
        preflight
            .header("access-control-allow-methods")
            .is_some_and(|m| m.contains("POST")),
        "{preflight:?}"
    );
    ensure!(
        preflight
            .header("access-control-allow-headers")
            .is_some_and(|h| h.contains("Authorization") && h.contains("Content-Type")),
        "{preflight:?}"
    );
    ensure!(preflight.header("accept-post") == Some(SDP));

    let cases = [
        (
            "text",
            post(
                "/v1/whip/concert",
                "text/plain",
                Some(good.clone()),
                offer.clone(),
            )
            .await?,
            415,
        ),
        (
            "no token",
            post("/v1/whip/concert", SDP, None, offer.clone()).await?,
            401,
        ),
        (
            "forged token",
            post("/v1/whip/concert", SDP, Some(forged), offer.clone()).await?,
            401,
        ),
        (
            "no such broadcast",
            post("/v1/whip/nowhere", SDP, Some(good.clone()), offer.clone()).await?,
            404,
        ),
        (
            "subscribe-only token",
            post("/v1/whip/concert", SDP, Some(viewer_only), offer.clone()).await?,
            403,
        ),
        (
            "token for another room",
            post("/v1/whip/concert", SDP, Some(other_room), offer.clone()).await?,
            403,
        ),
        (
            "not SDP",
            post(
                "/v1/whip/concert",
                SDP,
                Some(good.clone()),
                b"hello".to_vec(),
            )
            .await?,
            400,
        ),
        (
            "33 KiB",
            post(
                "/v1/whip/concert",
                SDP,
                Some(good.clone()),
                [b"v=0\r\n".as_slice(), &vec![b'a'; 33 * 1024]].concat(),
            )
            .await?,
            413,
        ),
        // Joined, and the shard cannot use the offer.
        (
            "an offer without media",
            post("/v1/whip/concert", SDP, Some(good.clone()), offer.clone()).await?,
            422,
        ),
    ];
    for (what, reply, status) in &cases {
        println!("{what}: {} {}", reply.status, reply.body);
        ensure!(reply.status == *status, "{what}: {reply:?}");
        ensure!(
            reply.header("access-control-allow-origin") == Some("*"),
            "{what}: no CORS header"
        );
        let body: Value = serde_json::from_str(&reply.body)?;
        ensure!(body["error"].is_string(), "{what}: {reply:?}");
    }
    ensure!(cases[1].1.header("www-authenticate") == Some("Bearer"));
    // The refused offer left no session and no participant behind.
    nothing_left(&system, "concert").await?;

    // Sessions count against the address's sockets, as WebSockets do.
    let url = ws_url(&system);
    let _first = GatewayClient::connect(&url).await?;
    let _second = GatewayClient::connect(&url).await?;
    let full = post("/v1/whip/concert", SDP, Some(good), offer).await?;
    ensure!(full.status == 429, "past the address's sockets: {full:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whep_viewer_on_an_edge_sees_and_hears_whoever_presents() -> Result<()> {
    tutti_tests::init_logs();
    let system = start(local_options(rooms(
        "[[broadcasts]]\nname = \"concert\"\npassword = \"stage-door\"\npresenters = 2\n",
    )?))
    .await?;
    let addr = system.server.addr;
    let origin = on_the_air(&system, "concert").await?;
    let whip = format!("http://{addr}/v1/whip/concert");
    let whep = format!("http://{addr}/v1/whep/concert");
    let pianist = token(JWT_SECRET, "concert", "Pianist", true)?;
    let (mut first, created) = Client::start(
        "publish",
        &whip,
        &[
            "--token", &pianist, "--audio", "--width", "320", "--height", "240",
        ],
    )
    .await?;
    ensure!(created["status"] == 201, "WHIP: {created}");

    // A standard viewer: no token, an offer of one audio and one video section; it
    // follows the session's events.
    let (mut viewer, created) = Client::start("play", &whep, &["--events"]).await?;
    println!("WHEP created: {created}");
    ensure!(created["status"] == 201, "WHEP: {created}");
    ensure!(
        created["location"]
            .as_str()
            .is_some_and(|l| l.contains("/v1/whep/concert/")),
        "{created}"
    );
    ensure!(created["etag"].is_string(), "{created}");
    let seen = viewer
        .report_until("the first presenter's picture and sound", |r| {
            r["frames"].as_u64() >= Some(30) && r["audio_frames"].as_u64() >= Some(50)
        })
        .await?;
    println!("WHEP viewer, first presenter: {seen}");
    ensure!(seen["width"] == 320 && seen["height"] == 240, "{seen}");
    let store = &system.store;
    let origin_ref = &origin;
    eventually(
        WAIT,
        "the WHEP viewer to be counted on an edge",
        || async move {
            Ok(store.cascade("concert").is_some_and(|c| {
                c.edges
                    .iter()
                    .any(|e| &e.shard != origin_ref && e.viewers >= 1)
            }))
        },
    )
    .await?;

    // The presenter leaves and another comes on: the viewer's same sections carry the
    // newcomer, without a renegotiation WHEP could not make.
    ensure!(first.command("delete").await?["status"] == 200);
    let cellist = token(JWT_SECRET, "concert", "Cellist", true)?;
    let (_second, created) = Client::start(
        "publish",
        &whip,
        &[
            "--token", &cellist, "--audio", "--width", "640", "--height", "360",
        ],
    )
    .await?;
    ensure!(created["status"] == 201, "second WHIP: {created}");
    let before = seen["frames"].as_u64().unwrap_or(0);
    let audio_before = seen["audio_frames"].as_u64().unwrap_or(0);
    let switched = viewer
        .report_until("the second presenter's picture", |r| {
            r["width"] == 640 && r["frames"].as_u64() >= Some(before + 30)
        })
        .await?;
    println!("WHEP viewer, second presenter: {switched}");
    // Sound goes on after the change: the audio section carries the newcomer's.
    let after = switched["audio_frames"].as_u64().unwrap_or(0);
    let heard = viewer
        .report_until("the second presenter's sound", |r| {
            r["audio_frames"].as_u64() >= Some(after + 50)
        })
        .await?;
    ensure!(after > audio_before, "{switched}");
    // Its event stream told it the stage went off the air and came back.
    ensure!(
        heard["events"] == serde_json::json!(["active", "inactive", "active"]),
        "{heard}"
    );
    // One stream each, its numbers running on across the change of presenter: a jump
    // would show as thousands of packets missing.
    ensure!(
        heard["video_ssrcs"] == 1 && heard["audio_ssrcs"] == 1,
        "{heard}"
    );
    let packets = heard["video_packets"].as_u64().unwrap_or(0);
    let missing = heard["video_missing"].as_u64().context("video_missing")?;
    ensure!(
        packets > 0 && missing * 20 < packets,
        "video numbering broke at the change: {heard}"
    );

    ensure!(viewer.command("delete").await?["status"] == 200);
    let _ = viewer.child.wait().await;
    eventually(WAIT, "the viewer's session to go", || async {
        Ok(system.server.state().wish.len() == 1)
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whep_refusals_have_the_status_the_draft_gives_them() -> Result<()> {
    tutti_tests::init_logs();
    let system = start(local_options(rooms(
        "[[broadcasts]]\nname = \"concert\"\npassword = \"stage-door\"\n\n\
         [[rooms]]\nname = \"lesson\"\npassword = \"arco\"\n",
    )?))
    .await?;
    let addr = system.server.addr;
    on_the_air(&system, "concert").await?;
    let lesson = token(JWT_SECRET, "lesson", "Listener", true)?;
    let no_subscribe = TokenKeys::new(JWT_SECRET.as_bytes())?.issue(&JoinClaims {
        room: "concert".into(),
        name: "Deaf".into(),
        publish: true,
        subscribe: false,
        exp: SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs() + 600,
        nbf: None,
        record: false,
    })?;
    let forged = token(
        "another-secret-0123456789abcdef-01234",
        "concert",
        "P",
        true,
    )?;
    let offer = b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n".to_vec();
    let post = |path: String, content_type: &'static str, bearer: Option<String>, body: Vec<u8>| async move {
        let authorization = bearer.map(|t| format!("Bearer {t}"));
        let mut headers = vec![("content-type", content_type)];
        if let Some(value) = authorization.as_deref() {
            headers.push(("authorization", value));
        }
        http_send(addr, Method::POST, &path, &headers, body).await
    };
    let endpoint = || "/v1/whep/concert".to_owned();
    let cases = [
        (
            "text",
            post(endpoint(), "text/plain", None, offer.clone()).await?,
            415,
        ),
        (
            "forged token",
            post(endpoint(), SDP, Some(forged), offer.clone()).await?,
            401,
        ),
        (
            "no such broadcast",
            post("/v1/whep/nowhere".into(), SDP, None, offer.clone()).await?,
            404,
        ),
        (
            "a room without a token",
            post("/v1/whep/lesson".into(), SDP, None, offer.clone()).await?,
            401,
        ),
        (
            "token for another room",
            post(endpoint(), SDP, Some(lesson), offer.clone()).await?,
            403,
        ),
        (
            "token without the subscribe grant",
            post(endpoint(), SDP, Some(no_subscribe), offer.clone()).await?,
            403,
        ),
        (
            "a bad quality",
            post(
                "/v1/whep/concert?quality=best".into(),
                SDP,
                None,
                offer.clone(),
            )
            .await?,
            400,
        ),
        (
            "not SDP",
            post(endpoint(), SDP, None, b"hello".to_vec()).await?,
            400,
        ),
        (
            "an offer without media",
            post(endpoint(), SDP, None, offer.clone()).await?,
            422,
        ),
    ];
    for (what, reply, status) in &cases {
        println!("{what}: {} {}", reply.status, reply.body);
        ensure!(reply.status == *status, "{what}: {reply:?}");
        ensure!(
            reply.header("access-control-allow-origin") == Some("*"),
            "{what}"
        );
    }
    // An offer that would send on a viewer's connection is refused, and leaves nothing.
    let sends = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0\r\n\
        m=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\na=sendrecv\r\n\
        a=ice-ufrag:abcd\r\na=ice-pwd:abcdefghijklmnopqrstuvwx\r\n\
        a=fingerprint:sha-256 00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF\r\n\
        a=setup:actpass\r\na=rtcp-mux\r\na=rtpmap:111 opus/48000/2\r\n";
    let reply = post(endpoint(), SDP, None, sends.as_bytes().to_vec()).await?;
    println!("sendrecv: {} {}", reply.status, reply.body);
    ensure!(reply.status == 422, "a sending viewer: {reply:?}");
    eventually(WAIT, "no session left", || async {
        Ok(system.server.state().wish.is_empty())
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whep_player_whose_edge_stops_is_told_to_reconnect_and_seated_again() -> Result<()> {
    tutti_tests::init_logs();
    let mut options = local_options(rooms(
        "[[broadcasts]]\nname = \"concert\"\npassword = \"stage-door\"\n",
    )?);
    // The stage's shard, the viewer's edge, and one more to seat it on after.
    options.shards = 3;
    let mut system = start(options).await?;
    let addr = system.server.addr;
    let origin = on_the_air(&system, "concert").await?;
    let pianist = token(JWT_SECRET, "concert", "Pianist", true)?;
    let whip = format!("http://{addr}/v1/whip/concert");
    let whep = format!("http://{addr}/v1/whep/concert");
    let (_publisher, created) =
        Client::start("publish", &whip, &["--token", &pianist, "--audio"]).await?;
    ensure!(created["status"] == 201, "WHIP: {created}");

    // It leaves its old session alone on `reconnect`, to show the server ended it.
    let (mut viewer, created) = Client::start("play", &whep, &["--events", "--keep-old"]).await?;
    ensure!(created["status"] == 201, "WHEP: {created}");
    let links = created["links"].as_array().context("links")?;
    let sse = links
        .iter()
        .filter_map(Value::as_str)
        .find(|l| l.contains("rel=\"urn:ietf:params:whep:ext:core:server-sent-events\""))
        .with_context(|| format!("no events Link in {created}"))?;
    ensure!(
        sse.contains("events=\"active,inactive,layers,reconnect\""),
        "{sse}"
    );
    ensure!(
        links
            .iter()
            .filter_map(Value::as_str)
            .any(|l| l.ends_with("/layer>; rel=\"urn:ietf:params:whep:ext:core:layer\"")),
        "no layer Link in {created}"
    );
    let seen = viewer
        .report_until("the picture, and the stage on the air", |r| {
            r["frames"].as_u64() >= Some(30)
                && r["events"]
                    .as_array()
                    .is_some_and(|e| e.iter().any(|e| e == "active"))
        })
        .await?;
    println!("WHEP player before: {seen}");

    // The extension's own refusals, on this live session.
    let session = seen["location"]
        .as_str()
        .and_then(|l| l.strip_prefix(&format!("http://{addr}")))
        .context("the session's path")?
        .to_owned();
    let events = format!("{session}/sse");
    let json_type = [("content-type", "application/json")];
    let bad = http_send(
        addr,
        Method::POST,
        &events,
        &json_type,
        b"{\"a\":1}".to_vec(),
    )
    .await?;
    ensure!(bad.status == 400, "not an array: {bad:?}");
    let text = [("content-type", "text/plain")];
    let wrong = http_send(addr, Method::POST, &events, &text, b"[]".to_vec()).await?;
    ensure!(wrong.status == 415, "not JSON: {wrong:?}");
    let mut made = Vec::new();
    for _ in 0..3 {
        let reply = http_send(
            addr,
            Method::POST,
            &events,
            &json_type,
            b"[\"active\"]".to_vec(),
        )
        .await?;
        ensure!(reply.status == 201, "a stream: {reply:?}");
        made.push(reply.header("location").context("its Location")?.to_owned());
    }
    let fifth = http_send(addr, Method::POST, &events, &json_type, b"[]".to_vec()).await?;
    ensure!(fifth.status == 429, "a fifth stream: {fifth:?}");
    ensure!(fifth.header("access-control-allow-origin") == Some("*"));
    for stream in &made {
        let deleted = http_send(addr, Method::DELETE, stream, &[], Vec::new()).await?;
        ensure!(deleted.status == 200, "DELETE a stream: {deleted:?}");
    }
    let again = http_send(addr, Method::DELETE, &made[0], &[], Vec::new()).await?;
    ensure!(again.status == 404, "DELETE it again: {again:?}");
    let gone = http_send(addr, Method::GET, &made[0], &[], Vec::new()).await?;
    ensure!(gone.status == 404, "GET a deleted stream: {gone:?}");

    // The edge the player sits on stops.
    let store = &system.store;
    let origin_ref = &origin;
    let edge = eventually(WAIT, "the player to be counted on an edge", || async move {
        Ok(store.cascade("concert").is_some_and(|c| {
            c.edges
                .iter()
                .any(|e| &e.shard != origin_ref && e.viewers >= 1)
        }))
    })
    .await
    .and_then(|_| {
        store
            .cascade("concert")
            .and_then(|c| {
                c.edges
                    .into_iter()
                    .find(|e| e.shard != origin && e.viewers >= 1)
            })
            .map(|e| e.shard)
            .context("the player's edge")
    })?;
    let index = system
        .shards
        .iter()
        .position(|(id, _)| id == &edge)
        .context("the edge is a local shard")?;
    let (_, doomed) = system.shards.remove(index);
    let stopped_at = std::time::Instant::now();
    doomed.stop().await;
    let back = viewer
        .report_until("the player seated again, decoding", |r| {
            r["sessions"] == 2
                && r["state"] == "connected"
                && r["session_frames"].as_u64() >= Some(30)
        })
        .await?;
    println!(
        "WHEP player after its edge stopped ({} ms to picture again): {back}",
        stopped_at.elapsed().as_millis()
    );
    // Told to reconnect, and never that the stage went off the air: it did not.
    ensure!(
        back["events"] == serde_json::json!(["active", "reconnect", "active"]),
        "{back}"
    );
    ensure!(
        back["location"] != seen["location"],
        "a new session: {back}"
    );
    // The player never DELETEd it: the server ended the old session itself.
    let session_ref = &session;
    eventually(WAIT, "the old session to be gone", || async move {
        // An empty trickle: 204 while a session lives, 404 once it is gone.
        let old = http_send(
            addr,
            Method::PATCH,
            session_ref,
            &[("content-type", FRAGMENT)],
            b"a=end-of-candidates\r\n".to_vec(),
        )
        .await?;
        Ok(old.status == 404)
    })
    .await?;
    let edge_ref = &edge;
    eventually(WAIT, "the player counted on a living edge", || async move {
        Ok(store.cascade("concert").is_some_and(|c| {
            c.edges
                .iter()
                .any(|e| &e.shard != origin_ref && &e.shard != edge_ref && e.viewers >= 1)
        }))
    })
    .await?;
    ensure!(viewer.command("delete").await?["status"] == 200);
    Ok(())
}
