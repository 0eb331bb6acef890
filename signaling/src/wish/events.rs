//! The WHEP server-sent events extension (the WHEP core extensions draft): a player may
//! open event streams on its session and hear that the stage went on or off the air
//! (`active`, `inactive`), and that it must POST to the endpoint again (`reconnect`):
//! its edge shard went away or its room moved, and a new POST seats it anew.
//!
//! A player POSTs the events it wants to `…/{session}/sse` and long-polls the stream URL
//! it gets back. Each stream queues what happens until it is pulled, bounded: at most
//! [`MAX_STREAMS`] per session, [`MAX_QUEUED`] events each (the oldest give way), one
//! pull at a time (a new pull, as an `EventSource` reconnecting makes, ends the old one).

use futures_util::Stream;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;

/// The `Link` relation that announces the extension.
pub const SSE_REL: &str = "urn:ietf:params:whep:ext:core:server-sent-events";
/// Event streams one session may have.
pub const MAX_STREAMS: usize = 4;
/// Events a stream keeps until they are pulled.
pub const MAX_QUEUED: usize = 32;
/// The largest body of a stream's creation (a JSON array of event names).
pub const MAX_REQUEST_BYTES: usize = 1024;

/// An event a session can send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// The stage is on the air: something is published.
    Active,
    /// Nothing is published any more.
    Inactive,
    /// The simulcast layers of the stage's video, for the layer selection extension.
    Layers,
    /// The session is over; POST to the endpoint again to be seated anew.
    Reconnect,
}

impl EventKind {
    /// Every kind, in the order the `Link` header lists them.
    pub const ALL: [EventKind; 4] = [
        EventKind::Active,
        EventKind::Inactive,
        EventKind::Layers,
        EventKind::Reconnect,
    ];

    /// Its name on the wire.
    pub fn name(self) -> &'static str {
        match self {
            EventKind::Active => "active",
            EventKind::Inactive => "inactive",
            EventKind::Layers => "layers",
            EventKind::Reconnect => "reconnect",
        }
    }

    fn of(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.name() == name)
    }
}

/// The `events` parameter of the `Link` header: every kind sent.
pub fn announced() -> String {
    EventKind::ALL.map(EventKind::name).join(",")
}

/// The kinds a creation request asks for: a JSON array of names (an empty body asks for
/// all). Names of events this server does not send are ignored, as the draft lets a
/// player ask for any of those it knows.
pub fn requested(body: &str) -> Result<Vec<EventKind>, String> {
    if body.trim().is_empty() {
        return Ok(EventKind::ALL.to_vec());
    }
    let names: Vec<String> = serde_json::from_str(body)
        .map_err(|_| "the body is a JSON array of event names".to_owned())?;
    let mut kinds: Vec<EventKind> = Vec::new();
    for kind in names.iter().filter_map(|n| EventKind::of(n)) {
        if !kinds.contains(&kind) {
            kinds.push(kind);
        }
    }
    Ok(kinds)
}

/// One event as it goes out: its kind and its JSON data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// What happened.
    pub kind: EventKind,
    /// Its data, a JSON object on one line.
    pub data: String,
}

struct Queue {
    wanted: Vec<EventKind>,
    events: VecDeque<Event>,
    /// Bumped by every pull: an older pull that sees another number ends.
    pull: u64,
}

#[derive(Default)]
struct State {
    streams: HashMap<String, Queue>,
    /// Whether the stage is on the air, once known.
    active: Option<bool>,
    /// The last `layers` event, told to streams opened later.
    layers: Option<Event>,
    /// The session is over: pulls end once their queue is empty.
    over: bool,
}

/// The event streams of one session.
#[derive(Default)]
pub struct Streams {
    state: Mutex<State>,
    changed: Notify,
}

/// Why a stream could not be made.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// The session ended.
    Over,
    /// It has [`MAX_STREAMS`] already.
    TooMany,
}

impl Streams {
    /// A new stream of `wanted` events; its id. A stage already on the air is told at once.
    pub fn create(&self, wanted: Vec<EventKind>) -> Result<String, Refused> {
        let mut state = self.state.lock().map_err(|_| Refused::Over)?;
        if state.over {
            return Err(Refused::Over);
        }
        if state.streams.len() >= MAX_STREAMS {
            return Err(Refused::TooMany);
        }
        let mut events = VecDeque::new();
        if state.active == Some(true) && wanted.contains(&EventKind::Active) {
            events.push_back(active_event(EventKind::Active));
        }
        if let Some(layers) = state
            .layers
            .clone()
            .filter(|_| wanted.contains(&EventKind::Layers))
        {
            events.push_back(layers);
        }
        let id = tutti_service::token::random_token(16);
        state.streams.insert(
            id.clone(),
            Queue {
                wanted,
                events,
                pull: 0,
            },
        );
        Ok(id)
    }

