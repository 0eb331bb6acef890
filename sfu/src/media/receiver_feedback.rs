//! What a receiver sends back about the RTP it gets: transport-wide congestion control
//! feedback (draft-holmer-rmcat-transport-wide-cc-extensions-01 §3.1) every 100 ms, as
//! rtc's TWCC receiver and Chromium send it, and receiver reports (RFC 3550 §6.4.2) every
//! second. The shard sends both to its publishers for the RTP it reads past `rtc`
//! ([`super::uplink_feedback`]); the test suite's lean viewers send them to the shard, so
//! a benchmark's viewers cost it the congestion work real ones do.
//!
//! Pure bookkeeping: arrival times come in (µs from any monotonic origin), RTCP packets
//! (rtc's types, marshalled by rtc) come out.

use super::feedback::MAX_TRANSPORT_CC_STATUS;
use rtc::rtcp::receiver_report::ReceiverReport;
use rtc::rtcp::reception_report::ReceptionReport;
use rtc::rtcp::transport_feedbacks::transport_layer_cc::{
    PacketStatusChunk, RecvDelta, StatusChunkTypeTcc, StatusVectorChunk, SymbolSizeTypeTcc,
    SymbolTypeTcc, TYPE_TCC_DELTA_SCALE_FACTOR, TransportLayerCc,
};
use std::time::Duration;

/// How often transport-cc feedback is sent (rtc's TWCC receiver's default, and Chromium's
/// at low bitrates).
pub const TRANSPORT_CC_INTERVAL: Duration = Duration::from_millis(100);
/// How often a receiver report is sent (rtc's receiver-report interceptor's default).
pub const RECEIVER_REPORT_INTERVAL: Duration = Duration::from_secs(1);
/// Arrivals held between two feedbacks. Beyond this, arrivals are not recorded (and so
/// are reported as lost): a flood cannot grow the list. At 100 ms per feedback that is
/// 20,000 packets a second, far beyond any one viewer.
const MAX_HELD: usize = 2048;
/// Microseconds per tick of a receive delta.
const DELTA_TICK_US: i64 = TYPE_TCC_DELTA_SCALE_FACTOR;
/// Microseconds per tick of the reference time.
const REFERENCE_TICK_US: i64 = 64_000;
/// Sequence numbers one feedback may cover: what the shard reads (as many as its send
/// history holds), far below the 16 bits the count allows. Also how far back a feedback
/// reaches for packets lost since the previous one.
const MAX_STATUS_COUNT: i64 = MAX_TRANSPORT_CC_STATUS as i64;
/// Received packets one feedback may list: with two-byte deltas and the chunks, under
/// 1,200 bytes, inside any MTU and the shard's receive buffer.
const MAX_RECEIVED_PER_FEEDBACK: usize = 400;
/// A stream silent this long leaves the receiver reports (RFC 3550 §6.4: report the
/// sources heard since the last report).
const STREAM_EXPIRY_US: i64 = 5_000_000;
/// Streams tracked for receiver reports (a report holds at most 31 blocks).
const MAX_STREAMS: usize = 31;

/// The feedback state of one receiving connection.
#[derive(Debug)]
pub struct ReceiverFeedback {
    sender_ssrc: u32,
    /// The negotiated id of the transport-wide sequence number extension.
    transport_cc_id: Option<u8>,
    last_transport_seq: Option<i64>,
    /// The sequence number after the last one reported: the next feedback starts there,
    /// so packets lost between two feedbacks are reported lost, as a browser does.
    next_report: Option<i64>,
    /// (unwrapped transport-wide sequence number, arrival in µs) since the last feedback.
    arrivals: Vec<(i64, i64)>,
    feedback_count: u8,
    streams: crate::FastMap<u32, StreamStats>,
}

/// RFC 3550 appendix A.3's counters for one SSRC, and what A.8 and §6.4.1 need for the
/// jitter and round-trip fields.
#[derive(Debug, Clone, Copy)]
struct StreamStats {
    last_arrival_us: i64,
    first: i64,
    highest: i64,
    received: u64,
    expected_prior: i64,
    received_prior: u64,
    /// The stream's RTP clock, when the receiver knows it (jitter is in its units).
    clock_rate: Option<u32>,
    /// The last packet's relative transit time, in RTP clock units.
    transit: Option<i64>,
    /// Interarrival jitter in RTP clock units, times 16 (A.8's fixed point).
    jitter_x16: i64,
    /// The middle 32 bits of the last sender report's NTP time, and when it arrived.
    last_sender_report: Option<(u32, i64)>,
}

