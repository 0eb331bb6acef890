//! The RTCP a subscriber sends, read by the shard itself once it has decrypted it: only
//! the packets the shard acts on are parsed (keyframe requests, NACKs, receiver reports,
//! transport-cc feedback for the downlink's bandwidth estimate); the rest of a compound
//! packet (SDES, REMB, BYE) is stepped over by its length. Through `rtc`, every
//! subscriber's feedback went through a second SRTCP context, a full parse and the
//! interceptor chain.
//!
//! Transport-cc feedback, a dozen packets a second from every subscriber, is read here
//! straight into acknowledgements, in a list reused from one packet to the next: `rtc`'s
//! parser and its conversion allocated half a dozen times per feedback (1.7 % of the
//! shard's CPU at 50 subscribers, in `malloc` alone). Its count is bounded before anything
//! is read, and a status chunk running past the count is cut there.

use rtc::interceptor::Acknowledgement;
use rtc::rtcp::packet::Packet;
use rtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtcp::receiver_report::ReceiverReport;
use rtc::rtcp::transport_feedbacks::cc_feedback_report::Ecn;
use rtc::rtcp::transport_feedbacks::transport_layer_nack::TransportLayerNack;
use rtc::shared::marshal::Unmarshal;
use std::time::Duration;

/// Packets read from one compound packet at most; a longer one is read no further.
pub const MAX_PACKETS: usize = 16;

const SENDER_REPORT: u8 = 200;
const RECEIVER_REPORT: u8 = 201;
const TRANSPORT_FEEDBACK: u8 = 205;
const PAYLOAD_FEEDBACK: u8 = 206;
const FMT_NACK: u8 = 1;
const FMT_PLI: u8 = 1;
const FMT_FIR: u8 = 4;
const FMT_TRANSPORT_CC: u8 = 15;
/// Packets one transport-cc feedback may report on. A browser reports every 50-100 ms,
/// a few hundred packets at most; the shard remembers
/// [`super::send_history::CAPACITY`] anyway, so larger reports are refused unread.
pub const MAX_TRANSPORT_CC_STATUS: u16 = super::send_history::CAPACITY as u16;

/// The transport-cc feedbacks of one compound packet as acknowledgements, in allocations
/// kept from one packet to the next.
#[derive(Debug, Default)]
pub struct TransportFeedback {
    acknowledgements: Vec<Acknowledgement>,
    /// Where each feedback's acknowledgements end.
    ends: Vec<usize>,
}

impl TransportFeedback {
    /// Forgets the last packet's feedbacks, keeping the allocations.
    pub fn clear(&mut self) {
        self.acknowledgements.clear();
        self.ends.clear();
    }

    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// Each feedback's acknowledgements, in the order they came.
    pub fn feedbacks(&self) -> impl Iterator<Item = &[Acknowledgement]> {
        let mut start = 0;
        self.ends.iter().map(move |&end| {
            let feedback = self.acknowledgements.get(start..end).unwrap_or_default();
            start = end;
            feedback
        })
    }
}

/// Reads the packets of the plain compound RTCP packet `compound` that the shard acts on
/// into `out`, and its transport-cc feedback into `transport` (cleared first). The walk
/// stops at the first malformed packet, keeping those before it; returns false if there
/// was one.
pub fn read(
    compound: &[u8],
    out: &mut Vec<Box<dyn Packet>>,
    transport: &mut TransportFeedback,
) -> bool {
    transport.clear();
    let mut rest = compound;
    let mut read = 0;
    while !rest.is_empty() && read < MAX_PACKETS {
        let Some((packet, after)) = split_first(rest) else {
            return false;
        };
        rest = after;
        read += 1;
        let header = packet;
        let fmt = header[0] & 0x1f;
        if (header[1], fmt) == (TRANSPORT_FEEDBACK, FMT_TRANSPORT_CC) {
            let start = transport.acknowledgements.len();
            if transport_cc(packet, &mut transport.acknowledgements).is_none() {
                transport.acknowledgements.truncate(start);
                return false;
            }
            transport.ends.push(transport.acknowledgements.len());
            continue;
        }
        let parsed: Option<Result<Box<dyn Packet>, _>> = match (header[1], fmt) {
            (RECEIVER_REPORT, _) => Some(unmarshal::<ReceiverReport>(packet)),
            (TRANSPORT_FEEDBACK, FMT_NACK) => Some(unmarshal::<TransportLayerNack>(packet)),
            (PAYLOAD_FEEDBACK, FMT_PLI) => Some(unmarshal::<PictureLossIndication>(packet)),
            (PAYLOAD_FEEDBACK, FMT_FIR) => Some(unmarshal::<FullIntraRequest>(packet)),
            _ => None,
        };
        match parsed {
            Some(Ok(packet)) => out.push(packet),
            Some(Err(_)) => return false,
            None => {}
        }
    }
    true
}