    /// Ends stream `id`; whether there was one.
    pub fn delete(&self, id: &str) -> bool {
        let removed = self
            .state
            .lock()
            .is_ok_and(|mut state| state.streams.remove(id).is_some());
        self.changed.notify_waiters();
        removed
    }

    /// Whether stream `id` exists.
    pub fn has(&self, id: &str) -> bool {
        self.state
            .lock()
            .is_ok_and(|state| state.streams.contains_key(id))
    }

    /// Queues `event` on every stream that wants it.
    pub fn send(&self, event: Event) {
        if let Ok(mut state) = self.state.lock() {
            state.push(&event);
        }
        self.changed.notify_waiters();
    }

    /// Whether the stage is on the air: `active` or `inactive` when that changed. The
    /// first news that it is not sends nothing (the draft: no initial `inactive`). The
    /// state and the event change under one lock, so a stream opened meanwhile gets
    /// either the state or the event, never both, never `inactive` first.
    pub fn set_active(&self, active: bool) {
        if let Ok(mut state) = self.state.lock() {
            let kind = match (state.active.replace(active), active) {
                (Some(a), b) if a == b => return,
                (None, false) => return,
                (_, true) => EventKind::Active,
                (_, false) => EventKind::Inactive,
            };
            state.push(&active_event(kind));
        }
        self.changed.notify_waiters();
    }

    /// The layers of the stage's video: `layers` (the event's data, `None` without
    /// simulcast), sent when they changed; `cleared` is sent once when the last layers go,
    /// so no player keeps choosing among layers that are gone.
    pub fn set_layers(&self, layers: Option<String>, cleared: impl FnOnce() -> String) {
        if let Ok(mut state) = self.state.lock() {
            match layers {
                Some(data) => {
                    let event = Event {
                        kind: EventKind::Layers,
                        data,
                    };
                    if state.layers.as_ref() == Some(&event) {
                        return;
                    }
                    state.push(&event);
                    state.layers = Some(event);
                }
                None => {
                    if state.layers.take().is_none() {
                        return;
                    }
                    state.push(&Event {
                        kind: EventKind::Layers,
                        data: cleared(),
                    });
                }
            }
        }
        self.changed.notify_waiters();
    }

    /// The session is over: every stream ends once what it queued is pulled.
    pub fn end(&self) {
        if let Ok(mut state) = self.state.lock() {
            state.over = true;
        }
        self.changed.notify_waiters();
    }

    /// Pulls stream `id`: its events as they come, until the stream is deleted, the
    /// session is over and its queue empty, or another pull of it starts. `None` when
    /// there is no such stream.
    pub fn pull(self: &Arc<Self>, id: &str) -> Option<impl Stream<Item = Event> + use<>> {
        let pull = {
            let mut state = self.state.lock().ok()?;
            let over = state.over;
            let queue = state.streams.get_mut(id)?;
            if over && queue.events.is_empty() {
                // The session ended and everything was read: the stream is gone.
                return None;
            }
            queue.pull += 1;
            queue.pull
        };
        // The older pull, if any, sees the new number and ends.
        self.changed.notify_waiters();
        let streams = self.clone();
        let id = id.to_owned();
        Some(futures_util::stream::unfold(
            (streams, id),
            move |(streams, id)| async move {
                loop {
                    let next = {
                        let notified = streams.changed.notified();
                        tokio::pin!(notified);
                        // Registered before the state is read, so no change is missed.
                        notified.as_mut().enable();
                        match streams.next_event(&id, pull) {
                            Next::Wait => {
                                notified.await;
                                continue;
                            }
                            next => next,
                        }
                    };
                    return match next {
                        Next::Event(event) => Some((event, (streams, id))),
                        Next::Done | Next::Wait => None,
                    };
                }
            },
        ))
    }

    fn next_event(&self, id: &str, pull: u64) -> Next {
        let Ok(mut state) = self.state.lock() else {
            return Next::Done;
        };
        let over = state.over;
        let Some(queue) = state.streams.get_mut(id) else {
            return Next::Done;
        };
        if queue.pull != pull {
            return Next::Done;
        }
        match queue.events.pop_front() {
            Some(event) => Next::Event(event),
            None if over => Next::Done,
            None => Next::Wait,
        }
    }
}

enum Next {
    Event(Event),
    Done,
    Wait,
}

impl State {
    /// Queues `event` on every stream that wants it, the oldest giving way.
    fn push(&mut self, event: &Event) {
        for queue in self.streams.values_mut() {
            if queue.wanted.contains(&event.kind) {
                if queue.events.len() >= MAX_QUEUED {
                    queue.events.pop_front();
                }
                queue.events.push_back(event.clone());
            }
        }
    }
}