impl ReceiverFeedback {
    /// Feedback sent as `sender_ssrc`, reading transport-wide sequence numbers from
    /// extension `transport_cc_id` when the connection negotiated one.
    pub fn new(sender_ssrc: u32, transport_cc_id: Option<u8>) -> Self {
        Self {
            sender_ssrc,
            transport_cc_id,
            last_transport_seq: None,
            next_report: None,
            arrivals: Vec::new(),
            feedback_count: 0,
            streams: crate::FastMap::default(),
        }
    }

    /// Reads transport-wide sequence numbers from extension `id` from now on.
    pub fn set_transport_cc_id(&mut self, id: u8) {
        self.transport_cc_id = Some(id);
    }

    /// Whether arrivals wait for the next [`Self::transport_cc`].
    pub fn has_arrivals(&self) -> bool {
        !self.arrivals.is_empty()
    }

    /// Notes a decrypted RTP packet that arrived at `arrival_us` (any monotonic origin) on a
    /// stream whose RTP clock runs at `clock_rate` Hz, if the receiver knows it (the jitter
    /// it reports is 0 otherwise). Packets too short to be RTP are ignored.
    pub fn on_rtp(&mut self, packet: &[u8], arrival_us: i64, clock_rate: Option<u32>) {
        if packet.len() < 12 {
            return;
        }
        let seq = u16::from_be_bytes([packet[2], packet[3]]);
        let timestamp = u32::from_be_bytes([packet[4], packet[5], packet[6], packet[7]]);
        let ssrc = u32::from_be_bytes([packet[8], packet[9], packet[10], packet[11]]);
        if let Some(stats) = self.streams.get_mut(&ssrc) {
            stats.highest = stats.highest.max(unwrap(stats.highest, seq));
            stats.received += 1;
            stats.last_arrival_us = arrival_us;
            stats.clock_rate = clock_rate.or(stats.clock_rate);
            stats.on_timing(arrival_us, timestamp);
        } else if self.streams.len() < MAX_STREAMS {
            let first = i64::from(seq);
            let mut stats = StreamStats {
                last_arrival_us: arrival_us,
                first,
                highest: first,
                received: 1,
                expected_prior: 0,
                received_prior: 0,
                clock_rate,
                transit: None,
                jitter_x16: 0,
                last_sender_report: None,
            };
            stats.on_timing(arrival_us, timestamp);
            self.streams.insert(ssrc, stats);
        }
        self.on_transport(packet, arrival_us);
    }

    /// Notes a decrypted RTP packet for transport-cc feedback only, not in the receiver
    /// reports: one of a stream the receiver does not report on (a retransmission stream,
    /// one not yet known).
    pub fn on_transport(&mut self, packet: &[u8], arrival_us: i64) {
        let Some(transport_seq) = self
            .transport_cc_id
            .and_then(|id| find_extension(packet, id))
            .and_then(|value| Some(u16::from_be_bytes([*value.first()?, *value.get(1)?])))
        else {
            return;
        };
        let unwrapped = match self.last_transport_seq {
            Some(last) => unwrap(last, transport_seq),
            None => i64::from(transport_seq),
        };
        self.last_transport_seq = Some(
            self.last_transport_seq
                .map_or(unwrapped, |l| l.max(unwrapped)),
        );
        if self.arrivals.len() < MAX_HELD {
            self.arrivals.push((unwrapped, arrival_us));
        }
    }

