//! An S3-compatible server for tests: moto's (`pip install moto[server]`, in the venv the
//! test script makes), on a loopback port of its own, killed when dropped.
//!
//! moto checks requests' shapes (multipart uploads, listings, batch deletes: all run in
//! `tests/tests/recording_store.rs`) but not their signatures: presigned URLs are checked only against AWS's published examples, in
//! `rusty-s3`'s own tests.

use anyhow::{Context, Result};
use std::process::Stdio;
use std::time::Duration;
use tutti_sfu::recorder::store::{AccessKeys, ObjectStore, ObjectStoreConfig};

/// A running moto server.
pub struct MotoServer {
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
    _child: tokio::process::Child,
}

impl MotoServer {
    /// Starts one and waits until it answers.
    pub async fn start() -> Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let child = tokio::process::Command::new(crate::aiortc::python()?)
            .args([
                "-m",
                "moto.server",
                "-H",
                "127.0.0.1",
                "-p",
                &port.to_string(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("start moto's S3 server (pip install 'moto[server]')")?;
        let endpoint = format!("http://127.0.0.1:{port}");
        crate::eventually::eventually(Duration::from_secs(30), "moto to listen", || async {
            Ok(tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok())
        })
        .await?;
        Ok(Self {
            endpoint,
            _child: child,
        })
    }

    /// A configuration of its bucket `bucket`, uploading every `every`.
    pub fn config(&self, bucket: &str, prefix: &str, every: Duration) -> Result<ObjectStoreConfig> {
        Ok(ObjectStoreConfig {
            endpoint: self.endpoint.parse()?,
            bucket: bucket.into(),
            region: "us-east-1".into(),
            prefix: prefix.into(),
            virtual_host: false,
            upload_every: every,
            keep_local: false,
            keys: Some(AccessKeys {
                id: "tutti-test".into(),
                secret: "tutti-test-secret".into(),
            }),
        })
    }

    /// A client of that bucket, which it creates.
    pub async fn bucket(&self, config: &ObjectStoreConfig) -> Result<ObjectStore> {
        let store = ObjectStore::from_config(config.clone())?;
        store.create_bucket().await?;
        Ok(store)
    }
}
