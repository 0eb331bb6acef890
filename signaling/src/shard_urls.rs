//! Which shard signaling URLs a gateway presents the shard signaling token to.
//!
//! A gateway reads a shard's `signal_url` from the live state and sends it the token every
//! shard accepts. Whoever could write a record with a URL of their choosing would collect
//! that token, so the gateway only connects to `ws://` or `wss://` URLs whose path is the
//! shard's `/v1/signal`, without credentials, on an IP address in the networks pods and
//! local shards live in (private, CGNAT and loopback ranges by default). Clusters whose
//! pods have public addresses (EKS with IPv6, for one) add their pod network.

use ipnet::IpNet;
use std::net::IpAddr;

/// The networks allowed by default.
pub const DEFAULT_SHARD_NETWORKS: &str =
    "10.0.0.0/8,172.16.0.0/12,192.168.0.0/16,100.64.0.0/10,127.0.0.0/8,fc00::/7,::1/128";

/// The networks shard signaling URLs must point into.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardNetworks(Vec<IpNet>);

impl Default for ShardNetworks {
    fn default() -> Self {
        Self::parse(DEFAULT_SHARD_NETWORKS).unwrap_or(Self(Vec::new()))
    }
}

impl ShardNetworks {
    /// Comma-separated CIDRs.
    pub fn parse(list: &str) -> Result<Self, String> {
        list.split(',')
            .map(str::trim)
            .filter(|cidr| !cidr.is_empty())
            .map(|cidr| {
                cidr.parse::<IpNet>()
                    .map_err(|e| format!("shard network {cidr:?}: {e}"))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Self)
    }

    /// Why the gateway will not present its token at `url`, if it will not.
    pub fn refusal(&self, url: &str) -> Option<String> {
        let Ok(parsed) = url::Url::parse(url) else {
            return Some(format!("{url:?} is not a URL"));
        };
        if !matches!(parsed.scheme(), "ws" | "wss") {
            return Some(format!("{url:?} is not ws:// or wss://"));
        }
        if !parsed.username().is_empty() || parsed.password().is_some() {
            return Some(format!("{url:?} carries credentials"));
        }
        if parsed.path() != "/v1/signal" || parsed.query().is_some() {
            return Some(format!("{url:?} is not a shard's /v1/signal"));
        }
        let ip = match parsed.host() {
            Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip),
            Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip),
            _ => return Some(format!("{url:?} does not name the shard by IP address")),
        };
        (!self.0.iter().any(|net| net.contains(&ip)))
            .then(|| format!("{ip} is outside the shard networks (--shard-networks)"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_shard_endpoints_inside_the_pod_networks_get_the_token() {
        let networks = ShardNetworks::default();
        for good in [
            "ws://10.1.2.3:7880/v1/signal",
            "ws://127.0.0.1:40000/v1/signal",
            "wss://[fd00::5]:7880/v1/signal",
            "ws://100.64.0.9:7880/v1/signal",
        ] {
            assert_eq!(networks.refusal(good), None, "{good}");
        }
        for bad in [
            "ws://203.0.113.7:7880/v1/signal",
            "ws://evil.example.com/v1/signal",
            "http://10.1.2.3:7880/v1/signal",
            "ws://10.1.2.3:7880/collect",
            "ws://10.1.2.3:7880/v1/signal?x=1",
            "ws://user:pw@10.1.2.3:7880/v1/signal",
            "ws://[2001:db8::1]:7880/v1/signal",
            "not a url",
        ] {
            assert!(networks.refusal(bad).is_some(), "{bad}");
        }
        let widened = ShardNetworks::parse("2001:db8::/32, 10.0.0.0/8").unwrap();
        assert_eq!(widened.refusal("ws://[2001:db8::1]:7880/v1/signal"), None);
        assert!(ShardNetworks::parse("10.0.0.0/33").is_err());
    }
}