    /// The transport-cc feedback for what arrived since the last call (none if nothing
    /// did), from the sequence number after the last one reported (packets lost in
    /// between are reported lost) or, after a gap wider than one feedback may cover, from
    /// the first arrival. Usually one packet; more when one would be too long, each to be
    /// sent on its own.
    pub fn transport_cc(&mut self, media_ssrc: u32) -> Vec<TransportLayerCc> {
        let mut out = Vec::new();
        // Sorting the pairs keeps a duplicate's earliest arrival first.
        self.arrivals.sort_unstable();
        self.arrivals.dedup_by_key(|&mut (seq, _)| seq);
        let (Some(&(first, _)), Some(&(last, _))) = (self.arrivals.first(), self.arrivals.last())
        else {
            return out;
        };
        let mut start = match self.next_report {
            Some(next) if next < first && first - next < MAX_STATUS_COUNT => next,
            _ => first,
        };
        let mut rest = &self.arrivals[..];
        while let Some(&(_, base_arrival)) = rest.first() {
            let base = start;
            let reference = base_arrival.div_euclid(REFERENCE_TICK_US);
            let mut previous_ticks = reference * REFERENCE_TICK_US / DELTA_TICK_US;
            let mut symbols = Vec::new();
            let mut deltas = Vec::new();
            let mut taken = 0;
            for &(seq, arrival) in rest {
                if seq - base >= MAX_STATUS_COUNT || deltas.len() >= MAX_RECEIVED_PER_FEEDBACK {
                    break;
                }
                let ticks = arrival.div_euclid(DELTA_TICK_US);
                let delta = ticks - previous_ticks;
                let Ok(delta16) = i16::try_from(delta) else {
                    break;
                };
                let missing = seq - base - symbols.len() as i64;
                symbols.extend((0..missing).map(|_| SymbolTypeTcc::PacketNotReceived));
                let kind = if (0..=255).contains(&delta) {
                    SymbolTypeTcc::PacketReceivedSmallDelta
                } else {
                    SymbolTypeTcc::PacketReceivedLargeDelta
                };
                symbols.push(kind);
                deltas.push(RecvDelta {
                    type_tcc_packet: kind,
                    delta: i64::from(delta16) * DELTA_TICK_US,
                });
                previous_ticks = ticks;
                taken += 1;
            }
            // A delta beyond 16 bits right after the base cannot happen (the reference
            // is the base's own time), so at least one arrival is always taken.
            let taken = taken.max(1);
            out.push(TransportLayerCc {
                sender_ssrc: self.sender_ssrc,
                media_ssrc,
                base_sequence_number: base as u16,
                packet_status_count: symbols.len() as u16,
                reference_time: (reference as u32) & 0x00ff_ffff,
                fb_pkt_count: self.feedback_count,
                packet_chunks: symbols
                    .chunks(7)
                    .map(|symbols| {
                        PacketStatusChunk::StatusVectorChunk(StatusVectorChunk {
                            type_tcc: StatusChunkTypeTcc::StatusVectorChunk,
                            symbol_size: SymbolSizeTypeTcc::TwoBit,
                            symbol_list: symbols.to_vec(),
                        })
                    })
                    .collect(),
                recv_deltas: deltas,
            });
            self.feedback_count = self.feedback_count.wrapping_add(1);
            start = base + symbols.len() as i64;
            rest = &rest[taken.min(rest.len())..];
            if let Some(&(next, _)) = rest.first() {
                // A gap wider than a feedback reaches back: start at the next arrival.
                if next - start >= MAX_STATUS_COUNT {
                    start = next;
                }
            }
        }
        self.next_report = Some(last + 1);
        self.arrivals.clear();
        out
    }

    /// Notes a sender report from `ssrc` with NTP time `ntp` (RFC 3550 §6.4.1) that arrived
    /// at `arrival_us`: the next receiver report echoes it, so the sender can measure the
    /// round trip. Ignored for a stream not (yet) heard.
    pub fn on_sender_report(&mut self, ssrc: u32, ntp: u64, arrival_us: i64) {
        if let Some(stats) = self.streams.get_mut(&ssrc) {
            stats.last_sender_report = Some(((ntp >> 16) as u32, arrival_us));
        }
    }

