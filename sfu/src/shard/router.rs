//! Media routing: the published tracks, each subscriber's downtrack of them, the feedback
//! from subscribers back to publishers, and who is speaking in each room. It owns that
//! state; it reaches connections only through [`Transport`] and tells the core which
//! keyframe requests to send, since those may go up a cascade instead.
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

use super::transport::{PeerTx, Transport};
use super::{LAYER_IDLE, PeerKey, PublishedTrack, SessionId, TrackKey};
use crate::media::codec::{CodecFamily, FrameLayers, audio_level, is_keyframe, red_primary};
use crate::media::dependency_descriptor;
use crate::media::outgoing::{OutPacket, SendStamp};
use crate::media::sequencer::Rewritten;
use crate::media::speaker::SpeakerDetector;
use crate::media::temporal::vp8_temporal;
use crate::media::vp9;
use crate::metrics::ShardMetrics;
use rtc::rtcp;
use rtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtcp::receiver_report::ReceiverReport;
use rtc::rtcp::transport_feedbacks::transport_layer_cc::TransportLayerCc;
use rtc::rtcp::transport_feedbacks::transport_layer_nack::TransportLayerNack;
use rtc::rtp;
use rtc::shared::marshal::MarshalSize;
use std::collections::HashMap;
use std::time::Instant;

/// At most this many sequence numbers of one NACK packet are served.
const MAX_NACKED_PER_PACKET: usize = 64;
/// Simulcast layers per track the hot path handles without allocating.
pub(super) const MAX_LAYERS: usize = 4;

/// Where a keyframe request for one layer goes: the publisher's connection, or (for a
/// relayed track) the parent shard.
pub(super) struct KeyframeSource {
    /// The publisher connection; `None` for a relayed track.
    pub(super) publisher: Option<PeerKey>,
    /// Its receiver of the layer.
    pub(super) receiver: Option<rtc::rtp_transceiver::RTCRtpReceiverId>,
    /// The layer's SSRC.
    pub(super) ssrc: u32,
}

/// Layers of one track whose subscribers want a keyframe, by index.
pub(super) type KeyframesWanted = [bool; MAX_LAYERS];

/// The published tracks and who speaks.
#[derive(Default)]
pub(super) struct MediaRouter {
    pub(super) tracks: crate::FastMap<TrackKey, PublishedTrack>,
    /// Per room, fed by the audio levels publishers send.
    pub(super) speakers: HashMap<String, SpeakerDetector<SessionId>>,
    /// A subscriber's downlink estimate went down since the last sharing: share again
    /// now rather than at the next interval.
    pub(super) downlink_fell: bool,
}

impl MediaRouter {
    // ---------------------------------------------------------------- tracks

    /// One track.
    pub(super) fn track(&self, key: TrackKey) -> Option<&PublishedTrack> {
        self.tracks.get(&key)
    }

    /// One track, to change.
    pub(super) fn track_mut(&mut self, key: TrackKey) -> Option<&mut PublishedTrack> {
        self.tracks.get_mut(&key)
    }

    /// Every track.
    pub(super) fn tracks(&self) -> impl Iterator<Item = (TrackKey, &PublishedTrack)> {
        self.tracks.iter().map(|(key, track)| (*key, track))
    }

    /// Every track, to change.
    pub(super) fn tracks_mut(&mut self) -> impl Iterator<Item = (TrackKey, &mut PublishedTrack)> {
        self.tracks.iter_mut().map(|(key, track)| (*key, track))
    }

    /// Starts routing a track.
    pub(super) fn publish(&mut self, key: TrackKey, track: PublishedTrack) {
        self.tracks.insert(key, track);
    }

    /// Stops routing a track; its downtracks go with it.
    pub(super) fn unpublish(&mut self, key: TrackKey) -> Option<PublishedTrack> {
        self.tracks.remove(&key)
    }

    /// How many tracks are published.
    pub(super) fn len(&self) -> usize {
        self.tracks.len()
    }

    /// How many streams go out: downtracks of every track.
    pub(super) fn forwarded_streams(&self) -> usize {
        self.tracks.values().map(|t| t.downtracks.len()).sum()
    }

