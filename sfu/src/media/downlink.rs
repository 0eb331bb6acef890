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

/// Where a new subscriber's estimate starts: high, so that nothing is held back from it
/// until its path shows congestion, and the first decrease then falls to what the path
/// delivered (GCC backs off from the received rate) rather than from a guess.
pub const START_BPS: f64 = 10_000_000.0;
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
    /// What the path has shown it carries, once it has been congested: the estimate right
    /// after its last decrease, raised by what probes proved since. GCC grows its target
    /// while nothing congests, also while the shard sends less than the path could take;
    /// that growth is not trusted past this until a probe confirms it.
    ceiling_bps: Option<f64>,
    /// The receive rate of packets sent in a window (a probe's), as the subscriber's
    /// arrival times show it.
    measurement: Option<Measurement>,
    /// What the subscriber received lately, by its arrival times.
    acked: AckedRate,
    /// Packets reported arrived and lost by each of the last [`LOSS_FEEDBACKS`] feedbacks.
    recent_loss: std::collections::VecDeque<(u64, u64)>,
    /// Bytes of retransmissions the downlink may take now, and when that was counted.
    resend_budget: (f64, Option<Instant>),
    /// How long packets wait in the path's queues.
    queue: QueueDelay,
}

/// Share of a congested downlink's estimate that retransmissions may use. Repairs sent
/// past what the path carries are lost in turn and asked for again: with no bound, a
/// viewer whose path had just narrowed kept it full of resends of a layer it had left.
pub const RESEND_SHARE: f64 = 0.25;
/// The most retransmission bytes saved up for a burst: a quarter second at the share.
const RESEND_BURST: Duration = Duration::from_millis(250);

/// Share of the packets reported over the last [`LOSS_FEEDBACKS`] feedbacks lost above
/// which the path is taken to carry no more than it delivered: GCC's loss-based controller
/// cuts by half the loss from the estimate it had, which from an optimistic start takes
/// seconds of heavy loss to reach a shallow-buffered bottleneck (one that drops rather
/// than delays). Over several feedbacks, so that the 1–3 % random loss of Wi-Fi or a
/// mobile path, bunched into one small feedback, does not count; and well above the
/// random loss of even a bad path (whose arrivals fall short of what was sent only by
/// that loss, and which would be bounded below what it carries): sending twice what a
/// bottleneck passes loses half.
const HEAVY_LOSS: f64 = 0.2;
/// Feedbacks the loss is counted over (a browser sends one every 50–100 ms).
const LOSS_FEEDBACKS: usize = 5;
/// Packets those feedbacks must report for their loss to count.
const LOSS_SAMPLE: u64 = 30;
/// The span of arrivals the acknowledged rate is taken over.
const ACKED_WINDOW: Duration = Duration::from_millis(500);
/// Arrivals remembered at most: the window at 20,000 packets a second.
const ACKED_MAX: usize = 10_000;
/// A jump of the subscriber's clock this large (a wrapped or forged reference time)
/// starts the window afresh.
const CLOCK_JUMP: Duration = Duration::from_secs(10);

/// A queue this long, in front of even the least delayed packet of each feedback, is not
/// jitter: the path holds what the shard sends faster than it delivers it. Sound waiting
/// behind it is late for any music played together.
const STANDING_QUEUE: Duration = Duration::from_millis(100);
/// How long the queue must stand before what may be sent comes down to what arrived: a
/// keyframe's burst on a narrow path queues for a moment and drains.
const STANDING_FOR: Duration = Duration::from_secs(1);
/// What may be sent when a standing queue is found, as a share of what arrived meanwhile
/// (all the path delivered, its queue never empty): a little less, so that the queue
/// drains. GCC's own decrease.
const STANDING_BACKOFF: f64 = 0.85;
/// A change in the queue this large, a second after a cut, says whether it drains or grows.
const QUEUE_CHANGE: Duration = Duration::from_millis(20);
/// The least one-way delay is taken over two spans of this length: long enough to hold a
/// moment when the queue was empty, short enough that the two clocks' drift (tens of parts
/// per million) adds nothing worth counting.
const BASE_SPAN: Duration = Duration::from_secs(30);

