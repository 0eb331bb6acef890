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

/// How many past segments are kept for NACK mapping: a subscriber below the top spatial
/// layer of an SVC stream starts one at every picture (its upper layers skipped), so 64
/// cover two seconds at 30 pictures a second, as long as a packet is kept to be resent.
const MAX_SEGMENTS: usize = 64;

/// Whether sequence number `a` is newer than `b`, modulo 2^16 (RFC 3550 §A.1).
pub fn seq_newer(a: u16, b: u16) -> bool {
    a != b && a.wrapping_sub(b) < 0x8000
}

/// `seq` as an extended (never wrapping) number, from the newest one seen and its
/// extended form: the nearer of its possible values.
fn unwrap(newest: (u16, u64), seq: u16) -> u64 {
    let delta = i64::from(seq.wrapping_sub(newest.0) as i16);
    newest.1.saturating_add_signed(delta)
}

/// Extended numbers of a new run start here, so that a packet a little older than the
/// first one still unwraps without going below zero.
const RUN_BASE: u64 = 1 << 32;

/// One run of packets from a single source with fixed offsets. Numbers are extended
/// (unwrapped): a stream that carries more than 32,768 packets on one segment must not
/// look as if it went backwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Segment {
    source_ssrc: u32,
    /// The run of one source it belongs to: each switch (another source, or the same one
    /// after a pause) starts a run, and a late packet is numbered only within its run.
    run: u32,
    /// The source's extended sequence number the segment starts at.
    first_in: u64,
    /// The extended outgoing sequence number it starts at.
    first_out: u64,
    /// Where the source packets skipped just before it begin (`first_in` when none were):
    /// a late copy of one of them has no place to go.
    skipped_from: u64,
    ts_offset: u32,
    /// Padding the shard sent on its own (a bandwidth probe): no source behind it.
    padding: bool,
}

impl Segment {
    /// The extended outgoing number of the source packet `ext` of this segment.
    fn out_of(&self, ext: u64) -> u64 {
        self.first_out + (ext - self.first_in)
    }
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
    /// The current run (see [`Segment::run`]).
    run: u32,
    /// Highest outgoing sequence number sent (extended), with its timestamp and send
    /// instant.
    last_out: Option<(u64, u32, Instant)>,
    /// Highest source sequence number seen in the current run, and its extended form.
    last_in: (u16, u64),
    /// Whether a packet went out under the newest segment: a skip right after another
    /// shifts the segment it began instead of pushing one more.
    sent_in_segment: bool,
    /// Forwarding stopped for a while ([`Self::pause`]): the next packet starts a segment
    /// even from the same source, so the stream continues right after the last packet sent
    /// instead of leaving a gap the subscriber would ask to have repaired.
    paused: bool,
    /// Padding sent since the last media packet: the media segment it interrupted. The
    /// same source then goes on right after the padding, so that its own gaps (real
    /// losses) stay visible and repairable.
    after_padding: Option<Segment>,
}

impl Sequencer {
    /// A sequencer for a stream with the given RTP clock rate.
    pub fn new(clock_rate: u32) -> Self {
        Self {
            clock_rate: clock_rate.max(1),
            segments: VecDeque::new(),
            run: 0,
            last_out: None,
            last_in: (0, RUN_BASE),
            sent_in_segment: false,
            paused: false,
            after_padding: None,
        }
    }

    /// The shard stops forwarding this stream for now (the subscriber's downlink cannot
    /// carry it); whatever it forwards next follows on from the last packet sent.
    pub fn pause(&mut self) {
        self.paused = true;
    }

    /// The stream goes on in another RTP clock (a source of another codec): the time a
    /// pause spans is counted in the new one.
    pub fn set_clock_rate(&mut self, clock_rate: u32) {
        self.clock_rate = clock_rate.max(1);
    }

    fn current(&self) -> Option<&Segment> {
        self.segments.back()
    }

    fn push_segment(&mut self, segment: Segment) {
        if self.segments.len() == MAX_SEGMENTS {
            self.segments.pop_front();
        }
        self.segments.push_back(segment);
        self.sent_in_segment = false;
    }