    // ---------------------------------------------------------------- speakers

    /// Rooms whose active speaker changed: (room, the new speaker or nobody).
    pub(super) fn speaker_changes(&mut self, now: Instant) -> Vec<(String, Option<SessionId>)> {
        let mut changes = Vec::new();
        for (room, detector) in &mut self.speakers {
            if let Some(change) = detector.evaluate(now) {
                changes.push((room.clone(), change));
            }
        }
        changes
    }

    /// A session left `room`: it speaks no more.
    pub(super) fn forget_speaker(&mut self, room: &str, session: SessionId) {
        if let Some(detector) = self.speakers.get_mut(room) {
            detector.remove(session);
        }
    }

    /// A room was released.
    pub(super) fn close_room(&mut self, room: &str) {
        self.speakers.remove(room);
    }

    // ---------------------------------------------------------------- the hot path

    /// Forwards one packet of a published track's layer to its subscribers, whether it
    /// came from a publisher connection or from a parent shard. Returns the layers that
    /// subscribers need a keyframe of.
    pub(super) fn forward(
        &mut self,
        transport: &mut Transport,
        metrics: &ShardMetrics,
        track_key: TrackKey,
        layer_index: usize,
        mut packet: rtp::Packet,
        now: Instant,
    ) -> KeyframesWanted {
        let mut keyframe_wanted: KeyframesWanted = [false; MAX_LAYERS];
        metrics.rtp_received_packets.inc();
        let received = packet.header.marshal_size() + packet.payload.len();
        metrics.rtp_received_bytes.inc_by(received as u64);
        let Self {
            tracks, speakers, ..
        } = self;
        let Some(track) = tracks.get_mut(&track_key) else {
            return keyframe_wanted;
        };
        // A video stream's dependency descriptor, read before the extensions go: `Err` for
        // one that is there but cannot be read. AV1's layers are known only from it; with
        // it negotiated, Chromium leaves the temporal layer out of VP8's own descriptor.
        let described = match track.dependency_ext {
            Some(ext) if track.family.is_video() => read_dependency_descriptor(
                extension_value(&packet.header, ext),
                track.layers.get_mut(layer_index),
                is_keyframe(track.family, &packet.payload),
            ),
            _ => Ok(None),
        };
        if described.is_err() {
            metrics.dependency_descriptors_unread.inc();
        }
        // An AV1 packet its descriptor did not place (none, unreadable, or before the
        // stream's structure).
        let unplaced = track.family == CodecFamily::Av1
            && track.dependency_ext.is_some()
            && !matches!(described, Ok(Some(_)));
        // The RFC 6464 byte, passed on to subscribers as it came.
        let level_byte = track
            .audio_level_ext
            .and_then(|ext| packet.header.get_extension(ext))
            .and_then(|value| value.first().copied());
        if let Some(level) = level_byte.and_then(|byte| audio_level(&[byte])) {
            observe_speech(
                speakers,
                &track.room,
                track.session,
                now,
                level.voice,
                level.level,
            );
        }
        // Every extension goes but a video stream's dependency descriptor, which an AV1
        // subscriber's decoder and an edge's reading of the layers need: kept with the
        // packet, so that a resend carries it too.
        let kept = track.dependency_ext.filter(|_| track.family.is_video());
        packet.header.extensions.retain(|e| Some(e.id) == kept);
        packet.header.extension = !packet.header.extensions.is_empty();
        if !packet.header.extension {
            packet.header.extension_profile = 0;
        }
        packet.header.extensions_padding = 0;
        packet.header.csrc.clear();

        // The payload descriptor read once: keyframe, temporal and spatial layer.
        // VP8's and VP9's own descriptors say first; the dependency descriptor only what
        // they leave out.
        let described_temporal = || {
            described
                .as_ref()
                .ok()
                .and_then(|read| read.and_then(|read| read.temporal))
        };
        let (keyframe, temporal, spatial, structure) = match (track.family, described) {
            (CodecFamily::Vp8, _) => (
                is_keyframe(track.family, &packet.payload),
                vp8_temporal(&packet.payload).or_else(described_temporal),
                None,
                None,
            ),
            (CodecFamily::Vp9, _) => {
                let read = vp9::layers(&packet.payload);
                let temporal = read.temporal.or_else(described_temporal);
                (read.keyframe, temporal, read.spatial, read.scalability)
            }
            (CodecFamily::Av1, Ok(Some(read))) => {
                (read.keyframe, read.temporal, read.spatial, read.scalability)
            }
            (family, _) => (
                family.is_video() && is_keyframe(family, &packet.payload),
                None,
                None,
                None,
            ),
        };
        let single_layer = track.layers.len() == 1;
        let Some(layer) = track.layers.get_mut(layer_index) else {
            return keyframe_wanted;
        };
        layer.last_packet = Some(now);
        layer.rate.add(now, received);
        if let Some(structure) = structure {
            layer.spatial_structure.update(structure);
            // Known from the key picture's structure, before the first upper layer's
            // packet: its base layer is then already marked for those who get it alone.
            layer.svc |= single_layer && structure.layers > 1;
        }
        if let Some(info) = spatial {
            // Counted from the first packet, so that the rates are known when the stream
            // turns out to be one of spatial layers.
            layer.spatial_rates.add(now, info.sid, received);
            // A spatial layer above the base on a track of one simulcast layer: an SVC
            // stream, whose spatial layers subscribers receive up to one.
            layer.svc |= single_layer && info.sid > 0;
        }
        let spatial = spatial.filter(|_| layer.svc);
        // A packet of spatial layers nobody can place would reach subscribers whose
        // decoders do not expect its layer: it goes to nobody, and a key picture (with a
        // structure) is asked for.
        let unplaceable = unplaced && layer.svc;
        if unplaceable
            && !packet.payload.is_empty()
            && let Some(slot) = keyframe_wanted.get_mut(layer_index)
        {
            *slot = true;
        }
        if let Some(info) = temporal
            && spatial.is_none_or(|s| s.sid == 0)
        {
            layer.temporal_rates.add(now, info.tid, received);
        }
        layer.loss.on_packet(packet.header.sequence_number);
        if keyframe {
            layer.throttle.keyframe_received();
        }
        let (ssrc, seq, timestamp) = (
            packet.header.ssrc,
            packet.header.sequence_number,
            packet.header.timestamp,
        );
        if packet.payload.is_empty() || unplaceable {
            // Padding only (a bandwidth probe): not worth forwarding, and the downtracks
            // close the sequence gap it leaves. The same for a packet that cannot be
            // placed in its layers.
            for entry in &mut track.downtracks {
                entry.state.skip(layer_index, ssrc, seq);
            }
            keep_for_resends(track, layer_index, packet, now);
            return keyframe_wanted;
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
            let Some(mut subscriber) = transport.tx(entry.peer, now) else {
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
            let decision = entry.state.on_packet(
                layers,
                layer_index,
                keyframe,
                temporal,
                spatial,
                (ssrc, seq, timestamp),
                now,
            );
            if decision.dropped_picture {
                entry.picture_ids.drop_picture(ssrc, &packet.payload);
            }
            if decision.resumed {
                entry.picture_ids.resume();
            }
            if let Some(wanted) = decision.request_keyframe
                && let Some(slot) = keyframe_wanted.get_mut(wanted)
            {
                *slot = true;
            }
            // Only where resends go by what was first sent, which a fill does not record:
            // a lost fill is never resent (as media, under the same SRTP index).
            if let Some(place) = decision.fill
                && entry.stamps.is_some()
                // One byte of padding, counting itself.
                && entry
                    .send_padding(&mut subscriber, payload_type, place, &[1], now)
                    .is_some()
            {
                metrics.gaps_filled.inc();
            }
            let Some(rewritten) = decision.forward else {
                continue;
            };
            let payload = match (entry.unwrap_red, red_primary) {
                (true, Some((_, start))) => packet.payload.get(start..).unwrap_or_default(),
                _ => &packet.payload[..],
            };
            let stamp = subscriber.stamp(now);
            let marker = packet.header.marker || decision.marker;
            if let Some(stamps) = entry.stamps.as_mut() {
                stamps.record(rewritten.seq, stamp, marker);
            }
            let out = OutPacket {
                padding: false,
                marker,
                payload_type,
                seq: rewritten.seq,
                timestamp: rewritten.timestamp,
                ssrc: entry.ssrc,
                audio_level: level_byte,
                dependency_descriptor: kept_descriptor(&packet.header),
                stamp,
                payload,
            };
            let index = entry.rollover.index(rewritten.seq);
            let picture_ids = &mut entry.picture_ids;
            let sent = subscriber.send_rtp(&entry.extensions, &out, index, |payload| {
                picture_ids.forward(ssrc, payload)
            });
            if let Some(wire) = sent {
                if entry.extensions.transport_cc.is_some() {
                    subscriber.stamped_sent(stamp.transport_seq, wire, now);
                }
                entry.sent.sent(now, rewritten.timestamp, payload.len());
                metrics.rtp_forwarded_packets.inc();
                metrics.rtp_forwarded_bytes.inc_by(size);
            } else {
                metrics.forward_errors.inc();
            }
        }
        keep_for_resends(track, layer_index, packet, now);
        keyframe_wanted
    }

    // ---------------------------------------------------------------- keyframes

    /// A keyframe request for one layer of a track, if its throttle lets one go now.
    pub(super) fn keyframe_request(
        &mut self,
        track_key: TrackKey,
        layer_index: usize,
        now: Instant,
    ) -> Option<KeyframeSource> {
        let track = self.tracks.get_mut(&track_key)?;
        let layer = track.layers.get_mut(layer_index)?;
        if !layer.throttle.request(now) {
            return None;
        }
        Some(KeyframeSource {
            publisher: track.peer,
            receiver: layer.receiver,
            ssrc: layer.ssrc?,
        })
    }

    /// Keyframe requests the throttle deferred and that are now due.
    pub(super) fn due_keyframe_requests(&mut self, now: Instant) -> Vec<KeyframeSource> {
        let mut due = Vec::new();
        for track in self.tracks.values_mut() {
            for layer in &mut track.layers {
                if layer.throttle.poll(now)
                    && let Some(ssrc) = layer.ssrc
                {
                    due.push(KeyframeSource {
                        publisher: track.peer,
                        receiver: layer.receiver,
                        ssrc,
                    });
                }
            }
        }
        due
    }

    // ---------------------------------------------------------------- feedback

    /// RTCP feedback a subscriber connection delivered. Returns the keyframe requests it
    /// leads to, for the core to send.
    pub(super) fn on_feedback(
        &mut self,
        transport: &mut Transport,
        metrics: &ShardMetrics,
        key: PeerKey,
        packets: Vec<Box<dyn rtcp::packet::Packet>>,
        now: Instant,
    ) -> Vec<KeyframeSource> {
        let mut requests = Vec::new();
        for packet in packets {
            let any = packet.as_any();
            if let Some(pli) = any.downcast_ref::<PictureLossIndication>() {
                requests.extend(self.on_keyframe_request(
                    transport,
                    metrics,
                    key,
                    pli.media_ssrc,
                    now,
                ));
            } else if let Some(fir) = any.downcast_ref::<FullIntraRequest>() {
                for entry in &fir.fir {
                    requests
                        .extend(self.on_keyframe_request(transport, metrics, key, entry.ssrc, now));
                }
            } else if let Some(nack) = any.downcast_ref::<TransportLayerNack>() {
                let lost: Vec<u16> = nack
                    .nacks
                    .iter()
                    .flat_map(|pair| pair.packet_list())
                    .take(MAX_NACKED_PER_PACKET)
                    .collect();
                self.retransmit(transport, metrics, key, nack.media_ssrc, &lost, now);
            } else if let Some(report) = any.downcast_ref::<ReceiverReport>() {
                for block in &report.reports {
                    self.on_reception_report(transport, key, block.ssrc, block.fraction_lost);
                }
            } else if let Some(feedback) = any.downcast_ref::<TransportLayerCc>()
                && let Some(downlink) = transport
                    .peer_mut(key)
                    .and_then(|peer| peer.downlink.as_mut())
            {
                // Only through rtc's own reading; the shard's reads it into acknowledgements.
                let before = downlink.evidence().decreases;
                downlink.on_feedback(now, feedback);
                self.downlink_fell |= downlink.evidence().decreases != before;
            }
        }
        // Transport-cc feedback the shard read itself from this packet (media::feedback);
        // emptied once used, so nothing is counted twice.
        let mut read = std::mem::take(&mut transport.transport_feedback);
        if !read.is_empty()
            && let Some(downlink) = transport
                .peer_mut(key)
                .and_then(|peer| peer.downlink.as_mut())
        {
            let before = downlink.evidence().decreases;
            for acknowledgements in read.feedbacks() {
                downlink.on_acknowledgements(now, acknowledgements);
            }
            self.downlink_fell |= downlink.evidence().decreases != before;
        }
        read.clear();
        transport.transport_feedback = read;
        requests
    }

    fn on_keyframe_request(
        &mut self,
        transport: &Transport,
        metrics: &ShardMetrics,
        key: PeerKey,
        ssrc: u32,
        now: Instant,
    ) -> Option<KeyframeSource> {
        metrics.keyframe_requests_received.inc();
        let track_key = *transport.peer(key)?.outgoing.get(&ssrc)?;
        let layer = self
            .tracks
            .get(&track_key)?
            .downtracks
            .iter()
            .find(|d| d.peer == key)?
            .state
            .current_layer()?;
        self.keyframe_request(track_key, layer, now)
    }

    fn on_reception_report(
        &mut self,
        transport: &Transport,
        key: PeerKey,
        ssrc: u32,
        fraction_lost: u8,
    ) {
        let Some(&track_key) = transport.peer(key).and_then(|p| p.outgoing.get(&ssrc)) else {
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
    fn retransmit(
        &mut self,
        transport: &mut Transport,
        metrics: &ShardMetrics,
        key: PeerKey,
        ssrc: u32,
        lost: &[u16],
        now: Instant,
    ) {
        let Some(&track_key) = transport.peer(key).and_then(|p| p.outgoing.get(&ssrc)) else {
            return;
        };
        let Some(track) = self.tracks.get_mut(&track_key) else {
            return;
        };
        // What a congested downlink has room for; resends beyond it would be lost in turn.
        let mut allowance = transport
            .peer_mut(key)
            .and_then(|p| p.downlink.as_mut())
            .and_then(|d| d.resend_allowance(now));
        let mut resent = 0;
        let Some(mut peer) = transport.tx(key, now) else {
            return;
        };
        let (layers, family) = (&track.layers, track.family);
        let Some(entry) = track.downtracks.iter_mut().find(|d| d.peer == key) else {
            return;
        };
        let Some(payload_type) = entry.payload_type else {
            return;
        };
        for &out_seq in lost {
            // A resend carries the send stamps of the first send, or it would be other
            // bytes under the same SRTP packet index: without them it is not sent.
            let stamp = match &entry.stamps {
                Some(stamps) => match stamps.get(out_seq) {
                    Some(stamp) => stamp,
                    None => continue,
                },
                None if entry.extensions.stamps_sends() => continue,
                None => SendStamp::default(),
            };
            let Some(source) = entry.state.retransmission_source(out_seq, now) else {
                continue;
            };
            let Some(layer) = layers.iter().find(|l| l.ssrc == Some(source.ssrc)) else {
                continue;
            };
            let Some(stored) = layer.buffer.as_ref().and_then(|b| b.get(source.seq, now)) else {
                continue;
            };
            // Marked as its first send was: the subscriber's picture ended where its
            // spatial layers then did. Without a record (no send-time extensions), by the
            // layers it receives now.
            let marker = match entry.stamps.as_ref().and_then(|s| s.marker(out_seq)) {
                Some(marker) => marker,
                None => {
                    stored.header.marker
                        || (layer.svc
                            && family == CodecFamily::Vp9
                            && vp9::layers(&stored.payload)
                                .spatial
                                .is_some_and(|info| entry.state.marks(info)))
                }
            };
            // The payload as it was first sent: a RED track's primary block for a
            // subscriber that takes Opus, picture IDs patched like their segment.
            let payload = if entry.unwrap_red {
                match red_primary(&stored.payload) {
                    Some((_, start)) => stored.payload.get(start..).unwrap_or_default(),
                    None => continue,
                }
            } else {
                &stored.payload[..]
            };
            let out = OutPacket {
                padding: false,
                marker,
                payload_type,
                seq: out_seq,
                timestamp: stored.header.timestamp.wrapping_add(source.ts_offset),
                ssrc: entry.ssrc,
                // Only video is resent, and its packets carry no audio level.
                audio_level: None,
                dependency_descriptor: kept_descriptor(&stored.header),
                stamp,
                payload,
            };
            if let Some(left) = &mut allowance {
                let Some(after) = left.checked_sub(stored.payload.len()) else {
                    metrics.retransmissions_withheld.inc();
                    break;
                };
                *left = after;
            }
            let index = entry.rollover.index(out_seq);
            let picture_ids = &entry.picture_ids;
            // A resend repeats its first send's transport-wide number, which the downlink
            // estimate already holds with its first departure.
            if let Some(wire) = peer.send_rtp(&entry.extensions, &out, index, |payload| {
                picture_ids.retransmission(source.ssrc, payload)
            }) {
                metrics.retransmissions.inc();
                resent += wire;
            }
        }
        if resent > 0
            && let Some(downlink) = transport.peer_mut(key).and_then(|p| p.downlink.as_mut())
        {
            downlink.resent(resent);
        }
    }

    // ---------------------------------------------------------------- reports

    /// Sends the sender reports due at `now`: one compound RTCP packet per subscriber
    /// connection, which the connection protects and sends. `wall` is the wall-clock time
    /// of `now`.
    pub(super) fn send_reports(
        &mut self,
        transport: &mut Transport,
        now: Instant,
        wall: std::time::SystemTime,
    ) {
        let mut due: HashMap<PeerKey, Reports> = HashMap::new();
        for track in self.tracks.values_mut() {
            let clock_rate = track.codec.clock_rate;
            for entry in &mut track.downtracks {
                // A relay pipe's far end writes its own reports from its own counts.
                let Some(sender) = entry.sender else {
                    continue;
                };
                if let Some(report) = entry.sent.due_report(entry.ssrc, now, wall, clock_rate) {
                    due.entry(entry.peer)
                        .or_insert_with(|| (sender, Vec::new()))
                        .1
                        .push(Box::new(report));
                }
            }
        }
        for (key, (sender, reports)) in due {
            transport.write_rtcp(key, sender, reports, now);
        }
    }
}

impl super::DowntrackEntry {
    /// Sends a padding-only packet at `place` on the subscriber's video stream (the fill of
    /// a late packet's place, or a probe's where there is no RTX): `padding` ends in its own
    /// length (RFC 3550 §5.1). Returns its size on the wire.
    pub(super) fn send_padding(
        &mut self,
        subscriber: &mut PeerTx<'_>,
        payload_type: u8,
        place: Rewritten,
        padding: &[u8],
        now: Instant,
    ) -> Option<usize> {
        let index = self.rollover.index(place.seq);
        let at = ((self.ssrc, payload_type), place, index);
        self.send_padding_at(subscriber, at, padding, now)
    }

    /// Sends one padding-only packet of a bandwidth probe: on the RTX stream when the
    /// subscriber took one, as browsers probe, else at the next place on the video's own.
    /// Returns its size on the wire, counted for the downlink estimate; `None` when it
    /// cannot go out.
    pub(super) fn send_probe_padding(
        &mut self,
        subscriber: &mut PeerTx<'_>,
        padding: &[u8],
        now: Instant,
    ) -> Option<usize> {
        let rtx = self
            .rtx
            .as_mut()
            .and_then(|rtx| Some((rtx.payload_type?, rtx)));
        let Some((payload_type, rtx)) = rtx else {
            let payload_type = self.payload_type?;
            let place = self.state.padding()?;
            return self.send_padding(subscriber, payload_type, place, padding, now);
        };
        let (seq, index) = rtx.next_packet();
        let timestamp = self.state.last_timestamp().unwrap_or(0);
        let at = (
            (rtx.ssrc, payload_type),
            Rewritten { seq, timestamp },
            index,
        );
        self.send_padding_at(subscriber, at, padding, now)
    }

    /// Sends a padding-only packet on stream `(ssrc, payload type)` at `place`, as SRTP
    /// packet `index`, with this downtrack's extensions; the transport-wide stamp it takes
    /// is remembered for the downlink estimate. Returns its size on the wire.
    fn send_padding_at(
        &self,
        subscriber: &mut PeerTx<'_>,
        ((ssrc, payload_type), place, index): ((u32, u8), Rewritten, u64),
        padding: &[u8],
        now: Instant,
    ) -> Option<usize> {
        let stamp = subscriber.stamp(now);
        let out = OutPacket {
            padding: true,
            marker: false,
            payload_type,
            seq: place.seq,
            timestamp: place.timestamp,
            ssrc,
            audio_level: None,
            dependency_descriptor: None,
            stamp,
            payload: padding,
        };
        let wire = subscriber.send_rtp(&self.extensions, &out, index, |_| {})?;
        if self.extensions.transport_cc.is_some() {
            subscriber.stamped_sent(stamp.transport_seq, wire, now);
        }
        Some(wire)
    }
}

/// One connection's due sender reports, and a sender of its to write them through.
type Reports = (
    rtc::rtp_transceiver::RTCRtpSenderId,
    Vec<Box<dyn rtcp::packet::Packet>>,
);

/// Feeds a room's speaker detector, made on the room's first audio level.
fn observe_speech(
    speakers: &mut HashMap<String, SpeakerDetector<SessionId>>,
    room: &str,
    session: SessionId,
    now: Instant,
    voice: bool,
    level: u8,
) {
    match speakers.get_mut(room) {
        Some(detector) => detector.observe(session, now, voice, level),
        None => {
            let mut detector = SpeakerDetector::default();
            detector.observe(session, now, voice, level);
            speakers.insert(room.to_owned(), detector);
        }
    }
}

/// Reads an AV1 packet's dependency descriptor (`value`) against its layer's structure:
/// `Ok(None)` without one, or before the stream's structure arrived (its packets then go
/// to everyone, as a stream of one layer's would: a stream is not known to have spatial
/// layers before its structure says so).
fn read_dependency_descriptor(
    value: Option<&[u8]>,
    layer: Option<&mut super::Layer>,
    keyframe: bool,
) -> Result<Option<FrameLayers>, dependency_descriptor::ParseError> {
    let (Some(value), Some(layer)) = (value, layer) else {
        return Ok(None);
    };
    match dependency_descriptor::parse(value, &mut layer.dependency_structure) {
        Ok(descriptor) => Ok(layer.dependency_structure.as_ref().map(|structure| {
            dependency_descriptor::frame_layers(&descriptor, structure, keyframe)
        })),
        Err(dependency_descriptor::ParseError::NoStructure) => Ok(None),
        Err(error) => Err(error),
    }
}

/// The dependency descriptor a publisher's packet kept (the only extension it keeps).
fn kept_descriptor(header: &rtp::header::Header) -> Option<&[u8]> {
    header
        .extensions
        .first()
        .filter(|_| header.extension)
        .map(|e| &e.payload[..])
}

/// Moves a publisher's packet into its layer's retransmission buffer (video only), once
/// every subscriber was sent its copy: moved, not cloned, so that nothing of it is copied.
fn keep_for_resends(
    track: &mut PublishedTrack,
    layer_index: usize,
    packet: rtp::Packet,
    now: Instant,
) {
    if let Some(buffer) = track
        .layers
        .get_mut(layer_index)
        .and_then(|l| l.buffer.as_mut())
    {
        buffer.insert(now, packet);
    }
}

/// The value of extension `id` in a parsed header, borrowed.
fn extension_value(header: &rtp::header::Header, id: u8) -> Option<&[u8]> {
    header
        .extensions
        .iter()
        .find(|e| e.id == id)
        .filter(|_| header.extension)
        .map(|e| &e.payload[..])
}
