//! RTCP sender reports for the streams the shard sends (RFC 3550 section 6.4.1).
//!
//! The shard protects forwarded RTP itself, so `rtc`'s sender-report interceptor never
//! sees those packets; each downtrack counts what it sent here instead. A report maps the
//! stream's RTP clock to wall-clock time, which a receiver needs to play a participant's
//! audio and video in sync, and carries the counts a receiver's statistics compare with.

use rtc::rtcp::sender_report::SenderReport;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How often each stream reports.
pub const REPORT_INTERVAL: Duration = Duration::from_secs(1);
/// Seconds from the NTP epoch (1900) to the Unix epoch.
const NTP_UNIX_OFFSET: u64 = 2_208_988_800;

/// What one outgoing stream has sent.
#[derive(Debug, Default, Clone, Copy)]
pub struct SentCounts {
    packets: u32,
    octets: u32,
    /// The newest RTP timestamp sent and when.
    last: Option<(u32, Instant)>,
    /// When the stream next reports.
    next_report: Option<Instant>,
}

impl SentCounts {
    /// Counts a packet first sent at `now` (resends are not counted, as RFC 3550 says).
    pub fn sent(&mut self, now: Instant, timestamp: u32, payload_len: usize) {
        self.packets = self.packets.wrapping_add(1);
        self.octets = self.octets.wrapping_add(payload_len as u32);
        self.last = Some((timestamp, now));
        if self.next_report.is_none() {
            // The first report follows the first packet closely: until then a receiver
            // cannot synchronise the stream with the participant's others.
            self.next_report = Some(now + Duration::from_millis(100));
        }
    }

    /// The stream's report if one is due at `now`; `wall` is the wall-clock time of
    /// `now`, `clock_rate` the stream's RTP clock.
    pub fn due_report(
        &mut self,
        ssrc: u32,
        now: Instant,
        wall: SystemTime,
        clock_rate: u32,
    ) -> Option<SenderReport> {
        let (timestamp, at) = self.last?;
        if self.next_report.is_none_or(|due| now < due) {
            return None;
        }
        self.next_report = Some(now + REPORT_INTERVAL);
        let ticks =
            now.saturating_duration_since(at).as_micros() * u128::from(clock_rate) / 1_000_000;
        Some(SenderReport {
            ssrc,
            ntp_time: ntp(wall),
            rtp_time: timestamp.wrapping_add(ticks as u32),
            packet_count: self.packets,
            octet_count: self.octets,
            ..Default::default()
        })
    }
}

/// A wall-clock time as a 64-bit NTP timestamp (32.32 fixed-point seconds since 1900).
pub fn ntp(wall: SystemTime) -> u64 {
    let since_unix = wall.duration_since(UNIX_EPOCH).unwrap_or_default();
    let seconds = since_unix.as_secs() + NTP_UNIX_OFFSET;
    let fraction = (u64::from(since_unix.subsec_nanos()) << 32) / 1_000_000_000;
    (seconds << 32) | fraction
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_reports_once_a_second_after_its_first_packet_with_the_rtp_time_of_now() {
        let t0 = Instant::now();
        let wall = UNIX_EPOCH + Duration::from_secs(1_000);
        let mut counts = SentCounts::default();
        assert!(
            counts.due_report(7, t0, wall, 90_000).is_none(),
            "nothing sent"
        );
        counts.sent(t0, 1_000, 1_200);
        counts.sent(t0 + Duration::from_millis(40), 4_600, 800);
        assert!(
            counts
                .due_report(7, t0 + Duration::from_millis(50), wall, 90_000)
                .is_none()
        );
        let at = t0 + Duration::from_millis(140);
        let report = counts.due_report(7, at, wall, 90_000).expect("due");
        assert_eq!(
            (report.ssrc, report.packet_count, report.octet_count),
            (7, 2, 2_000)
        );
        // 100 ms after the last packet, at 90 kHz.
        assert_eq!(report.rtp_time, 4_600 + 9_000);
        assert_eq!(report.ntp_time >> 32, 1_000 + NTP_UNIX_OFFSET);
        assert!(
            counts
                .due_report(7, at + Duration::from_millis(900), wall, 90_000)
                .is_none()
        );
        assert!(
            counts
                .due_report(7, at + REPORT_INTERVAL, wall, 90_000)
                .is_some()
        );
    }

    #[test]
    fn ntp_fractions_are_binary() {
        let half = UNIX_EPOCH + Duration::from_millis(500);
        assert_eq!(ntp(half), (NTP_UNIX_OFFSET << 32) | (1 << 31));
    }
}
