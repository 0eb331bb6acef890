//! How many client WebSockets a gateway holds: in all, and per client address, so that
//! one host cannot take every socket (or the memory behind them) for itself.

use crate::guesses::Guesser;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Client WebSockets one gateway holds at once, by default.
pub const DEFAULT_MAX_SOCKETS: usize = 20_000;
/// Client WebSockets one address (an IPv4 address, an IPv6 /64) holds at once, by
/// default: a school or an office behind one NAT address fits, a script does not.
pub const DEFAULT_SOCKETS_PER_CLIENT: usize = 64;

/// The limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketLimits {
    /// In all.
    pub max_sockets: usize,
    /// Per client address (0: no limit).
    pub per_client: usize,
}

impl Default for SocketLimits {
    fn default() -> Self {
        Self {
            max_sockets: DEFAULT_MAX_SOCKETS,
            per_client: DEFAULT_SOCKETS_PER_CLIENT,
        }
    }
}

/// Why a socket was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SocketRefusal {
    /// The gateway holds `max_sockets`.
    GatewayFull,
    /// The client's address holds `per_client`.
    AddressFull,
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    by_client: HashMap<Guesser, usize>,
}

/// Open sockets, counted against the limits.
#[derive(Debug, Clone)]
pub struct SocketCounter {
    limits: SocketLimits,
    counts: Arc<Mutex<Counts>>,
}

impl SocketCounter {
    /// A counter for `limits`.
    pub fn new(limits: SocketLimits) -> Self {
        Self {
            limits,
            counts: Default::default(),
        }
    }

    /// A place for one more socket from `client`, held until the returned slot is dropped.
    pub fn open(&self, client: Guesser) -> Result<SocketSlot, SocketRefusal> {
        let mut counts = self.counts.lock().map_err(|_| SocketRefusal::GatewayFull)?;
        if counts.total >= self.limits.max_sockets {
            return Err(SocketRefusal::GatewayFull);
        }
        let held = counts.by_client.get(&client).copied().unwrap_or(0);
        if self.limits.per_client > 0 && held >= self.limits.per_client {
            return Err(SocketRefusal::AddressFull);
        }
        counts.total += 1;
        counts.by_client.insert(client, held + 1);
        Ok(SocketSlot {
            counts: self.counts.clone(),
            client,
        })
    }

    /// Sockets open.
    pub fn open_now(&self) -> usize {
        self.counts.lock().map_or(0, |c| c.total)
    }
}

/// One open socket's place; given back on drop.
#[derive(Debug)]
pub struct SocketSlot {
    counts: Arc<Mutex<Counts>>,
    client: Guesser,
}

impl Drop for SocketSlot {
    fn drop(&mut self) {
        if let Ok(mut counts) = self.counts.lock() {
            counts.total = counts.total.saturating_sub(1);
            if let Some(held) = counts.by_client.get_mut(&self.client) {
                *held -= 1;
                if *held == 0 {
                    counts.by_client.remove(&self.client);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::IpAddr;

    fn at(ip: &str) -> Guesser {
        Guesser::of(ip.parse::<IpAddr>().unwrap())
    }

    #[test]
    fn an_address_holds_its_share_and_gets_it_back_as_sockets_close() {
        let counter = SocketCounter::new(SocketLimits {
            max_sockets: 10,
            per_client: 3,
        });
        let mut held: Vec<_> = (0..3)
            .map(|_| counter.open(at("192.0.2.1")).unwrap())
            .collect();
        assert_eq!(
            counter.open(at("192.0.2.1")).unwrap_err(),
            SocketRefusal::AddressFull
        );
        // Another host of the same IPv6 /64 is the same client; another /64 is not.
        let _v6: Vec<_> = (0..3)
            .map(|i| counter.open(at(&format!("2001:db8::{i}"))).unwrap())
            .collect();
        assert_eq!(
            counter.open(at("2001:db8::ff")).unwrap_err(),
            SocketRefusal::AddressFull
        );
        let _other = counter.open(at("2001:db8:0:1::1")).unwrap();
        held.pop();
        let _again = counter.open(at("192.0.2.1")).unwrap();
        assert_eq!(counter.open_now(), 7);
    }

    #[test]
    fn the_gateway_total_bounds_everyone() {
        let counter = SocketCounter::new(SocketLimits {
            max_sockets: 4,
            per_client: 0,
        });
        let held: Vec<_> = (0..4)
            .map(|i| counter.open(at(&format!("192.0.2.{i}"))).unwrap())
            .collect();
        assert_eq!(
            counter.open(at("192.0.2.99")).unwrap_err(),
            SocketRefusal::GatewayFull
        );
        drop(held);
        assert_eq!(counter.open_now(), 0);
        assert!(counter.open(at("192.0.2.99")).is_ok());
    }
}
