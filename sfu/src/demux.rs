//! The routing table of the shared UDP port: which peer connection a datagram belongs to.
//!
//! A peer is first found by the ICE username fragment in its STUN Binding request; once
//! that request has proven it knows the peer's ICE password, its source address is bound
//! to the peer and every later datagram from that address (DTLS, SRTP) is routed by
//! address alone. Addresses that fall silent are evicted, so a client that changed
//! network, or a scanner that once guessed nothing, leaves no entry behind.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

/// How many addresses one peer may have bound at once (a browser has a few candidate
/// pairs during ICE; more than this is either a bug or an attack).
pub const MAX_ADDRS_PER_PEER: usize = 8;

#[derive(Debug, Clone)]
struct AddrEntry<K> {
    key: K,
    last_seen: Instant,
    /// The local address the remote last sent to (known on wildcard-bound sockets):
    /// where replies must come from.
    local: Option<IpAddr>,
}

/// Maps ICE ufrags and bound remote addresses to peer keys.
#[derive(Debug)]
pub struct Demux<K> {
    by_ufrag: HashMap<String, K>,
    by_addr: crate::FastMap<SocketAddr, AddrEntry<K>>,
    idle_timeout: Duration,
}

impl<K: Copy + Eq + Hash> Demux<K> {
    /// An empty table whose address bindings expire after `idle_timeout` of silence.
    pub fn new(idle_timeout: Duration) -> Self {
        Self {
            by_ufrag: HashMap::new(),
            by_addr: crate::FastMap::default(),
            idle_timeout,
        }
    }

    /// Registers the local ufrag of a peer's ICE agent.
    pub fn register_ufrag(&mut self, ufrag: String, key: K) {
        self.by_ufrag.insert(ufrag, key);
    }

    /// Forgets a peer entirely: its ufrag and every address bound to it. Returns the
    /// addresses that were bound.
    pub fn remove_peer(&mut self, key: K) -> Vec<SocketAddr> {
        self.by_ufrag.retain(|_, k| *k != key);
        let mut removed = Vec::new();
        self.by_addr.retain(|addr, entry| {
            let keep = entry.key != key;
            if !keep {
                removed.push(*addr);
            }
            keep
        });
        removed
    }

    /// Forgets a ufrag that an ICE restart replaced.
    pub fn unregister_ufrag(&mut self, ufrag: &str) {
        self.by_ufrag.remove(ufrag);
    }

    /// Forgets one address binding (its connection closed).
    pub fn unbind(&mut self, addr: SocketAddr) {
        self.by_addr.remove(&addr);
    }

    /// The peer owning a local ufrag.
    pub fn peer_by_ufrag(&self, ufrag: &str) -> Option<K> {
        self.by_ufrag.get(ufrag).copied()
    }

    /// The peer bound to a remote address, refreshing the binding and the local address
    /// it sent to.
    pub fn peer_by_addr(
        &mut self,
        addr: SocketAddr,
        local: Option<IpAddr>,
        now: Instant,
    ) -> Option<K> {
        let entry = self.by_addr.get_mut(&addr)?;
        entry.last_seen = now;
        entry.local = local;
        Some(entry.key)
    }

    /// The peer a remote address is bound to, without refreshing it.
    pub fn owner(&self, addr: SocketAddr) -> Option<K> {
        self.by_addr.get(&addr).map(|entry| entry.key)
    }

    /// The local address a bound remote address last sent to.
    pub fn local_for(&self, addr: SocketAddr) -> Option<IpAddr> {
        self.by_addr.get(&addr).and_then(|entry| entry.local)
    }

    /// Binds a remote address to a peer after the peer proved its ICE credentials from it.
    /// When the peer already has [`MAX_ADDRS_PER_PEER`] addresses, its stalest one goes.
    pub fn bind(&mut self, addr: SocketAddr, local: Option<IpAddr>, key: K, now: Instant) {
        if let Some(entry) = self.by_addr.get_mut(&addr) {
            entry.key = key;
            entry.last_seen = now;
            entry.local = local;
            return;
        }
        let mut owned: Vec<(SocketAddr, Instant)> = self
            .by_addr
            .iter()
            .filter(|(_, entry)| entry.key == key)
            .map(|(addr, entry)| (*addr, entry.last_seen))
            .collect();
        if owned.len() >= MAX_ADDRS_PER_PEER {
            owned.sort_by_key(|(_, seen)| *seen);
            if let Some((stalest, _)) = owned.first() {
                self.by_addr.remove(stalest);
            }
        }
        self.by_addr.insert(
            addr,
            AddrEntry {
                key,
                last_seen: now,
                local,
            },
        );
    }

