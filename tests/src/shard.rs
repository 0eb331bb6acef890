//! Starting shards for tests: in this process, or as a child process whose CPU time is
//! its own (for the benchmark).

use crate::admin::AdminClient;
use anyhow::{Context, Result, bail};
use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tutti_sfu::heartbeat::Registration;
use tutti_sfu::server::{RunningShard, ShardOptions, start};
use tutti_sfu::shard::CoreConfig;

/// The tokens every test shard uses.
pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789abcdef";
/// The signaling token every test shard uses.
pub const SIGNAL_TOKEN: &str = "test-signal-token-0123456789abcdef";

/// A shard running inside the test process, on loopback with free ports.
pub struct TestShard {
    /// The running shard.
    pub shard: RunningShard,
    /// Its admin client.
    pub admin: AdminClient,
}

impl TestShard {
    /// Starts a shard with default settings.
    pub async fn start() -> Result<Self> {
        Self::start_with(|_| {}).await
    }

    /// Starts a shard after letting `configure` adjust its core settings.
    pub async fn start_with(configure: impl FnOnce(&mut CoreConfig)) -> Result<Self> {
        Self::launch(configure, None, None, None, None).await
    }

    /// Starts a shard that records into `dir` what the control plane asks it to.
    pub async fn start_recording(dir: std::path::PathBuf) -> Result<Self> {
        Self::launch(|_| {}, None, None, Some((dir, None)), None).await
    }

    /// Starts a shard that records under `dir` and into object storage as `store` says
    /// (credentials from the `AWS_*` variables).
    pub async fn start_recording_to_store(
        dir: std::path::PathBuf,
        store: tutti_sfu::recorder::store::ObjectStoreConfig,
    ) -> Result<Self> {
        Self::launch(|_| {}, None, None, Some((dir, Some(store))), None).await
    }

    /// Starts a shard that packages broadcasts as HLS under `dir` when asked.
    pub async fn start_packaging(dir: std::path::PathBuf) -> Result<Self> {
        Self::launch(|_| {}, None, None, None, Some(dir)).await
    }

    /// Starts a shard that is ready only while `registration` says its record is in the
    /// live state (as `tutti-sfu --store etcd://…` does).
    pub async fn start_registered(registration: Registration) -> Result<Self> {
        Self::launch(|_| {}, Some(registration), None, None, None).await
    }

    /// Starts a shard whose media socket is bound to `0.0.0.0` (the default bind of the
    /// gateway and the shard binary) and that advertises `advertise`, one of the host's
    /// loopback addresses.
    pub async fn start_wildcard(advertise: std::net::IpAddr) -> Result<Self> {
        Self::launch(|_| {}, None, Some(advertise), None, None).await
    }

    async fn launch(
        configure: impl FnOnce(&mut CoreConfig),
        registration: Option<Registration>,
        wildcard_advertising: Option<std::net::IpAddr>,
        record: Option<(
            std::path::PathBuf,
            Option<tutti_sfu::recorder::store::ObjectStoreConfig>,
        )>,
        hls_dir: Option<std::path::PathBuf>,
    ) -> Result<Self> {
        let (record_dir, record_store) = match record {
            Some((dir, store)) => (Some(dir), store),
            None => (None, None),
        };
        let udp: SocketAddr = match wildcard_advertising {
            Some(_) => "0.0.0.0:0".parse()?,
            None => "127.0.0.1:0".parse()?,
        };
        let mut core = CoreConfig::new(udp);
        configure(&mut core);
        let shard = start(ShardOptions {
            http: "127.0.0.1:0".parse()?,
            udp,
            advertise_ip: wildcard_advertising,
            advertise_port: None,
            ice_tcp: true,
            admin_token: ADMIN_TOKEN.into(),
            signal_token: SIGNAL_TOKEN.into(),
            core,
            name: "test-shard".into(),
            registration,
            record_dir,
            record_store,
            hls_dir,
            record_retention_days: 0,
        })
        .await?;
        let admin = AdminClient::new(shard.http_addr, ADMIN_TOKEN);
        Ok(Self { shard, admin })
    }

    /// Publishes this shard's record into `store` as `id` (100 seats) every `interval`,
    /// each record living `ttl`, until `stop`.
    pub fn heartbeat_into<W>(
        &self,
        store: W,
        id: &str,
        interval: Duration,
        ttl: Duration,
        stop: tokio_util::sync::CancellationToken,
    ) -> tokio::task::JoinHandle<()>
    where
        W: tutti_store::LiveWriter + Send + Sync + 'static,
    {
        self.heartbeat_in_region(store, id, None, interval, ttl, stop)
    }