    /// A receiver report on every stream heard in the last 5 s as of `now_us` (RFC 3550
    /// §6.4.2 and A.3; quieter ones are forgotten), or none. Jitter is 0 on a stream whose
    /// clock is not known; LSR and DLSR are 0 until the stream's sender reported, which
    /// RFC 3550 allows.
    pub fn receiver_report(&mut self, now_us: i64) -> Option<ReceiverReport> {
        self.streams
            .retain(|_, stats| now_us - stats.last_arrival_us < STREAM_EXPIRY_US);
        if self.streams.is_empty() {
            return None;
        }
        let mut reports: Vec<ReceptionReport> = self
            .streams
            .iter_mut()
            .map(|(&ssrc, stats)| {
                let expected = stats.highest - stats.first + 1;
                let lost = (expected - stats.received as i64).clamp(-0x80_0000, 0x7f_ffff);
                let expected_interval = expected - stats.expected_prior;
                let received_interval = stats.received as i64 - stats.received_prior as i64;
                let lost_interval = expected_interval - received_interval;
                stats.expected_prior = expected;
                stats.received_prior = stats.received;
                let fraction_lost = if expected_interval > 0 && lost_interval > 0 {
                    ((lost_interval << 8) / expected_interval).min(255) as u8
                } else {
                    0
                };
                let (last_sender_report, delay) = match stats.last_sender_report {
                    // DLSR in units of 1/65536 s.
                    Some((lsr, at)) => (
                        lsr,
                        u32::try_from((now_us - at).max(0) * 65_536 / 1_000_000)
                            .unwrap_or(u32::MAX),
                    ),
                    None => (0, 0),
                };
                ReceptionReport {
                    ssrc,
                    fraction_lost,
                    total_lost: (lost as u32) & 0x00ff_ffff,
                    last_sequence_number: stats.highest as u32,
                    jitter: u32::try_from(stats.jitter_x16 >> 4).unwrap_or(u32::MAX),
                    last_sender_report,
                    delay,
                }
            })
            .collect();
        reports.sort_unstable_by_key(|r| r.ssrc);
        Some(ReceiverReport {
            ssrc: self.sender_ssrc,
            reports,
            ..Default::default()
        })
    }
}

impl StreamStats {
    /// RFC 3550 A.8: the jitter estimate, updated with one packet's transit time.
    fn on_timing(&mut self, arrival_us: i64, timestamp: u32) {
        let Some(rate) = self.clock_rate else {
            return;
        };
        // Arrival in the stream's clock units; only differences matter, so the RTP
        // timestamp's wrap is taken out by comparing it in 32 bits.
        let arrival = (i128::from(arrival_us) * i128::from(rate) / 1_000_000) as i64;
        let transit = i64::from((arrival as u32).wrapping_sub(timestamp) as i32);
        if let Some(previous) = self.transit.replace(transit) {
            let d = (transit - previous).abs();
            self.jitter_x16 += d - ((self.jitter_x16 + 8) >> 4);
        }
    }
}

/// `seq` unwrapped to the 64-bit count nearest `last`.
fn unwrap(last: i64, seq: u16) -> i64 {
    let delta = seq.wrapping_sub(last as u16) as i16;
    last + i64::from(delta)
}

