//! The simulated network: datagrams between addresses, each link with its own one-way
//! delay, jitter and loss, delivered in order per link on the virtual clock.

use bytes::BytesMut;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

/// Which datagrams a link loses.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Loss {
    /// None.
    None,
    /// Each datagram with this probability.
    Random(f64),
    /// Every nth RTP packet (its retransmission gets through, unless it is the nth again).
    EveryNthRtp(u64),
    /// Every RTP packet whose sequence number is a multiple of this, retransmissions
    /// included: a loss no repair can fix.
    RtpSeqMultipleOf(u16),
}

/// One direction of a link between two hosts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LinkParams {
    /// One-way delay.
    pub delay: Duration,
    /// Up to this much more, uniformly (never reordering: a link stays in order).
    pub jitter: Duration,
    /// What it loses.
    pub loss: Loss,
    /// A bottleneck: datagrams queue to leave at this rate (bits per second), and one
    /// that would wait longer than `max_queue` is dropped, as a router's drop-tail queue
    /// does. `None`: no limit.
    pub rate_bps: Option<u64>,
    /// The longest a datagram waits at the bottleneck.
    pub max_queue: Duration,
}

impl Default for LinkParams {
    fn default() -> Self {
        Self {
            delay: Duration::from_millis(5),
            jitter: Duration::ZERO,
            loss: Loss::None,
            rate_bps: None,
            max_queue: Duration::from_millis(200),
        }
    }
}

/// A datagram on its way.
#[derive(Debug)]
pub struct Datagram {
    /// Sender.
    pub from: SocketAddr,
    /// Receiver.
    pub to: SocketAddr,
    /// Bytes.
    pub bytes: BytesMut,
}

/// Whether a datagram is SRTP media (not RTCP, DTLS or STUN), whose header travels in
/// the clear; its sequence number when it is.
fn rtp_sequence(bytes: &[u8]) -> Option<u16> {
    let media =
        bytes.len() > 12 && (128..=191).contains(&bytes[0]) && !(192..=223).contains(&bytes[1]);
    media.then(|| u16::from_be_bytes([bytes[2], bytes[3]]))
}

#[derive(Debug, Default)]
struct LinkState {
    params: LinkParams,
    /// When the last datagram on this link is delivered: the next one is not earlier.
    last_due: Option<Instant>,
    /// When the bottleneck has sent everything queued so far.
    bottleneck_free: Option<Instant>,
    rtp_seen: u64,
    dropped: u64,
    /// A digest of each SRTP packet sent, by (SSRC, sequence number): its packet index
    /// while the rollover counter is 0, as in these short runs.
    sent_rtp: HashMap<(u32, u16), u64>,
    /// Packets sent again under an index already used...
    rtp_repeats: u64,
    /// ...of which with other bytes: SRTP then reused a keystream on different plaintext.
    rtp_reused_keystream: u64,
    /// Packets with the padding bit set (probes, fills), by SSRC.
    padded_rtp: HashMap<u32, u64>,
}

/// The network between the shard and its clients.
#[derive(Debug)]
pub struct Net {
    queue: BinaryHeap<Reverse<(Instant, u64)>>,
    in_flight: HashMap<u64, Datagram>,
    next_id: u64,
    links: HashMap<(IpAddr, IpAddr), LinkState>,
    default: LinkParams,
    rng: StdRng,
}

impl Net {
    /// A network whose links all have `default` until set otherwise; `seed` drives jitter
    /// and random loss.
    pub fn new(default: LinkParams, seed: u64) -> Self {
        Self {
            queue: BinaryHeap::new(),
            in_flight: HashMap::new(),
            next_id: 0,
            links: HashMap::new(),
            default,
            rng: StdRng::seed_from_u64(seed),
        }
    }

    /// Sets the link from `from` to `to` (one direction).
    pub fn set_link(&mut self, from: IpAddr, to: IpAddr, params: LinkParams) {
        let default = self.default;
        self.links
            .entry((from, to))
            .or_insert_with(|| LinkState {
                params: default,
                ..LinkState::default()
            })
            .params = params;
    }

    /// Sends a datagram at `now`: it arrives after the link's delay, or never.
    pub fn send(&mut self, now: Instant, from: SocketAddr, to: SocketAddr, bytes: BytesMut) {
        let default = self.default;
        let link = self
            .links
            .entry((from.ip(), to.ip()))
            .or_insert_with(|| LinkState {
                params: default,
                ..LinkState::default()
            });
        let sequence = rtp_sequence(&bytes);
        if let Some(seq) = sequence {
            link.rtp_seen += 1;
            let ssrc = u32::from_be_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
            let digest = {
                let mut hasher = std::collections::hash_map::DefaultHasher::new();
                std::hash::Hash::hash(&bytes[..], &mut hasher);
                std::hash::Hasher::finish(&hasher)
            };
            if bytes[0] & 0x20 != 0 {
                *link.padded_rtp.entry(ssrc).or_default() += 1;
            }
            if let Some(before) = link.sent_rtp.insert((ssrc, seq), digest) {
                link.rtp_repeats += 1;
                if before != digest {
                    link.rtp_reused_keystream += 1;
                }
            }
        }
        let lost = match (link.params.loss, sequence) {
            (Loss::None, _) => false,
            (Loss::Random(p), _) => self.rng.random_bool(p.clamp(0.0, 1.0)),
            (Loss::EveryNthRtp(n), Some(_)) => link.rtp_seen.is_multiple_of(n.max(1)),
            (Loss::RtpSeqMultipleOf(m), Some(seq)) => seq.is_multiple_of(m.max(1)),
            _ => false,
        };
        if lost {
            link.dropped += 1;
            return;
        }
        let mut leaves = now;
        if let Some(rate) = link.params.rate_bps.filter(|r| *r > 0) {
            let start = link.bottleneck_free.map_or(now, |free| free.max(now));
            if start.saturating_duration_since(now) > link.params.max_queue {
                link.dropped += 1;
                return;
            }
            leaves = start + Duration::from_secs_f64(bytes.len() as f64 * 8.0 / rate as f64);
            link.bottleneck_free = Some(leaves);
        }
        let jitter = if link.params.jitter.is_zero() {
            Duration::ZERO
        } else {
            let micros = link.params.jitter.as_micros() as u64;
            Duration::from_micros(self.rng.random_range(0..=micros))
        };
        let mut due = leaves + link.params.delay + jitter;
        if let Some(last) = link.last_due
            && due < last
        {
            due = last;
        }
        link.last_due = Some(due);
        let id = self.next_id;
        self.next_id += 1;
        self.in_flight.insert(id, Datagram { from, to, bytes });
        self.queue.push(Reverse((due, id)));
    }

