//! The embedded shards' media counters in the gateway's `/metrics`, labelled by shard.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use std::sync::Arc;
use tutti_sfu::metrics::ShardMetrics;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ShardLabel {
    shard: String,
}

/// The embedded shards' counters, read at scrape time.
pub(super) struct ShardsCollector {
    shards: Vec<(String, Arc<ShardMetrics>)>,
}

impl std::fmt::Debug for ShardsCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardsCollector")
            .field("shards", &self.shards.len())
            .finish()
    }
}

/// Reads one counter of a shard.
type Reading = fn(&ShardMetrics) -> u64;
/// Reads one gauge of a shard.
type GaugeReading = fn(&ShardMetrics) -> i64;

impl Collector for ShardsCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let counters: [(&str, &str, Reading); 10] = [
            (
                "tutti_sfu_rtp_forwarded_packets",
                "RTP packets forwarded to subscribers",
                |m| m.rtp_forwarded_packets.get(),
            ),
            (
                "tutti_sfu_rtp_forwarded_bytes",
                "RTP bytes forwarded to subscribers",
                |m| m.rtp_forwarded_bytes.get(),
            ),
            (
                "tutti_sfu_rtp_received_packets",
                "RTP packets received from publishers",
                |m| m.rtp_received_packets.get(),
            ),
            (
                "tutti_sfu_retransmissions",
                "Packets resent in answer to NACKs",
                |m| m.retransmissions.get(),
            ),
            (
                "tutti_sfu_retransmissions_withheld",
                "NACKs answered only in part: the subscriber's congested downlink had no room",
                |m| m.retransmissions_withheld.get(),
            ),
            (
                "tutti_sfu_publisher_packets_asked",
                "Publishers' packets asked for again (NACK), each ask counted",
                |m| m.publisher_packets_asked.get(),
            ),
            (
                "tutti_sfu_publisher_packets_repaired",
                "Publishers' packets that arrived after being noted missing",
                |m| m.publisher_packets_repaired.get(),
            ),
            (
                "tutti_sfu_probe_padding_bytes",
                "Padding bytes sent to probe subscribers' downlinks",
                |m| m.probe_padding_bytes.get(),
            ),
            (
                "tutti_sfu_gaps_filled",
                "Padding packets in the place of a late packet of a layer a subscriber does not receive",
                |m| m.gaps_filled.get(),
            ),
            (
                "tutti_sfu_keyframe_requests_sent",
                "Keyframe requests sent to publishers",
                |m| m.keyframe_requests_sent.get(),
            ),
        ];
        for (name, help, read) in counters {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for (id, metrics) in &self.shards {
                let label = ShardLabel { shard: id.clone() };
                ConstCounter::new(read(metrics)).encode(family.encode_family(&label)?)?;
            }
        }
        let gauges: [(&str, &str, GaugeReading); 7] = [
            ("tutti_sfu_pipelines", "Pipelines hosted", |m| {
                m.pipelines.get()
            }),
            ("tutti_sfu_participants", "Participants connected", |m| {
                m.participants.get()
            }),
            (
                "tutti_sfu_forwarded_streams",
                "Subscriber streams forwarded",
                |m| m.forwarded_streams.get(),
            ),
            (
                "tutti_sfu_congested_subscribers",
                "Subscribers whose downlink has been congested",
                |m| m.congested_subscribers.get(),
            ),
            (
                "tutti_sfu_held_back_video",
                "Video streams held below the asked quality or paused by a subscriber's downlink",
                |m| m.held_back_video.get(),
            ),
            (
                "tutti_sfu_participants_fair",
                "Participants whose connection is shown as fair",
                |m| m.participants_fair.get(),
            ),
            (
                "tutti_sfu_participants_poor",
                "Participants whose connection is shown as poor",
                |m| m.participants_poor.get(),
            ),
        ];
        for (name, help, read) in gauges {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for (id, metrics) in &self.shards {
                let label = ShardLabel { shard: id.clone() };
                ConstGauge::new(read(metrics)).encode(family.encode_family(&label)?)?;
            }
        }
        Ok(())
    }
}

impl ShardsCollector {
    /// Reads these shards' counters at every scrape.
    pub(super) fn new(shards: Vec<(String, Arc<ShardMetrics>)>) -> Self {
        Self { shards }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::GatewayMetrics;

    #[test]
    fn the_gateway_scrape_carries_each_shards_series() {
        let metrics = GatewayMetrics::new();
        let shard = Arc::new(ShardMetrics::new());
        shard.rtp_forwarded_packets.inc_by(42);
        metrics.include(Box::new(ShardsCollector::new(vec![(
            "local-0".into(),
            shard,
        )])));
        let text = metrics.encode();
        assert!(
            text.contains("tutti_sfu_rtp_forwarded_packets_total{shard=\"local-0\"} 42"),
            "{text}"
        );
    }
}
