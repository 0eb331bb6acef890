//! The core's side of media routing: packets and feedback reach the [`MediaRouter`] with
//! the connections it needs, and the keyframe requests it decides on are sent, to a
//! publisher's connection or up the cascade for a relayed track.

use super::guarded::MovedIn;
use super::router::{KeyframeSource, KeyframesWanted};
use super::{PeerKey, ShardCore, TrackKey};
use rtc::rtcp;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtp;
use std::time::Instant;

impl ShardCore {
    /// A publisher connection delivered a decrypted RTP packet.
    /// A packet the publisher connection delivered: a stream's first packets, before the
    /// shard knows the stream, and retransmissions `rtc` unwrapped from RTX. (The rest the
    /// transport reads past `rtc`: [`Routed::Media`](super::transport::Routed::Media).)
    pub(super) fn on_publisher_rtp(&mut self, key: PeerKey, packet: rtp::Packet, now: Instant) {
        let Some(incoming) = self.transport.publisher_media(key, &packet.header, now) else {
            return;
        };
        self.forward(incoming.track, incoming.layer, packet, now);
    }

    /// Forwards one packet of a published track's layer to its subscribers: the hot path,
    /// whether the packet came from a publisher connection or from a parent shard.
    pub(super) fn forward(
        &mut self,
        track_key: TrackKey,
        layer_index: usize,
        packet: rtp::Packet,
        now: Instant,
    ) {
        #[cfg(any(test, feature = "sim"))]
        let allocated_before = crate::alloc_count::allocations();
        let wanted = self.media.forward(
            &mut self.transport,
            &self.metrics,
            track_key,
            layer_index,
            packet,
            now,
        );
        #[cfg(any(test, feature = "sim"))]
        {
            self.forward_allocations += crate::alloc_count::allocations() - allocated_before;
        }
        self.request_keyframes(track_key, wanted, now);
    }

    /// Heap allocations the forwarding step has made so far on threads that count them
    /// (the sfu crate's tests; see [`crate::alloc_count`]).
    #[cfg(any(test, feature = "sim"))]
    pub fn forward_allocations(&self) -> u64 {
        self.forward_allocations
    }

    fn request_keyframes(&mut self, track_key: TrackKey, wanted: KeyframesWanted, now: Instant) {
        for (index, wanted) in wanted.iter().enumerate() {
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
        if let Some(source) = self.media.keyframe_request(track_key, layer_index, now) {
            self.send_pli(source, now);
        }
    }

    fn send_pli(&mut self, source: KeyframeSource, now: Instant) {
        let KeyframeSource {
            publisher,
            receiver,
            ssrc: media_ssrc,
        } = source;
        let (Some(publisher), Some(receiver)) = (publisher, receiver) else {
            // A relayed track: the request goes up to the parent shard, which throttles it
            // again before it reaches the presenter.
            if self.relay_keyframe_request(media_ssrc) {
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
        for source in self.media.due_keyframe_requests(now) {
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
        let requests =
            self.media
                .on_feedback(&mut self.transport, &self.metrics, key, packets, now);
        for source in requests {
            self.send_pli(source, now);
        }
    }
}
