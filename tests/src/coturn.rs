//! A real coturn (Debian's `turnserver`) on loopback for tests, with the TURN REST API's
//! shared secret (`use-auth-secret`), on a free port.

use anyhow::{Context, Result, bail};
use std::net::{SocketAddr, UdpSocket};
use std::process::Stdio;
use std::time::Duration;

/// A running coturn; killed when dropped.
pub struct Coturn {
    child: tokio::process::Child,
    /// Its listening address (UDP and TCP).
    pub addr: SocketAddr,
    /// The shared secret.
    pub secret: String,
}

impl Coturn {
    /// Starts coturn on a free loopback port and waits until it answers STUN.
    pub async fn start(secret: &str) -> Result<Self> {
        let binary = std::env::var("TUTTI_TURNSERVER").unwrap_or_else(|_| "turnserver".into());
        let probe = UdpSocket::bind("127.0.0.1:0")?;
        let addr = probe.local_addr()?;
        drop(probe);
        let pidfile = std::env::temp_dir().join(format!("tutti-coturn-{}.pid", addr.port()));
        let child = tokio::process::Command::new(&binary)
            .args(["-n", "--no-cli", "--no-tls", "--no-dtls", "--fingerprint"])
            .args(["--listening-ip", "127.0.0.1", "--relay-ip", "127.0.0.1"])
            .arg(format!("--listening-port={}", addr.port()))
            .args(["--use-auth-secret", "--realm", "tutti.test"])
            .arg(format!("--static-auth-secret={secret}"))
            // The shard under test is on loopback too.
            .arg("--allow-loopback-peers")
            .args(["--log-file", "stdout", "--simple-log"])
            .arg(format!("--pidfile={}", pidfile.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {binary} (Debian package coturn)"))?;
        let coturn = Self {
            child,
            addr,
            secret: secret.to_owned(),
        };
        coturn.wait_ready().await?;
        Ok(coturn)
    }

    /// The `turn:` URL for UDP.
    pub fn url(&self) -> String {
        format!("turn:{}?transport=udp", self.addr)
    }

    async fn wait_ready(&self) -> Result<()> {
        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
        // A STUN Binding request: type 0x0001, no attributes, magic cookie, transaction id.
        let mut request = vec![0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xA4, 0x42];
        request.extend_from_slice(b"tutti-ready!");
        let mut buf = [0u8; 512];
        for _ in 0..100 {
            socket.send_to(&request, self.addr).await?;
            if let Ok(Ok((n, _))) =
                tokio::time::timeout(Duration::from_millis(100), socket.recv_from(&mut buf)).await
                && n >= 20
                && buf[0..2] == [0x01, 0x01]
            {
                return Ok(());
            }
        }
        bail!("coturn did not answer STUN on {} within 10 s", self.addr)
    }

    /// Stops coturn.
    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}