fn active_event(kind: EventKind) -> Event {
    Event {
        kind,
        data: "{}".to_owned(),
    }
}

/// What tells a session whether its stage is on the air, and its video's layers: the
/// tracks announced to it.
#[derive(Debug, Default)]
pub struct OnAir {
    /// Each track announced and not gone, by id.
    tracks: HashMap<String, Announced>,
    /// Their ids in the order they came.
    order: Vec<String>,
}

#[derive(Debug)]
struct Announced {
    publisher: String,
    video: bool,
    /// Its simulcast rids (none without simulcast).
    layers: Vec<String>,
}

/// Tracks followed at most; a stage has a handful.
const MAX_TRACKS: usize = 256;

impl OnAir {
    /// Takes in a client protocol message; whether anything is published after it, when
    /// the message could change that.
    pub fn observe(&mut self, message: &serde_json::Value) -> Option<bool> {
        match message["type"].as_str()? {
            "joined" => {
                for participant in message["participants"].as_array().into_iter().flatten() {
                    let Some(publisher) = participant["id"].as_str() else {
                        continue;
                    };
                    for track in participant["tracks"].as_array().into_iter().flatten() {
                        self.add(publisher, track);
                    }
                }
            }
            "track_published" => {
                let publisher = message["participant"].as_str().unwrap_or_default();
                self.add(publisher, &message["track"]);
            }
            "track_unpublished" => {
                let track = message["track"].as_str()?;
                self.tracks.remove(track);
            }
            "participant_left" => {
                let publisher = message["participant"].as_str()?;
                self.tracks.retain(|_, t| t.publisher != publisher);
            }
            _ => return None,
        }
        self.order.retain(|id| self.tracks.contains_key(id));
        Some(!self.tracks.is_empty())
    }

    fn add(&mut self, publisher: &str, track: &serde_json::Value) {
        let Some(id) = track["id"].as_str() else {
            return;
        };
        let known = self.tracks.contains_key(id);
        if !known && self.tracks.len() >= MAX_TRACKS {
            return;
        }
        let layers = track["layers"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|l| l.as_str())
            .filter(|l| !l.is_empty())
            .take(MAX_LAYERS)
            .map(str::to_owned)
            .collect();
        // A track announced again (a relayed one whose layers grew) is updated in place.
        self.tracks.insert(
            id.to_owned(),
            Announced {
                publisher: publisher.to_owned(),
                video: track["kind"] == "video",
                layers,
            },
        );
        if !known {
            self.order.push(id.to_owned());
        }
    }

    /// The video tracks announced and not gone, in the order they came.
    pub fn video_tracks(&self) -> impl Iterator<Item = &str> {
        self.order
            .iter()
            .filter(|id| self.tracks.get(*id).is_some_and(|t| t.video))
            .map(String::as_str)
    }

    /// The rids of the video tracks' simulcast layers, lowest first.
    pub fn video_rids(&self) -> Vec<String> {
        let mut rids: Vec<&str> = Vec::new();
        for id in self.video_tracks() {
            for rid in self
                .tracks
                .get(id)
                .map(|t| t.layers.as_slice())
                .unwrap_or_default()
            {
                if !rids.contains(&rid.as_str()) {
                    rids.push(rid);
                }
            }
        }
        let ranks = tutti_shard_api::simulcast::rank_layers(&rids);
        let mut ranked: Vec<(u8, &str)> = ranks.into_iter().zip(rids).collect();
        ranked.sort_by_key(|(rank, _)| *rank);
        ranked.into_iter().map(|(_, rid)| rid.to_owned()).collect()
    }
}

/// Simulcast layers followed per track.
const MAX_LAYERS: usize = 8;

