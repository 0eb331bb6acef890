//! The forwarding hot path and the feedback path back to publishers.
//!
//! One publisher packet: find its track and layer by SSRC (one hash lookup), read the
//! audio level for speaker detection, strip the publisher's header extensions (their ids
//! mean nothing on a subscriber's connection), keep the packet in the layer's
//! retransmission buffer (a second reference to the same payload), then let each
//! subscriber's downtrack decide. A forwarded copy differs only in its header; the
//! payload `Bytes` is shared until the subscriber's connection encrypts it.
//!
//! Subscriber feedback: PLI/FIR become a throttled PLI to the publisher of the layer the
//! subscriber receives; NACKs are answered from the retransmission buffer after mapping
//! the subscriber's sequence numbers back to the source; receiver reports record loss.

use super::guarded::MovedIn;
use super::{LAYER_IDLE, PeerKey, ShardCore, TrackKey};
use crate::media::codec::{CodecFamily, audio_level, is_keyframe, red_primary};
use bytes::Bytes;
use rtc::rtcp;
use rtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtcp::receiver_report::ReceiverReport;
use rtc::rtcp::transport_feedbacks::transport_layer_nack::TransportLayerNack;
use rtc::rtp;
use rtc::shared::marshal::MarshalSize;
use std::time::Instant;

/// A playout-delay extension value: 12-bit minimum and maximum, in 10 ms units, both 0.
const PLAYOUT_DELAY_ZERO: [u8; 3] = [0, 0, 0];
/// At most this many sequence numbers of one NACK packet are served.
const MAX_NACKED_PER_PACKET: usize = 64;
/// Simulcast layers per track the hot path handles without allocating.
const MAX_LAYERS: usize = 4;

/// Where a keyframe request for one layer goes.
struct KeyframeSource {
    publisher: Option<PeerKey>,
    receiver: Option<rtc::rtp_transceiver::RTCRtpReceiverId>,
    room: String,
    ssrc: u32,
}

impl ShardCore {
    /// A publisher connection delivered a decrypted RTP packet.
    pub(super) fn on_publisher_rtp(&mut self, key: PeerKey, packet: rtp::Packet, now: Instant) {
        let Some(peer) = self.transport.peer(key) else {
            return;
        };
        let Some(&(track_key, layer_index)) = peer.incoming.get(&packet.header.ssrc) else {
            return;
        };
        self.forward(track_key, layer_index, packet, now);
    }

