//! Per-subscriber rewriting of RTP sequence numbers and timestamps.
//!
//! A subscriber sees one continuous stream per track even when the shard switches what
//! feeds it: another simulcast layer, or a new source after the publisher re-published.
//! Each switch starts a *segment* whose offsets make the first forwarded packet follow the
//! last one sent, so the subscriber's jitter buffer never sees a jump or a gap that was not
//! a real loss. Segments are remembered for a while so a NACK for an outgoing sequence
//! number can be mapped back to the source packet that the retransmission buffer holds.

use std::collections::VecDeque;
use std::time::Instant;

/// How many past segments are kept for NACK mapping.
const MAX_SEGMENTS: usize = 32;

/// Whether sequence number `a` is newer than `b`, modulo 2^16 (RFC 3550 §A.1).
pub fn seq_newer(a: u16, b: u16) -> bool {
    a != b && a.wrapping_sub(b) < 0x8000
}

/// One run of packets from a single source with fixed offsets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Segment {
    source_ssrc: u32,
    /// The first outgoing sequence number of the segment.
    first_out: u16,
    seq_offset: u16,
    ts_offset: u32,
    /// Padding the shard sent on its own (a bandwidth probe): no source behind it.
    padding: bool,
}

/// A rewritten packet position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rewritten {
    /// The outgoing sequence number.
    pub seq: u16,
    /// The outgoing timestamp.
    pub timestamp: u32,
}

/// The source packet an outgoing sequence number came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SourcePosition {
    /// SSRC of the source stream.
    pub ssrc: u32,
    /// Sequence number in the source stream.
    pub seq: u16,
    /// Offset to add to the source timestamp.
    pub ts_offset: u32,
}

/// Rewrites one outgoing stream.
#[derive(Debug)]
pub struct Sequencer {
    clock_rate: u32,
    segments: VecDeque<Segment>,
    /// Highest outgoing sequence number sent, with its timestamp and send instant.
    last_out: Option<(u16, u32, Instant)>,
    /// Highest source sequence number seen in the current segment.
    last_in_seq: u16,
    /// Forwarding stopped for a while ([`Self::pause`]): the next packet starts a segment
    /// even from the same source, so the stream continues right after the last packet sent
    /// instead of leaving a gap the subscriber would ask to have repaired.
    paused: bool,
    /// Padding sent since the last media packet: the media segment it interrupted, and
    /// how many padding packets. The same source then goes on with its offsets shifted by
    /// that many, so that its own gaps (real losses) stay visible and repairable.
    after_padding: Option<(Segment, u16)>,
}

impl Sequencer {
    /// A sequencer for a stream with the given RTP clock rate.
    pub fn new(clock_rate: u32) -> Self {
        Self {
            clock_rate: clock_rate.max(1),
            segments: VecDeque::new(),
            last_out: None,
            last_in_seq: 0,
            paused: false,
            after_padding: None,
        }
    }

    /// The shard stops forwarding this stream for now (the subscriber's downlink cannot
    /// carry it); whatever it forwards next follows on from the last packet sent.
    pub fn pause(&mut self) {
        self.paused = true;
    }

    fn current(&self) -> Option<&Segment> {
        self.segments.back()
    }

    fn push_segment(&mut self, segment: Segment) {
        if self.segments.len() == MAX_SEGMENTS {
            self.segments.pop_front();
        }
        self.segments.push_back(segment);
    }

    /// Whether the next packet of `ssrc` starts a new segment (a source switch).
    pub fn is_switch(&self, ssrc: u32) -> bool {
        self.paused
            || self
                .current()
                .is_none_or(|segment| segment.padding || segment.source_ssrc != ssrc)
    }

