//! What the shard sends a publisher about the RTP it receives: NACKs for the video packets
//! that went missing, transport-wide congestion feedback for the publisher's bandwidth
//! estimate, and receiver reports (loss, jitter, and the echo of its sender reports that
//! gives it the round trip).
//!
//! rtc's NACK generator, TWCC receiver and receiver-report interceptors did this while
//! every publisher packet went through the connection. The shard now decrypts the packets
//! of the streams it knows itself and forwards them without `rtc` (shard/transport.rs), so
//! the feedback is made here, from every packet: those read past `rtc` and those `rtc`
//! still delivers (a stream's first packets, retransmissions it unwraps from RTX).
//!
//! Time is an input: tests run it on a virtual clock. Each timer is kept as an instant, so
//! the earliest is known without a walk over the missing packets.

use super::loss::{Arrival, LossConfig, LossTracker};
use super::receiver_feedback::{RECEIVER_REPORT_INTERVAL, ReceiverFeedback, TRANSPORT_CC_INTERVAL};
use rtc::rtcp::packet::Packet;
use rtc::rtcp::transport_feedbacks::transport_layer_nack::{
    TransportLayerNack, nack_pairs_from_sequence_numbers,
};
use std::time::{Duration, Instant};

/// The SSRC the shard's feedback to a publisher is sent as (its keyframe requests use it
/// too): the shard sends the publisher no media of its own.
pub const FEEDBACK_SSRC: u32 = 1;

/// Streams of one publisher whose losses are tracked; more are not asked for.
const MAX_NACK_STREAMS: usize = 16;
/// Bytes of plain RTCP one compound packet carries at most: with SRTCP's tag and index,
/// and IPv6 and UDP headers, inside a 1,280-byte path MTU.
const MAX_COMPOUND_BYTES: usize = 1_100;
/// NACK pairs in one NACK packet at most (17 lost packets each, at best).
const MAX_NACK_PAIRS: usize = 200;

/// A compound RTCP packet being filled, sent on when the next packet would not fit.
#[derive(Default)]
struct Compound {
    packets: Vec<Box<dyn Packet>>,
    bytes: usize,
}

impl Compound {
    fn push(&mut self, packet: Box<dyn Packet>, bytes: usize, out: &mut Vec<Vec<Box<dyn Packet>>>) {
        if !self.packets.is_empty() && self.bytes + bytes > MAX_COMPOUND_BYTES {
            self.finish(out);
        }
        self.packets.push(packet);
        self.bytes += bytes;
    }

    fn finish(&mut self, out: &mut Vec<Vec<Box<dyn Packet>>>) {
        if !self.packets.is_empty() {
            out.push(std::mem::take(&mut self.packets));
        }
        self.bytes = 0;
    }
}

/// How the shard asks a publisher again. A publisher's uplink may be a continent away, so
/// a request is repeated about as often as rtc's NACK generator repeated it (every
/// 100 ms) rather than at a shard-to-shard pace; a browser ignores a request for a packet
/// it resent less than a round trip ago. Its retransmission history keeps about a second.
pub const PUBLISHER_LOSS: LossConfig = LossConfig {
    retry: Duration::from_millis(100),
    max_asks: 10,
    max_age: Duration::from_secs(1),
    max_missing: 512,
    // Wi-Fi and mobile uplinks reorder by a few milliseconds: a packet that is only late
    // should not cost the publisher a retransmission.
    hold: Duration::from_millis(10),
};

/// The feedback state of one publisher connection.
#[derive(Debug)]
pub struct UplinkFeedback {
    /// The origin of the arrival times handed to [`ReceiverFeedback`].
    epoch: Instant,
    receiver: ReceiverFeedback,
    /// Missing packets of each video stream, by SSRC.
    losses: crate::FastMap<u32, LossTracker>,
    /// The SSRC named in transport-cc feedback: the last packet's.
    media_ssrc: u32,
    next_transport_cc: Instant,
    next_report: Instant,
    /// When a NACK may next be due; `None` while nothing is missing.
    next_nack: Option<Instant>,
    /// Reused list of the sequence numbers one stream asks for.
    lost: Vec<u16>,
}

impl UplinkFeedback {
    /// Feedback for a connection up at `now`, reading transport-wide sequence numbers
    /// from extension `transport_cc_id` when the publisher negotiated one.
    pub fn new(transport_cc_id: Option<u8>, now: Instant) -> Self {
        Self {
            epoch: now,
            receiver: ReceiverFeedback::new(FEEDBACK_SSRC, transport_cc_id),
            losses: crate::FastMap::default(),
            media_ssrc: 0,
            next_transport_cc: now + TRANSPORT_CC_INTERVAL,
            next_report: now + RECEIVER_REPORT_INTERVAL,
            next_nack: None,
            lost: Vec::new(),
        }
    }