/// The `reconnect` event: POST to the same endpoint again (no `url`: the draft's player
/// then uses the one it first POSTed to, which seats it on a shard that is up).
pub fn reconnect() -> Event {
    Event {
        kind: EventKind::Reconnect,
        data: "{}".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;
    use serde_json::json;

    #[test]
    fn a_player_asks_for_known_events_and_unknown_ones_are_ignored() {
        assert_eq!(requested("").unwrap(), EventKind::ALL.to_vec());
        assert_eq!(
            requested(r#"["active","viewercount","reconnect"]"#).unwrap(),
            vec![EventKind::Active, EventKind::Reconnect]
        );
        assert!(requested("{\"active\": 1}").is_err());
        assert!(requested("[1, 2]").is_err());
        assert_eq!(announced(), "active,inactive,layers,reconnect");
    }

    #[tokio::test]
    async fn events_reach_the_streams_that_want_them_and_the_stream_ends_with_the_session() {
        let streams = Arc::new(Streams::default());
        // Not on the air yet: no initial `inactive`.
        streams.set_active(false);
        let all = streams.create(EventKind::ALL.to_vec()).unwrap();
        let only_reconnect = streams.create(vec![EventKind::Reconnect]).unwrap();
        let mut pulled = Box::pin(streams.pull(&all).unwrap());
        streams.set_active(true);
        streams.set_active(true);
        streams.set_active(false);
        streams.send(reconnect());
        streams.end();
        let kinds: Vec<EventKind> = pulled.by_ref().map(|e| e.kind).collect().await;
        assert_eq!(
            kinds,
            vec![EventKind::Active, EventKind::Inactive, EventKind::Reconnect]
        );
        let other: Vec<Event> = Box::pin(streams.pull(&only_reconnect).unwrap())
            .collect()
            .await;
        assert_eq!(other, vec![reconnect()]);
        assert!(streams.create(vec![]).is_err(), "the session is over");
    }

    #[tokio::test]
    async fn a_stream_is_bounded_and_a_new_pull_ends_the_old_one() {
        let streams = Arc::new(Streams::default());
        let id = streams.create(EventKind::ALL.to_vec()).unwrap();
        for _ in 0..MAX_STREAMS - 1 {
            streams.create(vec![]).unwrap();
        }
        assert_eq!(streams.create(vec![]), Err(Refused::TooMany));
        // A stage on the air for a late stream: told at once.
        streams.set_active(true);
        let late = {
            streams.delete(&id);
            streams.create(EventKind::ALL.to_vec()).unwrap()
        };
        let mut first = Box::pin(streams.pull(&late).unwrap());
        assert_eq!(first.next().await.map(|e| e.kind), Some(EventKind::Active));
        for _ in 0..MAX_QUEUED + 10 {
            streams.send(reconnect());
        }
        let second: Vec<Event> = {
            let mut second = Box::pin(streams.pull(&late).unwrap());
            // The first pull is over.
            assert_eq!(first.next().await, None);
            streams.end();
            second.by_ref().collect().await
        };
        assert_eq!(second.len(), MAX_QUEUED);
        assert!(streams.delete(&late));
        assert!(!streams.delete(&late));
        assert!(streams.pull(&late).is_none());
    }

    #[tokio::test]
    async fn a_stream_opened_later_hears_the_layers_there_are_and_each_change_once() {
        let streams = Arc::new(Streams::default());
        let cleared = || "{\"1\":[]}".to_owned();
        streams.set_layers(None, cleared);
        streams.set_layers(Some("{\"1\":[{\"rid\":\"f\"}]}".into()), cleared);
        let id = streams.create(vec![EventKind::Layers]).unwrap();
        streams.set_layers(Some("{\"1\":[{\"rid\":\"f\"}]}".into()), cleared);
        streams.set_layers(Some("{\"1\":[{\"rid\":\"h\"}]}".into()), cleared);
        // Simulcast gone: told once, and a stream opened after hears of no layers.
        streams.set_layers(None, cleared);
        streams.set_layers(None, cleared);
        let late = streams.create(vec![EventKind::Layers]).unwrap();
        streams.end();
        let data: Vec<String> = Box::pin(streams.pull(&id).unwrap())
            .map(|e| e.data)
            .collect()
            .await;
        assert_eq!(
            data,
            vec![
                "{\"1\":[{\"rid\":\"f\"}]}",
                "{\"1\":[{\"rid\":\"h\"}]}",
                "{\"1\":[]}"
            ]
        );
        assert!(streams.pull(&late).is_none(), "over, and nothing to read");
    }

    #[test]
    fn the_stage_is_on_the_air_while_a_track_is_announced() {
        let mut on_air = OnAir::default();
        let joined = json!({"type": "joined", "participants": [
            {"id": "p1", "tracks": [{"id": "a1", "kind": "audio"}, {"id": "v1", "kind": "video"}]}
        ]});
        assert_eq!(on_air.observe(&joined), Some(true));
        let gone = json!({"type": "track_unpublished", "participant": "p1", "track": "a1"});
        assert_eq!(on_air.observe(&gone), Some(true));
        let left = json!({"type": "participant_left", "participant": "p1"});
        assert_eq!(on_air.observe(&left), Some(false));
        let back = json!({"type": "track_published", "participant": "p2",
            "track": {"id": "v2", "kind": "video"}});
        assert_eq!(on_air.observe(&back), Some(true));
        assert_eq!(on_air.observe(&json!({"type": "pong"})), None);
        let simulcast = json!({"type": "track_published", "participant": "p3",
            "track": {"id": "v3", "kind": "video", "layers": ["f", "q", "h"]}});
        on_air.observe(&simulcast);
        assert_eq!(on_air.video_tracks().collect::<Vec<_>>(), vec!["v2", "v3"]);
        assert_eq!(on_air.video_rids(), vec!["q", "h", "f"]);
    }
}