    /// When the next datagram arrives.
    pub fn next_due(&self) -> Option<Instant> {
        self.queue.peek().map(|Reverse((due, _))| *due)
    }

    /// The datagrams that have arrived by `now`, in arrival order.
    pub fn pop_due(&mut self, now: Instant) -> Vec<Datagram> {
        let mut out = Vec::new();
        while let Some(Reverse((due, id))) = self.queue.peek().copied() {
            if due > now {
                break;
            }
            self.queue.pop();
            if let Some(datagram) = self.in_flight.remove(&id) {
                out.push(datagram);
            }
        }
        out
    }

    /// SRTP packets sent on the link from `from` to `to` under an index already used:
    /// (how many, how many of those with other bytes than the first).
    pub fn repeated_rtp(&self, from: IpAddr, to: IpAddr) -> (u64, u64) {
        self.links
            .get(&(from, to))
            .map_or((0, 0), |l| (l.rtp_repeats, l.rtp_reused_keystream))
    }

    /// RTP packets with the padding bit set sent on the link from `from` to `to` with
    /// SSRC `ssrc`, lost or not.
    pub fn padded_rtp(&self, from: IpAddr, to: IpAddr, ssrc: u32) -> u64 {
        self.links
            .get(&(from, to))
            .and_then(|l| l.padded_rtp.get(&ssrc))
            .copied()
            .unwrap_or(0)
    }

    /// Datagrams the link from `from` to `to` lost.
    pub fn dropped(&self, from: IpAddr, to: IpAddr) -> u64 {
        self.links.get(&(from, to)).map_or(0, |l| l.dropped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn rtp(seq: u16) -> BytesMut {
        let mut b = BytesMut::from(&[0x80u8, 96, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0xAA][..]);
        b[2..4].copy_from_slice(&seq.to_be_bytes());
        b
    }

    #[test]
    fn links_delay_in_order_and_lose_what_they_are_told_to() {
        let t0 = Instant::now();
        let (a, b) = (addr("10.0.0.1:1"), addr("10.0.1.1:2"));
        let mut net = Net::new(LinkParams::default(), 7);
        net.set_link(
            a.ip(),
            b.ip(),
            LinkParams {
                delay: Duration::from_millis(40),
                jitter: Duration::from_millis(30),
                loss: Loss::RtpSeqMultipleOf(5),
                ..LinkParams::default()
            },
        );
        for seq in 1..=20u16 {
            net.send(t0 + Duration::from_millis(u64::from(seq)), a, b, rtp(seq));
        }
        assert!(net.pop_due(t0 + Duration::from_millis(40)).is_empty());
        let all = net.pop_due(t0 + Duration::from_secs(1));
        let seqs: Vec<u16> = all.iter().filter_map(|d| rtp_sequence(&d.bytes)).collect();
        assert_eq!(seqs, (1..=20).filter(|s| s % 5 != 0).collect::<Vec<_>>());
        assert_eq!(net.dropped(a.ip(), b.ip()), 4);
        // The other direction has the default link.
        net.send(t0, b, a, rtp(1));
        assert_eq!(net.next_due(), Some(t0 + Duration::from_millis(5)));
    }

    #[test]
    fn a_bottleneck_queues_at_its_rate_and_drops_what_waits_too_long() {
        let t0 = Instant::now();
        let (a, b) = (addr("10.0.0.1:1"), addr("10.0.1.1:2"));
        let mut net = Net::new(LinkParams::default(), 7);
        net.set_link(
            a.ip(),
            b.ip(),
            LinkParams {
                delay: Duration::from_millis(10),
                rate_bps: Some(100_000),
                max_queue: Duration::from_millis(100),
                ..LinkParams::default()
            },
        );
        // 125-byte datagrams take 10 ms each at 100 kbit/s; 20 sent at once.
        for seq in 1..=20u16 {
            let mut bytes = rtp(seq);
            bytes.resize(125, 0);
            net.send(t0, a, b, bytes);
        }
        // The first leaves at 10 ms, arrives at 20; each next one 10 ms later.
        assert!(net.pop_due(t0 + Duration::from_millis(19)).is_empty());
        assert_eq!(net.pop_due(t0 + Duration::from_millis(20)).len(), 1);
        let rest = net.pop_due(t0 + Duration::from_secs(1));
        // Those that would have waited more than 100 ms were dropped.
        assert_eq!(rest.len() + 1, 11);
        assert_eq!(net.dropped(a.ip(), b.ip()), 9);
    }
}
