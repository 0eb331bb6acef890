//! Prometheus metrics of a shard.
//!
//! Counters are created once and their handles kept, so the media thread updates them
//! with one atomic add and never looks a label set up on the hot path.

use crate::signal::protocol::ErrorCode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::collections::HashMap;

/// Labels naming what a datagram was or why it was dropped.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CodeLabel {
    code: &'static str,
}

/// Why an incoming datagram was dropped before reaching a peer connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// Not STUN, DTLS, RTP or RTCP (or too short to be).
    Garbage,
    /// Larger than the receive buffer.
    Truncated,
    /// STUN naming a ufrag no peer owns, or without USERNAME.
    UnknownUfrag,
    /// STUN whose MESSAGE-INTEGRITY does not match the peer's password.
    BadIntegrity,
    /// DTLS/RTP/RTCP from an address not bound to any peer.
    UnknownSource,
    /// A round-trip probe beyond the shard's budget per second.
    ProbeLimit,
    /// SRTCP from a subscriber, a publisher or a relay pipe that failed authentication or
    /// the replay check.
    BadSrtcp,
    /// SRTP from a publisher or on a relay pipe that failed authentication or the replay
    /// check.
    BadSrtp,
    /// A publisher's retransmission of a packet that had already arrived (asked for while
    /// it was only late): not forwarded a second time.
    Duplicate,
}

impl DropReason {
    const ALL: [DropReason; 9] = [
        Self::Garbage,
        Self::Truncated,
        Self::UnknownUfrag,
        Self::BadIntegrity,
        Self::UnknownSource,
        Self::ProbeLimit,
        Self::BadSrtcp,
        Self::BadSrtp,
        Self::Duplicate,
    ];

    fn label(self) -> &'static str {
        match self {
            Self::Garbage => "garbage",
            Self::Truncated => "truncated",
            Self::UnknownUfrag => "unknown_ufrag",
            Self::BadIntegrity => "bad_integrity",
            Self::UnknownSource => "unknown_source",
            Self::ProbeLimit => "probe_limit",
            Self::BadSrtcp => "bad_srtcp",
            Self::Duplicate => "duplicate",
            Self::BadSrtp => "bad_srtp",
        }
    }
}

/// Every metric of a shard.
pub struct ShardMetrics {
    registry: Registry,
    datagrams_in: [Counter; 4],
    dropped: HashMap<DropReason, Counter>,
    errors: HashMap<ErrorCode, Counter>,
    /// RTP packets received from publishers.
    pub rtp_received_packets: Counter,
    /// RTP payload and header bytes received from publishers.
    pub rtp_received_bytes: Counter,
    /// AV1 dependency descriptors that could not be read (malformed, or naming a template
    /// the stream's structure lacks).
    pub dependency_descriptors_unread: Counter,
    /// RTP packets forwarded to subscribers.
    pub rtp_forwarded_packets: Counter,
    /// Bytes of RTP forwarded to subscribers (before encryption).
    pub rtp_forwarded_bytes: Counter,
    /// Packets resent in answer to subscribers' NACKs.
    pub retransmissions: Counter,
    /// NACK answers left unsent because the subscriber's congested downlink had no room
    /// for them (counted once per NACK cut short).
    pub retransmissions_withheld: Counter,
    /// Publishers' packets the shard asked to have resent (NACK), each ask counted.
    pub publisher_packets_asked: Counter,
    /// Publishers' packets that arrived after the shard had noted them missing: repairs.
    pub publisher_packets_repaired: Counter,
    /// Padding bytes sent to probe subscribers' downlinks.
    pub probe_padding_bytes: Counter,
    /// Padding packets sent in the place of a late packet of a layer the subscriber does
    /// not receive (a publisher's repair of it), so the subscriber stops asking for it.
    pub gaps_filled: Counter,
    /// Keyframe requests received from subscribers.
    pub keyframe_requests_received: Counter,
    /// Keyframe requests sent to publishers (after throttling).
    pub keyframe_requests_sent: Counter,
    /// Datagrams handed to the kernel.
    pub datagrams_sent: Counter,
    /// Datagrams the kernel refused.
    pub send_failures: Counter,
    /// `sendmmsg` calls.
    pub send_syscalls: Counter,
    /// Connection timers that fired (ICE checks and keepalives, DTLS retransmissions,
    /// the publishers' RTCP intervals): each costs the media thread a pass over that
    /// connection.
    pub connection_timers: Counter,
    /// Forward writes the peer connection rejected (e.g. not yet connected).
    pub forward_errors: Counter,
    /// Pipelines released because they stayed empty past their timeout.
    pub pipelines_released_empty: Counter,
    /// Panics caught in a peer connection (each ended one session).
    pub peer_panics: Counter,
    /// Pipelines hosted.
    pub pipelines: Gauge,
    /// Participants connected.
    pub participants: Gauge,
    /// Published tracks.
    pub tracks: Gauge,
    /// Subscriber streams being forwarded.
    pub forwarded_streams: Gauge,
    /// Subscribers whose downlink has been congested (their layers are chosen to fit).
    pub congested_subscribers: Gauge,
    /// Video streams held below the quality their subscriber asked for, or paused, by the
    /// subscriber's downlink.
    pub held_back_video: Gauge,
    /// Participants whose connection their room is shown as fair.
    pub participants_fair: Gauge,
    /// Participants whose connection their room is shown as poor.
    pub participants_poor: Gauge,
}