/// How long packets wait in the path's queues: each arrival's one-way delay (the
/// subscriber's clock against the shard's, so offset by an unknown constant) above the
/// least seen lately, which a packet crossing empty queues took. GCC's delay-based half
/// reacts to the delay's growth, and misses an overload so slight that the queue grows by
/// a few tens of milliseconds a second; by the time the queue is full, the delay stands
/// still and only its losses show, seconds later.
///
/// A queue stands when even the least delayed packet of every feedback has waited
/// [`STANDING_QUEUE`] for [`STANDING_FOR`] without draining. After a cut, a second later:
/// a queue that drains is left to drain; one that grew is cut again; one that did neither
/// while the subscriber received less than the cut allows is no queue but the path's own
/// longer delay (a handover), and becomes the new least delay. The two clocks may run
/// apart by up to about a thousand parts per million before the drift over
/// [`BASE_SPAN`]s reads as a queue.
#[derive(Debug)]
struct QueueDelay {
    /// Departures are counted from here.
    epoch: Instant,
    /// The least raw one-way delay, in nanoseconds, of the span before this one and of
    /// this one.
    least: [Option<i128>; 2],
    /// When this span began.
    span_start: Instant,
    /// When the last feedback with an arrival came.
    last_feedback: Option<Instant>,
    /// The queue of each of the last few feedbacks, nanoseconds, newest last.
    recent: std::collections::VecDeque<i128>,
    /// Since when every feedback has shown a queue of at least [`STANDING_QUEUE`].
    standing: Option<Watch>,
    /// The last cut, while the queue has stood since.
    cut: Option<Watch>,
}

/// A queue watched from `since`, `level` long then, `least` at its shortest since.
#[derive(Debug, Clone, Copy)]
struct Watch {
    since: Instant,
    level: i128,
    least: i128,
}

impl Watch {
    fn new(since: Instant, level: i128) -> Self {
        Self {
            since,
            level,
            least: level,
        }
    }
}

/// Feedbacks whose least queue says how long the queue is now: one feedback's may be
/// jitter.
const RECENT_FEEDBACKS: usize = 3;

impl QueueDelay {
    fn new(now: Instant) -> Self {
        Self {
            epoch: now,
            least: [None, None],
            span_start: now,
            last_feedback: None,
            recent: std::collections::VecDeque::with_capacity(RECENT_FEEDBACKS + 1),
            standing: None,
            cut: None,
        }
    }

    /// Takes one feedback's reports at `now`, while the subscriber receives less than
    /// the last cut allows (`below_cut`): whether a cut is called for. Call
    /// [`QueueDelay::cut_applied`] if one is made.
    fn on_feedback(&mut self, now: Instant, reports: &[PacketReport], below_cut: bool) -> bool {
        let Some(least_now) = reports
            .iter()
            .filter(|r| r.arrived)
            .filter_map(|r| {
                let sent = r.departure.checked_duration_since(self.epoch)?;
                Some(r.arrival?.as_nanos() as i128 - sent.as_nanos() as i128)
            })
            .min()
        else {
            return false;
        };
        // A silence (nothing sent to the subscriber) says nothing about the queue since,
        // and a long one leaves the least delay stale.
        if let Some(last) = self.last_feedback {
            let gap = now.saturating_duration_since(last);
            if gap >= BASE_SPAN {
                self.least = [None, None];
                self.span_start = now;
            }
            if gap >= STANDING_FOR {
                self.forget_queue();
            }
        }
        self.last_feedback = Some(now);
        let span = now.saturating_duration_since(self.span_start);
        if span >= BASE_SPAN {
            self.least = if span >= 2 * BASE_SPAN {
                [None, None]
            } else {
                [self.least[1], None]
            };
            self.span_start = now;
        }
        // A jump of the subscriber's clock (a wrapped or forged reference time) starts
        // afresh rather than reading as a queue.
        if let Some(base) = self.base()
            && (least_now - base).unsigned_abs() > CLOCK_JUMP.as_nanos()
        {
            self.least = [None, None];
            self.forget_queue();
        }
        let this_span = &mut self.least[1];
        *this_span = Some(this_span.map_or(least_now, |l| l.min(least_now)));
        let Some(base) = self.base() else {
            return false;
        };
        let queued = least_now - base;
        if self.recent.len() == RECENT_FEEDBACKS {
            self.recent.pop_front();
        }
        self.recent.push_back(queued);
        if queued < STANDING_QUEUE.as_nanos() as i128 {
            self.forget_queue();
            return false;
        }
        let recent = self.recent.iter().copied().min().unwrap_or(queued);
        let margin = QUEUE_CHANGE.as_nanos() as i128;
        if let Some(cut) = &mut self.cut {
            cut.least = cut.least.min(queued);
            if now.saturating_duration_since(cut.since) < STANDING_FOR {
                return false;
            }
            if recent >= cut.level + margin {
                // Grown since the cut: the path carries even less.
                *cut = Watch::new(now, recent);
                return true;
            }
            if cut.least > cut.level - margin && below_cut {
                // Neither drained nor grew, while less arrived than the cut allows.
                self.least = [None, Some(least_now)];
                self.forget_queue();
                return false;
            }
            // Draining, or the cut has not taken effect yet (a move down waits for a
            // keyframe): watched for another second.
            *cut = Watch::new(now, recent);
            return false;
        }
        let standing = self.standing.get_or_insert(Watch::new(now, queued));
        if now.saturating_duration_since(standing.since) < STANDING_FOR {
            return false;
        }
        if recent <= standing.level - margin {
            // Draining: a burst (a keyframe) passing through.
            *standing = Watch::new(now, recent);
            return false;
        }
        self.standing = None;
        true
    }