    /// The transport-wide sequence number's extension id, learnt again when a track opens
    /// (a renegotiation may add it).
    pub fn set_transport_cc_id(&mut self, id: u8) {
        self.receiver.set_transport_cc_id(id);
    }

    /// Every decrypted RTP packet the publisher sent, whichever way it is then read: for
    /// transport-cc feedback, and in the receiver reports when it belongs to a stream the
    /// shard forwards (whose clock runs at `clock_rate` Hz). Retransmission streams and
    /// streams not yet known are not reported on, as rtc's interceptor did not: an rtc
    /// peer reads a report by its first block's SSRC, and drops one that names none of
    /// its tracks.
    pub fn on_datagram(&mut self, plain: &[u8], now: Instant, clock_rate: Option<u32>) {
        let arrival = self.micros(now);
        match clock_rate {
            Some(rate) => {
                if let Some(ssrc) = plain.get(8..12) {
                    self.media_ssrc = u32::from_be_bytes([ssrc[0], ssrc[1], ssrc[2], ssrc[3]]);
                }
                self.receiver.on_rtp(plain, arrival, Some(rate));
            }
            None => self.receiver.on_transport(plain, arrival),
        }
    }

    /// Packet `seq` of video stream `ssrc` reached the shard: a first arrival, a repair
    /// of a gap, or [`Arrival::Old`] when it had arrived before (a retransmission of a
    /// packet that was only late), which is not to be forwarded again.
    pub fn on_video(&mut self, ssrc: u32, seq: u16, now: Instant) -> Arrival {
        if !self.losses.contains_key(&ssrc) && self.losses.len() >= MAX_NACK_STREAMS {
            return Arrival::New;
        }
        let loss = self
            .losses
            .entry(ssrc)
            .or_insert_with(|| LossTracker::new(PUBLISHER_LOSS));
        let missing = loss.missing();
        let arrival = loss.on_packet(seq, now);
        if loss.missing() > missing {
            // A new gap is asked for once its hold has passed.
            let due = now + PUBLISHER_LOSS.hold;
            self.next_nack = Some(self.next_nack.map_or(due, |at| at.min(due)));
        }
        arrival
    }

    /// A stream the shard no longer receives: its losses are forgotten.
    pub fn forget(&mut self, ssrc: u32) {
        self.losses.remove(&ssrc);
    }

    /// A sender report from stream `ssrc` with NTP time `ntp`, arrived at `now`.
    pub fn on_sender_report(&mut self, ssrc: u32, ntp: u64, now: Instant) {
        self.receiver.on_sender_report(ssrc, ntp, self.micros(now));
    }

    /// When [`Self::due`] next has something to send: transport-cc only while arrivals
    /// wait for it, so an idle publisher does not wake the shard ten times a second.
    pub fn next_due(&self) -> Instant {
        let mut next = self.next_report;
        if self.receiver.has_arrivals() {
            next = next.min(self.next_transport_cc);
        }
        self.next_nack.map_or(next, |nack| nack.min(next))
    }

    /// Appends what is due at `now` to `out`, one compound packet per entry: the receiver
    /// report (first, as RFC 3550 §6.1 puts it) and NACKs together, in as many packets as
    /// keep each inside an MTU, and each transport-cc feedback alone (one may fill an MTU).
    /// Returns how many packets the NACKs ask for.
    pub fn due(&mut self, now: Instant, out: &mut Vec<Vec<Box<dyn Packet>>>) -> usize {
        let mut asked = 0;
        let mut compound = Compound::default();
        if now >= self.next_report {
            self.next_report = now + RECEIVER_REPORT_INTERVAL;
            if let Some(report) = self.receiver.receiver_report(self.micros(now)) {
                let len = 8 + 24 * report.reports.len();
                compound.push(Box::new(report), len, out);
            }
        }
        if self.next_nack.is_some_and(|at| at <= now) {
            let mut next: Option<Instant> = None;
            for (&ssrc, loss) in &mut self.losses {
                self.lost.clear();
                loss.due(now, &mut self.lost);
                asked += self.lost.len();
                let pairs = nack_pairs_from_sequence_numbers(&self.lost);
                for pairs in pairs.chunks(MAX_NACK_PAIRS) {
                    let nack = TransportLayerNack {
                        sender_ssrc: FEEDBACK_SSRC,
                        media_ssrc: ssrc,
                        nacks: pairs.to_vec(),
                    };
                    compound.push(Box::new(nack), 12 + 4 * pairs.len(), out);
                }
                if let Some(at) = loss.next_due() {
                    next = Some(next.map_or(at, |n| n.min(at)));
                }
            }
            self.next_nack = next;
        }
        compound.finish(out);
        if now >= self.next_transport_cc {
            self.next_transport_cc = now + TRANSPORT_CC_INTERVAL;
            for feedback in self.receiver.transport_cc(self.media_ssrc) {
                out.push(vec![Box::new(feedback)]);
            }
        }
        asked
    }

