//! The live state as a set of maps: what the in-memory store holds, and what the etcd
//! store's local copy holds between watch events.

use crate::{
    BroadcastRecord, CascadeRecord, LatencyReport, RecordingRecord, RecordingStateRecord,
    RoomRecord, Route, ShardRecord,
};
use std::collections::BTreeMap;

/// Which kind of record a key holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `shards/{id}`.
    Shard,
    /// `routes/{room}`.
    Route,
    /// `rooms/{room}`.
    Room,
    /// `broadcasts/{name}`.
    Broadcast,
    /// `cascades/{broadcast}`.
    Cascade,
    /// `latency/{room}:{participant}`.
    Latency,
    /// `recordings/{name}`.
    Recording,
    /// `recording-states/{name}`.
    RecordingState,
}

impl Kind {
    /// The key segment of the kind.
    pub fn segment(self) -> &'static str {
        match self {
            Self::Shard => "shards/",
            Self::Route => "routes/",
            Self::Room => "rooms/",
            Self::Broadcast => "broadcasts/",
            Self::Cascade => "cascades/",
            Self::Latency => "latency/",
            Self::Recording => "recordings/",
            Self::RecordingState => "recording-states/",
        }
    }

    /// Splits a key (without the store's prefix) into its kind and name.
    pub fn parse(key: &str) -> Option<(Self, &str)> {
        [
            Self::Shard,
            Self::Route,
            Self::Room,
            Self::Broadcast,
            Self::Cascade,
            Self::Latency,
            Self::Recording,
            Self::RecordingState,
        ]
        .into_iter()
        .find_map(|kind| {
            key.strip_prefix(kind.segment())
                .filter(|name| !name.is_empty() && !name.contains('/'))
                .map(|name| (kind, name))
        })
    }
}

/// Every record, by name.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    /// Shard records.
    pub shards: BTreeMap<String, ShardRecord>,
    /// Routes.
    pub routes: BTreeMap<String, Route>,
    /// Room records.
    pub rooms: BTreeMap<String, RoomRecord>,
    /// Broadcasts.
    pub broadcasts: BTreeMap<String, BroadcastRecord>,
    /// Cascades, by broadcast.
    pub cascades: BTreeMap<String, CascadeRecord>,
    /// Latency reports, by `room:participant`.
    pub latency: BTreeMap<String, LatencyReport>,
    /// Recordings asked for.
    pub recordings: BTreeMap<String, RecordingRecord>,
    /// Recordings as the control loop saw them, by name.
    pub recording_states: BTreeMap<String, RecordingStateRecord>,
}

impl Snapshot {
    /// A room's latency reports.
    pub fn latency_reports(&self, room: &str) -> Vec<LatencyReport> {
        let prefix = format!("{room}:");
        self.latency
            .range(prefix.clone()..)
            .take_while(|(key, _)| key.starts_with(&prefix))
            .map(|(_, report)| report.clone())
            .collect()
    }
}

/// Stores a decoded value under `name`, or removes the entry when the value is absent or
/// does not decode.
fn set<T: serde::de::DeserializeOwned>(
    map: &mut BTreeMap<String, T>,
    name: &str,
    value: Option<&[u8]>,
) {
    match value.and_then(|v| serde_json::from_slice::<T>(v).ok()) {
        Some(record) => map.insert(name.to_owned(), record),
        None => map.remove(name),
    };
}

/// A route that appeared, moved or went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteChange {
    /// The room.
    pub room: String,
    /// Its route now; `None` when it was deleted.
    pub route: Option<Route>,
}

impl Snapshot {
    /// Applies a record's new value (`None`: deleted); returns the route change, if any.
    /// A value that does not decode is treated as absent, so one bad record cannot
    /// poison the copy.
    pub fn apply(&mut self, kind: Kind, name: &str, value: Option<&[u8]>) -> Option<RouteChange> {
        match kind {
            Kind::Shard => {
                set(&mut self.shards, name, value);
                None
            }
            Kind::Room => {
                set(&mut self.rooms, name, value);
                None
            }
            Kind::Broadcast => {
                set(&mut self.broadcasts, name, value);
                None
            }
            Kind::Cascade => {
                set(&mut self.cascades, name, value);
                None
            }
            Kind::Latency => {
                set(&mut self.latency, name, value);
                None
            }
            Kind::Recording => {
                set(&mut self.recordings, name, value);
                None
            }
            Kind::RecordingState => {
                set(&mut self.recording_states, name, value);
                None
            }
            Kind::Route => {
                let route = value.and_then(|v| serde_json::from_slice::<Route>(v).ok());
                let previous = match &route {
                    Some(route) => self.routes.insert(name.to_owned(), route.clone()),
                    None => self.routes.remove(name),
                };
                (previous != route).then(|| RouteChange {
                    room: name.to_owned(),
                    route,
                })
            }
        }
    }

    /// The route changes that turn `self` into `next`.
    pub fn route_changes(&self, next: &Snapshot) -> Vec<RouteChange> {
        let mut changes = Vec::new();
        for (room, route) in &next.routes {
            if self.routes.get(room) != Some(route) {
                changes.push(RouteChange {
                    room: room.clone(),
                    route: Some(route.clone()),
                });
            }
        }
        for room in self.routes.keys() {
            if !next.routes.contains_key(room) {
                changes.push(RouteChange {
                    room: room.clone(),
                    route: None,
                });
            }
        }
        changes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_parse_to_kinds_and_names() {
        assert_eq!(Kind::parse("shards/s-1"), Some((Kind::Shard, "s-1")));
        assert_eq!(Kind::parse("routes/lesson"), Some((Kind::Route, "lesson")));
        assert_eq!(Kind::parse("rooms/lesson"), Some((Kind::Room, "lesson")));
        assert_eq!(
            Kind::parse("recordings/lesson"),
            Some((Kind::Recording, "lesson"))
        );
        assert_eq!(
            Kind::parse("recording-states/lesson"),
            Some((Kind::RecordingState, "lesson"))
        );
        for bad in ["shards/", "routes/a/b", "other/x", "rooms"] {
            assert_eq!(Kind::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn applying_values_tracks_route_changes_and_ignores_garbage() {
        let mut snapshot = Snapshot::default();
        let route = serde_json::to_vec(&Route {
            room: "r".into(),
            shard: "s".into(),
            epoch: 1,
        })
        .unwrap();
        let change = snapshot.apply(Kind::Route, "r", Some(&route)).unwrap();
        assert_eq!(change.route.unwrap().epoch, 1);
        assert!(
            snapshot.apply(Kind::Route, "r", Some(&route)).is_none(),
            "no change"
        );
        assert!(
            snapshot
                .apply(Kind::Shard, "s", Some(b"{not json"))
                .is_none()
        );
        assert!(snapshot.shards.is_empty());
        let gone = snapshot.apply(Kind::Route, "r", None).unwrap();
        assert_eq!(gone.route, None);
        let next = Snapshot {
            routes: [(
                "x".to_owned(),
                Route {
                    room: "x".into(),
                    shard: "s".into(),
                    epoch: 3,
                },
            )]
            .into(),
            ..Snapshot::default()
        };
        assert_eq!(snapshot.route_changes(&next).len(), 1);
    }
}