    /// What may be sent was cut at `now` on this queue's account.
    fn cut_applied(&mut self, now: Instant) {
        let level = self.recent.iter().copied().min().unwrap_or(0);
        self.cut = Some(Watch::new(now, level));
        self.standing = None;
    }

    fn forget_queue(&mut self) {
        self.standing = None;
        self.cut = None;
        self.recent.clear();
    }

    /// The least one-way delay lately: that of a packet through empty queues.
    fn base(&self) -> Option<i128> {
        self.least.iter().flatten().copied().min()
    }
}

/// The rate at which packets arrived at the subscriber over the last [`ACKED_WINDOW`] of
/// arrival times (the subscriber's clock).
#[derive(Debug, Default)]
struct AckedRate {
    /// Arrival and size of each packet in the window, in the order reported.
    arrivals: std::collections::VecDeque<(Duration, usize)>,
    bytes: usize,
    /// The latest arrival in the window.
    newest: Option<Duration>,
}

impl AckedRate {
    fn add(&mut self, arrival: Duration, size: usize) {
        if let Some(newest) = self.newest
            && (arrival + CLOCK_JUMP < newest || arrival > newest + CLOCK_JUMP)
        {
            self.arrivals.clear();
            self.bytes = 0;
            self.newest = None;
        }
        let newest = self.newest.map_or(arrival, |n| n.max(arrival));
        self.newest = Some(newest);
        // Feedback reports in send order; a reordered arrival is counted where it falls.
        self.arrivals.push_back((arrival, size));
        self.bytes += size;
        while let Some(&(at, size)) = self.arrivals.front() {
            if newest.saturating_sub(at) <= ACKED_WINDOW && self.arrivals.len() <= ACKED_MAX {
                break;
            }
            self.arrivals.pop_front();
            self.bytes -= size;
        }
    }

    /// Bits per second over the window, once it spans at least half of it: a shorter
    /// span (a keyframe's burst at a call's start) says little about the path.
    fn bps(&self) -> Option<f64> {
        let first = self.arrivals.iter().map(|(at, _)| *at).min()?;
        let span = self.newest?.checked_sub(first)?;
        let first_size = self.arrivals.front().map_or(0, |(_, size)| *size);
        (span >= ACKED_WINDOW / 2)
            .then(|| (self.bytes - first_size) as f64 * 8.0 / span.as_secs_f64())
    }
}

