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
    tls: Option<TlsFiles>,
}

/// Certificates for an etcd that speaks TLS and wants client certificates.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// The CA that signed both certificates.
    pub ca: PathBuf,
    /// The server's certificate and key.
    pub server: (PathBuf, PathBuf),
    /// A client certificate and key.
    pub client: (PathBuf, PathBuf),
}

impl TlsFiles {
    /// Makes a CA, a server certificate for 127.0.0.1 and a client certificate in `dir`,
    /// with the `openssl` command.
    pub async fn generate(dir: &std::path::Path) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        let path = |name: &str| dir.join(name);
        let run = |args: Vec<String>| async move {
            let output = tokio::process::Command::new("openssl")
                .args(&args)
                .output()
                .await
                .context("openssl")?;
            if !output.status.success() {
                bail!(
                    "openssl {args:?}: {}",
                    String::from_utf8_lossy(&output.stderr)
                );
            }
            Ok::<_, anyhow::Error>(())
        };
        let s = |p: PathBuf| p.display().to_string();
        run(vec![
            "req".into(),
            "-x509".into(),
            "-newkey".into(),
            "rsa:2048".into(),
            "-nodes".into(),
            "-keyout".into(),
            s(path("ca.key")),
            "-out".into(),
            s(path("ca.crt")),
            "-days".into(),
            "1".into(),
            "-subj".into(),
            "/CN=tutti-test-ca".into(),
        ])
        .await?;
        for (name, extension) in [
            (
                "server",
                "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth",
            ),
            ("client", "extendedKeyUsage=clientAuth"),
        ] {
            run(vec![
                "req".into(),
                "-newkey".into(),
                "rsa:2048".into(),
                "-nodes".into(),
                "-keyout".into(),
                s(path(&format!("{name}.key"))),
                "-out".into(),
                s(path(&format!("{name}.csr"))),
                "-subj".into(),
                format!("/CN=tutti-{name}"),
            ])
            .await?;
            std::fs::write(path(&format!("{name}.ext")), extension)?;
            run(vec![
                "x509".into(),
                "-req".into(),
                "-in".into(),
                s(path(&format!("{name}.csr"))),
                "-CA".into(),
                s(path("ca.crt")),
                "-CAkey".into(),
                s(path("ca.key")),
                "-CAcreateserial".into(),
                "-days".into(),
                "1".into(),
                "-out".into(),
                s(path(&format!("{name}.crt"))),
                "-extfile".into(),
                s(path(&format!("{name}.ext"))),
            ])
            .await?;
        }
        Ok(Self {
            ca: path("ca.crt"),
            server: (path("server.crt"), path("server.key")),
            client: (path("client.crt"), path("client.key")),
        })
    }
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl Etcd {
    /// Starts etcd and waits until it is healthy.
    pub async fn start() -> Result<Self> {
        Self::start_with(None).await
    }

    /// Starts etcd speaking TLS, requiring client certificates signed by `tls.ca`.
    pub async fn start_tls(tls: TlsFiles) -> Result<Self> {
        Self::start_with(Some(tls)).await
    }

    async fn start_with(tls: Option<TlsFiles>) -> Result<Self> {
        let port = free_port()?;
        let peer_port = free_port()?;
        let data = std::env::temp_dir().join(format!("tutti-etcd-{}-{port}", std::process::id()));
        let _ = std::fs::remove_dir_all(&data);
        let mut etcd = Self {
            child: None,
            port,
            peer_port,
            data,
            tls,
        };
        etcd.resume().await?;
        Ok(etcd)
    }

    /// `etcd://127.0.0.1:PORT` (`etcds://` with TLS).
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "etcds" } else { "etcd" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// Starts the (stopped) server again on the same ports and data.
    pub async fn resume(&mut self) -> Result<()> {
        let binary = std::env::var("TUTTI_ETCD").unwrap_or_else(|_| "etcd".into());
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let client = format!("{scheme}://127.0.0.1:{}", self.port);
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let mut command = tokio::process::Command::new(&binary);
        if let Some(tls) = &self.tls {
            command
                .arg("--cert-file")
                .arg(&tls.server.0)
                .arg("--key-file")
                .arg(&tls.server.1)
                .arg("--trusted-ca-file")
                .arg(&tls.ca)
                .arg("--client-cert-auth");
        }
        let child = command
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
            let healthy = if self.tls.is_some() {
                self.etcdctl(&["endpoint", "health"]).await.is_ok()
            } else {
                crate::gateway::http_get(format!("127.0.0.1:{}", self.port).parse()?, "/health")
                    .await
                    .is_ok_and(|(status, body)| status == 200 && body.contains("true"))
            };
            if healthy {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("etcd on port {} did not become healthy in 10 s", self.port)
    }

    /// Runs `etcdctl` against this server; its standard output.
    pub async fn etcdctl(&self, args: &[&str]) -> Result<String> {
        let mut command = tokio::process::Command::new("etcdctl");
        command.env("ETCDCTL_API", "3");
        match &self.tls {
            Some(tls) => {
                command
                    .arg(format!("--endpoints=https://127.0.0.1:{}", self.port))
                    .arg(format!("--cacert={}", tls.ca.display()))
                    .arg(format!("--cert={}", tls.client.0.display()))
                    .arg(format!("--key={}", tls.client.1.display()));
            }
            None => {
                command.arg(format!("--endpoints=127.0.0.1:{}", self.port));
            }
        }
        let output = command
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
