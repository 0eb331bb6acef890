//! The delay relay: reads every packet the router forwards from its TUN device, drops
//! some (loss, a full queue), holds the rest for the link's serialisation time, delay and
//! jitter, and writes them back for the router to send on. Jitter never reorders packets
//! of one link (each leaves no earlier than the one before it), as on most real paths.

use anyhow::{Context, Result, bail, ensure};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, VecDeque};
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Longest the relay sleeps before looking at its stop flag again.
const STOP_CHECK: Duration = Duration::from_millis(20);
/// Packets a link holds when its spec does not say.
const DEFAULT_QUEUE: usize = 2000;

/// What a path does to the packets of one direction.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkParams {
    /// One-way delay, milliseconds.
    #[serde(default)]
    pub delay_ms: f64,
    /// Each packet's delay varies uniformly by up to this much either way, milliseconds.
    #[serde(default)]
    pub jitter_ms: f64,
    /// Share of packets dropped at random, 0..=1.
    #[serde(default)]
    pub loss: f64,
    /// Capacity in kbit/s; unlimited when absent.
    #[serde(default)]
    pub rate_kbps: Option<u32>,
    /// Packets waiting beyond this many are dropped (tail drop).
    #[serde(default)]
    pub queue_packets: Option<usize>,
}

impl LinkParams {
    /// Checks the ranges.
    pub fn validate(&self) -> Result<()> {
        ensure!(
            (0.0..=5000.0).contains(&self.delay_ms),
            "delay_ms is 0..=5000"
        );
        ensure!(
            (0.0..=1000.0).contains(&self.jitter_ms),
            "jitter_ms is 0..=1000"
        );
        ensure!((0.0..=1.0).contains(&self.loss), "loss is 0..=1");
        ensure!(
            self.rate_kbps
                .is_none_or(|rate| (8..=10_000_000).contains(&rate)),
            "rate_kbps is 8..=10000000"
        );
        ensure!(
            self.queue_packets
                .is_none_or(|n| (1..=100_000).contains(&n)),
            "queue_packets is 1..=100000"
        );
        Ok(())
    }
}

/// Every direction's parameters, by (from site, to site).
#[derive(Debug, Clone, Default)]
pub struct LinkTable(HashMap<(usize, usize), LinkParams>);

impl LinkTable {
    /// Both directions of each pair get its parameters.
    pub fn new(links: Vec<((usize, usize), LinkParams)>) -> Self {
        let mut table = HashMap::new();
        for ((a, b), params) in links {
            table.insert((b, a), params.clone());
            table.insert((a, b), params);
        }
        Self(table)
    }
}

/// The link table the relay reads, which a running test may change: a path that narrows
/// or opens up while a call goes on.
#[derive(Debug, Default)]
pub struct SharedLinks {
    table: std::sync::Mutex<LinkTable>,
    /// Bumped on every change, so that the relay copies the table only then.
    generation: AtomicU64,
}

impl SharedLinks {
    /// A table to start with.
    pub fn new(table: LinkTable) -> Self {
        Self {
            table: std::sync::Mutex::new(table),
            generation: AtomicU64::new(0),
        }
    }

    /// Both directions between sites `a` and `b` get `params` from now on.
    pub fn set(&self, a: usize, b: usize, params: LinkParams) -> Result<()> {
        params.validate()?;
        let mut table = self
            .table
            .lock()
            .map_err(|_| anyhow::anyhow!("the link table's lock is poisoned"))?;
        table.0.insert((b, a), params.clone());
        table.0.insert((a, b), params);
        self.generation.fetch_add(1, Ordering::Release);
        Ok(())
    }

    /// The table and its generation, when it changed since `seen`.
    fn changed_since(&self, seen: u64) -> Option<(LinkTable, u64)> {
        let now = self.generation.load(Ordering::Acquire);
        if now == seen {
            return None;
        }
        let table = self.table.lock().ok()?.clone();
        Some((table, now))
    }
}

/// What the relay did.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Counters {
    /// Packets written back.
    pub forwarded: u64,
    /// Packets dropped by `loss`.
    pub lost: u64,
    /// Packets dropped by a full queue.
    pub overflowed: u64,
}

