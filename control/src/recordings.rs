//! Recordings over the live state: each recording asked for ([`RecordingRecord`]) runs on
//! the shard holding its room (`PUT /v1/recordings/{name}` there), follows the room when
//! it moves (a new segment on the new shard, the gap between them marked by their times),
//! stops when asked and is forgotten when its record goes; what the shards report is kept
//! in its [`RecordingStateRecord`], which the gateway's API and the `Recording` resource
//! show.
//!
//! [`decide`] is the pure part: from the record, the state and where the room is, the
//! steps to take. [`RecordingDriver`] takes them.

use tutti_shard_api::client::{AdminCallError, ShardAdmin};
use tutti_shard_api::recording::{RecordingSpec, RecordingStatus};
use tutti_store::{
    LiveView, LiveWriter, RecordingRecord, RecordingSegment, RecordingStateRecord, ShardRecord,
};

/// Segments one recording keeps at most (the oldest go first): a room that moves more
/// often than this is not recorded whole anyway.
const MAX_SEGMENTS: usize = 16;
/// Files a state lists at most, all of the current segment (earlier segments keep their
/// totals): etcd holds values of up to 64 KiB, and a state that grew past it would vanish.
const MAX_STATE_FILES: usize = 64;
/// The largest state written; past it the file lists go.
const MAX_STATE_BYTES: usize = 48 * 1024;

/// One thing to do for a recording.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Ask `shard` to run it (start it, or keep it pointed at the room) and read its
    /// status; `new_segment` when it starts there.
    Run {
        /// The shard holding the room.
        shard: String,
        /// It was not running there.
        new_segment: bool,
    },
    /// Stop it on `shard` and keep what it reports.
    Stop {
        /// Where it runs.
        shard: String,
    },
    /// Read how a stopped recording is getting on (composing) on `shard`.
    Follow {
        /// Where it ran.
        shard: String,
    },
    /// Its shard went away before it stopped: it no longer runs anywhere.
    Lost,
    /// Forget its state (its record is gone).
    Forget,
}

/// The steps for one recording. `record`: what was asked (`None`: its record is gone);
/// `state`: what the loop saw last; `room_shard`: the live shard holding the room;
/// `alive`: whether a shard is live.
pub fn decide(
    record: Option<&RecordingRecord>,
    state: Option<&RecordingStateRecord>,
    room_shard: Option<&str>,
    alive: impl Fn(&str) -> bool,
) -> Vec<Step> {
    let running_on = state.and_then(|s| s.shard.as_deref());
    let Some(record) = record else {
        return match (state, running_on) {
            (None, _) => Vec::new(),
            (Some(_), Some(shard)) if alive(shard) => vec![
                Step::Stop {
                    shard: shard.to_owned(),
                },
                Step::Forget,
            ],
            (Some(_), _) => vec![Step::Forget],
        };
    };
    if record.stopped {
        return match running_on {
            Some(shard) if alive(shard) => vec![Step::Stop {
                shard: shard.to_owned(),
            }],
            Some(_) => vec![Step::Lost],
            None => {
                let last = state.and_then(|s| s.segments.last());
                match last {
                    Some(segment)
                        if matches!(
                            segment.status.phase.as_str(),
                            "Stopping" | "Composing" | "Uploading"
                        ) && alive(&segment.shard) =>
                    {
                        vec![Step::Follow {
                            shard: segment.shard.clone(),
                        }]
                    }
                    _ => Vec::new(),
                }
            }
        };
    }
    match (running_on, room_shard) {
        (Some(current), Some(target)) if current == target => vec![Step::Run {
            shard: target.to_owned(),
            new_segment: false,
        }],
        (Some(current), Some(target)) => {
            let mut steps = Vec::new();
            if alive(current) {
                steps.push(Step::Stop {
                    shard: current.to_owned(),
                });
            }
            steps.push(Step::Run {
                shard: target.to_owned(),
                new_segment: true,
            });
            steps
        }
        (None, Some(target)) => vec![Step::Run {
            shard: target.to_owned(),
            new_segment: true,
        }],
        // The room is nowhere now: it keeps running where it is, unless that shard died.
        (Some(current), None) if !alive(current) => vec![Step::Lost],
        _ => Vec::new(),
    }
}