/// The value of RTP header extension `id` (RFC 8285, one- or two-byte form), if the
/// packet carries it.
pub fn find_extension(packet: &[u8], id: u8) -> Option<&[u8]> {
    let first = *packet.first()?;
    if first & 0x10 == 0 {
        return None;
    }
    let start = 12 + 4 * usize::from(first & 0x0f);
    let header = packet.get(start..start + 4)?;
    let profile = u16::from_be_bytes([header[0], header[1]]);
    let len = 4 * usize::from(u16::from_be_bytes([header[2], header[3]]));
    let mut body = packet.get(start + 4..start + 4 + len)?;
    let two_byte = match profile {
        0xBEDE => false,
        profile if profile & 0xfff0 == 0x1000 => true,
        _ => return None,
    };
    while let Some(&byte) = body.first() {
        if byte == 0 {
            body = &body[1..];
            continue;
        }
        let (element_id, element_len, header_len) = if two_byte {
            (byte, usize::from(*body.get(1)?), 2)
        } else {
            if byte >> 4 == 15 {
                return None;
            }
            (byte >> 4, usize::from(byte & 0x0f) + 1, 1)
        };
        let value = body.get(header_len..header_len + element_len)?;
        if element_id == id {
            return Some(value);
        }
        body = &body[header_len + element_len..];
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtc::rtcp::packet::Packet as _;
    use rtc::shared::marshal::{Marshal, Unmarshal};

    fn rtp(seq: u16, ssrc: u32, transport: Option<(u8, u16)>, two_byte: bool) -> Vec<u8> {
        let mut header = rtc::rtp::header::Header {
            version: 2,
            sequence_number: seq,
            ssrc,
            payload_type: 96,
            ..Default::default()
        };
        if let Some((id, value)) = transport {
            header.extension = true;
            header.extension_profile = if two_byte { 0x1000 } else { 0xBEDE };
            header
                .set_extension(1, bytes::Bytes::from_static(&[0x30]))
                .expect("audio level");
            header
                .set_extension(id, bytes::Bytes::copy_from_slice(&value.to_be_bytes()))
                .expect("transport-cc");
        }
        let packet = rtc::rtp::packet::Packet {
            header,
            payload: bytes::Bytes::from_static(&[1, 2, 3]),
        };
        packet.marshal().expect("marshal").to_vec()
    }

    #[test]
    fn extensions_are_found_in_both_forms_and_garbage_finds_nothing() {
        for two_byte in [false, true] {
            let packet = rtp(7, 1, Some((3, 0xBEEF)), two_byte);
            assert_eq!(find_extension(&packet, 3), Some(&[0xBE, 0xEF][..]));
            assert_eq!(find_extension(&packet, 1), Some(&[0x30][..]));
            assert_eq!(find_extension(&packet, 5), None);
            for cut in 0..packet.len() {
                let _ = find_extension(&packet[..cut], 3);
            }
        }
        assert_eq!(find_extension(&rtp(7, 1, None, false), 3), None);
    }

    /// What rtc reads back from the feedback, as (sequence number, arrival µs) of every
    /// packet it marks received, from its reference time and deltas.
    fn read_back(feedback: &TransportLayerCc) -> Vec<(u16, i64)> {
        let bytes = feedback.marshal().expect("marshal");
        let parsed = TransportLayerCc::unmarshal(&mut &bytes[..]).expect("rtc reads it");
        assert_eq!(parsed.packet_status_count, feedback.packet_status_count);
        let mut symbols: Vec<SymbolTypeTcc> = Vec::new();
        for chunk in &parsed.packet_chunks {
            match chunk {
                PacketStatusChunk::StatusVectorChunk(c) => symbols.extend(&c.symbol_list),
                PacketStatusChunk::RunLengthChunk(c) => {
                    symbols.extend((0..c.run_length).map(|_| c.packet_status_symbol))
                }
            }
        }
        let mut at = i64::from(parsed.reference_time) * REFERENCE_TICK_US;
        let mut deltas = parsed.recv_deltas.iter();
        let mut out = Vec::new();
        for (i, symbol) in symbols
            .iter()
            .take(usize::from(parsed.packet_status_count))
            .enumerate()
        {
            if *symbol == SymbolTypeTcc::PacketNotReceived {
                continue;
            }
            at += deltas.next().expect("a delta per received packet").delta;
            out.push((parsed.base_sequence_number.wrapping_add(i as u16), at));
        }
        out
    }

    #[test]
    fn transport_cc_reports_every_arrival_to_the_tick_across_gaps_reorder_and_wrap() {
        let mut feedback = ReceiverFeedback::new(9, Some(3));
        // Across the 16-bit wrap, one lost, two swapped, one duplicated, one late by
        // more than a small delta can say.
        let arrivals: [(u16, i64); 7] = [
            (65_533, 1_000_000),
            (65_534, 1_000_300),
            (0, 1_002_000),
            (65_535, 1_001_000),
            (2, 1_090_000),
            (2, 1_095_000),
            (3, 1_090_250),
        ];
        for (seq, at) in arrivals {
            feedback.on_rtp(&rtp(seq, 5, Some((3, seq)), false), at, None);
        }
        let packets = feedback.transport_cc(5);
        assert_eq!(packets.len(), 1);
        let read = read_back(&packets[0]);
        let expected: Vec<(u16, i64)> = vec![
            (65_533, 1_000_000),
            (65_534, 1_000_250),
            (65_535, 1_001_000),
            (0, 1_002_000),
            (2, 1_090_000),
            (3, 1_090_250),
        ];
        assert_eq!(
            read, expected,
            "every arrival, in order, to the 250 µs tick"
        );
        assert_eq!(packets[0].packet_status_count, 7, "seq 1 reported lost");
        assert!(
            feedback.transport_cc(5).is_empty(),
            "nothing new, nothing sent"
        );
        feedback.on_rtp(&rtp(4, 5, Some((3, 4)), false), 1_100_000, None);
        let next = feedback.transport_cc(5);
        assert_eq!(
            next[0].fb_pkt_count,
            packets[0].fb_pkt_count.wrapping_add(1)
        );
        assert_eq!(read_back(&next[0]), vec![(4, 1_100_000)]);
    }

    #[test]
    fn transport_cc_splits_at_a_silence_no_delta_can_span() {
        let mut feedback = ReceiverFeedback::new(9, Some(3));
        feedback.on_rtp(&rtp(10, 5, Some((3, 10)), false), 0, None);
        feedback.on_rtp(&rtp(11, 5, Some((3, 11)), false), 20_000_000, None);
        let packets = feedback.transport_cc(5);
        assert_eq!(packets.len(), 2);
        assert_eq!(read_back(&packets[0]), vec![(10, 0)]);
        assert_eq!(read_back(&packets[1]), vec![(11, 20_000_000)]);
    }

    #[test]
    fn receiver_reports_count_loss_per_interval_and_in_total() {
        let mut feedback = ReceiverFeedback::new(9, None);
        assert!(feedback.receiver_report(0).is_none());
        for seq in (65_530u16..=65_535)
            .chain(0..10)
            .filter(|s| *s != 2 && *s != 3)
        {
            feedback.on_rtp(&rtp(seq, 5, None, false), 0, None);
        }
        let report = feedback.receiver_report(0).expect("a report");
        let bytes = report.marshal().expect("marshal");
        let parsed = ReceiverReport::unmarshal(&mut &bytes[..]).expect("rtc reads it");
        assert_eq!(parsed.destination_ssrc(), vec![5]);
        let block = &parsed.reports[0];
        assert_eq!(block.total_lost, 2);
        assert_eq!(block.fraction_lost, (2 * 256 / 16) as u8);
        assert_eq!(block.last_sequence_number, 65_536 + 9, "one wrap counted");
        for seq in 10..20 {
            feedback.on_rtp(&rtp(seq, 5, None, false), 0, None);
        }
        let report = feedback.receiver_report(1_000_000).expect("a report");
        let block = &report.reports[0];
        assert_eq!(block.fraction_lost, 0, "nothing lost since the last report");
        assert_eq!(block.total_lost, 2);
        // A stream silent for 5 s is no longer reported.
        feedback.on_rtp(&rtp(1, 6, None, false), 4_000_000, None);
        let report = feedback.receiver_report(5_500_000).expect("a report");
        assert_eq!(report.destination_ssrc(), vec![6]);
        assert!(feedback.receiver_report(9_000_000).is_none());
    }

    #[test]
    fn packets_lost_between_two_feedbacks_are_reported_lost() {
        let mut feedback = ReceiverFeedback::new(9, Some(3));
        for seq in [10u16, 11] {
            feedback.on_rtp(&rtp(seq, 5, Some((3, seq)), false), 1_000_000, None);
        }
        let first = feedback.transport_cc(5);
        assert_eq!(first[0].base_sequence_number, 10);
        assert_eq!(first[0].packet_status_count, 2);
        // 12 and 13 are lost; 14 arrives after the feedback.
        feedback.on_rtp(&rtp(14, 5, Some((3, 14)), false), 1_100_000, None);
        let second = feedback.transport_cc(5);
        assert_eq!(second[0].base_sequence_number, 12);
        assert_eq!(
            second[0].packet_status_count, 3,
            "12 and 13 lost, 14 received"
        );
        assert_eq!(read_back(&second[0]), vec![(14, 1_100_000)]);
        // After a gap wider than a feedback reaches back, it starts at the arrival.
        feedback.on_rtp(&rtp(5_000, 5, Some((3, 5_000)), false), 9_000_000, None);
        let third = feedback.transport_cc(5);
        assert_eq!(third[0].base_sequence_number, 5_000);
        assert_eq!(third[0].packet_status_count, 1);
    }

    #[test]
    fn a_long_run_is_split_into_feedbacks_the_shard_reads_whole() {
        let mut feedback = ReceiverFeedback::new(9, Some(3));
        let arrivals: Vec<(u16, i64)> = (0..1_000u16)
            .map(|seq| (seq, 1_000_000 + i64::from(seq) * 300))
            .collect();
        for &(seq, at) in &arrivals {
            feedback.on_rtp(&rtp(seq, 5, Some((3, seq)), false), at, None);
        }
        let packets = feedback.transport_cc(5);
        assert_eq!(packets.len(), 3);
        let mut read = Vec::new();
        for packet in &packets {
            assert!(packet.packet_status_count <= 1_024);
            assert!(packet.marshal().expect("marshal").len() <= 1_200);
            read.extend(read_back(packet));
        }
        let expected: Vec<(u16, i64)> = arrivals
            .iter()
            .map(|&(seq, at)| (seq, at / 250 * 250))
            .collect();
        assert_eq!(read, expected);
    }
}