    /// The segment of the current run that numbers source packet `ext`: the newest that
    /// starts at or before it; `None` for a packet from before the run, or a late copy of
    /// one skipped on purpose, whose place went to the next packet.
    fn segment_of(&self, ext: u64) -> Option<Segment> {
        let run = self.run;
        let at = self
            .segments
            .iter()
            .rposition(|s| !s.padding && s.run == run && s.first_in <= ext)?;
        let skipped = self
            .segments
            .range(at + 1..)
            .find(|s| !s.padding)
            .is_some_and(|next| next.skipped_from <= ext);
        (!skipped).then(|| self.segments[at])
    }

    /// The extended outgoing number the next packet sent takes.
    fn next_out(&self) -> Option<u64> {
        self.last_out.map(|(last, _, _)| last + 1)
    }

    /// Whether the next packet of `ssrc` starts a new segment (a source switch).
    pub fn is_switch(&self, ssrc: u32) -> bool {
        self.paused
            || self
                .current()
                .is_none_or(|segment| segment.padding || segment.source_ssrc != ssrc)
    }

    /// The timestamp of the last packet sent; `None` before any.
    pub fn last_timestamp(&self) -> Option<u32> {
        self.last_out.map(|(_, timestamp, _)| timestamp)
    }

    /// The next outgoing position for a padding-only packet (a bandwidth probe), right
    /// after the last packet sent and with its timestamp; `None` before any media went out.
    /// A NACK for it maps to nothing.
    pub fn padding(&mut self) -> Option<Rewritten> {
        let (last_out, last_ts, sent_at) = self.last_out?;
        let out = last_out + 1;
        if self.after_padding.is_none() {
            let media = *self.current()?;
            self.after_padding = Some(media);
            self.push_segment(Segment {
                first_out: out,
                padding: true,
                ..media
            });
        }
        // The send instant stays the last media packet's: a later switch counts its
        // timestamp step from there.
        self.last_out = Some((out, last_ts, sent_at));
        Some(Rewritten {
            seq: out as u16,
            timestamp: last_ts,
        })
    }

