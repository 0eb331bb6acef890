//! The memory of a running gateway under attack, against the chart's limit. The target is
//! the release build users run, in local mode: the gateway and its two embedded shards in
//! one process, so what it holds bounds the gateway alone (whose limit is the smaller one)
//! and the shards alone. Traffic stays on 127.0.0.0/8; its many addresses play many
//! clients. Prints what it measured.

use anyhow::{Context, Result, bail, ensure};
use futures_util::future::join_all;
use serde_json::json;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tutti_tests::gateway::{GatewayClient, connect_raw_from};

const WAIT: Duration = Duration::from_secs(20);

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_default()
}

/// The gateway's memory limit in the chart's values, in bytes.
fn chart_gateway_limit() -> Result<u64> {
    let values = std::fs::read_to_string(workspace().join("charts/tutti/values.yaml"))?;
    let gateway = values
        .split("\ngateway:\n")
        .nth(1)
        .context("values.yaml has a gateway section")?;
    let limit = gateway
        .lines()
        .find_map(|line| line.trim().strip_prefix("limits: {memory: "))
        .and_then(|rest| rest.strip_suffix("Mi}"))
        .context("the gateway's memory limit, in Mi")?;
    Ok(limit.parse::<u64>()? * 1024 * 1024)
}

/// A `tutti-gateway` child process in local mode.
struct Target {
    child: tokio::process::Child,
    addr: SocketAddr,
    pid: u32,
    _rooms: RoomsFile,
}

/// A rooms file, removed on drop.
struct RoomsFile(PathBuf);

impl RoomsFile {
    fn new(text: &str) -> Result<Self> {
        let path =
            std::env::temp_dir().join(format!("tutti-abuse-rooms-{}.toml", std::process::id()));
        std::fs::write(&path, text)?;
        Ok(Self(path))
    }
}

impl Drop for RoomsFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

impl Target {
    async fn start(rooms_toml: &str) -> Result<Self> {
        let built = tokio::process::Command::new(env!("CARGO"))
            .args(["build", "--release", "--locked", "--bin", "tutti-gateway"])
            .current_dir(workspace())
            .status()
            .await?;
        ensure!(built.success(), "cargo build --release --bin tutti-gateway");
        let target_dir = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| workspace().join("target"));
        let rooms = RoomsFile::new(rooms_toml)?;
        let mut child = tokio::process::Command::new(target_dir.join("release/tutti-gateway"))
            .args(["--listen", "127.0.0.1:0", "--media-bind", "127.0.0.1"])
            .arg("--rooms")
            .arg(&rooms.0)
            .env("RUST_LOG", "error")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()?;
        let pid = child.id().context("child pid")?;
        let stdout = child.stdout.take().context("child stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let addr = tokio::time::timeout(WAIT, async {
            while let Some(line) = lines.next_line().await? {
                if let Some(rest) = line.strip_prefix("tutti-gateway: listening on http://") {
                    return Ok::<_, anyhow::Error>(rest.trim().parse::<SocketAddr>()?);
                }
            }
            bail!("the gateway exited before listening")
        })
        .await
        .context("gateway start timed out")??;
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(Self {
            child,
            addr,
            pid,
            _rooms: rooms,
        })
    }

    fn url(&self) -> String {
        format!("ws://{}/v1/ws", self.addr)
    }

    /// Resident and peak resident bytes.
    fn memory(&self) -> Result<(u64, u64)> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid))?;
        let field = |name: &str| -> Result<u64> {
            let kib = status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|rest| rest.split_whitespace().next())
                .context(name.to_owned())?;
            Ok(kib.parse::<u64>()? * 1024)
        };
        Ok((field("VmRSS:")?, field("VmHWM:")?))
    }

    /// The gateway's own count of open client sockets.
    async fn sockets(&self) -> Result<u64> {
        let (_, body) = tutti_tests::gateway::http_get(self.addr, "/metrics").await?;
        body.lines()
            .find_map(|l| l.strip_prefix("tutti_gateway_sockets "))
            .context("tutti_gateway_sockets in /metrics")?
            .trim()
            .parse()
            .context("socket count")
    }
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// The client address number `n` (127.0.1.0 and up).
fn client(n: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(u32::from(Ipv4Addr::new(127, 0, 1, 0)) + n))
}