    /// Forwards one packet of a published track's layer to its subscribers: the hot path,
    /// whether the packet came from a publisher connection or from a parent shard.
    pub(super) fn forward(
        &mut self,
        track_key: TrackKey,
        layer_index: usize,
        mut packet: rtp::Packet,
        now: Instant,
    ) {
        self.metrics.rtp_received_packets.inc();
        self.metrics
            .rtp_received_bytes
            .inc_by((packet.header.marshal_size() + packet.payload.len()) as u64);
        let Self {
            tracks,
            transport,
            rooms,
            metrics,
            ..
        } = self;
        let Some(track) = tracks.get_mut(&track_key) else {
            return;
        };
        if let Some(ext) = track.audio_level_ext
            && let Some(level) = packet
                .header
                .get_extension(ext)
                .and_then(|payload| audio_level(&payload))
            && let Some(room) = rooms.get_mut(&track.room)
        {
            room.speaker
                .observe(track.session, now, level.voice, level.level);
        }
        packet.header.extension = false;
        packet.header.extension_profile = 0;
        packet.header.extensions.clear();
        packet.header.extensions_padding = 0;
        packet.header.csrc.clear();

        let keyframe = track.family.is_video() && is_keyframe(track.family, &packet.payload);
        let Some(layer) = track.layers.get_mut(layer_index) else {
            return;
        };
        layer.last_packet = Some(now);
        if keyframe {
            layer.throttle.keyframe_received();
        }
        if let Some(buffer) = layer.buffer.as_mut() {
            buffer.insert(now, packet.clone());
        }
        let (ssrc, seq, timestamp) = (
            packet.header.ssrc,
            packet.header.sequence_number,
            packet.header.timestamp,
        );
        if packet.payload.is_empty() {
            // Padding only (a bandwidth probe): not worth forwarding, and the downtracks
            // close the sequence gap it leaves.
            for entry in &mut track.downtracks {
                entry.state.skip(layer_index, ssrc, seq);
            }
            return;
        }
        let mut layers = [(0u8, false); MAX_LAYERS];
        let count = track.layers.len().min(MAX_LAYERS);
        for (slot, layer) in layers.iter_mut().zip(&track.layers) {
            *slot = (
                layer.rank,
                layer
                    .last_packet
                    .is_some_and(|at| now.saturating_duration_since(at) < LAYER_IDLE),
            );
        }
        let layers = &layers[..count];
        let mut keyframe_wanted: [bool; MAX_LAYERS] = [false; MAX_LAYERS];
        let size = (packet.header.marshal_size() + packet.payload.len()) as u64;
        // Read once for every subscriber that takes a RED track as plain Opus.
        let red_primary = if track.family == CodecFamily::Red {
            red_primary(&packet.payload)
        } else {
            None
        };
        for entry in &mut track.downtracks {
            let Some(payload_type) = entry.payload_type else {
                continue; // not negotiated yet
            };
            // One lookup of the subscriber's connection per packet.
            let Some(mut subscriber) = transport.tx(entry.peer) else {
                continue;
            };
            if !subscriber.connected() {
                continue;
            }
            if entry.unwrap_red && red_primary.is_none() {
                // A malformed RED payload has no Opus to give these subscribers; the
                // downtrack closes the sequence gap it leaves.
                entry.state.skip(layer_index, ssrc, seq);
                continue;
            }
            let decision =
                entry
                    .state
                    .on_packet(layers, layer_index, keyframe, (ssrc, seq, timestamp), now);
            if let Some(wanted) = decision.request_keyframe
                && let Some(slot) = keyframe_wanted.get_mut(wanted)
            {
                *slot = true;
            }
            let Some(rewritten) = decision.forward else {
                continue;
            };
            let payload = match (entry.unwrap_red, red_primary) {
                // The primary block, sharing the publisher's buffer.
                (true, Some((_, start))) => packet.payload.slice(start..),
                _ => entry.picture_ids.forward(ssrc, packet.payload.clone()),
            };
            let mut out = rtp::Packet {
                header: packet.header.clone(),
                payload,
            };
            if let Some(id) = entry.playout_delay {
                // Zero minimum and maximum delay: render as soon as decoded. (The header's
                // extension list is a Vec in `rtc`, so this costs an allocation per packet
                // in music rooms; the fast path of its own will write it in place.)
                let _ = out
                    .header
                    .set_extension(id, Bytes::from_static(&PLAYOUT_DELAY_ZERO));
            }
            out.header.ssrc = entry.ssrc;
            out.header.payload_type = payload_type;
            out.header.sequence_number = rewritten.seq;
            out.header.timestamp = rewritten.timestamp;
            if subscriber.write_rtp(entry.sender, out, now) {
                metrics.rtp_forwarded_packets.inc();
                metrics.rtp_forwarded_bytes.inc_by(size);
            } else {
                metrics.forward_errors.inc();
            }
        }
        for (index, wanted) in keyframe_wanted.iter().enumerate() {
            if *wanted {
                self.request_keyframe(track_key, index, now);
            }
        }
    }

    /// Asks the publisher of a track for a keyframe on one layer, throttled.
    pub(super) fn request_keyframe(
        &mut self,
        track_key: TrackKey,
        layer_index: usize,
        now: Instant,
    ) {
        let Some(track) = self.tracks.get_mut(&track_key) else {
            return;
        };
        let Some(layer) = track.layers.get_mut(layer_index) else {
            return;
        };
        if layer.throttle.request(now)
            && let Some(ssrc) = layer.ssrc
        {
            let source = KeyframeSource {
                publisher: track.peer,
                receiver: layer.receiver,
                room: track.room.clone(),
                ssrc,
            };
            self.send_pli(source, now);
        }
    }

    fn send_pli(&mut self, source: KeyframeSource, now: Instant) {
        let KeyframeSource {
            publisher,
            receiver,
            room,
            ssrc: media_ssrc,
        } = source;
        let (Some(publisher), Some(receiver)) = (publisher, receiver) else {
            // A relayed track: the request goes up to the parent shard, which throttles it
            // again before it reaches the presenter.
            if self.relay_keyframe_request(&room, media_ssrc) {
                self.metrics.keyframe_requests_sent.inc();
            }
            return;
        };
        let Some(peer) = self.transport.peer_mut(publisher) else {
            return;
        };
        let pli: Box<dyn rtcp::packet::Packet> = Box::new(PictureLossIndication {
            sender_ssrc: 1,
            media_ssrc,
        });
        let pli = MovedIn::new(vec![pli]);
        let sent = peer.pc.with(move |pc| {
            pc.rtp_receiver(receiver)
                .map(|mut r| r.write_rtcp(now, pli.take()))
        });
        if matches!(sent, Some(Some(Ok(())))) {
            self.metrics.keyframe_requests_sent.inc();
            self.transport.mark_dirty(publisher);
        }
    }

