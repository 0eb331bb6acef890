//! Which rooms exist, with which settings, and the room list the web client shows.

use serde::Serialize;
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use tutti_store::{LiveView, RoomRecord};

/// Longest search query.
pub const MAX_QUERY_CHARS: usize = 64;
/// Most rooms one list answer holds.
pub const MAX_LIST_LIMIT: usize = 200;

/// A room's live occupancy, as its shard last reported it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Occupancy {
    /// Participants in it.
    pub participants: u32,
    /// Its capacity.
    pub max_participants: u32,
}

/// Live occupancy of every hosted room, refreshed in the background.
pub type OccupancyMap = Arc<RwLock<HashMap<String, Occupancy>>>;

/// The rooms a gateway admits to.
#[derive(Clone)]
pub struct RoomDirectory {
    view: Arc<dyn LiveView>,
    auto_create: Option<RoomRecord>,
    occupancy: OccupancyMap,
}

/// One row of the room list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RoomSummary {
    /// The room name.
    pub name: String,
    /// Participants in it now.
    pub participants: u32,
    /// Its capacity.
    pub max_participants: u32,
    /// Whether joining needs a password.
    pub has_password: bool,
}

impl RoomDirectory {
    /// Rooms from the live state; undeclared rooms are created on first join from
    /// `auto_create` when it is set.
    pub fn new(
        view: Arc<dyn LiveView>,
        auto_create: Option<RoomRecord>,
        occupancy: OccupancyMap,
    ) -> Self {
        Self {
            view,
            auto_create,
            occupancy,
        }
    }

    /// The settings a join to `room` is admitted by, if the room exists or may be created.
    pub fn settings(&self, room: &str) -> Option<RoomRecord> {
        self.view.room(room).or_else(|| {
            self.auto_create.as_ref().map(|template| RoomRecord {
                name: room.to_owned(),
                ..template.clone()
            })
        })
    }

    /// The settings a join to `room` is admitted by; when the join creates the room, with
    /// the audio profile it asks for.
    pub fn settings_for_join(
        &self,
        room: &str,
        audio: Option<tutti_store::AudioProfile>,
    ) -> Option<RoomRecord> {
        if let Some(declared) = self.view.room(room) {
            return Some(declared);
        }
        let mut created = self.settings(room)?;
        if let Some(profile) = audio
            && profile != created.audio_settings.profile
        {
            created.audio_settings = tutti_store::AudioSettings {
                profile,
                ..Default::default()
            };
        }
        Some(created)
    }

    /// Whether undeclared rooms are created on first join.
    pub fn auto_creates(&self) -> bool {
        self.auto_create.is_some()
    }

    /// Declared rooms and rooms hosted now, filtered by a case-insensitive substring of the
    /// name, busiest first.
    pub fn list(&self, query: Option<&str>, limit: usize) -> Vec<RoomSummary> {
        let occupancy = self
            .occupancy
            .read()
            .map(|map| map.clone())
            .unwrap_or_default();
        summarize(&self.view.rooms(), &occupancy, query, limit)
    }

    /// One room's summary.
    pub fn summary(&self, room: &str) -> Option<RoomSummary> {
        let occupancy = self
            .occupancy
            .read()
            .ok()
            .and_then(|map| map.get(room).copied());
        match (self.view.room(room), occupancy) {
            (Some(record), occupancy) => Some(RoomSummary {
                name: record.name,
                participants: occupancy.map_or(0, |o| o.participants),
                max_participants: record.max_participants,
                has_password: record.password_hash.is_some(),
            }),
            (None, Some(occupancy)) => Some(RoomSummary {
                name: room.to_owned(),
                participants: occupancy.participants,
                max_participants: occupancy.max_participants,
                has_password: false,
            }),
            (None, None) => None,
        }
    }
}

/// The room list: declared rooms plus hosted ones, matched against `query`, most
/// participants first, then by name; at most `limit`.
pub fn summarize(
    declared: &[RoomRecord],
    occupancy: &HashMap<String, Occupancy>,
    query: Option<&str>,
    limit: usize,
) -> Vec<RoomSummary> {
    let needle = query.map(str::to_lowercase).unwrap_or_default();
    let mut rows: Vec<RoomSummary> = declared
        .iter()
        .map(|record| RoomSummary {
            name: record.name.clone(),
            participants: occupancy.get(&record.name).map_or(0, |o| o.participants),
            max_participants: record.max_participants,
            has_password: record.password_hash.is_some(),
        })
        .collect();
    for (name, live) in occupancy {
        if !declared.iter().any(|r| &r.name == name) {
            rows.push(RoomSummary {
                name: name.clone(),
                participants: live.participants,
                max_participants: live.max_participants,
                has_password: false,
            });
        }
    }
    rows.retain(|row| row.name.to_lowercase().contains(&needle));
    rows.sort_by(|a, b| {
        b.participants
            .cmp(&a.participants)
            .then_with(|| a.name.cmp(&b.name))
    });
    rows.truncate(limit.min(MAX_LIST_LIMIT));
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_merges_declared_and_live_rooms_busiest_first() {
        let mut lesson = RoomRecord::with_defaults("violin-lesson");
        lesson.password_hash = Some("$argon2id$x".into());
        lesson.max_participants = 2;
        let declared = vec![lesson, RoomRecord::with_defaults("Orchestra")];
        let occupancy = HashMap::from([
            (
                "violin-lesson".to_owned(),
                Occupancy {
                    participants: 1,
                    max_participants: 2,
                },
            ),
            (
                "jam".to_owned(),
                Occupancy {
                    participants: 5,
                    max_participants: 16,
                },
            ),
        ]);
        let all = summarize(&declared, &occupancy, None, 50);
        let names: Vec<&str> = all.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["jam", "violin-lesson", "Orchestra"]);
        assert!(all[1].has_password);
        let found = summarize(&declared, &occupancy, Some("ORCH"), 50);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].name, "Orchestra");
        assert_eq!(summarize(&declared, &occupancy, None, 1).len(), 1);
    }
}
