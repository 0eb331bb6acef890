//! The bandwidth estimate of one subscriber's downlink: what the shard sent (by
//! transport-wide sequence number) joined with the subscriber's transport-cc feedback, fed
//! to Google Congestion Control as `rtc`'s interceptor crate implements it, without a clock
//! of its own (delay gradient through a Kalman filter and an adaptive threshold, an AIMD rate
//! controller, and a loss-based bound; the lower of the two wins).
//!
//! The estimate says how many bits per second the path to the subscriber carries; the
//! shard decides what to send within it.

use super::probe::Evidence;
use super::send_history::SendHistory;
use rtc::interceptor::{
    Acknowledgement, BandwidthEstimator, GCC_MAX_BITRATE, Gcc, PacketReport, convert_twcc,
};
use rtc::rtcp::transport_feedbacks::transport_layer_cc::TransportLayerCc;
use std::time::{Duration, Instant};

/// Where a new subscriber's estimate starts: GCC's own start, enough for audio and a low
/// video layer.
pub const INITIAL_BPS: f64 = 300_000.0;
/// The estimate never goes below this: Opus at a music room's bitrate, with headroom.
pub const MIN_BPS: f64 = 64_000.0;

/// One subscriber's downlink estimate.
pub struct DownlinkEstimate {
    history: SendHistory,
    gcc: Gcc,
    /// The round trip implied by the newest acknowledged packet.
    rtt: Option<Duration>,
    /// Reused for each feedback's reports.
    reports: Vec<PacketReport>,
    /// Congestion seen and packets acknowledged so far, for probes to compare.
    evidence: Evidence,
    /// A rate a probe proved the path carries, counted until the estimate next goes down.
    proven_bps: Option<f64>,
}

impl std::fmt::Debug for DownlinkEstimate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DownlinkEstimate")
            .field("target_bps", &self.target_bps())
            .field("rtt", &self.rtt)
            .finish_non_exhaustive()
    }
}

impl DownlinkEstimate {
    /// A fresh estimate for a connection whose first packet leaves about `now`.
    pub fn new(now: Instant) -> Self {
        Self {
            history: SendHistory::new(now),
            gcc: Gcc::new(INITIAL_BPS, MIN_BPS, GCC_MAX_BITRATE),
            rtt: None,
            reports: Vec::new(),
            evidence: Evidence::default(),
            proven_bps: None,
        }
    }

    /// A packet stamped with transport-wide sequence number `seq`, `size` bytes on the
    /// wire, left at `at`.
    pub fn on_sent(&mut self, seq: u16, size: usize, at: Instant) {
        self.history.record(seq, size, at);
    }

    /// Transport-cc feedback from the subscriber, received at `now`.
    pub fn on_feedback(&mut self, now: Instant, feedback: &TransportLayerCc) {
        self.on_acknowledgements(now, &convert_twcc(feedback));
    }

    /// What the feedback said, packet by packet, in send order.
    pub fn on_acknowledgements(&mut self, now: Instant, acknowledgements: &[Acknowledgement]) {
        self.reports.clear();
        self.history.resolve(acknowledgements, &mut self.reports);
        if let Some(newest) = self.reports.iter().rev().find(|r| r.arrived) {
            self.rtt = Some(now.saturating_duration_since(newest.departure));
        }
        let arrived = self.reports.iter().filter(|r| r.arrived).count() as u64;
        self.evidence.arrived += arrived;
        self.evidence.lost += self.reports.len() as u64 - arrived;
        let before = self.gcc.target_bitrate();
        self.gcc.on_reports(now, &self.reports);
        if self.gcc.target_bitrate() < before {
            self.evidence.decreases += 1;
            self.proven_bps = None;
        }
    }

    /// What the estimate has seen so far, for a probe to judge by.
    pub fn evidence(&self) -> Evidence {
        self.evidence
    }

    /// Whether the path has ever been congested: until then nothing is held back.
    pub fn congested_once(&self) -> bool {
        self.evidence.decreases > 0
    }

    /// A probe proved the path carries `bps`.
    pub fn prove(&mut self, bps: f64) {
        self.proven_bps = Some(self.proven_bps.map_or(bps, |p| p.max(bps)));
    }