    /// Sends keyframe requests that the throttle deferred and that are now due.
    pub(super) fn send_deferred_keyframe_requests(&mut self, now: Instant) {
        let mut due = Vec::new();
        for track in self.tracks.values_mut() {
            for layer in &mut track.layers {
                if layer.throttle.poll(now)
                    && let Some(ssrc) = layer.ssrc
                {
                    due.push(KeyframeSource {
                        publisher: track.peer,
                        receiver: layer.receiver,
                        room: track.room.clone(),
                        ssrc,
                    });
                }
            }
        }
        for source in due {
            self.send_pli(source, now);
        }
    }

    /// A subscriber connection delivered RTCP feedback.
    pub(super) fn on_subscriber_rtcp(
        &mut self,
        key: PeerKey,
        packets: Vec<Box<dyn rtcp::packet::Packet>>,
        now: Instant,
    ) {
        for packet in packets {
            let any = packet.as_any();
            if let Some(pli) = any.downcast_ref::<PictureLossIndication>() {
                self.on_keyframe_request(key, pli.media_ssrc, now);
            } else if let Some(fir) = any.downcast_ref::<FullIntraRequest>() {
                for entry in &fir.fir {
                    self.on_keyframe_request(key, entry.ssrc, now);
                }
            } else if let Some(nack) = any.downcast_ref::<TransportLayerNack>() {
                let lost: Vec<u16> = nack
                    .nacks
                    .iter()
                    .flat_map(|pair| pair.packet_list())
                    .take(MAX_NACKED_PER_PACKET)
                    .collect();
                self.retransmit(key, nack.media_ssrc, &lost, now);
            } else if let Some(report) = any.downcast_ref::<ReceiverReport>() {
                for block in &report.reports {
                    self.on_reception_report(key, block.ssrc, block.fraction_lost);
                }
            }
        }
    }

    fn on_keyframe_request(&mut self, key: PeerKey, ssrc: u32, now: Instant) {
        self.metrics.keyframe_requests_received.inc();
        let Some(&track_key) = self.transport.peer(key).and_then(|p| p.outgoing.get(&ssrc)) else {
            return;
        };
        let layer = self
            .tracks
            .get(&track_key)
            .and_then(|t| t.downtracks.iter().find(|d| d.peer == key))
            .and_then(|d| d.state.current_layer());
        if let Some(layer) = layer {
            self.request_keyframe(track_key, layer, now);
        }
    }

    fn on_reception_report(&mut self, key: PeerKey, ssrc: u32, fraction_lost: u8) {
        let Some(&track_key) = self.transport.peer(key).and_then(|p| p.outgoing.get(&ssrc)) else {
            return;
        };
        if let Some(entry) = self
            .tracks
            .get_mut(&track_key)
            .and_then(|t| t.downtracks.iter_mut().find(|d| d.peer == key))
        {
            entry.fraction_lost = fraction_lost;
        }
    }

    /// Resends NACKed packets from the track's retransmission buffer.
    fn retransmit(&mut self, key: PeerKey, ssrc: u32, lost: &[u16], now: Instant) {
        let Some(&track_key) = self.transport.peer(key).and_then(|p| p.outgoing.get(&ssrc)) else {
            return;
        };
        let Self {
            tracks,
            transport,
            metrics,
            ..
        } = self;
        let Some(track) = tracks.get_mut(&track_key) else {
            return;
        };
        let Some(mut peer) = transport.tx(key) else {
            return;
        };
        let layers = &track.layers;
        let Some(entry) = track.downtracks.iter_mut().find(|d| d.peer == key) else {
            return;
        };
        let Some(payload_type) = entry.payload_type else {
            return;
        };
        for &out_seq in lost {
            let Some(source) = entry.state.retransmission_source(out_seq, now) else {
                continue;
            };
            let Some(stored) = layers
                .iter()
                .find(|l| l.ssrc == Some(source.ssrc))
                .and_then(|l| l.buffer.as_ref())
                .and_then(|b| b.get(source.seq, now))
            else {
                continue;
            };
            let mut out = stored.clone();
            out.payload = entry.picture_ids.retransmission(source.ssrc, out.payload);
            out.header.ssrc = entry.ssrc;
            out.header.payload_type = payload_type;
            out.header.sequence_number = out_seq;
            out.header.timestamp = stored.header.timestamp.wrapping_add(source.ts_offset);
            if peer.write_rtp(entry.sender, out, now) {
                metrics.retransmissions.inc();
            }
        }
    }
}