    /// The next outgoing position for a padding-only packet (a bandwidth probe), right
    /// after the last packet sent and with its timestamp; `None` before any media went out.
    /// A NACK for it maps to nothing.
    pub fn padding(&mut self) -> Option<Rewritten> {
        let (last_seq, last_ts, sent_at) = self.last_out?;
        let out = last_seq.wrapping_add(1);
        match &mut self.after_padding {
            Some((_, count)) => *count = count.wrapping_add(1),
            None => {
                let media = *self.current()?;
                self.after_padding = Some((media, 1));
                self.push_segment(Segment {
                    source_ssrc: media.source_ssrc,
                    first_out: out,
                    seq_offset: 0,
                    ts_offset: 0,
                    padding: true,
                });
            }
        }
        // The send instant stays the last media packet's: a later switch counts its
        // timestamp step from there.
        self.last_out = Some((out, last_ts, sent_at));
        Some(Rewritten {
            seq: out,
            timestamp: last_ts,
        })
    }

    /// Rewrites a source packet. A packet from a different source than the current
    /// segment's starts a new segment continuing right after the last packet sent. Returns
    /// `None` for a packet older than the segment it would belong to (a late packet of a
    /// source already switched away from), which must be dropped.
    pub fn rewrite(
        &mut self,
        ssrc: u32,
        seq: u16,
        timestamp: u32,
        now: Instant,
    ) -> Option<Rewritten> {
        if self.is_switch(ssrc) {
            let resumed = self
                .after_padding
                .take()
                .filter(|(media, _)| !self.paused && media.source_ssrc == ssrc);
            let (seq_offset, ts_offset, first_out) = match (resumed, self.last_out) {
                (_, None) => (0, 0, seq),
                // The same source after padding: shifted past it, its timing untouched.
                (Some((media, count)), Some((last_seq, _, _))) => (
                    media.seq_offset.wrapping_add(count),
                    media.ts_offset,
                    last_seq.wrapping_add(1),
                ),
                (None, Some((last_seq, last_ts, sent_at))) => {
                    let elapsed = now.saturating_duration_since(sent_at);
                    // At least one tick, so two frames never share a timestamp.
                    let ticks = (elapsed.as_micros() * u128::from(self.clock_rate) / 1_000_000)
                        .clamp(1, u128::from(u32::MAX / 2)) as u32;
                    let seq_offset = last_seq.wrapping_add(1).wrapping_sub(seq);
                    (
                        seq_offset,
                        last_ts.wrapping_add(ticks).wrapping_sub(timestamp),
                        seq.wrapping_add(seq_offset),
                    )
                }
            };
            self.push_segment(Segment {
                source_ssrc: ssrc,
                first_out,
                seq_offset,
                ts_offset,
                padding: false,
            });
            self.paused = false;
            self.last_in_seq = seq;
        } else if seq_newer(seq, self.last_in_seq) {
            self.last_in_seq = seq;
        }
        let segment = *self.current()?;
        let out_seq = seq.wrapping_add(segment.seq_offset);
        if self.segments.len() > 1 && seq_newer(segment.first_out, out_seq) {
            // Older than the start of its segment: it would overwrite numbers already used
            // by the previous source.
            return None;
        }
        let out_ts = timestamp.wrapping_add(segment.ts_offset);
        match self.last_out {
            Some((last_seq, _, _)) if !seq_newer(out_seq, last_seq) => {}
            _ => self.last_out = Some((out_seq, out_ts, now)),
        }
        Some(Rewritten {
            seq: out_seq,
            timestamp: out_ts,
        })
    }

    /// Declares that the source packet right after the last one forwarded was dropped on
    /// purpose (padding, a temporal layer the subscriber does not receive), so the outgoing
    /// numbering closes the gap instead of making the subscriber NACK a packet that will
    /// never exist. A run of skips makes one segment, not one each: half the packets of a
    /// stream may be skipped, and the segments kept must still cover the packets that can
    /// be asked for again.
    pub fn skip(&mut self, ssrc: u32, seq: u16) {
        let Some(current) = self.current().copied() else {
            return;
        };
        if current.padding || current.source_ssrc != ssrc || seq != self.last_in_seq.wrapping_add(1)
        {
            return;
        }
        self.last_in_seq = seq;
        let seq_offset = current.seq_offset.wrapping_sub(1);
        let first_out = seq.wrapping_add(1).wrapping_add(seq_offset);
        // Nothing went out under the current segment since it began (it began with a skip,
        // or it is a fresh source's first segment with nothing sent yet): shift it instead.
        let nothing_sent = self
            .last_out
            .is_none_or(|(last, _, _)| seq_newer(current.first_out, last));
        if nothing_sent && let Some(segment) = self.segments.back_mut() {
            segment.seq_offset = seq_offset;
            return;
        }
        self.push_segment(Segment {
            source_ssrc: ssrc,
            first_out,
            seq_offset,
            ts_offset: current.ts_offset,
            padding: false,
        });
    }

