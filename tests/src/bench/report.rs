//! The figures a benchmark run prints: pure arithmetic over what the run collected.

use serde::Serialize;

/// The last line of a `tutti-bench` run.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Report {
    /// `fanout` or `baseline`.
    pub mode: String,
    /// What forwarded: `tutti`, `janus` or `relay`.
    pub sfu: String,
    /// Publishers.
    pub publishers: usize,
    /// Subscribers.
    pub subscribers: usize,
    /// Length of the measurement window.
    pub seconds: f64,
    /// Packets the publishers sent during the window.
    pub sent_packets: u64,
    /// `sent_packets` × the fan-out (subscribers).
    pub expected_packets: u64,
    /// Packets sent during the window that subscribers received.
    pub received_packets: u64,
    /// `1 - received / expected`.
    pub loss_ratio: f64,
    /// What the subscribers are: `full` WebRTC peers (the async `webrtc` crate), `lean`
    /// viewers (rtc for ICE, DTLS and RTCP; Tutti's SRTP for media), or `raw` sockets of
    /// the plain relay.
    pub subscribers_as: String,
    /// Median publisher-send to subscriber-read latency: includes the load generator's
    /// own queueing behind the other subscribers on its core.
    pub latency_p50_ms: f64,
    /// 99th percentile of the same.
    pub latency_p99_ms: f64,
    /// Median publisher-send to the kernel queueing the packet on the subscriber's socket
    /// (`SO_TIMESTAMPNS`): what the forwarder did to it. Absent for full peers, whose
    /// sockets the `webrtc` crate owns.
    pub socket_latency_p50_ms: Option<f64>,
    /// 99th percentile of the same.
    pub socket_latency_p99_ms: Option<f64>,
    /// CPU time the shard (or relay) process used during the window.
    pub sfu_cpu_seconds: f64,
    /// Packets the shard (or relay) forwarded during the window.
    pub forwarded_packets: u64,
    /// `sfu_cpu_seconds` per forwarded packet, in microseconds.
    pub sfu_cpu_us_per_forwarded_packet: f64,
    /// Resident memory of the shard (or relay) at the end.
    pub sfu_rss_mib: f64,
    /// Median time from a subscriber connecting to its first media packet.
    pub join_ms_p50: f64,
    /// CPU time the load generator used during the window (for reading the figures).
    pub loadgen_cpu_seconds: f64,
    /// Whether shard and load generator ran on separate cores.
    pub pinned: bool,
    /// Subscribers the shard holds a downlink estimate for at the end, from their
    /// congestion feedback (absent where the forwarder does not say).
    pub subscribers_estimated: Option<usize>,
    /// Datagrams the shard (or relay) read per second in the window: media, the
    /// subscribers' feedback, ICE checks. The shard's figure is its
    /// `tutti_sfu_datagrams_received_total`, which leaves out what it dropped unread
    /// (malformed, from unknown addresses); the relay counts every datagram. Absent where
    /// the forwarder does not say.
    pub datagrams_read_per_second: Option<f64>,
}

/// What a run measured, before it is turned into figures.
#[derive(Debug, Clone, Default)]
pub struct Measurement {
    /// Nanoseconds the window lasted.
    pub window_ns: u64,
    /// Packets publishers sent in the window.
    pub sent: u64,
    /// Of those, packets subscribers received (counting every subscriber's copy).
    pub received: u64,
    /// Send-to-read latencies of those, in milliseconds.
    pub latencies_ms: Vec<f64>,
    /// Send-to-socket latencies of those, in milliseconds, when the subscribers see them.
    pub socket_latencies_ms: Option<Vec<f64>>,
    /// The child's CPU seconds in the window.
    pub cpu_seconds: f64,
    /// Packets the child forwarded in the window.
    pub forwarded: u64,
    /// The child's resident bytes at the end.
    pub rss_bytes: u64,
    /// Each subscriber's time from connecting to its first packet, in milliseconds.
    pub join_ms: Vec<f64>,
    /// The load generator's CPU seconds in the window.
    pub loadgen_cpu_seconds: f64,
    /// Subscribers with a downlink estimate at the end, where the forwarder says.
    pub subscribers_estimated: Option<usize>,
    /// Datagrams the child read in the window, where it says.
    pub datagrams_read: Option<u64>,
}

