//! Prometheus metrics of the gateway, and in local mode the embedded shards' media
//! counters, labelled by shard, so that one scrape of `/metrics` covers the whole system.

use crate::protocol::ErrorCode;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::registry::Registry;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tutti_sfu::metrics::ShardMetrics;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CodeLabel {
    code: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DirectionLabel {
    direction: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ShardLabel {
    shard: String,
}

/// Every metric of a gateway.
pub struct GatewayMetrics {
    registry: Mutex<Registry>,
    /// Client WebSockets open.
    pub sockets: Gauge,
    /// Participants joined through this gateway.
    pub participants: Gauge,
    rooms: Gauge,
    room_members: Mutex<HashMap<String, usize>>,
    joins: Family<ResultLabel, Counter>,
    errors: Family<CodeLabel, Counter>,
    messages: Family<DirectionLabel, Counter>,
    /// Password checks refused because the address is locked out.
    pub password_lockouts: Counter,
}

impl Default for GatewayMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl GatewayMetrics {
    /// Registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let sockets = Gauge::default();
        let participants = Gauge::default();
        let rooms = Gauge::default();
        let joins = Family::<ResultLabel, Counter>::default();
        let errors = Family::<CodeLabel, Counter>::default();
        let messages = Family::<DirectionLabel, Counter>::default();
        let password_lockouts = Counter::default();
        registry.register(
            "tutti_gateway_password_lockouts",
            "Password checks refused because the client's address guessed wrong too often",
            password_lockouts.clone(),
        );
        registry.register(
            "tutti_gateway_sockets",
            "Client WebSockets open",
            sockets.clone(),
        );
        registry.register(
            "tutti_gateway_participants",
            "Participants joined through this gateway",
            participants.clone(),
        );
        registry.register(
            "tutti_gateway_rooms",
            "Rooms with at least one participant joined through this gateway",
            rooms.clone(),
        );
        registry.register(
            "tutti_gateway_joins",
            "Join attempts by result (ok, or the error code)",
            joins.clone(),
        );
        registry.register(
            "tutti_gateway_errors",
            "Error messages sent to clients, by code",
            errors.clone(),
        );
        registry.register(
            "tutti_gateway_messages",
            "Signaling messages relayed, by direction",
            messages.clone(),
        );
        for code in ErrorCode::ALL {
            let _ = errors.get_or_create(&CodeLabel {
                code: code.as_str(),
            });
        }
        Self {
            registry: Mutex::new(registry),
            sockets,
            participants,
            rooms,
            room_members: Mutex::new(HashMap::new()),
            joins,
            errors,
            messages,
            password_lockouts,
        }
    }

    /// Adds the embedded shards' media counters to every scrape (local mode).
    pub fn include_shards(&self, shards: Vec<(String, Arc<ShardMetrics>)>) {
        if let Ok(mut registry) = self.registry.lock() {
            registry.register_collector(Box::new(ShardsCollector { shards }));
        }
    }

    /// Counts an error sent to a client.
    pub fn error(&self, code: ErrorCode) {
        self.errors
            .get_or_create(&CodeLabel {
                code: code.as_str(),
            })
            .inc();
    }

    /// Counts a join attempt's outcome.
    pub fn join(&self, outcome: Result<(), ErrorCode>) {
        let result = match outcome {
            Ok(()) => "ok",
            Err(code) => code.as_str(),
        };
        self.joins.get_or_create(&ResultLabel { result }).inc();
    }

    /// Counts a message relayed to the shard.
    pub fn to_shard(&self) {
        self.messages
            .get_or_create(&DirectionLabel {
                direction: "to_shard",
            })
            .inc();
    }

    /// Counts a message relayed to a client.
    pub fn to_client(&self) {
        self.messages
            .get_or_create(&DirectionLabel {
                direction: "to_client",
            })
            .inc();
    }

    /// A participant of `room` joined through this gateway.
    pub fn entered(&self, room: &str) {
        self.participants.inc();
        if let Ok(mut members) = self.room_members.lock() {
            *members.entry(room.to_owned()).or_default() += 1;
            self.rooms.set(members.len() as i64);
        }
    }

    /// A participant of `room` left.
    pub fn exited(&self, room: &str) {
        self.participants.dec();
        if let Ok(mut members) = self.room_members.lock() {
            if let Some(count) = members.get_mut(room) {
                *count = count.saturating_sub(1);
                if *count == 0 {
                    members.remove(room);
                }
            }
            self.rooms.set(members.len() as i64);
        }
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Ok(registry) = self.registry.lock() {
            let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
        }
        out
    }
}

/// The embedded shards' counters, read at scrape time.
struct ShardsCollector {
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
        let counters: [(&str, &str, Reading); 5] = [
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
        let gauges: [(&str, &str, GaugeReading); 3] = [
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_has_gateway_and_shard_series() {
        let metrics = GatewayMetrics::new();
        let shard = Arc::new(ShardMetrics::new());
        shard.rtp_forwarded_packets.inc_by(42);
        metrics.include_shards(vec![("local-0".into(), shard)]);
        metrics.entered("lesson");
        metrics.entered("lesson");
        metrics.exited("lesson");
        metrics.error(ErrorCode::RoomFull);
        let text = metrics.encode();
        assert!(text.contains("tutti_gateway_participants 1"), "{text}");
        assert!(text.contains("tutti_gateway_rooms 1"));
        assert!(text.contains("tutti_gateway_errors_total{code=\"room_full\"} 1"));
        assert!(text.contains("tutti_sfu_rtp_forwarded_packets_total{shard=\"local-0\"} 42"));
        metrics.exited("lesson");
        assert!(metrics.encode().contains("tutti_gateway_rooms 0"));
    }
}