/// What was sent between `from` and `until`, and what arrived of it.
#[derive(Debug, Clone, Copy)]
struct Measurement {
    from: Instant,
    until: Instant,
    sent: usize,
    bytes: usize,
    first: Option<(Duration, usize)>,
    last: Option<Duration>,
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
        Self::starting_at(now, START_BPS)
    }

    /// A fresh estimate starting at `bps`.
    pub fn starting_at(now: Instant, bps: f64) -> Self {
        Self {
            history: SendHistory::new(now),
            gcc: Gcc::new(bps, MIN_BPS, GCC_MAX_BITRATE),
            rtt: None,
            reports: Vec::new(),
            evidence: Evidence::default(),
            ceiling_bps: None,
            measurement: None,
            acked: AckedRate::default(),
            recent_loss: std::collections::VecDeque::with_capacity(LOSS_FEEDBACKS + 1),
            resend_budget: (0.0, None),
            queue: QueueDelay::new(now),
        }
    }

    /// Starts measuring the receive rate of what is sent from `from` to `until`.
    pub fn measure(&mut self, from: Instant, until: Instant) {
        self.measurement = Some(Measurement {
            from,
            until,
            sent: 0,
            bytes: 0,
            first: None,
            last: None,
        });
    }

    /// The rate at which the subscriber received what was sent in the measured window:
    /// bytes after the first arrival over the time from the first to the last. A path
    /// narrower than what was sent spreads the arrivals out; `None` before two arrivals
    /// 20 ms apart.
    pub fn measured_bps(&self) -> Option<f64> {
        let m = self.measurement?;
        let ((first, first_size), last) = (m.first?, m.last?);
        let span = last.checked_sub(first)?;
        (span >= Duration::from_millis(20))
            .then(|| (m.bytes - first_size) as f64 * 8.0 / span.as_secs_f64())
    }

    /// Bytes sent so far in the measured window.
    pub fn measured_sent_bytes(&self) -> usize {
        self.measurement.map_or(0, |m| m.sent)
    }

    /// A packet stamped with transport-wide sequence number `seq`, `size` bytes on the
    /// wire, left at `at`.
    pub fn on_sent(&mut self, seq: u16, size: usize, at: Instant) {
        self.history.record(seq, size, at);
        if let Some(m) = &mut self.measurement
            && (m.from..=m.until).contains(&at)
        {
            m.sent += size;
        }
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
        if let Some(m) = &mut self.measurement {
            for report in &self.reports {
                let (Some(arrival), true) = (report.arrival, report.arrived) else {
                    continue;
                };
                if report.departure < m.from || report.departure > m.until {
                    continue;
                }
                m.bytes += report.size;
                if m.first.is_none_or(|(first, _)| arrival < first) {
                    m.first = Some((arrival, report.size));
                }
                if m.last.is_none_or(|last| arrival > last) {
                    m.last = Some(arrival);
                }
            }
        }
        for report in &self.reports {
            if let (Some(arrival), true) = (report.arrival, report.arrived) {
                self.acked.add(arrival, report.size);
            }
        }
        let arrived = self.reports.iter().filter(|r| r.arrived).count() as u64;
        let lost = self.reports.len() as u64 - arrived;
        self.evidence.arrived += arrived;
        self.evidence.lost += lost;
        let before = self.gcc.target_bitrate();
        self.gcc.on_reports(now, &self.reports);
        let after = self.gcc.target_bitrate();
        let mut ceiling = (after < before).then_some(after);
        let mut cause = "delay or loss (GCC)";
        // Heavy loss: the path carries no more than what arrived, whatever GCC still says.
        self.recent_loss.push_back((arrived, lost));
        if self.recent_loss.len() > LOSS_FEEDBACKS {
            self.recent_loss.pop_front();
        }
        let (recent_arrived, recent_lost) = self
            .recent_loss
            .iter()
            .fold((0, 0), |(a, l), (arrived, lost)| (a + arrived, l + lost));
        let reported = recent_arrived + recent_lost;
        let heavy = reported >= LOSS_SAMPLE && recent_lost as f64 >= HEAVY_LOSS * reported as f64;
        if heavy
            && let Some(acked) = self.acked.bps()
            && acked < ceiling.unwrap_or_else(|| self.usable_bps())
        {
            ceiling = Some(acked.max(MIN_BPS));
            cause = "heavy loss";
        }
        // A standing queue: the path has delivered all it could, which is what it carries.
        let acked = self.acked.bps();
        let below_cut = acked
            .zip(self.ceiling_bps)
            .is_some_and(|(acked, ceiling)| acked < ceiling);
        if self.queue.on_feedback(now, &self.reports, below_cut)
            && let Some(acked) = acked
            && acked * STANDING_BACKOFF < ceiling.unwrap_or_else(|| self.usable_bps())
        {
            ceiling = Some((acked * STANDING_BACKOFF).max(MIN_BPS));
            self.queue.cut_applied(now);
            cause = "standing queue";
        }
        if let Some(ceiling) = ceiling {
            tracing::debug!(
                cause,
                ceiling,
                acked,
                lost,
                arrived,
                "downlink estimate decreased"
            );
            self.evidence.decreases += 1;
            // A decrease never raises what may be sent: GCC's own may still be above a
            // bound the loss set.
            self.ceiling_bps = Some(self.ceiling_bps.map_or(ceiling, |c| c.min(ceiling)));
        }
    }

    /// Bytes of retransmissions the downlink may take at `now`: `None` for no bound (the
    /// path has never been congested), else [`RESEND_SHARE`] of what may be sent, saved
    /// up for at most [`RESEND_BURST`]. Spend with [`DownlinkEstimate::resent`].
    pub fn resend_allowance(&mut self, now: Instant) -> Option<usize> {
        if !self.congested_once() {
            return None;
        }
        let rate = self.usable_bps() * RESEND_SHARE / 8.0;
        let (bytes, at) = &mut self.resend_budget;
        let elapsed = at.map_or(RESEND_BURST, |at| now.saturating_duration_since(at));
        *bytes = (*bytes + rate * elapsed.as_secs_f64()).min(rate * RESEND_BURST.as_secs_f64());
        *at = Some(now);
        Some(*bytes as usize)
    }

    /// `bytes` of retransmissions were sent.
    pub fn resent(&mut self, bytes: usize) {
        self.resend_budget.0 = (self.resend_budget.0 - bytes as f64).max(0.0);
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
        if let Some(ceiling) = &mut self.ceiling_bps {
            *ceiling = ceiling.max(bps);
        }
    }

    /// What the shard may send the subscriber: the estimate, and once the path has been
    /// congested no more than it has shown it carries.
    pub fn usable_bps(&self) -> f64 {
        let target = self.target_bps();
        self.ceiling_bps
            .map_or(target, |ceiling| target.min(ceiling))
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

    /// GCC's own start, which these tests climb from.
    const GCC_START: f64 = 300_000.0;

    /// A path with a bottleneck: a drop-tail queue drained at `capacity_bps`, then a fixed
    /// propagation delay. Arrivals are on the receiver's clock, which starts elsewhere.
    struct Bottleneck {
        capacity_bps: f64,
        propagation: Duration,
        max_queue: Duration,
        free_at: Option<Instant>,
        /// Where the receiver's clock reads zero, set by the first packet.
        receiver_epoch: Option<Instant>,
    }

    impl Bottleneck {
        fn new(capacity_bps: f64) -> Self {
            Self {
                capacity_bps,
                propagation: Duration::from_millis(20),
                max_queue: Duration::from_millis(300),
                free_at: None,
                receiver_epoch: None,
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

    /// The estimate, what may be sent, and the path's queue, at the end of a second.
    #[derive(Debug, Clone, Copy)]
    struct Sample {
        target_bps: f64,
        usable_bps: f64,
        queue: Duration,
    }

    /// Sends up to `offered_bps` in 1,200-byte packets through `path` for `seconds`, never
    /// more than may be sent (as the shard will choose layers within it), with feedback
    /// every 100 ms as a browser sends it; returns a sample after each second.
    fn run(
        estimate: &mut DownlinkEstimate,
        path: &mut Bottleneck,
        start: Instant,
        seq: &mut u16,
        offered_bps: f64,
        seconds: u32,
    ) -> Vec<Sample> {
        const SIZE: usize = 1200;
        let receiver_epoch = *path
            .receiver_epoch
            .get_or_insert(start - Duration::from_secs(1000));
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
                let rate = offered_bps.min(estimate.usable_bps());
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
                let queue = path.free_at.map_or(Duration::ZERO, |free| {
                    free.saturating_duration_since(next_sample)
                });
                samples.push(Sample {
                    target_bps: estimate.target_bps(),
                    usable_bps: estimate.usable_bps(),
                    queue,
                });
                next_sample += Duration::from_secs(1);
            }
        }
        samples
    }

    #[test]
    fn sending_over_a_bottleneck_brings_the_estimate_down_to_it() {
        let start = Instant::now();
        let mut estimate = DownlinkEstimate::starting_at(start, GCC_START);
        let mut path = Bottleneck::new(300_000.0);
        let mut seq = 0;
        let samples = run(&mut estimate, &mut path, start, &mut seq, 1_000_000.0, 10);
        assert!(
            samples[2..]
                .iter()
                .all(|s| (150_000.0..=400_000.0).contains(&s.usable_bps)),
            "a 300 kbit/s path offered 1 Mbit/s settles near it within 3 s: {samples:?}"
        );
        let rtt = estimate.rtt().expect("a round trip from the feedback");
        assert!(rtt >= Duration::from_millis(40), "{rtt:?}");
    }

    /// Sending a few percent more than a deep-buffered bottleneck passes grows its queue
    /// by tens of milliseconds a second: too slowly for GCC's delay gradient, which from
    /// the optimistic start kept climbing (to 25 Mbit/s in 12 s, the queue at 670 ms) or
    /// came down only once the full queue dropped packets, 7 s in. The standing queue is
    /// found within 5 s, before it holds 250 ms, and drains.
    #[test]
    fn a_queue_growing_too_slowly_for_the_delay_gradient_is_found_and_drained() {
        for offered in [310_000.0, 330_000.0] {
            let start = Instant::now();
            let mut estimate = DownlinkEstimate::new(start);
            let mut path = Bottleneck::new(300_000.0);
            path.max_queue = Duration::from_millis(700);
            let mut seq = 0;
            let samples = run(&mut estimate, &mut path, start, &mut seq, offered, 12);
            let found = samples.iter().position(|s| s.usable_bps < 300_000.0);
            assert!(
                found.is_some_and(|second| second < 5)
                    && samples[..=found.unwrap_or(0)]
                        .iter()
                        .all(|s| s.queue < Duration::from_millis(250)),
                "offered {offered}: {samples:?}"
            );
            assert!(
                samples[6..].iter().all(|s| {
                    (200_000.0..300_000.0).contains(&s.usable_bps) && s.queue < STANDING_QUEUE
                }),
                "offered {offered}: below the path and drained: {samples:?}"
            );
        }
    }

    fn report(id: u64, sent: Instant, one_way: Duration, epoch: Instant) -> PacketReport {
        PacketReport {
            ssrc: 1,
            id,
            rtp_sequence_number: id as u16,
            is_twcc: true,
            twcc_sequence_number: id as u16,
            size: 1200,
            arrived: true,
            departure: sent,
            // The subscriber's clock started long before the shard's.
            arrival: Some(sent - epoch + Duration::from_secs(5000) + one_way),
            ecn: Ecn::NotEct,
        }
    }

    /// Feeds the queue detector one feedback every 100 ms for `seconds`, each of ten
    /// packets 10 ms apart delayed by `one_way(time since start)` (none sent where it is
    /// `None`), cutting whenever it calls for a cut, with the subscriber receiving less
    /// than the cut allows if `below_cut`; when it cut.
    fn detect(
        seconds: u64,
        below_cut: bool,
        one_way: impl Fn(Duration) -> Option<Duration>,
    ) -> Vec<Duration> {
        let start = Instant::now();
        let mut queue = QueueDelay::new(start);
        let mut found = Vec::new();
        let mut id = 0;
        for feedback in 1..=seconds * 10 {
            let reports: Vec<PacketReport> = (0..10)
                .filter_map(|i| {
                    let since = Duration::from_millis((feedback - 1) * 100 + i * 10);
                    id += 1;
                    Some(report(id, start + since, one_way(since)?, start))
                })
                .collect();
            if reports.is_empty() {
                continue;
            }
            let now = start + Duration::from_millis(feedback * 100) + Duration::from_millis(20);
            if queue.on_feedback(now, &reports, below_cut) {
                queue.cut_applied(now);
                found.push(now - start);
            }
        }
        found
    }

    const fn ms(millis: u64) -> Duration {
        Duration::from_millis(millis)
    }

    /// One-way delays for [`detect`]: 20 ms through empty queues for the first 2 s, then
    /// `then(t)`.
    fn after_two_empty_seconds(
        then: impl Fn(Duration) -> Duration,
    ) -> impl Fn(Duration) -> Option<Duration> {
        move |t| Some(if t < ms(2000) { ms(20) } else { then(t) })
    }

    #[test]
    fn a_queue_standing_for_a_second_is_found_and_cut_again_while_it_grows() {
        // Empty for 2 s, then 150 ms of queue at once, growing by 60 ms a second.
        let grows = after_two_empty_seconds(|t| ms(170) + (t - ms(2000)) * 60 / 1000);
        let found = detect(6, false, grows);
        assert_eq!(found.first().copied(), Some(ms(3120)), "{found:?}");
        assert!(found.len() >= 3, "cut again each second it grew: {found:?}");
        assert!(
            found.windows(2).all(|w| w[1] - w[0] >= STANDING_FOR),
            "{found:?}"
        );
    }

    #[test]
    fn a_queue_draining_after_its_cut_is_left_to_drain() {
        // 150 ms of queue from 2 s; from the cut on, it drains by 30 ms a second (still
        // above 100 ms a second later).
        let drains = after_two_empty_seconds(|t| {
            ms(170).saturating_sub(t.saturating_sub(ms(3120)) * 30 / 1000)
        });
        assert_eq!(detect(8, false, drains), [ms(3120)]);
    }

    /// A route 150 ms longer (a handover), with jitter, reads as a queue until a cut fails
    /// to drain it while less arrives than the cut allows; then it is the path's delay.
    #[test]
    fn a_longer_route_is_cut_for_once_then_taken_as_the_paths_delay() {
        let jitter = |t: Duration| ms((t.as_millis() as u64 * 7919) % 60);
        let longer = after_two_empty_seconds(|t| ms(170) + jitter(t));
        assert_eq!(detect(12, true, &longer), [ms(3120)]);
        // A queue on the longer route is found as on the shorter.
        let queue_later = after_two_empty_seconds(|t| if t < ms(6000) { ms(170) } else { ms(290) });
        assert_eq!(detect(12, true, queue_later), [ms(3120), ms(7120)]);
        // While as much arrives as before the cut, the delay is a queue the cut has not
        // yet emptied: not taken as the path's, and not cut again.
        assert_eq!(detect(12, false, longer), [ms(3120)]);
    }

    #[test]
    fn jitter_and_keyframe_bursts_that_drain_are_not_a_standing_queue() {
        // After 2 s, every other packet 150 ms late.
        let found = detect(10, false, |t| {
            let late = t >= ms(2000) && t.as_millis() % 20 == 0;
            Some(ms(20) + if late { ms(150) } else { ms(0) })
        });
        assert!(found.is_empty(), "jitter: {found:?}");
        // Each second a burst that queues 400 ms and drains over the next 800.
        let found = detect(10, false, |t| {
            Some(ms(20) + ms(400).saturating_sub(ms(t.as_millis() as u64 % 1000) / 2))
        });
        assert!(found.is_empty(), "bursts: {found:?}");
        // A link 90 % full: a keyframe every 5 s queues 250 ms, which drains by 100 ms a
        // second, above 100 ms for 1.5 s.
        let found = detect(30, false, |t| {
            let since_keyframe = t.as_millis() as u64 % 5000;
            Some(ms(20) + ms(250).saturating_sub(ms(since_keyframe / 10)))
        });
        assert!(found.is_empty(), "a burst draining: {found:?}");
    }

    #[test]
    fn a_silence_or_a_jump_of_the_subscribers_clock_is_not_a_queue() {
        let found = detect(5, false, |t| {
            Some(if t < ms(1000) {
                ms(20)
            } else {
                ms(20) + Duration::from_secs(60)
            })
        });
        assert!(found.is_empty(), "started afresh: {found:?}");
        // One feedback of 200 ms queue, 20 s of nothing sent, another of 200 ms.
        let found = detect(30, false, |t| match t.as_millis() {
            0..2000 => Some(ms(20)),
            4500..4600 | 24_000..24_100 => Some(ms(220)),
            _ => None,
        });
        assert!(
            found.is_empty(),
            "two moments are no standing queue: {found:?}"
        );
    }

    /// Clocks a thousand parts per million apart: over five minutes 300 ms of drift, which
    /// the least delay, taken over the last 30–60 s, follows.
    #[test]
    fn the_clocks_drifting_apart_is_not_a_queue() {
        let found = detect(300, false, |t| Some(ms(20) + t / 1000));
        assert!(found.is_empty(), "{found:?}");
    }

    /// A policer-like bottleneck drops what it cannot pass at once rather than queueing
    /// it: no delay builds up for GCC's delay-based half, and its loss-based half, from
    /// the optimistic start, would take seconds of heavy loss to come down. The bound on
    /// what arrived brings what may be sent down to the path within a second.
    #[test]
    fn a_bottleneck_that_drops_instead_of_queueing_is_found_within_a_second() {
        let start = Instant::now();
        let mut estimate = DownlinkEstimate::new(start);
        let mut path = Bottleneck::new(300_000.0);
        path.max_queue = Duration::from_millis(20);
        let mut seq = 0;
        run(&mut estimate, &mut path, start, &mut seq, 1_200_000.0, 1);
        let usable = estimate.usable_bps();
        assert!(
            estimate.congested_once() && (200_000.0..=330_000.0).contains(&usable),
            "{usable} after a second, GCC's own {}",
            estimate.target_bps()
        );
    }

    /// Random loss of a few percent, one packet now and then in a small feedback, is not
    /// the heavy loss of an overfull bottleneck.
    #[test]
    fn scattered_random_loss_bounds_nothing() {
        let start = Instant::now();
        let mut estimate = DownlinkEstimate::new(start);
        let epoch = start - Duration::from_secs(1000);
        let mut seq = 0u16;
        for round in 0..100u32 {
            let now = start + Duration::from_millis(50) * round;
            let mut acks = Vec::new();
            for i in 0..10u32 {
                let at = now + Duration::from_millis(5) * i;
                estimate.on_sent(seq, 1200, at);
                // One packet in 33 lost: one feedback in three loses one of its ten.
                acks.push(if (round * 10 + i) % 33 == 0 {
                    Acknowledgement::lost(seq)
                } else {
                    Acknowledgement::received(
                        seq,
                        Some(at + Duration::from_millis(20) - epoch),
                        Ecn::NotEct,
                    )
                });
                seq = seq.wrapping_add(1);
            }
            estimate.on_acknowledgements(now + Duration::from_millis(45), &acks);
        }
        assert!(
            !estimate.congested_once(),
            "bounded at {} after 3 % random loss",
            estimate.usable_bps()
        );
    }

    /// The subscriber's clock jumps (its 24-bit reference time wraps, or a client lies):
    /// the window starts afresh instead of keeping every later arrival.
    #[test]
    fn a_jump_of_the_subscribers_clock_keeps_the_window_small() {
        let mut acked = AckedRate::default();
        acked.add(Duration::from_secs(1_000_000), 1200);
        for i in 0..50_000u64 {
            acked.add(Duration::from_millis(i), 1200);
        }
        assert!(
            acked.arrivals.len() <= 501,
            "{} arrivals kept",
            acked.arrivals.len()
        );
        let bps = acked.bps().unwrap_or_default();
        // 1,200 bytes a millisecond.
        assert!((bps - 9_600_000.0).abs() < 100_000.0, "{bps}");
    }

    #[test]
    fn resends_get_a_share_of_a_congested_downlink_and_no_bound_before() {
        let start = Instant::now();
        let mut estimate = DownlinkEstimate::new(start);
        assert_eq!(estimate.resend_allowance(start), None, "never congested");
        let mut path = Bottleneck::new(400_000.0);
        path.max_queue = Duration::from_millis(20);
        let mut seq = 0;
        run(&mut estimate, &mut path, start, &mut seq, 1_200_000.0, 2);
        let now = start + Duration::from_secs(2);
        let usable = estimate.usable_bps();
        // A quarter of the estimate, saved up for at most a quarter second.
        let full = (usable * RESEND_SHARE / 8.0 * 0.25) as usize;
        let allowed = estimate.resend_allowance(now).unwrap_or(usize::MAX);
        assert!(allowed.abs_diff(full) <= 1, "{allowed} of {full}");
        estimate.resent(allowed);
        assert_eq!(estimate.resend_allowance(now), Some(0));
        // Refilled at the share: 100 ms later, a tenth of a second's worth.
        let later = estimate
            .resend_allowance(now + Duration::from_millis(100))
            .unwrap_or(usize::MAX);
        let tenth = (usable * RESEND_SHARE / 8.0 * 0.1) as usize;
        assert!(later.abs_diff(tenth) <= 1, "{later} of {tenth}");
    }

    #[test]
    fn a_path_with_room_to_spare_keeps_the_estimate_and_lets_it_grow() {
        let start = Instant::now();
        let mut estimate = DownlinkEstimate::starting_at(start, GCC_START);
        let mut path = Bottleneck::new(5_000_000.0);
        let mut seq = 0;
        let samples = run(&mut estimate, &mut path, start, &mut seq, 2_000_000.0, 8);
        // GCC climbs by about 8 % a second without probing: from 300 kbit/s, past 500 in 8 s.
        assert!(
            samples
                .windows(2)
                .all(|w| w[1].target_bps > w[0].target_bps),
            "rises every second: {samples:?}"
        );
        assert!(
            samples.last().expect("samples").target_bps > 500_000.0,
            "{samples:?}"
        );
    }

    #[test]
    fn after_the_bottleneck_lifts_the_estimate_climbs_back() {
        let start = Instant::now();
        let mut estimate = DownlinkEstimate::starting_at(start, GCC_START);
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
        let (low, high) = (
            low.last().expect("low").target_bps,
            high.last().expect("high").target_bps,
        );
        assert!(high > 2.0 * low, "from {low} to {high}");
    }

    #[test]
    fn after_congestion_only_probes_raise_what_may_be_sent() {
        let start = Instant::now();
        let mut estimate = DownlinkEstimate::starting_at(start, GCC_START);
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
        assert_eq!(estimate.usable_bps(), estimate.target_bps());
        let seen = estimate.evidence();
        assert!(seen.arrived > 100 && seen.lost == 0, "{seen:?}");
        // A bottleneck, sent over: congestion, and a ceiling where the estimate fell.
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
        let ceiling = estimate.usable_bps();
        assert!(ceiling < 400_000.0, "{ceiling}");
        // The path clears and little is sent: GCC grows, what may be sent does not.
        run(
            &mut estimate,
            &mut Bottleneck::new(5_000_000.0),
            start + Duration::from_secs(6),
            &mut seq,
            200_000.0,
            10,
        );
        assert!(
            estimate.target_bps() > 2.0 * ceiling,
            "{}",
            estimate.target_bps()
        );
        assert_eq!(estimate.usable_bps(), ceiling);
        // A probe proves more.
        estimate.prove(2.0 * ceiling);
        assert_eq!(estimate.usable_bps(), 2.0 * ceiling);
    }

    #[test]
    fn feedback_the_shard_never_sent_for_changes_nothing() {
        let start = Instant::now();
        let mut estimate = DownlinkEstimate::starting_at(start, GCC_START);
        let forged: Vec<Acknowledgement> = (0..500u16).map(Acknowledgement::lost).collect();
        estimate.on_acknowledgements(start + Duration::from_secs(1), &forged);
        assert_eq!(estimate.target_bps(), GCC_START);
        estimate.on_feedback(start, &TransportLayerCc::default());
        assert_eq!(estimate.target_bps(), GCC_START);
    }

    #[test]
    fn a_measurement_counts_what_is_sent_within_its_window_only() {
        let start = Instant::now();
        let mut estimate = DownlinkEstimate::starting_at(start, GCC_START);
        estimate.on_sent(1, 1_000, start);
        assert_eq!(estimate.measured_sent_bytes(), 0, "nothing measured yet");
        let (from, until) = (
            start + Duration::from_millis(10),
            start + Duration::from_millis(110),
        );
        estimate.measure(from, until);
        estimate.on_sent(2, 1_200, from);
        estimate.on_sent(3, 300, start + Duration::from_millis(60));
        estimate.on_sent(4, 255, until);
        estimate.on_sent(5, 1_200, until + Duration::from_millis(1));
        assert_eq!(estimate.measured_sent_bytes(), 1_755);
    }
}