    /// What the shard may send the subscriber: the estimate, or more if a probe proved
    /// more since the estimate last went down.
    pub fn usable_bps(&self) -> f64 {
        self.target_bps().max(self.proven_bps.unwrap_or(0.0))
    }

    /// What the path to the subscriber carries, in bits per second.
    pub fn target_bps(&self) -> f64 {
        self.gcc.target_bitrate()
    }

    /// The delay-based half of the estimate, bits per second.
    pub fn delay_based_bps(&self) -> f64 {
        self.gcc.delay_based_bitrate()
    }

    /// The loss-based half of the estimate, bits per second.
    pub fn loss_based_bps(&self) -> f64 {
        self.gcc.loss_based_bitrate()
    }

    /// The round trip of the newest packet the subscriber acknowledged.
    pub fn rtt(&self) -> Option<Duration> {
        self.rtt
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtc::rtcp::transport_feedbacks::cc_feedback_report::Ecn;

    /// A path with a bottleneck: a drop-tail queue drained at `capacity_bps`, then a fixed
    /// propagation delay. Arrivals are on the receiver's clock, which starts elsewhere.
    struct Bottleneck {
        capacity_bps: f64,
        propagation: Duration,
        max_queue: Duration,
        free_at: Option<Instant>,
    }

    impl Bottleneck {
        fn new(capacity_bps: f64) -> Self {
            Self {
                capacity_bps,
                propagation: Duration::from_millis(20),
                max_queue: Duration::from_millis(300),
                free_at: None,
            }
        }

        /// When a packet sent at `sent` arrives, or `None` if the queue dropped it.
        fn pass(&mut self, sent: Instant, size: usize) -> Option<Instant> {
            let start = self.free_at.map_or(sent, |free| free.max(sent));
            if start.saturating_duration_since(sent) > self.max_queue {
                return None;
            }
            let done = start + Duration::from_secs_f64(size as f64 * 8.0 / self.capacity_bps);
            self.free_at = Some(done);
            Some(done + self.propagation)
        }
    }

    /// Sends up to `offered_bps` in 1,200-byte packets through `path` for `seconds`, never
    /// more than the estimate (as the shard will choose layers within it), with feedback
    /// every 100 ms as a browser sends it; returns the estimate after each second.
    fn run(
        estimate: &mut DownlinkEstimate,
        path: &mut Bottleneck,
        start: Instant,
        seq: &mut u16,
        offered_bps: f64,
        seconds: u32,
    ) -> Vec<f64> {
        const SIZE: usize = 1200;
        let receiver_epoch = start - Duration::from_secs(1000);
        let mut pending: Vec<(Instant, Acknowledgement)> = Vec::new();
        let mut next_send = start;
        let mut next_feedback = start + Duration::from_millis(100);
        let mut next_sample = start + Duration::from_secs(1);
        let end = start + Duration::from_secs(u64::from(seconds));
        let mut samples = Vec::new();
        while next_sample <= end {
            if next_send <= next_feedback && next_send <= next_sample {
                let now = next_send;
                estimate.on_sent(*seq, SIZE, now);
                let ack = match path.pass(now, SIZE) {
                    Some(at) => (
                        at,
                        Acknowledgement::received(*seq, Some(at - receiver_epoch), Ecn::NotEct),
                    ),
                    // A loss is reported with the packets after it.
                    None => (now + path.propagation, Acknowledgement::lost(*seq)),
                };
                pending.push(ack);
                *seq = seq.wrapping_add(1);
                let rate = offered_bps.min(estimate.target_bps());
                next_send += Duration::from_secs_f64(SIZE as f64 * 8.0 / rate);
            } else if next_feedback <= next_sample {
                let now = next_feedback;
                // What reached the receiver by now, reported; the feedback takes the
                // propagation delay back.
                let (due, later): (Vec<_>, Vec<_>) =
                    pending.drain(..).partition(|(at, _)| *at <= now);
                pending = later;
                let acks: Vec<Acknowledgement> = due.into_iter().map(|(_, a)| a).collect();
                estimate.on_acknowledgements(now + path.propagation, &acks);
                next_feedback += Duration::from_millis(100);
            } else {
                samples.push(estimate.target_bps());
                next_sample += Duration::from_secs(1);
            }
        }
        samples
    }

    #[test]
    fn sending_over_a_bottleneck_brings_the_estimate_down_to_it() {
        let start = Instant::now();
        let mut estimate = DownlinkEstimate::new(start);
        let mut path = Bottleneck::new(300_000.0);
        let mut seq = 0;
        let samples = run(&mut estimate, &mut path, start, &mut seq, 1_000_000.0, 10);
        assert!(
            samples[2..]
                .iter()
                .all(|bps| (150_000.0..=400_000.0).contains(bps)),
            "a 300 kbit/s path offered 1 Mbit/s settles near it within 3 s: {samples:?}"
        );
        let rtt = estimate.rtt().expect("a round trip from the feedback");
        assert!(rtt >= Duration::from_millis(40), "{rtt:?}");
    }

    #[test]
    fn a_path_with_room_to_spare_keeps_the_estimate_and_lets_it_grow() {
        let start = Instant::now();
        let mut estimate = DownlinkEstimate::new(start);
        let mut path = Bottleneck::new(5_000_000.0);
        let mut seq = 0;
        let samples = run(&mut estimate, &mut path, start, &mut seq, 2_000_000.0, 8);
        // GCC climbs by about 8 % a second without probing: from 300 kbit/s, past 500 in 8 s.
        assert!(
            samples.windows(2).all(|w| w[1] > w[0]),
            "rises every second: {samples:?}"
        );
        assert!(*samples.last().expect("samples") > 500_000.0, "{samples:?}");
    }

    #[test]
    fn after_the_bottleneck_lifts_the_estimate_climbs_back() {
        let start = Instant::now();
        let mut estimate = DownlinkEstimate::new(start);
        let mut path = Bottleneck::new(300_000.0);
        let mut seq = 0;
        let low = run(&mut estimate, &mut path, start, &mut seq, 1_000_000.0, 5);
        path.capacity_bps = 5_000_000.0;
        // The backlog drains; then what is sent arrives as sent.
        let high = run(
            &mut estimate,
            &mut path,
            start + Duration::from_secs(5),
            &mut seq,
            1_000_000.0,
            15,
        );
        let (low, high) = (*low.last().expect("low"), *high.last().expect("high"));
        assert!(high > 2.0 * low, "from {low} to {high}");
    }

    #[test]
    fn congestion_is_counted_and_ends_what_a_probe_proved() {
        let start = Instant::now();
        let mut estimate = DownlinkEstimate::new(start);
        let mut seq = 0;
        run(
            &mut estimate,
            &mut Bottleneck::new(5_000_000.0),
            start,
            &mut seq,
            400_000.0,
            3,
        );
        assert!(!estimate.congested_once());
        let seen = estimate.evidence();
        assert!(seen.arrived > 100 && seen.lost == 0, "{seen:?}");
        estimate.prove(2_000_000.0);
        assert_eq!(estimate.usable_bps(), 2_000_000.0);
        run(
            &mut estimate,
            &mut Bottleneck::new(300_000.0),
            start + Duration::from_secs(3),
            &mut seq,
            1_000_000.0,
            3,
        );
        assert!(estimate.congested_once());
        assert!(estimate.evidence().decreases > seen.decreases);
        assert_eq!(
            estimate.usable_bps(),
            estimate.target_bps(),
            "the proof is void"
        );
    }

    #[test]
    fn feedback_the_shard_never_sent_for_changes_nothing() {
        let start = Instant::now();
        let mut estimate = DownlinkEstimate::new(start);
        let forged: Vec<Acknowledgement> = (0..500u16).map(Acknowledgement::lost).collect();
        estimate.on_acknowledgements(start + Duration::from_secs(1), &forged);
        assert_eq!(estimate.target_bps(), INITIAL_BPS);
        estimate.on_feedback(start, &TransportLayerCc::default());
        assert_eq!(estimate.target_bps(), INITIAL_BPS);
    }
}
