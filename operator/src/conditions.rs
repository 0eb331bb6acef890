//! Status conditions from what a reconcile found, keeping each condition's
//! `lastTransitionTime` when its status did not change.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use tutti_control::outcome::RoomOutcome;
use tutti_crds::{Condition, RoomPhase};

/// A condition as computed, before times are attached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wanted {
    /// `Ready`, `Placed` or `Degraded`.
    pub kind: &'static str,
    /// True or False.
    pub status: bool,
    /// CamelCase reason.
    pub reason: &'static str,
    /// Human-readable detail.
    pub message: String,
}

fn wanted(kind: &'static str, status: bool, reason: &'static str, message: &str) -> Wanted {
    Wanted {
        kind,
        status,
        reason,
        message: message.to_owned(),
    }
}

/// What a Room's status says about a placement's outcome.
pub trait OutcomeStatus {
    /// The phase it puts the Room in.
    fn phase(&self) -> RoomPhase;
    /// Ready, Placed and Degraded, in that order.
    fn conditions(&self) -> [Wanted; 3];
}

impl OutcomeStatus for RoomOutcome {
    fn phase(&self) -> RoomPhase {
        match self {
            Self::Placed {
                participants: 0, ..
            } => RoomPhase::Placed,
            Self::Placed { .. } => RoomPhase::Active,
            Self::Invalid(_) | Self::NameConflict(_) => RoomPhase::Failed,
            Self::SecretMissing(_) | Self::NoShard(_) | Self::AwaitingParticipants => {
                RoomPhase::Pending
            }
            Self::ShardUnreachable { .. } => RoomPhase::Migrating,
        }
    }

    fn conditions(&self) -> [Wanted; 3] {
        match self {
            Self::Placed { shard, .. } => {
                let on = format!("hosted on shard {shard}");
                [
                    wanted("Ready", true, "Hosted", &on),
                    wanted("Placed", true, "OnShard", &on),
                    wanted("Degraded", false, "AsExpected", ""),
                ]
            }
            Self::Invalid(message) => [
                wanted("Ready", false, "InvalidSpec", message),
                wanted("Placed", false, "InvalidSpec", message),
                wanted("Degraded", true, "InvalidSpec", message),
            ],
            Self::NameConflict(message) => [
                wanted("Ready", false, "NameConflict", message),
                wanted("Placed", false, "NameConflict", message),
                wanted("Degraded", true, "NameConflict", message),
            ],
            Self::SecretMissing(message) => [
                wanted("Ready", false, "SecretMissing", message),
                wanted("Placed", false, "SecretMissing", message),
                wanted("Degraded", true, "SecretMissing", message),
            ],
            Self::AwaitingParticipants => {
                let why = "placed near its participants once the first one arrives";
                [
                    wanted("Ready", false, "AwaitingParticipants", why),
                    wanted("Placed", false, "AwaitingParticipants", why),
                    wanted("Degraded", false, "AsExpected", ""),
                ]
            }
            Self::NoShard(message) => [
                wanted("Ready", false, "NoShard", message),
                wanted("Placed", false, "NoShard", message),
                wanted("Degraded", true, "NoShard", message),
            ],
            Self::ShardUnreachable { shard, message } => {
                let text = format!("shard {shard}: {message}");
                [
                    wanted("Ready", false, "ShardUnreachable", &text),
                    wanted(
                        "Placed",
                        true,
                        "OnShard",
                        &format!("routed to shard {shard}"),
                    ),
                    wanted("Degraded", true, "ShardUnreachable", &text),
                ]
            }
        }
    }
}

/// Conditions to write: `wanted`, keeping the `lastTransitionTime` of any condition whose
/// status is unchanged from `current`, and `now` for the others.
pub fn merge(
    current: &[Condition],
    wanted: &[Wanted],
    now: &Time,
    generation: Option<i64>,
) -> Vec<Condition> {
    wanted
        .iter()
        .map(|w| {
            let status = if w.status { "True" } else { "False" };
            let since = current
                .iter()
                .find(|c| c.type_ == w.kind && c.status == status)
                .map_or_else(|| now.clone(), |c| c.last_transition_time.clone());
            Condition {
                type_: w.kind.to_owned(),
                status: status.to_owned(),
                reason: w.reason.to_owned(),
                message: w.message.clone(),
                last_transition_time: since,
                observed_generation: generation,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::Timestamp;

    fn at(seconds: i64) -> Time {
        Time(Timestamp::from_second(seconds).unwrap())
    }

    #[test]
    fn transition_times_move_only_when_a_status_changes() {
        let placed = RoomOutcome::Placed {
            shard: "s1".into(),
            participants: 0,
            moved: false,
        };
        let first = merge(&[], &placed.conditions(), &at(100), Some(1));
        assert!(first.iter().all(|c| c.last_transition_time == at(100)));
        // Same outcome later: nothing transitions.
        let again = merge(&first, &placed.conditions(), &at(200), Some(2));
        assert!(again.iter().all(|c| c.last_transition_time == at(100)));
        assert!(again.iter().all(|c| c.observed_generation == Some(2)));
        // The shard stops answering: Ready and Degraded flip, Placed stays.
        let down = RoomOutcome::ShardUnreachable {
            shard: "s1".into(),
            message: "connection refused".into(),
        };
        let later = merge(&again, &down.conditions(), &at(300), Some(2));
        let time = |kind: &str| {
            later
                .iter()
                .find(|c| c.type_ == kind)
                .unwrap()
                .last_transition_time
                .clone()
        };
        assert_eq!(time("Ready"), at(300));
        assert_eq!(time("Degraded"), at(300));
        assert_eq!(time("Placed"), at(100));
    }

    #[test]
    fn phases_follow_outcomes() {
        let placed = |participants| RoomOutcome::Placed {
            shard: "s".into(),
            participants,
            moved: false,
        };
        assert_eq!(placed(0).phase(), RoomPhase::Placed);
        assert_eq!(placed(3).phase(), RoomPhase::Active);
        assert_eq!(RoomOutcome::Invalid("x".into()).phase(), RoomPhase::Failed);
        assert_eq!(RoomOutcome::NoShard("x".into()).phase(), RoomPhase::Pending);
        let invalid = RoomOutcome::Invalid("bad".into()).conditions();
        assert_eq!((invalid[2].kind, invalid[2].status), ("Degraded", true));
        // A latency room before anyone arrives: pending, not degraded.
        let waiting = RoomOutcome::AwaitingParticipants;
        assert_eq!(waiting.phase(), RoomPhase::Pending);
        let [ready, placed, degraded] = waiting.conditions();
        assert_eq!(
            (ready.status, ready.reason),
            (false, "AwaitingParticipants")
        );
        assert_eq!(
            (placed.status, placed.reason),
            (false, "AwaitingParticipants")
        );
        assert!(!degraded.status);
    }
}