    fn micros(&self, now: Instant) -> i64 {
        i64::try_from(now.saturating_duration_since(self.epoch).as_micros()).unwrap_or(i64::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtc::rtcp::receiver_report::ReceiverReport;
    use rtc::rtcp::transport_feedbacks::transport_layer_cc::TransportLayerCc;
    use rtc::shared::marshal::Marshal;

    const VIDEO: u32 = 0xA;
    const AUDIO: u32 = 0xB;

    fn rtp(ssrc: u32, seq: u16, timestamp: u32, transport_seq: u16) -> Vec<u8> {
        let mut header = rtc::rtp::header::Header {
            version: 2,
            sequence_number: seq,
            timestamp,
            ssrc,
            payload_type: 96,
            ..Default::default()
        };
        header.extension = true;
        header.extension_profile = 0xBEDE;
        header
            .set_extension(
                3,
                bytes::Bytes::copy_from_slice(&transport_seq.to_be_bytes()),
            )
            .expect("transport-cc");
        let packet = rtc::rtp::packet::Packet {
            header,
            payload: bytes::Bytes::from_static(&[0; 100]),
        };
        packet.marshal().expect("marshal").to_vec()
    }

    fn nacked(compound: &[Box<dyn Packet>]) -> Vec<(u32, Vec<u16>)> {
        compound
            .iter()
            .filter_map(|p| p.as_any().downcast_ref::<TransportLayerNack>())
            .map(|n| {
                let seqs = n.nacks.iter().flat_map(|pair| pair.packet_list()).collect();
                (n.media_ssrc, seqs)
            })
            .collect()
    }

    #[test]
    fn a_gap_is_asked_for_at_once_then_every_100_ms_until_repaired() {
        let start = Instant::now();
        let mut uplink = UplinkFeedback::new(Some(3), start);
        let mut out = Vec::new();
        for seq in [10u16, 11, 14] {
            assert_eq!(uplink.on_video(VIDEO, seq, start), Arrival::New);
        }
        let asked = start + PUBLISHER_LOSS.hold;
        assert_eq!(uplink.next_due(), asked, "the gap is due once held");
        assert_eq!(uplink.due(asked, &mut out), 2, "two packets asked for");
        assert_eq!(nacked(&out[0]), vec![(VIDEO, vec![12, 13])]);
        let retry = uplink.next_due();
        assert_eq!(retry, asked + Duration::from_millis(100));
        // 12 is repaired (an RTX packet rtc unwrapped); 13 is asked for again.
        assert_eq!(
            uplink.on_video(VIDEO, 12, start + Duration::from_millis(40)),
            Arrival::Repair
        );
        assert_eq!(
            uplink.on_video(VIDEO, 12, start + Duration::from_millis(41)),
            Arrival::Old,
            "a second copy is not forwarded"
        );
        out.clear();
        assert_eq!(uplink.due(retry, &mut out), 1);
        assert_eq!(nacked(&out[0]), vec![(VIDEO, vec![13])]);
        assert_eq!(uplink.on_video(VIDEO, 13, retry), Arrival::Repair);
        out.clear();
        uplink.due(retry + Duration::from_millis(100), &mut out);
        assert!(out.iter().all(|c| nacked(c).is_empty()), "nothing missing");
        assert!(uplink.next_due() > retry + Duration::from_millis(100));
    }

    #[test]
    fn a_lost_packet_is_given_up_after_a_second() {
        let start = Instant::now();
        let mut uplink = UplinkFeedback::new(None, start);
        uplink.on_video(VIDEO, 1, start);
        uplink.on_video(VIDEO, 3, start);
        let mut asks = 0;
        let mut now = start;
        let mut out = Vec::new();
        while now < start + Duration::from_secs(3) {
            out.clear();
            uplink.due(now, &mut out);
            asks += out.iter().map(|c| nacked(c).len()).sum::<usize>();
            now = uplink.next_due().max(now + Duration::from_millis(1));
        }
        assert_eq!(asks, 10, "PUBLISHER_LOSS.max_asks requests, then no more");
    }

    #[test]
    fn transport_cc_is_sent_every_100_ms_while_packets_arrive_and_not_when_idle() {
        let start = Instant::now();
        let mut uplink = UplinkFeedback::new(Some(3), start);
        assert_eq!(
            uplink.next_due(),
            start + RECEIVER_REPORT_INTERVAL,
            "idle: only the report timer"
        );
        for i in 0..5u16 {
            let at = start + Duration::from_millis(u64::from(i) * 10);
            uplink.on_datagram(&rtp(VIDEO, 100 + i, 0, 500 + i), at, Some(90_000));
        }
        assert_eq!(uplink.next_due(), start + TRANSPORT_CC_INTERVAL);
        let mut out = Vec::new();
        uplink.due(start + TRANSPORT_CC_INTERVAL, &mut out);
        assert_eq!(out.len(), 1);
        let feedback = out[0][0]
            .as_any()
            .downcast_ref::<TransportLayerCc>()
            .expect("transport-cc");
        assert_eq!(
            (feedback.base_sequence_number, feedback.packet_status_count),
            (500, 5)
        );
        assert_eq!(feedback.media_ssrc, VIDEO);
        assert_eq!(feedback.sender_ssrc, FEEDBACK_SSRC);
        assert_eq!(
            uplink.next_due(),
            start + RECEIVER_REPORT_INTERVAL,
            "nothing waits: no transport-cc timer"
        );
    }

    #[test]
    fn receiver_reports_carry_jitter_and_echo_the_sender_report() {
        let start = Instant::now();
        let mut uplink = UplinkFeedback::new(None, start);
        // 20 ms of audio per packet at 48 kHz; every other packet 4 ms late.
        for i in 0..50u32 {
            let late = if i % 2 == 1 { 4 } else { 0 };
            let at = start + Duration::from_millis(u64::from(i * 20 + late));
            uplink.on_datagram(&rtp(AUDIO, i as u16, i * 960, i as u16), at, Some(48_000));
        }
        let sr_at = start + Duration::from_millis(500);
        let ntp = 0x1234_5678_9ABC_DEF0u64;
        uplink.on_sender_report(AUDIO, ntp, sr_at);
        let mut out = Vec::new();
        let now = start + RECEIVER_REPORT_INTERVAL;
        uplink.due(now, &mut out);
        let report = out[0]
            .iter()
            .find_map(|p| p.as_any().downcast_ref::<ReceiverReport>())
            .expect("a receiver report");
        let block = &report.reports[0];
        assert_eq!(block.ssrc, AUDIO);
        // Each transit changes by 4 ms = 192 ticks: the estimate approaches 192.
        assert!(
            (150..=192).contains(&block.jitter),
            "jitter {} ticks",
            block.jitter
        );
        assert_eq!(block.last_sender_report, 0x5678_9ABC);
        assert_eq!(block.delay, 65_536 / 2, "half a second since the report");
        assert_eq!(block.fraction_lost, 0);
        assert!(report.marshal().is_ok());
    }

    #[test]
    fn scattered_losses_on_many_streams_go_in_packets_that_fit_an_mtu() {
        let start = Instant::now();
        let mut uplink = UplinkFeedback::new(None, start);
        // Every other packet of 600 lost, on each of 16 streams: 300 pairs a stream.
        for ssrc in 0..MAX_NACK_STREAMS as u32 {
            for seq in (0..600u16).step_by(2) {
                uplink.on_video(ssrc, seq, start);
            }
        }
        let mut out = Vec::new();
        let now = start + RECEIVER_REPORT_INTERVAL.max(PUBLISHER_LOSS.hold);
        uplink.due(start + PUBLISHER_LOSS.hold, &mut out);
        let mut asked = 0;
        for compound in &out {
            let bytes = rtc::rtcp::packet::marshal(compound).expect("marshal");
            assert!(bytes.len() <= MAX_COMPOUND_BYTES, "{} bytes", bytes.len());
            asked += nacked(compound).iter().map(|(_, s)| s.len()).sum::<usize>();
        }
        assert_eq!(asked, 16 * 299, "every loss asked for");
        let _ = now;
    }

    #[test]
    fn streams_beyond_the_bound_are_not_tracked() {
        let start = Instant::now();
        let mut uplink = UplinkFeedback::new(None, start);
        for ssrc in 0..(MAX_NACK_STREAMS as u32 + 10) {
            uplink.on_video(ssrc, 1, start);
            uplink.on_video(ssrc, 5, start);
        }
        assert_eq!(uplink.losses.len(), MAX_NACK_STREAMS);
        uplink.forget(0);
        assert_eq!(uplink.losses.len(), MAX_NACK_STREAMS - 1);
    }
}
