//! The feedback a test receiver that takes media past `rtc` sends (the
//! [`crate::lean_viewer`], the baseline relay's subscribers): the shard's own
//! [`tutti_sfu::media::receiver_feedback`], on timers at a browser's random phase.

pub use tutti_sfu::media::receiver_feedback::{
    RECEIVER_REPORT_INTERVAL, ReceiverFeedback, TRANSPORT_CC_INTERVAL, find_extension,
};

/// The two feedback timers of one receiver (transport-cc, receiver reports), each at a
/// random phase: browsers start them whenever they connect, so a forwarder's feedback
/// arrives spread over each period, not in one burst per period. A late tick is delayed,
/// not repeated.
pub fn feedback_intervals() -> (tokio::time::Interval, tokio::time::Interval) {
    let start = tokio::time::Instant::now();
    let phased = |period: std::time::Duration| {
        let phase = period.mul_f64(rand::random::<f64>());
        let mut interval = tokio::time::interval_at(start + phase, period);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        interval
    };
    (
        phased(TRANSPORT_CC_INTERVAL),
        phased(RECEIVER_REPORT_INTERVAL),
    )
}
