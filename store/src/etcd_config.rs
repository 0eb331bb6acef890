//! How to reach etcd: parsed from the `--store` URL whether or not this build can talk to
//! etcd, so a build without the `etcd` feature still refuses an etcd URL with a clear
//! message instead of an unknown-flag error.

use std::path::PathBuf;

/// How to reach etcd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdConfig {
    /// `http(s)://host:port` endpoints.
    pub endpoints: Vec<String>,
    /// The key prefix every record lives under (ends with `/`).
    pub prefix: String,
    /// User and password, when etcd has authentication on.
    pub user: Option<(String, String)>,
    /// CA certificate (PEM) to verify etcd's TLS certificate with.
    pub ca_file: Option<PathBuf>,
    /// Client certificate and key (PEM), for etcd's client-certificate authentication.
    pub identity_files: Option<(PathBuf, PathBuf)>,
}

impl EtcdConfig {
    /// Parses `etcd://host:port[,host:port…][/prefix]`; `etcds://` uses TLS.
    pub fn parse(url: &str) -> Result<Self, String> {
        let (scheme, rest) = if let Some(rest) = url.strip_prefix("etcd://") {
            ("http", rest)
        } else if let Some(rest) = url.strip_prefix("etcds://") {
            ("https", rest)
        } else {
            return Err(format!(
                "{url}: expected etcd://host:port or etcds://host:port"
            ));
        };
        let (hosts, path) = rest.split_once('/').unwrap_or((rest, ""));
        let mut endpoints = Vec::new();
        for host in hosts.split(',') {
            let valid = host.rsplit_once(':').is_some_and(|(name, port)| {
                !name.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0)
            });
            if !valid {
                return Err(format!("{url}: {host:?} is not host:port"));
            }
            endpoints.push(format!("{scheme}://{host}"));
        }
        let path = path.trim_matches('/');
        if path.len() > 128 || path.chars().any(|c| c.is_control() || c == ' ') {
            return Err(format!(
                "{url}: the key prefix must be at most 128 plain characters"
            ));
        }
        let prefix = if path.is_empty() {
            "/tutti/".to_owned()
        } else {
            format!("/{path}/")
        };
        Ok(Self {
            endpoints,
            prefix,
            user: None,
            ca_file: None,
            identity_files: None,
        })
    }
}
