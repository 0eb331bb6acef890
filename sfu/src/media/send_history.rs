//! What the shard sent on one connection, by transport-wide sequence number: when each
//! packet left and how large it was, so that the subscriber's transport-cc feedback (which
//! says only which sequence numbers arrived, and when, on its own clock) can be joined with
//! it for the downlink's bandwidth estimate.
//!
//! A ring indexed by the sequence number, written on the forwarding path: a record costs a
//! store into a fixed slot, never an allocation or a hash. Feedback comes every 50–100 ms,
//! so the ring only needs to reach back a few seconds; an older sequence number has been
//! overwritten and is skipped, as rtc's `History` skips what it pruned.

use rtc::interceptor::{Acknowledgement, PacketReport};
use rtc::rtcp::transport_feedbacks::cc_feedback_report::Ecn;
use std::time::{Duration, Instant};

/// Packets remembered per connection: four seconds at 250 packets a second (a subscriber
/// receiving 2.5 Mbit/s), at 16 bytes a slot.
pub const CAPACITY: usize = 1024;

#[derive(Debug, Default, Clone, Copy)]
struct Slot {
    /// Microseconds after the history's epoch.
    departure_us: u64,
    seq: u16,
    /// Bytes on the wire; 0 for an empty slot or one already reported.
    size: u16,
}

/// The recent packets of one connection, by transport-wide sequence number.
#[derive(Debug)]
pub struct SendHistory {
    epoch: Instant,
    slots: Box<[Slot]>,
}

impl SendHistory {
    /// An empty history whose departures count from `epoch`.
    pub fn new(epoch: Instant) -> Self {
        Self {
            epoch,
            slots: vec![Slot::default(); CAPACITY].into_boxed_slice(),
        }
    }

    /// Records the packet stamped `seq`, `size` bytes on the wire, as leaving at `at`.
    pub fn record(&mut self, seq: u16, size: usize, at: Instant) {
        let slot = &mut self.slots[usize::from(seq) % CAPACITY];
        *slot = Slot {
            departure_us: at.saturating_duration_since(self.epoch).as_micros() as u64,
            seq,
            size: size.clamp(1, usize::from(u16::MAX)) as u16,
        };
    }

    /// Joins `acknowledgements` (in the order the feedback lists them, which is send order)
    /// with what was sent, into `out`. A sequence number the ring no longer holds, or has
    /// already reported, is skipped: feedback may repeat a packet, and must not count it
    /// twice.
    pub fn resolve(&mut self, acknowledgements: &[Acknowledgement], out: &mut Vec<PacketReport>) {
        for ack in acknowledgements {
            let slot = &mut self.slots[usize::from(ack.sequence_number) % CAPACITY];
            if slot.size == 0 || slot.seq != ack.sequence_number {
                continue;
            }
            out.push(PacketReport {
                ssrc: 0,
                id: 0,
                rtp_sequence_number: 0,
                is_twcc: true,
                twcc_sequence_number: ack.sequence_number,
                size: usize::from(slot.size),
                arrived: ack.arrived,
                departure: self.epoch + Duration::from_micros(slot.departure_us),
                arrival: ack.arrival,
                ecn: Ecn::NotEct,
            });
            slot.size = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn received(seq: u16, arrival_ms: u64) -> Acknowledgement {
        Acknowledgement::received(seq, Some(Duration::from_millis(arrival_ms)), Ecn::NotEct)
    }

    #[test]
    fn feedback_is_joined_with_departure_and_size_once() {
        let epoch = Instant::now();
        let mut history = SendHistory::new(epoch);
        for seq in 0..10u16 {
            history.record(
                seq,
                1000 + usize::from(seq),
                epoch + Duration::from_millis(u64::from(seq) * 5),
            );
        }
        let acks = [received(3, 100), Acknowledgement::lost(4), received(5, 112)];
        let mut out = Vec::new();
        history.resolve(&acks, &mut out);
        assert_eq!(out.len(), 3);
        assert_eq!(out[0].size, 1003);
        assert_eq!(out[0].departure, epoch + Duration::from_millis(15));
        assert_eq!(out[0].arrival, Some(Duration::from_millis(100)));
        assert!(out[0].arrived && !out[1].arrived && out[2].arrived);
        assert_eq!(out[1].twcc_sequence_number, 4);
        // Reported again (feedback can repeat): nothing new.
        let mut again = Vec::new();
        history.resolve(&acks, &mut again);
        assert!(again.is_empty(), "{again:?}");
    }

    #[test]
    fn what_the_ring_no_longer_holds_is_skipped() {
        let epoch = Instant::now();
        let mut history = SendHistory::new(epoch);
        // Sequence numbers wrap; a full lap later, slot 7 holds 7 + CAPACITY.
        history.record(7, 500, epoch);
        let lapped = 7u16.wrapping_add(CAPACITY as u16);
        history.record(lapped, 600, epoch + Duration::from_secs(4));
        let mut out = Vec::new();
        history.resolve(&[received(7, 1), received(9, 1)], &mut out);
        assert!(
            out.is_empty(),
            "stale and never-sent numbers are skipped: {out:?}"
        );
        history.resolve(&[received(lapped, 2)], &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].size, 600);
    }

    #[test]
    fn wraps_around_u16() {
        let epoch = Instant::now();
        let mut history = SendHistory::new(epoch);
        for (i, seq) in [65534u16, 65535, 0, 1].into_iter().enumerate() {
            history.record(seq, 100, epoch + Duration::from_millis(i as u64));
        }
        let acks: Vec<_> = [65534u16, 65535, 0, 1]
            .into_iter()
            .map(|s| received(s, 50))
            .collect();
        let mut out = Vec::new();
        history.resolve(&acks, &mut out);
        let seqs: Vec<u16> = out.iter().map(|r| r.twcc_sequence_number).collect();
        assert_eq!(seqs, [65534, 65535, 0, 1]);
        assert!(out.windows(2).all(|w| w[0].departure < w[1].departure));
    }
}