/// Takes the steps [`decide`] gives, against the shards' admin APIs and the live state.
pub struct RecordingDriver<S> {
    store: S,
    admin_token: String,
}

/// What one pass did to one recording: its state changed, or a shard refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Driven {
    /// The recording.
    pub name: String,
    /// A problem met (kept in its state too).
    pub problem: Option<String>,
}

impl<S: LiveView + LiveWriter> RecordingDriver<S> {
    /// A driver over `store` calling shards with `admin_token`.
    pub fn new(store: S, admin_token: String) -> Self {
        Self { store, admin_token }
    }

    fn admin(&self, shard: &ShardRecord) -> ShardAdmin {
        ShardAdmin::new(&shard.admin_url, &self.admin_token)
    }

    /// One pass over every recording and every state left without one.
    pub async fn pass(&self) -> Vec<Driven> {
        let records = self.store.recordings();
        let mut names: Vec<String> = records.iter().map(|r| r.name.clone()).collect();
        for state in self.store.recording_states() {
            if !names.contains(&state.name) {
                names.push(state.name);
            }
        }
        let mut driven = Vec::new();
        for name in names {
            if let Some(outcome) = self.drive(&name).await {
                driven.push(outcome);
            }
        }
        driven
    }

    /// Drives one recording; what changed, if anything.
    pub async fn drive(&self, name: &str) -> Option<Driven> {
        let record = self.store.recording(name);
        let before = self.store.recording_state(name);
        let room_shard = record.as_ref().and_then(|r| {
            let route = self.store.route(&r.room)?;
            self.store.shard(&route.shard).map(|s| s.id)
        });
        let steps = decide(
            record.as_ref(),
            before.as_ref(),
            room_shard.as_deref(),
            |id| self.store.shard(id).is_some(),
        );
        if steps.is_empty() {
            return None;
        }
        let mut state = before.clone().unwrap_or_else(|| RecordingStateRecord {
            name: name.to_owned(),
            ..RecordingStateRecord::default()
        });
        let mut problem = None;
        for step in steps {
            match step {
                Step::Forget => {
                    if let Err(err) = self.store.delete_recording_state(name).await {
                        problem = Some(err.to_string());
                    }
                    return Some(Driven {
                        name: name.to_owned(),
                        problem,
                    });
                }
                Step::Lost => {
                    state.shard = None;
                    state.problem = Some("its shard went away while it recorded".into());
                }
                Step::Run { shard, new_segment } => {
                    let (Some(record), Some(shard_record)) =
                        (record.as_ref(), self.store.shard(&shard))
                    else {
                        continue;
                    };
                    let spec = RecordingSpec {
                        room: record.room.clone(),
                        from: shard_record.signal_url.clone(),
                        compose: record.compose,
                    };
                    match self.admin(&shard_record).put_recording(name, &spec).await {
                        Ok(status) => {
                            record_status(&mut state, &shard, status, new_segment);
                            state.shard = Some(shard);
                            state.problem = None;
                        }
                        Err(err) => problem = Some(describe(&shard, &err)),
                    }
                }
                Step::Stop { shard } => {
                    let Some(shard_record) = self.store.shard(&shard) else {
                        continue;
                    };
                    match self.admin(&shard_record).stop_recording(name).await {
                        Ok(status) => {
                            record_status(&mut state, &shard, status, false);
                            state.shard = None;
                        }
                        // The shard no longer has it (it restarted): nothing runs there.
                        Err(err) if err.is_not_found() => state.shard = None,
                        // Still running there: nothing else is done (no second recorder, no
                        // forgetting it) until a later pass stops it.
                        Err(err) => {
                            problem = Some(describe(&shard, &err));
                            break;
                        }
                    }
                }
                Step::Follow { shard } => {
                    let Some(shard_record) = self.store.shard(&shard) else {
                        continue;
                    };
                    match self.admin(&shard_record).recording(name).await {
                        Ok(status) => record_status(&mut state, &shard, status, false),
                        Err(err) => problem = Some(describe(&shard, &err)),
                    }
                }
            }
        }
        if problem.is_some() {
            state.problem.clone_from(&problem);
        }
        fit(&mut state);
        if before.as_ref() == Some(&state) {
            return problem.map(|problem| Driven {
                name: name.to_owned(),
                problem: Some(problem),
            });
        }
        if let Err(err) = self.store.put_recording_state(state).await {
            problem = Some(err.to_string());
        }
        Some(Driven {
            name: name.to_owned(),
            problem,
        })
    }
}