/// The first packet of compound RTCP packet `compound` and what follows it; `None` if the
/// first is malformed (not version 2, or longer than what is left).
fn split_first(compound: &[u8]) -> Option<(&[u8], &[u8])> {
    let header = compound.get(..4)?;
    if header[0] >> 6 != 2 {
        return None;
    }
    let len = 4 * (usize::from(u16::from_be_bytes([header[2], header[3]])) + 1);
    compound.get(..len).map(|packet| (packet, &compound[len..]))
}

/// Calls `each` with the sender SSRC and NTP time of every sender report (RFC 3550
/// §6.4.1) in plain compound RTCP packet `compound`, as far as it is well formed: all a
/// publisher's RTCP the shard needs, to echo in its receiver reports.
pub fn sender_reports(compound: &[u8], mut each: impl FnMut(u32, u64)) {
    let mut rest = compound;
    for _ in 0..MAX_PACKETS {
        let Some((packet, after)) = split_first(rest) else {
            return;
        };
        rest = after;
        if packet[1] == SENDER_REPORT
            && let Some(fields) = packet.get(4..16)
        {
            let ssrc = u32::from_be_bytes([fields[0], fields[1], fields[2], fields[3]]);
            let mut ntp = [0u8; 8];
            ntp.copy_from_slice(&fields[4..12]);
            each(ssrc, u64::from_be_bytes(ntp));
        }
    }
}

/// Reads one transport-cc feedback packet (draft-holmer-rmcat-transport-wide-cc-
/// extensions-01, section 3.1) onto `out`, one acknowledgement per packet it counts, with
/// arrival times as `rtc`'s conversion gives them: the 24-bit reference time in 64 ms
/// ticks plus the receive deltas so far. `None` when it is malformed or counts more than
/// [`MAX_TRANSPORT_CC_STATUS`] packets.
fn transport_cc(packet: &[u8], out: &mut Vec<Acknowledgement>) -> Option<()> {
    const CHUNKS: usize = 20;
    let count = u16::from_be_bytes([*packet.get(14)?, *packet.get(15)?]);
    if count > MAX_TRANSPORT_CC_STATUS || packet.len() < CHUNKS {
        return None;
    }
    let base = u16::from_be_bytes([packet[12], packet[13]]);
    let reference = u32::from_be_bytes([0, packet[16], packet[17], packet[18]]);
    // Padding (the P bit) counts itself in the packet's last byte.
    let end = if packet[0] & 0x20 != 0 {
        let padding = usize::from(*packet.last()?);
        packet
            .len()
            .checked_sub(padding)
            .filter(|&end| end >= CHUNKS)?
    } else {
        packet.len()
    };
    let body = &packet[..end];
    // The chunks first, to find where the deltas start.
    let mut covered = 0usize;
    let mut deltas = CHUNKS;
    while covered < usize::from(count) {
        let chunk = u16::from_be_bytes([*body.get(deltas)?, *body.get(deltas + 1)?]);
        deltas += 2;
        covered += match chunk >> 14 {
            0 | 1 => usize::from(chunk & 0x1fff),
            2 => 14,
            _ => 7,
        };
    }
    let mut arrival = Duration::from_millis(64) * reference;
    let mut sequence = base;
    let mut left = count;
    let mut at = CHUNKS;
    let mut delta_at = deltas;
    while left > 0 {
        let chunk = u16::from_be_bytes([*body.get(at)?, *body.get(at + 1)?]);
        at += 2;
        let (symbols, run) = match chunk >> 14 {
            0 | 1 => (chunk & 0x1fff, Some((chunk >> 13) & 0b11)),
            2 => (14, None),
            _ => (7, None),
        };
        for index in 0..symbols.min(left) {
            let symbol = match (run, chunk >> 14) {
                (Some(symbol), _) => symbol,
                (None, 2) => (chunk >> (13 - index)) & 1,
                (None, _) => (chunk >> (12 - 2 * index)) & 0b11,
            };
            let acknowledgement = match symbol {
                0 => Acknowledgement::lost(sequence),
                1 => {
                    let ticks = u32::from(*body.get(delta_at)?);
                    delta_at += 1;
                    arrival += DELTA_TICK * ticks;
                    Acknowledgement::received(sequence, Some(arrival), Ecn::NotEct)
                }
                2 => {
                    let ticks =
                        i16::from_be_bytes([*body.get(delta_at)?, *body.get(delta_at + 1)?]);
                    delta_at += 2;
                    let magnitude = DELTA_TICK * u32::from(ticks.unsigned_abs());
                    arrival = if ticks < 0 {
                        arrival.saturating_sub(magnitude)
                    } else {
                        arrival + magnitude
                    };
                    Acknowledgement::received(sequence, Some(arrival), Ecn::NotEct)
                }
                _ => Acknowledgement::received(sequence, None, Ecn::NotEct),
            };
            out.push(acknowledgement);
            sequence = sequence.wrapping_add(1);
        }
        left -= symbols.min(left);
    }
    Some(())
}