    /// Drops address bindings silent for longer than the idle timeout; returns how many.
    pub fn evict_idle(&mut self, now: Instant) -> usize {
        let before = self.by_addr.len();
        let timeout = self.idle_timeout;
        self.by_addr
            .retain(|_, entry| now.saturating_duration_since(entry.last_seen) <= timeout);
        before - self.by_addr.len()
    }

    /// How many addresses are bound.
    pub fn bound_addrs(&self) -> usize {
        self.by_addr.len()
    }

    /// How many ufrags are registered.
    pub fn registered_ufrags(&self) -> usize {
        self.by_ufrag.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn routes_by_ufrag_then_address() {
        let t0 = Instant::now();
        let mut demux = Demux::new(Duration::from_secs(30));
        demux.register_ufrag("abcd".into(), 1u32);
        demux.register_ufrag("efgh".into(), 2u32);
        assert_eq!(demux.peer_by_ufrag("abcd"), Some(1));
        assert_eq!(demux.peer_by_ufrag("zzzz"), None);
        assert_eq!(demux.peer_by_addr(addr(5000), None, t0), None);
        demux.bind(addr(5000), None, 1, t0);
        demux.bind(addr(5001), None, 2, t0);
        assert_eq!(demux.peer_by_addr(addr(5000), None, t0), Some(1));
        assert_eq!(demux.peer_by_addr(addr(5001), None, t0), Some(2));
    }

    #[test]
    fn remembers_the_local_address_each_remote_last_reached() {
        let t0 = Instant::now();
        let mut demux = Demux::new(Duration::from_secs(30));
        let (a, b): (IpAddr, IpAddr) = ([10, 0, 0, 1].into(), [192, 0, 2, 1].into());
        demux.bind(addr(1), Some(a), 1u32, t0);
        assert_eq!(demux.local_for(addr(1)), Some(a));
        demux.peer_by_addr(addr(1), Some(b), t0);
        assert_eq!(demux.local_for(addr(1)), Some(b));
        assert_eq!(demux.local_for(addr(2)), None);
    }

    #[test]
    fn an_ice_restart_replaces_the_ufrag() {
        let mut demux = Demux::new(Duration::from_secs(30));
        demux.register_ufrag("old".into(), 1u32);
        demux.register_ufrag("new".into(), 1u32);
        demux.unregister_ufrag("old");
        assert_eq!(demux.peer_by_ufrag("old"), None);
        assert_eq!(demux.peer_by_ufrag("new"), Some(1));
    }

    #[test]
    fn evicts_silent_addresses_but_keeps_active_ones() {
        let t0 = Instant::now();
        let mut demux = Demux::new(Duration::from_secs(30));
        demux.bind(addr(1), None, 1u32, t0);
        demux.bind(addr(2), None, 1u32, t0);
        // Only the second address keeps talking.
        assert_eq!(
            demux.peer_by_addr(addr(2), None, t0 + Duration::from_secs(20)),
            Some(1)
        );
        assert_eq!(demux.evict_idle(t0 + Duration::from_secs(31)), 1);
        assert_eq!(
            demux.peer_by_addr(addr(1), None, t0 + Duration::from_secs(31)),
            None
        );
        assert_eq!(
            demux.peer_by_addr(addr(2), None, t0 + Duration::from_secs(31)),
            Some(1)
        );
    }

    #[test]
    fn caps_addresses_per_peer_and_removes_whole_peers() {
        let t0 = Instant::now();
        let mut demux = Demux::new(Duration::from_secs(30));
        demux.register_ufrag("u".into(), 7u32);
        for port in 0..(MAX_ADDRS_PER_PEER as u16 + 5) {
            demux.bind(
                addr(port),
                None,
                7,
                t0 + Duration::from_millis(u64::from(port)),
            );
        }
        assert_eq!(demux.bound_addrs(), MAX_ADDRS_PER_PEER);
        // The newest binding survived the cap, the oldest did not.
        let newest = addr(MAX_ADDRS_PER_PEER as u16 + 4);
        assert_eq!(demux.peer_by_addr(newest, None, t0), Some(7));
        assert_eq!(demux.peer_by_addr(addr(0), None, t0), None);
        assert_eq!(demux.remove_peer(7).len(), MAX_ADDRS_PER_PEER);
        assert_eq!(demux.bound_addrs(), 0);
        assert_eq!(demux.registered_ufrags(), 0);
    }
}