    /// Maps an outgoing sequence number (from a subscriber's NACK) back to its source.
    pub fn source_of(&self, out_seq: u16) -> Option<SourcePosition> {
        let (last_sent, _, _) = self.last_out?;
        if seq_newer(out_seq, last_sent) {
            return None;
        }
        // The newest segment that started at or before `out_seq`.
        self.segments
            .iter()
            .rev()
            .find(|segment| !seq_newer(segment.first_out, out_seq))
            .filter(|segment| !segment.padding)
            .map(|segment| SourcePosition {
                ssrc: segment.source_ssrc,
                seq: out_seq.wrapping_sub(segment.seq_offset),
                ts_offset: segment.ts_offset,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn newer_handles_wraparound() {
        assert!(seq_newer(1, 0));
        assert!(seq_newer(0, 65535));
        assert!(!seq_newer(65535, 0));
        assert!(!seq_newer(7, 7));
    }

    #[test]
    fn continuous_across_a_source_switch() {
        let t0 = Instant::now();
        let mut seq = Sequencer::new(90_000);
        // Layer A: seq 1000.., ts 5000..
        let mut out = Vec::new();
        for i in 0..10u16 {
            out.push(
                seq.rewrite(0xA, 1000 + i, 5000 + u32::from(i) * 3000, t0)
                    .unwrap(),
            );
        }
        // Switch to layer B with unrelated numbering, 33 ms later.
        let t1 = t0 + Duration::from_millis(33);
        let first_b = seq.rewrite(0xB, 60_000, 123_456, t1).unwrap();
        assert_eq!(first_b.seq, out.last().unwrap().seq.wrapping_add(1));
        let ts_step = first_b
            .timestamp
            .wrapping_sub(out.last().unwrap().timestamp);
        assert_eq!(ts_step, 2970); // 33 ms at 90 kHz
        let second_b = seq.rewrite(0xB, 60_001, 126_456, t1).unwrap();
        assert_eq!(second_b.seq, first_b.seq.wrapping_add(1));
        assert_eq!(second_b.timestamp.wrapping_sub(first_b.timestamp), 3000);
        // Back to layer A: a new segment; a reordered A packet from before the new
        // segment's start is dropped rather than reusing numbers already sent.
        let back = seq.rewrite(0xA, 1020, 65_000, t1).unwrap();
        assert_eq!(back.seq, second_b.seq.wrapping_add(1));
        assert_eq!(seq.rewrite(0xA, 1019, 62_000, t1), None);
        assert!(seq.rewrite(0xA, 1021, 68_000, t1).is_some());
    }

    #[test]
    fn reordered_packets_keep_their_offset() {
        let t0 = Instant::now();
        let mut seq = Sequencer::new(48_000);
        let a = seq.rewrite(1, 10, 0, t0).unwrap();
        let c = seq.rewrite(1, 12, 1920, t0).unwrap();
        let b = seq.rewrite(1, 11, 960, t0).unwrap();
        assert_eq!((a.seq, b.seq, c.seq), (10, 11, 12));
    }

    #[test]
    fn padding_takes_the_next_numbers_and_the_source_goes_on_after_it() {
        let t0 = Instant::now();
        let mut seq = Sequencer::new(90_000);
        assert_eq!(seq.padding(), None, "nothing to follow yet");
        let a = seq.rewrite(7, 100, 1000, t0).unwrap();
        let p1 = seq.padding().unwrap();
        let p2 = seq.padding().unwrap();
        assert_eq!((p1.seq, p2.seq), (a.seq + 1, a.seq + 2));
        assert_eq!((p1.timestamp, p2.timestamp), (a.timestamp, a.timestamp));
        let later = t0 + Duration::from_millis(33);
        let b = seq.rewrite(7, 101, 3970, later).unwrap();
        assert_eq!(b.seq, a.seq + 3);
        assert_eq!(b.timestamp, 3970, "the source's own timing, untouched");
        // NACKs: padding maps to nothing, media to its source.
        assert_eq!(seq.source_of(p1.seq), None);
        assert_eq!(seq.source_of(p2.seq), None);
        assert_eq!(seq.source_of(a.seq).unwrap().seq, 100);
        assert_eq!(seq.source_of(b.seq).unwrap().seq, 101);
    }

    #[test]
    fn a_loss_right_after_padding_stays_a_gap_and_its_repair_gets_through() {
        let t0 = Instant::now();
        let mut seq = Sequencer::new(90_000);
        let a = seq.rewrite(7, 100, 0, t0).unwrap();
        seq.padding().unwrap();
        // 101 is lost on the way to the shard; 102 comes first.
        let c = seq.rewrite(7, 102, 6000, t0).unwrap();
        assert_eq!(c.seq, a.seq + 3, "a gap where 101 belongs");
        let late = seq
            .rewrite(7, 101, 3000, t0)
            .expect("the repair is forwarded");
        assert_eq!(late.seq, a.seq + 2);
        assert_eq!(seq.source_of(late.seq).unwrap().seq, 101);
    }

    #[test]
    fn skip_closes_the_gap_of_a_dropped_packet() {
        let t0 = Instant::now();
        let mut seq = Sequencer::new(90_000);
        let a = seq.rewrite(1, 100, 0, t0).unwrap();
        seq.skip(1, 101);
        let c = seq.rewrite(1, 102, 3000, t0).unwrap();
        assert_eq!(c.seq, a.seq.wrapping_add(1));
        // NACK mapping follows both segments.
        assert_eq!(seq.source_of(a.seq).unwrap().seq, 100);
        assert_eq!(seq.source_of(c.seq).unwrap().seq, 102);
    }

    #[test]
    fn a_run_of_skips_makes_one_segment_and_old_packets_stay_mapped() {
        let t0 = Instant::now();
        let mut seq = Sequencer::new(90_000);
        let first = seq.rewrite(1, 1000, 0, t0).unwrap();
        // Every other frame dropped, three packets each, for far longer than MAX_SEGMENTS
        // runs of skips would cover if each skip kept a segment of its own.
        let mut source = 1001u16;
        let mut last = first;
        for _ in 0..100 {
            for _ in 0..3 {
                seq.skip(1, source);
                source = source.wrapping_add(1);
            }
            let out = seq.rewrite(1, source, 0, t0).unwrap();
            assert_eq!(
                out.seq,
                last.seq.wrapping_add(1),
                "no gap for a dropped frame"
            );
            last = out;
            source = source.wrapping_add(1);
        }
        // One segment per dropped frame: the packets of the last 15 frames sent (a second)
        // still map back to their source; with a segment per skip, only about 10 would.
        for back in 0..15u16 {
            let out_seq = last.seq.wrapping_sub(back);
            let found = seq.source_of(out_seq).unwrap();
            assert_eq!(found.seq, source.wrapping_sub(1 + 4 * back));
        }
    }

    #[test]
    fn nack_maps_back_across_segments_and_wraparound() {
        let t0 = Instant::now();
        let mut seq = Sequencer::new(90_000);
        for i in 0..5u16 {
            seq.rewrite(7, 65_533u16.wrapping_add(i), 0, t0);
        }
        let switched = seq.rewrite(8, 40, 0, t0).unwrap();
        let old = seq.source_of(switched.seq.wrapping_sub(2)).unwrap();
        assert_eq!((old.ssrc, old.seq), (7, 0));
        let new = seq.source_of(switched.seq).unwrap();
        assert_eq!((new.ssrc, new.seq), (8, 40));
        // Never sent yet.
        assert_eq!(seq.source_of(switched.seq.wrapping_add(1)), None);
    }
}
