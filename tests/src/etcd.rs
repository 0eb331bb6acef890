//! A real etcd (Debian's `etcd-server`) for tests, on free loopback ports with its own data
//! directory, that can be stopped and started again mid-test.

use anyhow::{Context, Result, bail};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

/// A running (or stopped) etcd; killed and its data removed when dropped.
pub struct Etcd {
    child: Option<tokio::process::Child>,
    /// The client port.
    pub port: u16,
    peer_port: u16,
    data: PathBuf,
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl Etcd {
    /// Starts etcd and waits until it is healthy.
    pub async fn start() -> Result<Self> {
        let port = free_port()?;
        let peer_port = free_port()?;
        let data = std::env::temp_dir().join(format!("tutti-etcd-{}-{port}", std::process::id()));
        let _ = std::fs::remove_dir_all(&data);
        let mut etcd = Self {
            child: None,
            port,
            peer_port,
            data,
        };
        etcd.resume().await?;
        Ok(etcd)
    }

    /// `etcd://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("etcd://127.0.0.1:{}", self.port)
    }

    /// Starts the (stopped) server again on the same ports and data.
    pub async fn resume(&mut self) -> Result<()> {
        let binary = std::env::var("TUTTI_ETCD").unwrap_or_else(|_| "etcd".into());
        let client = format!("http://127.0.0.1:{}", self.port);
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let child = tokio::process::Command::new(&binary)
            .args(["--name", "tutti-test"])
            .arg("--data-dir")
            .arg(&self.data)
            .args([
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
            ])
            .args([
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
            ])
            .args(["--initial-cluster", &format!("tutti-test={peer}")])
            .args(["--log-level", "error"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {binary} (Debian package etcd-server)"))?;
        self.child = Some(child);
        self.wait_healthy().await
    }

    /// Kills the server (as a crash would).
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
    }

    async fn wait_healthy(&self) -> Result<()> {
        for _ in 0..200 {
            if let Ok((200, body)) =
                crate::gateway::http_get(format!("127.0.0.1:{}", self.port).parse()?, "/health")
                    .await
                && body.contains("true")
            {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("etcd on port {} did not become healthy in 10 s", self.port)
    }

    /// Runs `etcdctl` against this server; its standard output.
    pub async fn etcdctl(&self, args: &[&str]) -> Result<String> {
        let output = tokio::process::Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints=127.0.0.1:{}", self.port))
            .args(args)
            .output()
            .await
            .context("etcdctl (Debian package etcd-client)")?;
        if !output.status.success() {
            bail!(
                "etcdctl {args:?}: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.start_kill();
        }
        let _ = std::fs::remove_dir_all(&self.data);
    }
}