    /// [`Self::heartbeat_into`], the record naming `region`.
    pub fn heartbeat_in_region<W>(
        &self,
        store: W,
        id: &str,
        region: Option<&str>,
        interval: Duration,
        ttl: Duration,
        stop: tokio_util::sync::CancellationToken,
    ) -> tokio::task::JoinHandle<()>
    where
        W: tutti_store::LiveWriter + Send + Sync + 'static,
    {
        let http_base = format!("http://{}", self.shard.http_addr);
        self.heartbeat_at(store, id, region, &http_base, interval, ttl, stop)
    }

    /// Like [`Self::heartbeat_in_region`], but the records name `http_base` as the shard's
    /// address (a test makes the control plane reach for a shard that does not answer).
    #[allow(clippy::too_many_arguments)]
    pub fn heartbeat_at<W>(
        &self,
        store: W,
        id: &str,
        region: Option<&str>,
        http_base: &str,
        interval: Duration,
        ttl: Duration,
        stop: tokio_util::sync::CancellationToken,
    ) -> tokio::task::JoinHandle<()>
    where
        W: tutti_store::LiveWriter + Send + Sync + 'static,
    {
        let config = tutti_sfu::heartbeat::HeartbeatConfig {
            id: id.into(),
            http_base: http_base.into(),
            region: region.map(str::to_owned),
            probe: None,
            region_file: None,
            labels: Default::default(),
            capacity: 100,
            interval,
            ttl,
        };
        tokio::spawn(tutti_sfu::heartbeat::run(
            config,
            self.shard.handle.clone(),
            store,
            Registration::new(ttl),
            stop,
        ))
    }

    /// The signaling WebSocket URL.
    pub fn signal_url(&self) -> String {
        format!("ws://{}/v1/signal", self.shard.http_addr)
    }
}

/// A shard running as a child process.
pub struct ChildShard {
    child: tokio::process::Child,
    /// Its HTTP address.
    pub http: SocketAddr,
    /// Its admin client.
    pub admin: AdminClient,
}

impl ChildShard {
    /// Starts `program args…` (the `tutti-sfu` executable, or anything that serves a shard
    /// and prints its address the same way), optionally pinned to `cpu`, and waits for it
    /// to report its addresses.
    pub async fn spawn(
        program: &std::path::Path,
        args: &[&str],
        cpu: Option<usize>,
    ) -> Result<Self> {
        let mut command = match cpu {
            Some(cpu) => {
                let mut c = tokio::process::Command::new("taskset");
                c.arg("-c").arg(cpu.to_string()).arg(program);
                c
            }
            None => tokio::process::Command::new(program),
        };
        command.args(args);
        command
            .args(["--http", "127.0.0.1:0", "--udp", "127.0.0.1:0"])
            .env("TUTTI_SFU_ADMIN_TOKEN", ADMIN_TOKEN)
            .env("TUTTI_SFU_SIGNAL_TOKEN", SIGNAL_TOKEN)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        let mut child = command
            .spawn()
            .with_context(|| format!("spawn {}", program.display()))?;
        let stdout = child.stdout.take().context("child stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let http = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(line) = lines.next_line().await? {
                // "tutti-sfu: http://ADDR (signaling ...".
                if let Some(rest) = line.strip_prefix("tutti-sfu: http://")
                    && let Some(addr) = rest.split_whitespace().next()
                {
                    return Ok::<_, anyhow::Error>(addr.parse::<SocketAddr>()?);
                }
            }
            bail!("shard exited before reporting its address")
        })
        .await
        .context("shard start timed out")??;
        // Keep draining stdout so the child never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(Self {
            child,
            http,
            admin: AdminClient::new(http, ADMIN_TOKEN),
        })
    }

    /// The signaling WebSocket URL.
    pub fn signal_url(&self) -> String {
        format!("ws://{}/v1/signal", self.http)
    }

    /// The child's process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Stops the child.
    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

/// CPU seconds and resident bytes of a process, from `/proc/<pid>`.
pub fn process_usage(pid: u32) -> Option<(f64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    Some((
        tutti_sfu::procstat::cpu_seconds_of(&stat)?,
        tutti_sfu::procstat::rss_bytes_of(&status)?,
    ))
}
