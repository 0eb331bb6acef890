//! The flags every binary takes to reach the live state.

use crate::EtcdConfig;
use std::path::PathBuf;

/// Where the live state is.
#[derive(Debug, Clone, clap::Args)]
pub struct StoreArgs {
    /// Live state: `memory` (this process only), or
    /// `etcd://host:port[,host:port…][/prefix]` (`etcds://` for TLS).
    #[arg(long, env = "TUTTI_STORE", default_value = "memory")]
    pub store: String,
    /// etcd user (with --etcd-password).
    #[arg(long, env = "TUTTI_ETCD_USER")]
    pub etcd_user: Option<String>,
    /// etcd password.
    #[arg(long, env = "TUTTI_ETCD_PASSWORD", hide_env_values = true)]
    pub etcd_password: Option<String>,
    /// CA certificate (PEM) that signed etcd's certificate.
    #[arg(long, env = "TUTTI_ETCD_CA")]
    pub etcd_ca: Option<PathBuf>,
    /// Client certificate (PEM) for etcd.
    #[arg(long, env = "TUTTI_ETCD_CERT")]
    pub etcd_cert: Option<PathBuf>,
    /// Client key (PEM) for etcd.
    #[arg(long, env = "TUTTI_ETCD_KEY")]
    pub etcd_key: Option<PathBuf>,
}

impl StoreArgs {
    /// The etcd configuration, or `None` for the in-memory store.
    pub fn etcd(&self) -> Result<Option<EtcdConfig>, String> {
        if self.store == "memory" {
            return Ok(None);
        }
        if !crate::ETCD_SUPPORTED {
            return Err(format!(
                "--store {}: this binary was built without etcd support; build it with \
                 `--features etcd` (which needs protoc) to join a cluster",
                self.store
            ));
        }
        let mut config = EtcdConfig::parse(&self.store)?;
        config.user = match (&self.etcd_user, &self.etcd_password) {
            (Some(user), Some(password)) => Some((user.clone(), password.clone())),
            (None, None) => None,
            _ => return Err("--etcd-user and --etcd-password go together".into()),
        };
        config.ca_file = self.etcd_ca.clone();
        config.identity_files = match (&self.etcd_cert, &self.etcd_key) {
            (Some(cert), Some(key)) => Some((cert.clone(), key.clone())),
            (None, None) => None,
            _ => return Err("--etcd-cert and --etcd-key go together".into()),
        };
        Ok(Some(config))
    }
}