impl Default for ShardMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl ShardMetrics {
    /// Registers every metric under the `tutti_sfu` prefix.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("tutti_sfu");
        let datagrams = Family::<KindLabel, Counter>::default();
        let datagrams_in = ["stun", "dtls", "rtp", "rtcp"]
            .map(|kind| datagrams.get_or_create(&KindLabel { kind }).clone());
        registry.register(
            "datagrams_received",
            "Datagrams received on the media port, by kind",
            datagrams,
        );
        let dropped_family = Family::<ReasonLabel, Counter>::default();
        let dropped = DropReason::ALL
            .into_iter()
            .map(|reason| {
                let counter = dropped_family
                    .get_or_create(&ReasonLabel {
                        reason: reason.label(),
                    })
                    .clone();
                (reason, counter)
            })
            .collect();
        registry.register(
            "datagrams_dropped",
            "Datagrams dropped before reaching a peer connection, by reason",
            dropped_family,
        );
        let errors_family = Family::<CodeLabel, Counter>::default();
        let errors = ErrorCode::ALL
            .into_iter()
            .map(|code| {
                let counter = errors_family
                    .get_or_create(&CodeLabel {
                        code: code.as_str(),
                    })
                    .clone();
                (code, counter)
            })
            .collect();
        registry.register(
            "signaling_errors",
            "Errors reported to signaling sessions, by code",
            errors_family,
        );
        let counter = |registry: &mut Registry, name: &str, help: &str| {
            let counter = Counter::default();
            registry.register(name, help, counter.clone());
            counter
        };
        let gauge = |registry: &mut Registry, name: &str, help: &str| {
            let gauge = Gauge::default();
            registry.register(name, help, gauge.clone());
            gauge
        };
        Self {
            datagrams_in,
            dropped,
            errors,
            rtp_received_packets: counter(
                &mut registry,
                "rtp_received_packets",
                "RTP packets received from publishers",
            ),
            rtp_received_bytes: counter(
                &mut registry,
                "rtp_received_bytes",
                "RTP bytes received from publishers",
            ),
            dependency_descriptors_unread: counter(
                &mut registry,
                "dependency_descriptors_unread",
                "AV1 dependency descriptors that could not be read",
            ),
            rtp_forwarded_packets: counter(
                &mut registry,
                "rtp_forwarded_packets",
                "RTP packets forwarded to subscribers",
            ),
            rtp_forwarded_bytes: counter(
                &mut registry,
                "rtp_forwarded_bytes",
                "RTP bytes forwarded to subscribers",
            ),
            retransmissions: counter(
                &mut registry,
                "retransmissions",
                "Packets resent for subscriber NACKs",
            ),
            retransmissions_withheld: counter(
                &mut registry,
                "retransmissions_withheld",
                "NACKs answered only in part: the subscriber's congested downlink had no room",
            ),
            publisher_packets_asked: counter(
                &mut registry,
                "publisher_packets_asked",
                "Publishers' packets asked for again (NACK), each ask counted",
            ),
            publisher_packets_repaired: counter(
                &mut registry,
                "publisher_packets_repaired",
                "Publishers' packets that arrived after being noted missing",
            ),
            probe_padding_bytes: counter(
                &mut registry,
                "probe_padding_bytes",
                "Padding bytes sent to probe subscribers' downlinks",
            ),
            gaps_filled: counter(
                &mut registry,
                "gaps_filled",
                "Padding packets in the place of a late packet of a layer a subscriber does not receive",
            ),
            keyframe_requests_received: counter(
                &mut registry,
                "keyframe_requests_received",
                "PLI/FIR received from subscribers",
            ),
            keyframe_requests_sent: counter(
                &mut registry,
                "keyframe_requests_sent",
                "PLI sent to publishers after throttling",
            ),
            datagrams_sent: counter(
                &mut registry,
                "datagrams_sent",
                "Datagrams handed to the kernel",
            ),
            send_failures: counter(
                &mut registry,
                "send_failures",
                "Datagrams the kernel refused",
            ),
            send_syscalls: counter(&mut registry, "send_syscalls", "sendmmsg calls"),
            connection_timers: counter(
                &mut registry,
                "connection_timers",
                "Connection timers fired (ICE, DTLS, RTCP intervals)",
            ),
            forward_errors: counter(
                &mut registry,
                "forward_errors",
                "Forwarded packets a peer connection rejected",
            ),
            pipelines_released_empty: counter(
                &mut registry,
                "pipelines_released_empty",
                "Pipelines released after staying empty past their timeout",
            ),
            peer_panics: counter(
                &mut registry,
                "peer_panics",
                "Panics caught in a peer connection; each ended one session",
            ),
            pipelines: gauge(&mut registry, "pipelines", "Pipelines hosted"),
            congested_subscribers: gauge(
                &mut registry,
                "congested_subscribers",
                "Subscribers whose downlink has been congested",
            ),
            held_back_video: gauge(
                &mut registry,
                "held_back_video",
                "Video streams held below the asked quality or paused by a subscriber's downlink",
            ),
            participants_fair: gauge(
                &mut registry,
                "participants_fair",
                "Participants whose connection is shown as fair (loss, a long round trip, or video held back)",
            ),
            participants_poor: gauge(
                &mut registry,
                "participants_poor",
                "Participants whose connection is shown as poor (heavy loss, a very long round trip, or video paused)",
            ),
            participants: gauge(&mut registry, "participants", "Participants connected"),
            tracks: gauge(&mut registry, "tracks", "Published tracks"),
            forwarded_streams: gauge(
                &mut registry,
                "forwarded_streams",
                "Subscriber streams being forwarded",
            ),
            registry,
        }
    }

    /// Counts one received datagram of a kind: 0 STUN, 1 DTLS, 2 RTP, 3 RTCP.
    pub fn datagram_in(&self, kind: usize) {
        if let Some(counter) = self.datagrams_in.get(kind) {
            counter.inc();
        }
    }

    /// Counts a dropped datagram.
    pub fn dropped(&self, reason: DropReason) {
        if let Some(counter) = self.dropped.get(&reason) {
            counter.inc();
        }
    }

    /// How many datagrams were dropped for a reason.
    pub fn dropped_count(&self, reason: DropReason) -> u64 {
        self.dropped.get(&reason).map_or(0, Counter::get)
    }

    /// Counts an error reported to a session.
    pub fn error(&self, code: ErrorCode) {
        if let Some(counter) = self.errors.get(&code) {
            counter.inc();
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposes_counters_with_labels() {
        let metrics = ShardMetrics::new();
        metrics.dropped(DropReason::Garbage);
        metrics.dropped(DropReason::Garbage);
        metrics.error(ErrorCode::RoomFull);
        metrics.rtp_forwarded_packets.inc_by(5);
        let text = metrics.encode();
        assert!(
            text.contains(r#"tutti_sfu_datagrams_dropped_total{reason="garbage"} 2"#),
            "{text}"
        );
        assert!(text.contains(r#"tutti_sfu_signaling_errors_total{code="room_full"} 1"#));
        assert!(text.contains("tutti_sfu_rtp_forwarded_packets_total 5"));
        assert_eq!(metrics.dropped_count(DropReason::Garbage), 2);
    }
}
