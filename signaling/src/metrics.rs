//! Prometheus metrics of the gateway. Local mode adds its embedded shards' media counters
//! (`local::shard_metrics`), so that one scrape of `/metrics` covers the whole system.

use crate::protocol::ErrorCode;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::collections::HashMap;
use std::sync::Mutex;

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

    /// Adds series read at scrape time (local mode: the embedded shards' counters).
    pub fn include(&self, collector: Box<dyn Collector>) {
        if let Ok(mut registry) = self.registry.lock() {
            registry.register_collector(collector);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_has_the_gateway_series() {
        let metrics = GatewayMetrics::new();
        metrics.entered("lesson");
        metrics.entered("lesson");
        metrics.exited("lesson");
        metrics.error(ErrorCode::RoomFull);
        let text = metrics.encode();
        assert!(text.contains("tutti_gateway_participants 1"), "{text}");
        assert!(text.contains("tutti_gateway_rooms 1"));
        assert!(text.contains("tutti_gateway_errors_total{code=\"room_full\"} 1"));
        metrics.exited("lesson");
        assert!(metrics.encode().contains("tutti_gateway_rooms 0"));
    }
}
