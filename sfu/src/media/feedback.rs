//! The RTCP a subscriber sends, read by the shard itself once it has decrypted it: only
//! the packets the shard acts on are parsed (keyframe requests, NACKs, receiver reports,
//! transport-cc feedback for the downlink's bandwidth estimate); the rest of a compound
//! packet (SDES, REMB, BYE) is stepped over by its length. Through `rtc`, every
//! subscriber's feedback went through a second SRTCP context, a full parse and the
//! interceptor chain.
//!
//! Transport-cc feedback is bounded before it is parsed: `rtc`'s parser reserves a delta
//! for every packet the header claims before it checks that the bytes are there, so a
//! forged count of 65,535 would cost a megabyte and a long loop per 20-byte packet.

use rtc::rtcp::packet::Packet;
use rtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtcp::receiver_report::ReceiverReport;
use rtc::rtcp::transport_feedbacks::transport_layer_cc::{PacketStatusChunk, TransportLayerCc};
use rtc::rtcp::transport_feedbacks::transport_layer_nack::TransportLayerNack;
use rtc::shared::marshal::Unmarshal;

/// Packets read from one compound packet at most; a longer one is read no further.
pub const MAX_PACKETS: usize = 16;

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

/// Reads the packets of the plain compound RTCP packet `compound` that the shard acts on
/// into `out`. The walk stops at the first malformed packet, keeping those before it;
/// returns false if there was one.
pub fn read(compound: &[u8], out: &mut Vec<Box<dyn Packet>>) -> bool {
    let mut rest = compound;
    let mut read = 0;
    while !rest.is_empty() && read < MAX_PACKETS {
        let Some(header) = rest.get(..4) else {
            return false;
        };
        if header[0] >> 6 != 2 {
            return false;
        }
        let len = 4 * (usize::from(u16::from_be_bytes([header[2], header[3]])) + 1);
        let Some(packet) = rest.get(..len) else {
            return false;
        };
        rest = &rest[len..];
        read += 1;
        let fmt = header[0] & 0x1f;
        let parsed: Option<Result<Box<dyn Packet>, _>> = match (header[1], fmt) {
            (RECEIVER_REPORT, _) => Some(unmarshal::<ReceiverReport>(packet)),
            (TRANSPORT_FEEDBACK, FMT_NACK) => Some(unmarshal::<TransportLayerNack>(packet)),
            (PAYLOAD_FEEDBACK, FMT_PLI) => Some(unmarshal::<PictureLossIndication>(packet)),
            (PAYLOAD_FEEDBACK, FMT_FIR) => Some(unmarshal::<FullIntraRequest>(packet)),
            (TRANSPORT_FEEDBACK, FMT_TRANSPORT_CC) => Some(transport_cc(packet)),
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

/// Reads transport-cc feedback whose packet count is within bounds, its status chunks cut
/// to that count (the parser keeps a last run-length chunk whole even where it runs past
/// the count, and the conversion to acknowledgements would follow it).
fn transport_cc(packet: &[u8]) -> Result<Box<dyn Packet>, rtc::shared::error::Error> {
    // Header (4), sender and media SSRC (8), base sequence number (2), then the count.
    let count = match packet.get(14..16) {
        Some(bytes) => u16::from_be_bytes([bytes[0], bytes[1]]),
        None => return Err(rtc::shared::error::Error::PacketTooShort),
    };
    if count > MAX_TRANSPORT_CC_STATUS {
        return Err(rtc::shared::error::Error::PacketTooShort);
    }
    let mut bytes = packet;
    let mut feedback = TransportLayerCc::unmarshal(&mut bytes)?;
    let mut left = feedback.packet_status_count;
    for chunk in &mut feedback.packet_chunks {
        match chunk {
            PacketStatusChunk::RunLengthChunk(run) => {
                run.run_length = run.run_length.min(left);
                left -= run.run_length;
            }
            PacketStatusChunk::StatusVectorChunk(vector) => {
                vector.symbol_list.truncate(usize::from(left));
                left -= vector.symbol_list.len() as u16;
            }
        }
    }
    Ok(Box::new(feedback))
}

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
    use rtc::rtcp::transport_feedbacks::transport_layer_cc::TransportLayerCc;
    use rtc::rtcp::transport_feedbacks::transport_layer_nack::NackPair;

    fn compound(packets: Vec<Box<dyn Packet>>) -> Vec<u8> {
        rtc::rtcp::packet::marshal(&packets)
            .expect("marshal")
            .to_vec()
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
        assert!(read(&bytes, &mut out));
        assert_eq!(out.len(), 4, "{out:?}");
        assert!(out[1].as_any().is::<TransportLayerCc>());
        out.remove(1);
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
        assert!(!read(&bytes, &mut out));
        assert_eq!(out.len(), 1);
        for junk in [
            &[][..],
            &[0x00, 0x01],
            &[0x81, 206, 0, 0],
            &[0x41, 206, 0, 2, 0, 0, 0, 0],
        ] {
            let mut out = Vec::new();
            let whole = read(junk, &mut out);
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
        assert!(read(&bytes, &mut out));
        let feedback = out[0]
            .as_any()
            .downcast_ref::<TransportLayerCc>()
            .expect("transport-cc");
        let acks = rtc::interceptor::convert_twcc(feedback);
        assert_eq!(acks.len(), 10);
        assert_eq!(acks[9].sequence_number, 109);
    }

    #[test]
    fn transport_cc_feedback_claiming_too_many_packets_is_refused_unread() {
        let bytes = compound(vec![Box::new(lost_run(MAX_TRANSPORT_CC_STATUS + 1, 8000))]);
        let mut out = Vec::new();
        assert!(!read(&bytes, &mut out));
        assert!(out.is_empty());
        // The bound is the shard's memory of what it sent: a report that long is not needed.
        let bytes = compound(vec![Box::new(lost_run(MAX_TRANSPORT_CC_STATUS, 8000))]);
        assert!(read(&bytes, &mut out));
        assert_eq!(out.len(), 1);
        // Too short to hold its count: refused.
        let mut out = Vec::new();
        assert!(!read(&[0x8f, 205, 0, 2, 0, 0, 0, 1, 0, 0, 0, 2], &mut out));
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
        assert!(read(&compound(packets), &mut out));
        assert_eq!(out.len(), MAX_PACKETS);
    }
}
