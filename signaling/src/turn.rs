//! ICE servers for clients: STUN URLs, and TURN with time-limited credentials.
//!
//! TURN uses coturn's `use-auth-secret` scheme (the "TURN REST API"): the username is
//! `expiry:name`, with `expiry` in seconds since the Unix epoch, and the credential is
//! `base64(HMAC-SHA1(secret, username))`. coturn recomputes the credential from its copy of
//! the secret and refuses it after `expiry`, so nothing per-user is stored anywhere and a
//! leaked credential is worthless once it expires.

use crate::protocol::IceServer;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha1::Sha1;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Shortest lifetime of TURN credentials.
pub const MIN_TTL: Duration = Duration::from_secs(60);
/// Longest lifetime of TURN credentials.
pub const MAX_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// The ICE servers a gateway hands out.
#[derive(Debug, Clone, Default)]
pub struct IceConfig {
    /// `stun:` URLs.
    pub stun_urls: Vec<String>,
    /// `turn:`/`turns:` URLs.
    pub turn_urls: Vec<String>,
    /// The secret shared with coturn (`static-auth-secret`).
    pub turn_secret: Option<String>,
    /// How long credentials stay valid.
    pub ttl: Duration,
}

/// A TURN username and credential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TurnCredential {
    /// `expiry:name`.
    pub username: String,
    /// `base64(HMAC-SHA1(secret, username))`.
    pub credential: String,
    /// When it stops working, seconds since the Unix epoch.
    pub expires_at: u64,
}

/// The credential for `name` that expires at `expiry` (seconds since the Unix epoch).
pub fn turn_credential(secret: &[u8], name: &str, expiry: u64) -> TurnCredential {
    let username = format!("{expiry}:{name}");
    // HMAC accepts keys of any length; this cannot fail.
    let credential = match Hmac::<Sha1>::new_from_slice(secret) {
        Ok(mut mac) => {
            mac.update(username.as_bytes());
            base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
        }
        Err(_) => String::new(),
    };
    TurnCredential {
        username,
        credential,
        expires_at: expiry,
    }
}

impl IceConfig {
    /// Whether there is anything to hand out.
    pub fn is_empty(&self) -> bool {
        self.stun_urls.is_empty() && (self.turn_urls.is_empty() || self.turn_secret.is_none())
    }

    /// The STUN servers alone, for a client that gets no TURN credentials.
    pub fn stun_only(&self) -> Vec<IceServer> {
        if self.stun_urls.is_empty() {
            return Vec::new();
        }
        vec![IceServer {
            urls: self.stun_urls.clone(),
            username: None,
            credential: None,
        }]
    }

    /// The ICE servers for participant `name`, credentials valid from `now` for the TTL.
    pub fn servers_for(&self, name: &str, now: SystemTime) -> Vec<IceServer> {
        let mut servers = Vec::new();
        if !self.stun_urls.is_empty() {
            servers.push(IceServer {
                urls: self.stun_urls.clone(),
                username: None,
                credential: None,
            });
        }
        if let Some(secret) = &self.turn_secret
            && !self.turn_urls.is_empty()
        {
            let now = now.duration_since(UNIX_EPOCH).unwrap_or_default();
            let credential = turn_credential(secret.as_bytes(), name, (now + self.ttl).as_secs());
            servers.push(IceServer {
                urls: self.turn_urls.clone(),
                username: Some(credential.username),
                credential: Some(credential.credential),
            });
        }
        servers
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credential_matches_the_turn_rest_api_scheme() {
        // Reference value computed independently:
        // printf '1700000000:alice' | openssl dgst -sha1 -hmac 'north' -binary | base64
        let credential = turn_credential(b"north", "alice", 1_700_000_000);
        assert_eq!(credential.username, "1700000000:alice");
        assert_eq!(credential.credential, "Cd/49soE35ICqcJF/bCTn8Z4OyE=");
    }

    #[test]
    fn servers_carry_stun_and_expiring_turn() {
        let config = IceConfig {
            stun_urls: vec!["stun:turn.example:3478".into()],
            turn_urls: vec!["turn:turn.example:3478?transport=udp".into()],
            turn_secret: Some("north".into()),
            ttl: Duration::from_secs(600),
        };
        let now = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let servers = config.servers_for("p1", now);
        assert_eq!(servers.len(), 2);
        assert_eq!(servers[0].username, None);
        assert_eq!(servers[1].username.as_deref(), Some("1000600:p1"));
        let no_secret = IceConfig {
            turn_secret: None,
            ..config
        };
        assert_eq!(no_secret.servers_for("p1", now).len(), 1);
    }
}