/// A receive delta's unit.
const DELTA_TICK: Duration = Duration::from_micros(250);

fn unmarshal<P: Packet + Unmarshal + 'static>(
    mut bytes: &[u8],
) -> Result<Box<dyn Packet>, rtc::shared::error::Error> {
    Ok(Box::new(P::unmarshal(&mut bytes)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtc::rtcp::reception_report::ReceptionReport;
    use rtc::rtcp::source_description::SourceDescription;
    use rtc::rtcp::transport_feedbacks::transport_layer_cc::{PacketStatusChunk, TransportLayerCc};
    use rtc::rtcp::transport_feedbacks::transport_layer_nack::NackPair;

    fn compound(packets: Vec<Box<dyn Packet>>) -> Vec<u8> {
        rtc::rtcp::packet::marshal(&packets)
            .expect("marshal")
            .to_vec()
    }

    #[test]
    fn finds_every_sender_report_and_stops_at_garbage() {
        let report = |ssrc: u32, ntp_time: u64| -> Box<dyn Packet> {
            Box::new(rtc::rtcp::sender_report::SenderReport {
                ssrc,
                ntp_time,
                ..Default::default()
            })
        };
        let mut bytes = compound(vec![
            report(7, 0x0102_0304_0506_0708),
            Box::new(SourceDescription::default()),
            report(9, 42),
        ]);
        let mut found = Vec::new();
        sender_reports(&bytes, |ssrc, ntp| found.push((ssrc, ntp)));
        assert_eq!(found, vec![(7, 0x0102_0304_0506_0708), (9, 42)]);
        // Cut anywhere, it reads the reports before the cut and nothing past it.
        let whole = bytes.clone();
        for cut in 0..whole.len() {
            let mut some = Vec::new();
            sender_reports(&whole[..cut], |ssrc, ntp| some.push((ssrc, ntp)));
            assert!(found.starts_with(&some));
        }
        bytes[0] = 0;
        found.clear();
        sender_reports(&bytes, |ssrc, ntp| found.push((ssrc, ntp)));
        assert!(found.is_empty(), "not version 2");
    }

    #[test]
    fn reads_what_the_shard_acts_on_and_steps_over_the_rest() {
        let bytes = compound(vec![
            Box::new(ReceiverReport {
                ssrc: 1,
                reports: vec![ReceptionReport {
                    ssrc: 42,
                    fraction_lost: 12,
                    ..Default::default()
                }],
                ..Default::default()
            }),
            Box::new(SourceDescription::default()),
            Box::new(TransportLayerCc::default()),
            Box::new(TransportLayerNack {
                sender_ssrc: 1,
                media_ssrc: 42,
                nacks: vec![NackPair {
                    packet_id: 100,
                    lost_packets: 0b101,
                }],
            }),
            Box::new(PictureLossIndication {
                sender_ssrc: 1,
                media_ssrc: 43,
            }),
        ]);
        let mut out = Vec::new();
        let mut transport = TransportFeedback::default();
        assert!(read(&bytes, &mut out, &mut transport));
        assert_eq!(out.len(), 3, "{out:?}");
        assert_eq!(transport.feedbacks().count(), 1);
        let report = out[0]
            .as_any()
            .downcast_ref::<ReceiverReport>()
            .expect("report");
        assert_eq!(report.reports[0].fraction_lost, 12);
        let nack = out[1]
            .as_any()
            .downcast_ref::<TransportLayerNack>()
            .expect("nack");
        assert_eq!(nack.nacks[0].packet_list(), vec![100, 101, 103]);
        let pli = out[2]
            .as_any()
            .downcast_ref::<PictureLossIndication>()
            .expect("pli");
        assert_eq!(pli.media_ssrc, 43);
    }

    #[test]
    fn a_malformed_packet_ends_the_walk_and_keeps_what_came_before() {
        let mut bytes = compound(vec![Box::new(PictureLossIndication {
            sender_ssrc: 1,
            media_ssrc: 7,
        })]);
        // A second header claiming more words than follow.
        bytes.extend_from_slice(&[0x81, 205, 0, 40, 0, 0, 0, 1]);
        let mut out = Vec::new();
        assert!(!read(&bytes, &mut out, &mut TransportFeedback::default()));
        assert_eq!(out.len(), 1);
        for junk in [
            &[][..],
            &[0x00, 0x01],
            &[0x81, 206, 0, 0],
            &[0x41, 206, 0, 2, 0, 0, 0, 0],
        ] {
            let mut out = Vec::new();
            let whole = read(junk, &mut out, &mut TransportFeedback::default());
            assert!(out.is_empty(), "{junk:?}");
            assert_eq!(whole, junk.is_empty(), "{junk:?}");
        }
    }

    fn lost_run(count: u16, run_length: u16) -> TransportLayerCc {
        use rtc::rtcp::transport_feedbacks::transport_layer_cc::{
            RunLengthChunk, StatusChunkTypeTcc, SymbolTypeTcc,
        };
        TransportLayerCc {
            sender_ssrc: 1,
            media_ssrc: 2,
            base_sequence_number: 100,
            packet_status_count: count,
            packet_chunks: vec![PacketStatusChunk::RunLengthChunk(RunLengthChunk {
                type_tcc: StatusChunkTypeTcc::RunLengthChunk,
                packet_status_symbol: SymbolTypeTcc::PacketNotReceived,
                run_length,
            })],
            ..Default::default()
        }
    }

    #[test]
    fn transport_cc_feedback_reports_on_no_more_packets_than_it_counts() {
        // A last run that runs past the count: the acknowledgements stop at the count.
        let bytes = compound(vec![Box::new(lost_run(10, 8000))]);
        let mut out = Vec::new();
        let mut transport = TransportFeedback::default();
        assert!(read(&bytes, &mut out, &mut transport));
        let acks: Vec<_> = transport.feedbacks().collect();
        let acks = acks[0];
        assert_eq!(acks.len(), 10);
        assert_eq!(acks[9].sequence_number, 109);
    }

    #[test]
    fn transport_cc_feedback_claiming_too_many_packets_is_refused_unread() {
        let bytes = compound(vec![Box::new(lost_run(MAX_TRANSPORT_CC_STATUS + 1, 8000))]);
        let mut out = Vec::new();
        let mut transport = TransportFeedback::default();
        assert!(!read(&bytes, &mut out, &mut transport));
        assert!(out.is_empty() && transport.is_empty());
        // The bound is the shard's memory of what it sent: a report that long is not needed.
        let bytes = compound(vec![Box::new(lost_run(MAX_TRANSPORT_CC_STATUS, 8000))]);
        assert!(read(&bytes, &mut out, &mut transport));
        assert_eq!(transport.feedbacks().count(), 1);
        assert_eq!(
            transport.feedbacks().next().map(<[_]>::len),
            Some(usize::from(MAX_TRANSPORT_CC_STATUS))
        );
        // Too short to hold its count: refused.
        assert!(!read(
            &[0x8f, 205, 0, 2, 0, 0, 0, 1, 0, 0, 0, 2],
            &mut out,
            &mut transport
        ));
        assert!(transport.is_empty());
    }

    /// A feedback with every kind of chunk and delta, as a browser writes them.
    fn mixed_feedback() -> TransportLayerCc {
        use rtc::rtcp::transport_feedbacks::transport_layer_cc::{
            RecvDelta, RunLengthChunk, StatusChunkTypeTcc, StatusVectorChunk, SymbolSizeTypeTcc,
            SymbolTypeTcc as S,
        };
        let vector = |symbol_size, symbol_list| {
            PacketStatusChunk::StatusVectorChunk(StatusVectorChunk {
                type_tcc: StatusChunkTypeTcc::StatusVectorChunk,
                symbol_size,
                symbol_list,
            })
        };
        let one_bit = vec![
            S::PacketReceivedSmallDelta,
            S::PacketNotReceived,
            S::PacketReceivedSmallDelta,
            S::PacketReceivedSmallDelta,
            S::PacketNotReceived,
            S::PacketNotReceived,
            S::PacketReceivedSmallDelta,
            S::PacketNotReceived,
            S::PacketNotReceived,
            S::PacketNotReceived,
            S::PacketNotReceived,
            S::PacketNotReceived,
            S::PacketNotReceived,
            S::PacketReceivedSmallDelta,
        ];
        let two_bit = vec![
            S::PacketReceivedLargeDelta,
            S::PacketNotReceived,
            S::PacketReceivedSmallDelta,
            S::PacketReceivedLargeDelta,
            S::PacketNotReceived,
            S::PacketNotReceived,
            S::PacketReceivedSmallDelta,
        ];
        let chunks = vec![
            PacketStatusChunk::RunLengthChunk(RunLengthChunk {
                type_tcc: StatusChunkTypeTcc::RunLengthChunk,
                packet_status_symbol: S::PacketReceivedSmallDelta,
                run_length: 3,
            }),
            vector(SymbolSizeTypeTcc::OneBit, one_bit.clone()),
            vector(SymbolSizeTypeTcc::TwoBit, two_bit.clone()),
        ];
        // Deltas in microseconds, multiples of 250; large ones may be negative.
        let mut deltas = Vec::new();
        let mut small = [250i64, 0, 63_750, 1_000, 500, 750, 2_000, 250, 1_250, 500].into_iter();
        let mut large = [-5_000i64, 100_000].into_iter();
        for symbol in std::iter::repeat_n(S::PacketReceivedSmallDelta, 3)
            .chain(one_bit)
            .chain(two_bit)
        {
            let delta = match symbol {
                S::PacketReceivedSmallDelta => small.next().expect("small"),
                S::PacketReceivedLargeDelta => large.next().expect("large"),
                _ => continue,
            };
            deltas.push(RecvDelta {
                type_tcc_packet: symbol,
                delta,
            });
        }
        TransportLayerCc {
            sender_ssrc: 1,
            media_ssrc: 2,
            base_sequence_number: 65_530,
            packet_status_count: 3 + 14 + 7,
            reference_time: 1_234_567,
            fb_pkt_count: 9,
            packet_chunks: chunks,
            recv_deltas: deltas,
        }
    }

    #[test]
    fn transport_cc_feedback_reads_as_rtc_reads_it() {
        let feedback = mixed_feedback();
        let bytes = compound(vec![Box::new(feedback.clone()), Box::new(feedback)]);
        let mut transport = TransportFeedback::default();
        assert!(read(&bytes, &mut Vec::new(), &mut transport));
        let mut one = &bytes[..bytes.len() / 2];
        let expected = rtc::interceptor::convert_twcc(
            &TransportLayerCc::unmarshal(&mut one).expect("rtc reads it"),
        );
        assert_eq!(expected.len(), 24);
        let read: Vec<&[Acknowledgement]> = transport.feedbacks().collect();
        assert_eq!(read.len(), 2);
        for acknowledgements in read {
            assert_eq!(acknowledgements, &expected[..]);
        }
        // The sequence numbers wrap, and a negative delta moves the arrival back.
        assert_eq!(expected[6].sequence_number, 0);
        assert!(expected[17].arrival < expected[16].arrival.or(expected[15].arrival));
    }

    #[test]
    fn transport_cc_feedback_cut_short_or_garbled_is_refused_without_harm() {
        let bytes = compound(vec![Box::new(mixed_feedback())]);
        let mut transport = TransportFeedback::default();
        for cut in 0..bytes.len() {
            // Keep the header's length honest, so that the feedback itself is short.
            let mut short = bytes[..cut].to_vec();
            if cut >= 4 {
                let words = (cut / 4).saturating_sub(1) as u16;
                short[2..4].copy_from_slice(&words.to_be_bytes());
                short.truncate(4 * (usize::from(words) + 1));
            }
            read(&short, &mut Vec::new(), &mut transport);
            for acknowledgements in transport.feedbacks() {
                assert!(acknowledgements.len() <= 24);
            }
        }
        // Every byte flipped in turn: read or refused, never more than the count.
        for at in 0..bytes.len() {
            for bit in 0..8 {
                let mut garbled = bytes.clone();
                garbled[at] ^= 1 << bit;
                read(&garbled, &mut Vec::new(), &mut transport);
                for acknowledgements in transport.feedbacks() {
                    assert!(acknowledgements.len() <= usize::from(MAX_TRANSPORT_CC_STATUS));
                }
            }
        }
    }

    #[test]
    fn a_compound_packet_is_read_only_so_far() {
        let packets: Vec<Box<dyn Packet>> = (0..MAX_PACKETS as u32 + 5)
            .map(|ssrc| {
                Box::new(PictureLossIndication {
                    sender_ssrc: 1,
                    media_ssrc: ssrc,
                }) as Box<dyn Packet>
            })
            .collect();
        let mut out = Vec::new();
        assert!(read(
            &compound(packets),
            &mut out,
            &mut TransportFeedback::default()
        ));
        assert_eq!(out.len(), MAX_PACKETS);
    }
}