/// The start of a masked text frame announcing `len` bytes, and `sent` bytes of it.
fn partial_frame(len: usize, sent: usize) -> Vec<u8> {
    let mut frame = vec![0x81, 0x80 | 127];
    frame.extend_from_slice(&(len as u64).to_be_bytes());
    frame.extend_from_slice(&[1, 2, 3, 4]);
    frame.extend(std::iter::repeat_n(b'a' ^ 1, sent));
    frame
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_under_socket_and_guessing_floods_stays_within_its_chart_limit() -> Result<()> {
    let limit = chart_gateway_limit()?;
    let target =
        Target::start("[[rooms]]\nname = \"lesson\"\nmaxParticipants = 4\npassword = \"arco\"\n")
            .await?;
    let url = target.url();
    let (rss_idle, _) = target.memory()?;

    // 1. Sockets from 80 addresses, each as many as it may plus one. Then every socket
    // starts a 120 KiB message (under the 128 KiB a message may have) and stops short of
    // its end: the gateway lends a shared pool to unfinished messages and cuts the sockets
    // that find it empty.
    const ADDRESSES: u32 = 80;
    const PER_ADDRESS: usize = 64;
    let started = Instant::now();
    let mut held = Vec::new();
    let mut refused_per_address = 0;
    for address in 0..ADDRESSES {
        let source = client(address);
        let opened = join_all((0..=PER_ADDRESS).map(|_| connect_raw_from(&url, source))).await;
        for socket in opened {
            match socket {
                Ok(socket) => held.push(socket),
                Err(err) if format!("{err:#}").contains("429") => refused_per_address += 1,
                Err(err) => return Err(err.context("a flood socket")),
            }
        }
    }
    let opened_in = started.elapsed();
    let open_idle = target.sockets().await?;
    let (rss_sockets, _) = target.memory()?;
    let mut write_failed = 0;
    for socket in &mut held {
        if socket
            .get_mut()
            .write_all(&partial_frame(120 * 1024, 119 * 1024))
            .await
            .is_err()
        {
            write_failed += 1;
        }
    }
    let written = Instant::now();
    let open_after = target.sockets().await?;
    let (rss_flood, _) = target.memory()?;
    println!(
        "abuse memory: {} sockets from {ADDRESSES} addresses opened in {:.1} s ({refused_per_address} refused as over 64 per address); RSS {:.0} MiB idle -> {:.0} MiB with them open ({:.1} KiB per socket)",
        held.len(),
        opened_in.as_secs_f64(),
        mib(rss_idle),
        mib(rss_sockets),
        (rss_sockets.saturating_sub(rss_idle)) as f64 / 1024.0 / open_idle.max(1) as f64,
    );
    println!(
        "abuse memory: each socket then sent 119 KiB of a 120 KiB message: right after, {} kept (the pool's share), {} cut ({write_failed} of them already while writing); RSS {:.0} MiB",
        open_after,
        open_idle.saturating_sub(open_after),
        mib(rss_flood),
    );
    ensure!(
        refused_per_address == ADDRESSES as usize,
        "each address's 65th socket is refused: {refused_per_address}"
    );
    ensure!(
        open_idle == held.len() as u64,
        "the gateway counts every open socket: {open_idle} of {}",
        held.len()
    );
    ensure!(
        open_after < open_idle,
        "unfinished messages beyond the pool cut their sockets"
    );
    // The sockets kept by the pool lose their loan after 10 s (the 30 s join deadline
    // would close them later).
    while target.sockets().await? > 0 {
        ensure!(
            written.elapsed() < Duration::from_secs(25),
            "the loans end the unfinished messages' sockets"
        );
        tokio::task::yield_now().await;
    }
    let loans_ended = written.elapsed();
    drop(held);
    let (rss_after_flood, _) = target.memory()?;
    println!(
        "abuse memory: the last unfinished message's socket closed {:.1} s after the writes",
        loans_ended.as_secs_f64()
    );

    // 2. Guessing from 40 addresses at once, while someone joins with the right password.
    let guessing = Instant::now();
    let guessers = join_all((0..40).map(|n| {
        let url = url.clone();
        async move {
            let mut outcomes = (0, 0);
            let Ok(mut socket) = GatewayClient::connect_from(&url, client(1000 + n)).await else {
                return outcomes;
            };
            for guess in 0..5 {
                match socket
                    .join(json!({"room": "lesson", "name": format!("g{n}-{guess}"), "password": format!("no-{guess}")}))
                    .await
                {
                    Err(err) if err.to_string() == "wrong_password" => outcomes.0 += 1,
                    Err(err) if err.to_string() == "rate_limited" => outcomes.1 += 1,
                    _ => {}
                }
            }
            outcomes
        }
    }));
    let honest = async {
        let mut teacher = GatewayClient::connect_from(&url, client(2000)).await?;
        let asked = Instant::now();
        teacher
            .join(json!({"room": "lesson", "name": "Teacher", "password": "arco"}))
            .await?;
        Ok::<_, anyhow::Error>(asked.elapsed())
    };
    let (outcomes, honest) = tokio::join!(guessers, honest);
    let (evaluated, refused): (u32, u32) = outcomes
        .iter()
        .fold((0, 0), |(e, r), (oe, or)| (e + oe, r + or));
    let (rss_guessing, peak) = target.memory()?;
    println!(
        "abuse memory: 200 guesses from 40 addresses in {:.1} s: {evaluated} checked, {refused} refused unchecked; the right password joined in {}; RSS {:.0} MiB",
        guessing.elapsed().as_secs_f64(),
        match &honest {
            Ok(took) => format!("{:.0} ms", took.as_secs_f64() * 1000.0),
            Err(err) => format!("no time ({err})"),
        },
        mib(rss_guessing),
    );
    println!(
        "abuse memory: RSS idle {:.0} MiB, {} idle sockets {:.0} MiB, unfinished messages {:.0} MiB, after them {:.0} MiB, guessing {:.0} MiB, peak {:.0} MiB; the chart's gateway limit {:.0} MiB ({:.0} % of it at the peak)",
        mib(rss_idle),
        open_idle,
        mib(rss_sockets),
        mib(rss_flood),
        mib(rss_after_flood),
        mib(rss_guessing),
        mib(peak),
        mib(limit),
        100.0 * peak as f64 / limit as f64
    );
    honest.context("an honest join during the guessing")?;
    ensure!(
        peak < limit,
        "peak {:.0} MiB over the chart's {:.0} MiB",
        mib(peak),
        mib(limit)
    );
    drop(target.child);
    Ok(())
}