/// The site of an address in 198.18.0.0/16 (third octet minus one).
pub fn site_of(addr: Ipv4Addr) -> Option<usize> {
    let [a, b, c, _] = addr.octets();
    (a == 198 && b == 18 && c > 0).then(|| usize::from(c) - 1)
}

/// Creates TUN device `name` (IPv4 packets without a header) in the calling thread's
/// namespace.
pub fn open_tun(name: &str) -> Result<OwnedFd> {
    const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
    const IFF_TUN: libc::c_short = 0x0001;
    const IFF_NO_PI: libc::c_short = 0x1000;
    #[repr(C)]
    struct IfReq {
        name: [libc::c_char; libc::IFNAMSIZ],
        flags: libc::c_short,
        _pad: [u8; 22],
    }
    ensure!(name.len() < libc::IFNAMSIZ, "interface name too long");
    // SAFETY: plain open(2); the descriptor is owned below.
    let fd = unsafe {
        libc::open(
            c"/dev/net/tun".as_ptr(),
            libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        bail!(
            "cannot open /dev/net/tun: {}",
            std::io::Error::last_os_error()
        );
    }
    // SAFETY: fd was just opened and is owned by nothing else.
    let tun = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut request = IfReq {
        name: [0; libc::IFNAMSIZ],
        flags: IFF_TUN | IFF_NO_PI,
        _pad: [0; 22],
    };
    for (slot, byte) in request.name.iter_mut().zip(name.bytes()) {
        *slot = byte as libc::c_char;
    }
    // SAFETY: TUNSETIFF reads an ifreq, which IfReq lays out.
    if unsafe { libc::ioctl(tun.as_raw_fd(), TUNSETIFF, &mut request) } != 0 {
        bail!("TUNSETIFF {name}: {}", std::io::Error::last_os_error());
    }
    Ok(tun)
}

struct Held {
    release: Instant,
    packet: Vec<u8>,
}

#[derive(Default)]
struct LinkState {
    queue: VecDeque<Held>,
    /// When the link has finished sending what it holds (rate limit).
    free_at: Option<Instant>,
    /// When the last packet leaves (no reordering).
    last_release: Option<Instant>,
}

/// A small deterministic generator (SplitMix64): loss and jitter draws repeat per seed.
struct Draws(u64);

impl Draws {
    fn next_unit(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Relays packets until `stop` is set, by the links as `shared` holds them at the time.
pub fn run(tun: &OwnedFd, shared: &SharedLinks, seed: u64, stop: &AtomicBool) -> Result<Counters> {
    let (mut links, mut generation) = shared
        .changed_since(u64::MAX)
        .context("the link table's lock is poisoned")?;
    let mut counters = Counters::default();
    let mut states: HashMap<(usize, usize), LinkState> = HashMap::new();
    let mut draws = Draws(seed);
    let mut buf = vec![0u8; 65_536];
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        let next = states
            .values()
            .filter_map(|state| state.queue.front().map(|held| held.release))
            .min();
        let wait = next.map_or(STOP_CHECK, |at| {
            at.saturating_duration_since(now).min(STOP_CHECK)
        });
        wait_readable(tun, wait)?;
        // After the wait, which a change may have come during: what arrives from now on
        // goes by it, what already waits in a queue keeps the release it was given.
        if let Some((table, seen)) = shared.changed_since(generation) {
            links = table;
            generation = seen;
        }
        loop {
            // SAFETY: reads into a buffer of buf.len() bytes.
            let n = unsafe { libc::read(tun.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                break;
            }
            let packet = &buf[..n as usize];
            let Some(key) = link_of(packet) else {
                write_packet(tun, packet, &mut counters);
                continue;
            };
            let Some(params) = links.0.get(&key) else {
                write_packet(tun, packet, &mut counters);
                continue;
            };
            if params.loss > 0.0 && draws.next_unit() < params.loss {
                counters.lost += 1;
                continue;
            }
            let state = states.entry(key).or_default();
            if state.queue.len() >= params.queue_packets.unwrap_or(DEFAULT_QUEUE) {
                counters.overflowed += 1;
                continue;
            }
            let arrival = Instant::now();
            let mut sent = arrival;
            if let Some(rate) = params.rate_kbps {
                let start = state.free_at.map_or(arrival, |free| free.max(arrival));
                sent = start
                    + Duration::from_secs_f64(
                        packet.len() as f64 * 8.0 / (f64::from(rate) * 1000.0),
                    );
                state.free_at = Some(sent);
            }
            let spread = (draws.next_unit() * 2.0 - 1.0) * params.jitter_ms;
            let delay = Duration::from_secs_f64((params.delay_ms + spread).max(0.0) / 1000.0);
            let mut release = sent + delay;
            if let Some(last) = state.last_release {
                release = release.max(last);
            }
            state.last_release = Some(release);
            state.queue.push_back(Held {
                release,
                packet: packet.to_vec(),
            });
        }
        let now = Instant::now();
        for state in states.values_mut() {
            while state.queue.front().is_some_and(|held| held.release <= now) {
                if let Some(held) = state.queue.pop_front() {
                    write_packet(tun, &held.packet, &mut counters);
                }
            }
        }
    }
    Ok(counters)
}

/// The (from, to) sites of an IPv4 packet, when both are simulated sites.
fn link_of(packet: &[u8]) -> Option<(usize, usize)> {
    if packet.len() < 20 || packet[0] >> 4 != 4 {
        return None;
    }
    let from = Ipv4Addr::new(packet[12], packet[13], packet[14], packet[15]);
    let to = Ipv4Addr::new(packet[16], packet[17], packet[18], packet[19]);
    Some((site_of(from)?, site_of(to)?))
}

fn write_packet(tun: &OwnedFd, packet: &[u8], counters: &mut Counters) {
    // SAFETY: writes packet.len() bytes from packet.
    let n = unsafe { libc::write(tun.as_raw_fd(), packet.as_ptr().cast(), packet.len()) };
    if n == packet.len() as isize {
        counters.forwarded += 1;
    } else {
        counters.overflowed += 1;
    }
}

fn wait_readable(tun: &OwnedFd, wait: Duration) -> Result<()> {
    let mut poll = libc::pollfd {
        fd: tun.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let timeout = libc::timespec {
        tv_sec: wait.as_secs() as libc::time_t,
        tv_nsec: wait.subsec_nanos() as libc::c_long,
    };
    // SAFETY: one pollfd, a valid timespec, no signal mask.
    let rc = unsafe { libc::ppoll(&mut poll, 1, &timeout, std::ptr::null()) };
    if rc < 0 {
        let err = std::io::Error::last_os_error();
        if err.kind() != std::io::ErrorKind::Interrupted {
            return Err(err).context("ppoll on the TUN device");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sites_come_from_the_third_octet() {
        assert_eq!(site_of(Ipv4Addr::new(198, 18, 1, 2)), Some(0));
        assert_eq!(site_of(Ipv4Addr::new(198, 18, 3, 9)), Some(2));
        assert_eq!(site_of(Ipv4Addr::new(198, 18, 0, 9)), None);
        assert_eq!(site_of(Ipv4Addr::new(127, 0, 0, 1)), None);
    }

    #[test]
    fn draws_are_uniform_enough_and_repeat_per_seed() {
        let mut a = Draws(7);
        let mut b = Draws(7);
        let values: Vec<f64> = (0..10_000).map(|_| a.next_unit()).collect();
        assert!(values.iter().all(|v| (0.0..1.0).contains(v)));
        let below = values.iter().filter(|v| **v < 0.1).count();
        assert!((800..1200).contains(&below), "{below} of 10000 below 0.1");
        assert_eq!(
            values[..5],
            (0..5).map(|_| b.next_unit()).collect::<Vec<_>>()[..]
        );
    }

    #[test]
    fn params_are_bounded() {
        let ok = LinkParams {
            delay_ms: 40.0,
            jitter_ms: 5.0,
            loss: 0.02,
            rate_kbps: Some(2000),
            queue_packets: None,
        };
        assert!(ok.validate().is_ok());
        for bad in [
            LinkParams {
                delay_ms: -1.0,
                ..ok.clone()
            },
            LinkParams {
                loss: 1.5,
                ..ok.clone()
            },
            LinkParams {
                rate_kbps: Some(0),
                ..ok.clone()
            },
            LinkParams {
                queue_packets: Some(0),
                ..ok.clone()
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
    }
}