    /// Rewrites a source packet. A packet from a different source than the current
    /// segment's starts a new segment continuing right after the last packet sent. A late
    /// packet is numbered as the segment it belongs to numbers it (its number was kept
    /// free for it); `None` for one older than the current run, which must be dropped.
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
                .filter(|media| !self.paused && media.source_ssrc == ssrc);
            let segment = match (resumed, self.last_out) {
                // The same source after padding: right after it, its timing untouched; the
                // source packets it had not sent yet keep their places.
                (Some(media), Some((last_out, _, _))) => Segment {
                    first_in: self.last_in.1 + 1,
                    first_out: last_out + 1,
                    skipped_from: self.last_in.1 + 1,
                    padding: false,
                    ..media
                },
                (_, last_out) => {
                    self.run = self.run.wrapping_add(1);
                    // An extended number's low 16 bits are the number on the wire.
                    self.last_in = (seq, RUN_BASE + u64::from(seq));
                    let ts_offset = match last_out {
                        None => 0,
                        Some((_, last_ts, sent_at)) => {
                            let elapsed = now.saturating_duration_since(sent_at);
                            // At least one tick, so two frames never share a timestamp.
                            let ticks = (elapsed.as_micros() * u128::from(self.clock_rate)
                                / 1_000_000)
                                .clamp(1, u128::from(u32::MAX / 2))
                                as u32;
                            last_ts.wrapping_add(ticks).wrapping_sub(timestamp)
                        }
                    };
                    Segment {
                        source_ssrc: ssrc,
                        run: self.run,
                        first_in: RUN_BASE + u64::from(seq),
                        skipped_from: RUN_BASE + u64::from(seq),
                        // A stream's first packet keeps its own number.
                        first_out: self.next_out().unwrap_or(RUN_BASE + u64::from(seq)),
                        ts_offset,
                        padding: false,
                    }
                }
            };
            self.push_segment(segment);
            self.paused = false;
        }
        let ext = unwrap(self.last_in, seq);
        if ext > self.last_in.1 {
            self.last_in = (seq, ext);
        }
        let segment = self.segment_of(ext)?;
        let out = segment.out_of(ext);
        let out_ts = timestamp.wrapping_add(segment.ts_offset);
        match self.last_out {
            Some((last, _, _)) if out <= last => {}
            _ => self.last_out = Some((out, out_ts, now)),
        }
        if self.current() == Some(&segment) {
            self.sent_in_segment = true;
        }
        Some(Rewritten {
            seq: out as u16,
            timestamp: out_ts,
        })
    }

    /// Where a late source packet (older than the newest seen) would go: the place kept
    /// for it when it was missing, if it has one and nothing went out there. A packet of a
    /// layer the subscriber does not receive that was lost on its way to the shard and came
    /// later (the publisher's repair) left such a place, which [`Self::skip`] could no
    /// longer close: the shard fills it with padding instead, so the subscriber does not
    /// ask for it forever. Changes nothing.
    pub fn kept_place(&self, ssrc: u32, seq: u16, timestamp: u32) -> Option<Rewritten> {
        if self.paused {
            return None;
        }
        let source = match self.current()? {
            segment if segment.padding => self.after_padding?.source_ssrc,
            segment => segment.source_ssrc,
        };
        if source != ssrc {
            return None;
        }
        let ext = unwrap(self.last_in, seq);
        if ext >= self.last_in.1 {
            return None;
        }
        let segment = self.segment_of(ext)?;
        let out = segment.out_of(ext);
        let (last, _, _) = self.last_out?;
        (out <= last).then_some(Rewritten {
            seq: out as u16,
            timestamp: timestamp.wrapping_add(segment.ts_offset),
        })
    }

    /// Declares that a source packet not yet seen was dropped on purpose (padding, a
    /// temporal layer the subscriber does not receive), so the outgoing numbering closes
    /// its place instead of making the subscriber NACK a packet that will never exist.
    /// Packets lost before it keep theirs. A run of skips makes one segment, not one each:
    /// half the packets of a stream may be skipped, and the segments kept must still cover
    /// the packets that can be asked for again. A packet older than the newest seen has
    /// had its place already.
    pub fn skip(&mut self, ssrc: u32, seq: u16) {
        let Some(current) = self.current().copied() else {
            return;
        };
        if current.source_ssrc != ssrc || self.paused {
            return;
        }
        let ext = unwrap(self.last_in, seq);
        if ext <= self.last_in.1 {
            return;
        }
        self.last_in = (seq, ext);
        if current.padding {
            // The source resumes after the padding from the packet after this one.
            return;
        }
        let first_out = current.out_of(ext);
        if !self.sent_in_segment && ext == current.first_in {
            if let Some(segment) = self.segments.back_mut() {
                segment.first_in = ext + 1;
            }
            return;
        }
        self.push_segment(Segment {
            first_in: ext + 1,
            first_out,
            skipped_from: ext,
            ..current
        });
    }

    /// Maps an outgoing sequence number (from a subscriber's NACK) back to its source.
    pub fn source_of(&self, out_seq: u16) -> Option<SourcePosition> {
        let (last_out, _, _) = self.last_out?;
        let out = unwrap((last_out as u16, last_out), out_seq);
        if out > last_out {
            return None;
        }
        // The newest segment that started at or before `out`.
        let segment = self.segments.iter().rev().find(|s| s.first_out <= out)?;
        if segment.padding {
            return None;
        }
        let source = segment.first_in + (out - segment.first_out);
        Some(SourcePosition {
            ssrc: segment.source_ssrc,
            seq: source as u16,
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
    fn a_long_steady_run_after_a_switch_keeps_flowing_and_stays_mapped() {
        let t0 = Instant::now();
        let mut seq = Sequencer::new(90_000);
        seq.rewrite(1, 10, 0, t0).unwrap();
        // Half an hour of a 30-packet-a-second layer, or five minutes of a 100-packet one:
        // past 32,768 packets on one segment, which once read as going backwards and
        // dropped every packet from there on.
        let mut source = 500u16;
        let mut last = None;
        for _ in 0..70_000u32 {
            last = Some(seq.rewrite(2, source, 0, t0).expect("still flowing"));
            source = source.wrapping_add(1);
        }
        let last = last.unwrap();
        let found = seq.source_of(last.seq.wrapping_sub(5)).unwrap();
        assert_eq!((found.ssrc, found.seq), (2, source.wrapping_sub(6)));
    }

    #[test]
    fn a_late_packet_gets_the_place_kept_for_it_across_skips() {
        let t0 = Instant::now();
        let mut seq = Sequencer::new(90_000);
        let mut out = std::collections::HashMap::new();
        for source in [100u16, 101, 103, 104] {
            out.insert(source, seq.rewrite(1, source, 0, t0).unwrap().seq);
        }
        seq.skip(1, 105);
        seq.skip(1, 106);
        out.insert(107, seq.rewrite(1, 107, 0, t0).unwrap().seq);
        assert_eq!(
            out[&107],
            out[&104].wrapping_add(1),
            "the skipped run closed up"
        );
        // 102, lost upstream and repaired late, goes out in the place it had.
        let late = seq
            .rewrite(1, 102, 0, t0)
            .expect("a late packet of the run");
        assert_eq!(late.seq, out[&101].wrapping_add(1));
        assert_eq!(seq.source_of(late.seq).unwrap().seq, 102);
        assert_eq!(seq.source_of(out[&107]).unwrap().seq, 107);
    }

    #[test]
    fn a_late_copy_of_a_skipped_packet_is_not_sent_in_another_ones_place() {
        let t0 = Instant::now();
        let mut seq = Sequencer::new(90_000);
        seq.rewrite(1, 100, 0, t0).unwrap();
        seq.skip(1, 101);
        seq.skip(1, 102);
        let next = seq.rewrite(1, 103, 0, t0).unwrap();
        // The publisher resends 101 and 102 (the subscriber now takes their layer).
        assert_eq!(seq.rewrite(1, 101, 0, t0), None);
        assert_eq!(seq.rewrite(1, 102, 0, t0), None);
        assert_eq!(seq.source_of(next.seq).unwrap().seq, 103);
    }

    #[test]
    fn a_skip_after_a_loss_leaves_the_lost_packet_its_place() {
        let t0 = Instant::now();
        let mut seq = Sequencer::new(90_000);
        let first = seq.rewrite(1, 100, 0, t0).unwrap();
        // 101 is lost upstream; 102 is dropped on purpose.
        seq.skip(1, 102);
        let next = seq.rewrite(1, 103, 0, t0).unwrap();
        assert_eq!(
            next.seq,
            first.seq.wrapping_add(2),
            "101's place is kept, 102's closed"
        );
        let repaired = seq.rewrite(1, 101, 0, t0).unwrap();
        assert_eq!(repaired.seq, first.seq.wrapping_add(1));
    }

    #[test]
    fn a_late_packet_finds_the_place_kept_for_it_and_only_that() {
        let t0 = Instant::now();
        let mut seq = Sequencer::new(90_000);
        let first = seq.rewrite(1, 100, 0, t0).unwrap();
        // 101 is lost upstream; 102 is dropped on purpose; 103 goes out.
        seq.skip(1, 102);
        seq.rewrite(1, 103, 3000, t0).unwrap();
        let kept = seq.kept_place(1, 101, 3000).expect("101 had a place");
        assert_eq!(kept.seq, first.seq.wrapping_add(1));
        // A late copy of the skipped one, one from before the stream began, another
        // source, or a packet not late at all: no place.
        assert_eq!(seq.kept_place(1, 102, 3000), None);
        assert_eq!(seq.kept_place(1, 99, 0), None);
        assert_eq!(seq.kept_place(2, 101, 3000), None);
        assert_eq!(seq.kept_place(1, 103, 3000), None);
        assert_eq!(seq.kept_place(1, 104, 3000), None);
        // Asking changes nothing: forwarded after all, it takes that same place.
        assert_eq!(seq.rewrite(1, 101, 3000, t0), Some(kept));
    }

    #[test]
    fn a_skip_during_padding_closes_up_after_it() {
        let t0 = Instant::now();
        let mut seq = Sequencer::new(90_000);
        let first = seq.rewrite(1, 100, 0, t0).unwrap();
        let probe = seq.padding().unwrap();
        seq.skip(1, 101);
        let resumed = seq.rewrite(1, 102, 0, t0).unwrap();
        assert_eq!(resumed.seq, probe.seq.wrapping_add(1));
        assert_eq!(probe.seq, first.seq.wrapping_add(1));
        assert_eq!(seq.source_of(probe.seq), None);
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