impl Report {
    /// The figures of a run of `mode` with `args`.
    pub fn new(
        mode: &str,
        sfu: &str,
        subscribers_as: &str,
        args: &super::RunArgs,
        mut m: Measurement,
    ) -> Self {
        let expected = m.sent * args.subscribers as u64;
        Self {
            mode: mode.to_owned(),
            sfu: sfu.to_owned(),
            subscribers_as: subscribers_as.to_owned(),
            publishers: args.publishers,
            subscribers: args.subscribers,
            seconds: m.window_ns as f64 / 1e9,
            sent_packets: m.sent,
            expected_packets: expected,
            received_packets: m.received,
            loss_ratio: loss_ratio(expected, m.received),
            latency_p50_ms: quantile(&mut m.latencies_ms, 0.50),
            latency_p99_ms: quantile(&mut m.latencies_ms, 0.99),
            socket_latency_p50_ms: m.socket_latencies_ms.as_mut().map(|l| quantile(l, 0.50)),
            socket_latency_p99_ms: m.socket_latencies_ms.as_mut().map(|l| quantile(l, 0.99)),
            sfu_cpu_seconds: m.cpu_seconds,
            forwarded_packets: m.forwarded,
            sfu_cpu_us_per_forwarded_packet: cpu_us_per_packet(m.cpu_seconds, m.forwarded),
            sfu_rss_mib: m.rss_bytes as f64 / (1024.0 * 1024.0),
            join_ms_p50: quantile(&mut m.join_ms, 0.50),
            loadgen_cpu_seconds: m.loadgen_cpu_seconds,
            pinned: args.pin,
            subscribers_estimated: m.subscribers_estimated,
            datagrams_read_per_second: m
                .datagrams_read
                .map(|read| read as f64 * 1e9 / m.window_ns.max(1) as f64),
        }
    }
}

/// The `q`-quantile (0..=1) of `samples`, by nearest rank; 0 for none.
pub fn quantile(samples: &mut [f64], q: f64) -> f64 {
    if samples.is_empty() {
        return 0.0;
    }
    samples.sort_by(|a, b| a.total_cmp(b));
    let rank = ((q.clamp(0.0, 1.0) * samples.len() as f64).ceil() as usize).clamp(1, samples.len());
    samples[rank - 1]
}

/// `1 - received / expected`, never negative (duplicates cannot make loss negative).
pub fn loss_ratio(expected: u64, received: u64) -> f64 {
    if expected == 0 {
        return 0.0;
    }
    (1.0 - received as f64 / expected as f64).max(0.0)
}

/// Microseconds of CPU per forwarded packet.
pub fn cpu_us_per_packet(cpu_seconds: f64, packets: u64) -> f64 {
    if packets == 0 {
        0.0
    } else {
        cpu_seconds * 1e6 / packets as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_by_nearest_rank() {
        let mut samples: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&mut samples, 0.5), 50.0);
        assert_eq!(quantile(&mut samples, 0.99), 99.0);
        assert_eq!(quantile(&mut samples, 1.0), 100.0);
        assert_eq!(quantile(&mut [], 0.5), 0.0);
        assert_eq!(quantile(&mut [7.0], 0.99), 7.0);
    }

    #[test]
    fn loss_and_cost() {
        assert!((loss_ratio(1000, 990) - 0.01).abs() < 1e-12);
        assert_eq!(loss_ratio(1000, 1005), 0.0);
        assert_eq!(loss_ratio(0, 0), 0.0);
        assert_eq!(cpu_us_per_packet(0.5, 100_000), 5.0);
        assert_eq!(cpu_us_per_packet(1.0, 0), 0.0);
    }
}
