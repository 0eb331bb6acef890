//! A site's firewall: nftables rules in its namespace that drop everything but what is
//! listed, the way restrictive networks do.

use anyhow::Result;
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;
use std::net::SocketAddrV4;

/// What a site may open. Replies to what it opened always come back; nothing else does.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Firewall {
    /// TCP destinations it may connect to.
    #[serde(default)]
    pub allow_tcp: Vec<SocketAddrV4>,
    /// TCP destinations it may connect to only with TLS: a connection whose first
    /// payload is not a TLS handshake record is dropped, as by the deep packet
    /// inspection that blocks plain TURN and VoIP but lets HTTPS through.
    #[serde(default)]
    pub allow_tls: Vec<SocketAddrV4>,
    /// UDP destinations it may send to.
    #[serde(default)]
    pub allow_udp: Vec<SocketAddrV4>,
}

impl Firewall {
    /// The nftables ruleset.
    pub fn ruleset(&self) -> String {
        let mut rules = String::from(
            "table inet tsim {\n  chain output {\n    type filter hook output priority 0; policy drop;\n    oif \"lo\" accept\n    ct mark 0x1 accept\n",
        );
        for addr in &self.allow_tcp {
            let _ = writeln!(
                rules,
                "    ip daddr {} tcp dport {} accept",
                addr.ip(),
                addr.port()
            );
        }
        for addr in &self.allow_udp {
            let _ = writeln!(
                rules,
                "    ip daddr {} udp dport {} accept",
                addr.ip(),
                addr.port()
            );
        }
        for addr in &self.allow_tls {
            let to = format!("ip daddr {} tcp dport {}", addr.ip(), addr.port());
            // Content type 22 (handshake), version 3.x: the ClientHello. The connection is
            // marked and passes from then on; a first payload of anything else is
            // dropped; segments without payload (the handshake, ACKs) pass.
            let _ = writeln!(rules, "    {to} @ih,0,16 0x1603 ct mark set 0x1 accept");
            let _ = writeln!(rules, "    {to} @ih,0,16 != 0x1603 drop");
            let _ = writeln!(rules, "    {to} accept");
        }
        rules.push_str(
            "  }\n  chain input {\n    type filter hook input priority 0; policy drop;\n    iif \"lo\" accept\n    ct state established,related accept\n  }\n}\n",
        );
        rules
    }

    /// Loads the ruleset into `namespace`.
    pub fn apply(&self, namespace: &str) -> Result<()> {
        super::nft(namespace, &self.ruleset())
    }
}