/// Keeps a state within what etcd holds: only the current segment lists its files, at most
/// [`MAX_STATE_FILES`] of them; if it is still too large, no file is listed.
fn fit(state: &mut RecordingStateRecord) {
    let segments = state.segments.len();
    for segment in state.segments.iter_mut().take(segments.saturating_sub(1)) {
        segment.status.files.clear();
    }
    if let Some(last) = state.segments.last_mut() {
        last.status.files.truncate(MAX_STATE_FILES);
    }
    let size = serde_json::to_vec(state).map_or(usize::MAX, |v| v.len());
    if size > MAX_STATE_BYTES {
        for segment in &mut state.segments {
            segment.status.files.clear();
        }
    }
}

fn describe(shard: &str, err: &AdminCallError) -> String {
    format!("shard {shard}: {err}")
}

/// Keeps what `shard` reported: in a new segment, or in the last one of that shard (unless
/// it reports another recording there: the shard restarted under the same name).
fn record_status(
    state: &mut RecordingStateRecord,
    shard: &str,
    status: RecordingStatus,
    new_segment: bool,
) {
    let last_here = state
        .segments
        .last_mut()
        .filter(|s| s.shard == shard && s.status.path == status.path && !new_segment);
    match last_here {
        Some(segment) => segment.status = status,
        None => {
            state.segments.push(RecordingSegment {
                shard: shard.to_owned(),
                status,
            });
            if state.segments.len() > MAX_SEGMENTS {
                state.segments.remove(0);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(stopped: bool) -> RecordingRecord {
        RecordingRecord {
            name: "r".into(),
            room: "lesson".into(),
            compose: false,
            stopped,
            owner: None,
        }
    }

    fn state(shard: Option<&str>, last: Option<(&str, &str)>) -> RecordingStateRecord {
        RecordingStateRecord {
            name: "r".into(),
            shard: shard.map(str::to_owned),
            segments: last
                .map(|(shard, phase)| RecordingSegment {
                    shard: shard.into(),
                    status: RecordingStatus::empty("lesson", phase),
                })
                .into_iter()
                .collect(),
            problem: None,
        }
    }

    fn run(shard: &str, new_segment: bool) -> Step {
        Step::Run {
            shard: shard.into(),
            new_segment,
        }
    }

    fn stop(shard: &str) -> Step {
        Step::Stop {
            shard: shard.into(),
        }
    }

    #[test]
    fn a_recording_runs_where_its_room_is_and_follows_it() {
        let all = |_: &str| true;
        // Asked for, the room placed: it starts there.
        assert_eq!(
            decide(Some(&record(false)), None, Some("s1"), all),
            vec![run("s1", true)]
        );
        // Running there: kept running (and its status read).
        let on_s1 = state(Some("s1"), Some(("s1", "Recording")));
        assert_eq!(
            decide(Some(&record(false)), Some(&on_s1), Some("s1"), all),
            vec![run("s1", false)]
        );
        // The room moved to s2: stopped on s1, a new segment on s2.
        assert_eq!(
            decide(Some(&record(false)), Some(&on_s1), Some("s2"), all),
            vec![stop("s1"), run("s2", true)]
        );
        // s1 died and the room is on s2: only the new segment.
        assert_eq!(
            decide(Some(&record(false)), Some(&on_s1), Some("s2"), |s| s
                != "s1"),
            vec![run("s2", true)]
        );
        // s1 died and the room is nowhere yet: lost until it is placed again.
        assert_eq!(
            decide(Some(&record(false)), Some(&on_s1), None, |s| s != "s1"),
            vec![Step::Lost]
        );
        // The room is nowhere but s1 lives: nothing to do.
        assert!(decide(Some(&record(false)), Some(&on_s1), None, all).is_empty());
        // The room not placed yet: wait.
        assert!(decide(Some(&record(false)), None, None, all).is_empty());
    }

    #[test]
    fn a_stopped_recording_stops_is_followed_while_composing_and_its_state_goes_with_its_record() {
        let all = |_: &str| true;
        let on_s1 = state(Some("s1"), Some(("s1", "Recording")));
        assert_eq!(
            decide(Some(&record(true)), Some(&on_s1), Some("s1"), all),
            vec![stop("s1")]
        );
        assert_eq!(
            decide(Some(&record(true)), Some(&on_s1), Some("s1"), |_| false),
            vec![Step::Lost]
        );
        let stopping = state(None, Some(("s1", "Stopping")));
        assert_eq!(
            decide(Some(&record(true)), Some(&stopping), Some("s1"), all),
            vec![Step::Follow { shard: "s1".into() }]
        );
        let composing = state(None, Some(("s1", "Composing")));
        assert_eq!(
            decide(Some(&record(true)), Some(&composing), Some("s1"), all),
            vec![Step::Follow { shard: "s1".into() }]
        );
        let done = state(None, Some(("s1", "Stopped")));
        assert!(decide(Some(&record(true)), Some(&done), Some("s1"), all).is_empty());
        // A stopped recording never starts again, wherever the room is.
        assert!(decide(Some(&record(true)), None, Some("s1"), all).is_empty());
        // Its record gone: stopped where it runs, then forgotten.
        assert_eq!(
            decide(None, Some(&on_s1), Some("s1"), all),
            vec![stop("s1"), Step::Forget]
        );
        assert_eq!(decide(None, Some(&done), None, all), vec![Step::Forget]);
        assert!(decide(None, None, None, all).is_empty());
    }

    #[test]
    fn a_state_stays_small_enough_for_etcd() {
        let mut s = state(Some("s1"), Some(("s1", "Recording")));
        let file = tutti_shard_api::recording::RecordedFile {
            file: "x".repeat(100),
            name: "n".repeat(64),
            kind: "video".into(),
            codec: "video/VP8".into(),
            duration_ms: 1,
            bytes: 1,
            complete: true,
        };
        let mut status = s.segments[0].status.clone();
        status.files = vec![file; 5_000];
        for i in 0..MAX_SEGMENTS {
            status.path = format!("lesson/{i}");
            record_status(&mut s, &format!("s{i}"), status.clone(), true);
        }
        fit(&mut s);
        let size = serde_json::to_vec(&s).unwrap().len();
        assert!(size <= MAX_STATE_BYTES, "{size} bytes");
        assert!(
            s.segments[..MAX_SEGMENTS - 1]
                .iter()
                .all(|g| g.status.files.is_empty())
        );
        assert!(s.segments.last().unwrap().status.files.len() <= MAX_STATE_FILES);
    }

    #[test]
    fn statuses_go_into_their_segments() {
        let mut s = state(Some("s1"), Some(("s1", "Recording")));
        let mut status = s.segments[0].status.clone();
        status.duration_ms = 5_000;
        record_status(&mut s, "s1", status.clone(), false);
        assert_eq!(s.segments.len(), 1);
        assert_eq!(s.segments[0].status.duration_ms, 5_000);
        record_status(&mut s, "s2", status.clone(), true);
        assert_eq!(s.segments.len(), 2);
        // The same shard reporting another recording (it restarted): a new segment.
        let mut restarted = status.clone();
        restarted.path = "lesson/later".into();
        record_status(&mut s, "s2", restarted, false);
        assert_eq!(s.segments.len(), 3);
        for _ in 0..MAX_SEGMENTS {
            record_status(&mut s, "s3", status.clone(), true);
        }
        assert_eq!(s.segments.len(), MAX_SEGMENTS);
    }
}
