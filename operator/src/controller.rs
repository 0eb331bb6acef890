//! The Room controller: the Kubernetes side of placing rooms.
//!
//! A reconcile is a short pipeline: validate the Room (pure), read its password Secret,
//! let the [`Placer`] make the live state match, then write the status with server-side
//! apply and record Events when something changed. A finalizer makes deletion release the
//! pipeline and the route first. Failures retry with a per-Room backoff that resets on
//! success; an invalid Room waits for its next change instead of retrying.

use crate::backoff::Backoff;
use crate::conditions::{OutcomeStatus, merge};
use crate::metrics::Metrics;
use crate::validation::{owner, validate_room};
use k8s_openapi::api::core::v1::{ObjectReference, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::finalizer::{self, Event as Finalizing, finalizer};
use kube::{Api, Client, Resource, ResourceExt};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::Instrument;
use tutti_control::outcome::RoomOutcome;
use tutti_control::placer::Placer;
use tutti_crds::{Room, RoomStatus, SecretKeyRef};
use tutti_store::{LiveView, LiveWriter};

/// The finalizer that makes deletion release the room's pipeline first.
pub const FINALIZER: &str = "tutti.dev/cleanup";
/// The field manager of every status the operator writes.
pub const MANAGER: &str = "tutti-operator";
/// Longest password accepted from a Secret (the gateway accepts no longer).
const MAX_PASSWORD_BYTES: usize = 256;
/// How soon a latency-placed Room waiting for its first participant is looked at again.
const AWAIT_PARTICIPANTS_RECHECK: Duration = Duration::from_secs(1);
/// How often a small latency-placed Room is looked at for a move.
const LATENCY_RECHECK: Duration = Duration::from_secs(3);

/// Why a reconcile failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The Kubernetes API refused or failed a call.
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// Adding or removing the finalizer, or a step under it, failed.
    #[error("{0}")]
    Finalizer(#[source] Box<finalizer::Error<Error>>),
    /// A step to retry later.
    #[error("{category}: {message}")]
    Retry {
        /// The metric category.
        category: &'static str,
        /// What went wrong.
        message: String,
    },
    /// A step of a ShardPool pass failed.
    #[error("{step}: {source}")]
    Pool {
        /// The step.
        step: crate::shardpool::PoolStep,
        /// What went wrong in it.
        #[source]
        source: Box<Error>,
    },
    /// The object lacks a namespace or name.
    #[error("the object has no namespace or name")]
    Unnamed,
}

impl Error {
    /// The failure category counted in metrics.
    pub fn category(&self) -> &'static str {
        match self {
            Self::Kube(_) => "kubernetes_api",
            Self::Finalizer(inner) => match inner.as_ref() {
                finalizer::Error::ApplyFailed(e) | finalizer::Error::CleanupFailed(e) => {
                    e.category()
                }
                _ => "finalizer",
            },
            Self::Retry { category, .. } => category,
            Self::Pool { step, .. } => step.category(),
            Self::Unnamed => "invalid_object",
        }
    }
}

/// Settings of the controller.
#[derive(Debug, Clone)]
pub struct Config {
    /// The gateway's public base URL, for `status.url`.
    pub public_url: Option<String>,
    /// How often a placed room is looked at again (participants, shard liveness).
    pub refresh: Duration,
    /// How long a deleted Room waits for a live shard to release its pipeline before the
    /// operator lets it go anyway.
    pub release_deadline: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            public_url: None,
            refresh: Duration::from_secs(30),
            release_deadline: Duration::from_secs(120),
        }
    }
}

/// What every reconcile shares.
pub struct Context<S> {
    /// The Kubernetes client.
    pub client: Client,
    /// The live-state side.
    pub placer: Placer<S>,
    /// Publishes Events.
    pub recorder: Recorder,
    /// Per-Room retry delays.
    pub backoff: Backoff,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Settings.
    pub config: Config,
    /// Rooms no shard could take, for the pools to grow.
    pub unplaced: Arc<tutti_control::demand::Unplaced>,
}

/// Reconciles one Room.
pub async fn reconcile_room<S>(room: Arc<Room>, ctx: Arc<Context<S>>) -> Result<Action, Error>
where
    S: LiveView + LiveWriter + Send + Sync + 'static,
{
    let namespace = room.namespace().ok_or(Error::Unnamed)?;
    let name = room.meta().name.clone().ok_or(Error::Unnamed)?;
    let span = tracing::info_span!("reconcile", object = %format!("Room/{namespace}/{name}"));
    async move {
        let api: Api<Room> = Api::namespaced(ctx.client.clone(), &namespace);
        let result = finalizer(&api, FINALIZER, room, |event| async {
            match event {
                Finalizing::Apply(room) => apply(&room, &namespace, &name, &api, &ctx).await,
                Finalizing::Cleanup(room) => cleanup(&room, &namespace, &name, &ctx).await,
            }
        })
        .await
        .map_err(|e| Error::Finalizer(Box::new(e)));
        ctx.metrics
            .reconciled("room", if result.is_ok() { "ok" } else { "error" });
        result
    }
    .instrument(span)
    .await
}

/// Retries a failed Room after its own, growing delay.
pub fn error_policy<S>(room: Arc<Room>, error: &Error, ctx: Arc<Context<S>>) -> Action {
    ctx.metrics.failed(error.category());
    let key = room.uid().unwrap_or_else(|| room.name_any());
    let delay = ctx.backoff.failed(&key);
    tracing::warn!(object = %format!("Room/{}/{}", room.namespace().unwrap_or_default(), room.name_any()),
        %error, retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}

async fn read_password(
    client: &Client,
    namespace: &str,
    reference: &SecretKeyRef,
) -> Result<String, String> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let secret = secrets
        .get_opt(&reference.name)
        .await
        .map_err(|e| format!("secret {} could not be read: {e}", reference.name))?
        .ok_or_else(|| format!("secret {} does not exist", reference.name))?;
    password_from_secret(&secret, reference)
}

/// The label a Secret must carry for a Room to take its password from it.
pub const ROOM_PASSWORD_LABEL: &str = "tutti.dev/room-password";

/// A Room's password from its Secret. The Secret must say it holds one (the label set to
/// "true"): otherwise whoever may create Rooms could point one at any Secret of its
/// namespace (a database password, a token) and, by joining, test guesses against it.
pub fn password_from_secret(secret: &Secret, reference: &SecretKeyRef) -> Result<String, String> {
    let labelled = secret
        .metadata
        .labels
        .as_ref()
        .and_then(|labels| labels.get(ROOM_PASSWORD_LABEL))
        .is_some_and(|value| value == "true");
    if !labelled {
        return Err(format!(
            "secret {} is not labelled {ROOM_PASSWORD_LABEL}: \"true\", which marks Secrets that hold room passwords",
            reference.name
        ));
    }
    let bytes = secret
        .data
        .as_ref()
        .and_then(|data| data.get(&reference.key))
        .ok_or_else(|| format!("secret {} has no key {}", reference.name, reference.key))?;
    let password = String::from_utf8(bytes.0.clone()).map_err(|_| {
        format!(
            "secret {} key {} is not UTF-8",
            reference.name, reference.key
        )
    })?;
    if password.is_empty() || password.len() > MAX_PASSWORD_BYTES {
        return Err(format!(
            "secret {} key {} must hold 1-{MAX_PASSWORD_BYTES} bytes",
            reference.name, reference.key
        ));
    }
    Ok(password)
}

async fn apply<S>(
    room: &Room,
    namespace: &str,
    name: &str,
    api: &Api<Room>,
    ctx: &Context<S>,
) -> Result<Action, Error>
where
    S: LiveView + LiveWriter + Send + Sync + 'static,
{
    let started = Instant::now();
    let key = format!("{namespace}/{name}");
    let mut latency = false;
    let outcome = match validate_room(namespace, name, &room.spec) {
        Err(problems) => RoomOutcome::Invalid(problems.join("; ")),
        Ok(valid) => {
            latency =
                tutti_control::latency::uses_latency(&valid.record, &ctx.placer.store().shards());
            let password = match &valid.password {
                None => Ok(None),
                Some(reference) => read_password(&ctx.client, namespace, reference)
                    .await
                    .map(Some),
            };
            let outcome = match password {
                Err(message) => RoomOutcome::SecretMissing(message),
                Ok(password) => {
                    ctx.placer
                        .apply(&valid.record, &valid.selector, password)
                        .await
                }
            };
            match &outcome {
                RoomOutcome::NoShard(_) => {
                    ctx.unplaced
                        .no_shard(&key, valid.record.max_participants, &valid.selector)
                }
                _ => ctx.unplaced.settled(&key),
            }
            outcome
        }
    };
    if matches!(outcome, RoomOutcome::Placed { .. }) {
        ctx.metrics.placed(started.elapsed().as_secs_f64());
    }
    let previous = room.status.clone().unwrap_or_default();
    let status = room_status(
        &previous,
        &outcome,
        name,
        room.meta().generation,
        ctx.config.public_url.as_deref(),
    );
    api.patch_status(
        name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(serde_json::json!({
            "apiVersion": "tutti.dev/v1alpha1",
            "kind": "Room",
            "status": status,
        })),
    )
    .await?;
    if let Some(event) = event_for(&previous, &outcome) {
        publish(ctx, room, &event).await;
    }
    let key = room.uid().unwrap_or_else(|| name.to_owned());
    match outcome {
        // A latency-placed room may still move once someone farther joins; nothing tells
        // the controller, so it looks again often while the room is small.
        RoomOutcome::Placed { participants, .. }
            if latency
                && (participants as usize) <= tutti_control::latency::MOVE_MAX_PARTICIPANTS =>
        {
            ctx.backoff.succeeded(&key);
            Ok(Action::requeue(LATENCY_RECHECK.min(ctx.config.refresh)))
        }
        RoomOutcome::Placed { .. } => {
            ctx.backoff.succeeded(&key);
            Ok(Action::requeue(ctx.config.refresh))
        }
        // Nothing to retry until someone edits the Room (or the other Room goes).
        RoomOutcome::Invalid(_) | RoomOutcome::NameConflict(_) => {
            ctx.backoff.succeeded(&key);
            Ok(Action::await_change())
        }
        // Nothing tells the controller when someone arrives: look again shortly.
        RoomOutcome::AwaitingParticipants => {
            ctx.backoff.succeeded(&key);
            Ok(Action::requeue(AWAIT_PARTICIPANTS_RECHECK))
        }
        RoomOutcome::SecretMissing(message) => Err(Error::Retry {
            category: "secret",
            message,
        }),
        RoomOutcome::NoShard(message) => Err(Error::Retry {
            category: "placement",
            message,
        }),
        RoomOutcome::ShardUnreachable { shard, message } => Err(Error::Retry {
            category: "shard_api",
            message: format!("shard {shard}: {message}"),
        }),
    }
}

/// The status a reconcile writes.
pub fn room_status(
    previous: &RoomStatus,
    outcome: &RoomOutcome,
    name: &str,
    generation: Option<i64>,
    public_url: Option<&str>,
) -> RoomStatus {
    let now = Time(Timestamp::now());
    let (shard, participants) = match outcome {
        RoomOutcome::Placed {
            shard,
            participants,
            ..
        } => (Some(shard.clone()), *participants),
        RoomOutcome::ShardUnreachable { shard, .. } => (Some(shard.clone()), previous.participants),
        _ => (None, 0),
    };
    RoomStatus {
        phase: outcome.phase(),
        shard,
        participants,
        url: public_url.map(|base| format!("{}/?room={name}", base.trim_end_matches('/'))),
        conditions: merge(
            &previous.conditions,
            &outcome.conditions(),
            &now,
            generation,
        ),
        observed_generation: generation,
    }
}

/// The Event worth recording for this outcome, given the status before it: only changes
/// are recorded (the Recorder folds repeats into a series anyway).
pub fn event_for(previous: &RoomStatus, outcome: &RoomOutcome) -> Option<Event> {
    let previous_reason = previous
        .conditions
        .iter()
        .find(|c| c.type_ == "Degraded" && c.status == "True")
        .map(|c| c.reason.clone());
    let event = |type_, reason: &str, action: &str, note: String| Event {
        type_,
        reason: reason.to_owned(),
        note: Some(note),
        action: action.to_owned(),
        secondary: None,
    };
    match outcome {
        RoomOutcome::Placed { shard, moved, .. } => {
            if previous.shard.as_deref() == Some(shard.as_str()) && previous_reason.is_none() {
                None
            } else if *moved {
                Some(event(
                    EventType::Warning,
                    "Migrated",
                    "Place",
                    format!(
                        "moved to shard {shard}: its shard is gone, or draining while the room was empty"
                    ),
                ))
            } else {
                Some(event(
                    EventType::Normal,
                    "Placed",
                    "Place",
                    format!("hosted on shard {shard}"),
                ))
            }
        }
        other => {
            let [_, _, degraded] = other.conditions();
            (previous_reason.as_deref() != Some(degraded.reason)).then(|| {
                event(
                    EventType::Warning,
                    degraded.reason,
                    "Place",
                    degraded.message,
                )
            })
        }
    }
}

async fn publish<S>(ctx: &Context<S>, room: &Room, event: &Event) {
    let reference: ObjectReference = room.object_ref(&());
    if let Err(err) = ctx.recorder.publish(event, &reference).await {
        tracing::warn!(%err, reason = %event.reason, "event not recorded");
    }
}

async fn cleanup<S>(
    room: &Room,
    namespace: &str,
    name: &str,
    ctx: &Context<S>,
) -> Result<Action, Error>
where
    S: LiveView + LiveWriter + Send + Sync + 'static,
{
    let owner = owner(namespace, name);
    ctx.unplaced.settled(&format!("{namespace}/{name}"));
    match ctx.placer.release(name, &owner).await {
        Ok(shard) => {
            if let Some(shard) = shard {
                let note = format!("pipeline released on shard {shard}");
                publish(
                    ctx,
                    room,
                    &Event {
                        type_: EventType::Normal,
                        reason: "Released".into(),
                        note: Some(note),
                        action: "Release".into(),
                        secondary: None,
                    },
                )
                .await;
            }
            Ok(Action::await_change())
        }
        Err(err) => {
            let deleting_for = room
                .meta()
                .deletion_timestamp
                .as_ref()
                .map(|t| Timestamp::now().duration_since(t.0).unsigned_abs())
                .unwrap_or_default();
            if deleting_for < ctx.config.release_deadline {
                return Err(Error::Retry {
                    category: "release",
                    message: err.to_string(),
                });
            }
            // The shard has refused for too long: let the Room go; garbage collection
            // releases the pipeline if the shard ever answers again.
            ctx.placer
                .forget(name, &owner)
                .await
                .map_err(|e| Error::Retry {
                    category: "release",
                    message: e.to_string(),
                })?;
            publish(
                ctx,
                room,
                &Event {
                    type_: EventType::Warning,
                    reason: "ReleaseAbandoned".into(),
                    note: Some(format!(
                        "{err}; deletion goes ahead, garbage collection will retry"
                    )),
                    action: "Release".into(),
                    secondary: None,
                },
            )
            .await;
            Ok(Action::await_change())
        }
    }
}

#[cfg(test)]
mod secret_tests {
    use super::*;
    use k8s_openapi::ByteString;

    fn secret(labels: &[(&str, &str)], password: &[u8]) -> Secret {
        let mut secret = Secret::default();
        secret.metadata.labels = Some(
            labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        );
        secret.data = Some(
            [("password".to_owned(), ByteString(password.to_vec()))]
                .into_iter()
                .collect(),
        );
        secret
    }

    #[test]
    fn only_secrets_marked_as_room_passwords_give_one() {
        let reference = SecretKeyRef {
            name: "lesson".into(),
            key: "password".into(),
        };
        let marked = [(ROOM_PASSWORD_LABEL, "true")];
        assert_eq!(
            password_from_secret(&secret(&marked, b"arco"), &reference).as_deref(),
            Ok("arco")
        );
        let unmarked = password_from_secret(&secret(&[], b"db-password"), &reference);
        assert!(unmarked.unwrap_err().contains(ROOM_PASSWORD_LABEL));
        let wrong_value = [(ROOM_PASSWORD_LABEL, "yes")];
        assert!(password_from_secret(&secret(&wrong_value, b"arco"), &reference).is_err());
        assert!(password_from_secret(&secret(&marked, b""), &reference).is_err());
        assert!(password_from_secret(&secret(&marked, &[0xff, 0xfe]), &reference).is_err());
        let other_key = SecretKeyRef {
            name: "lesson".into(),
            key: "pin".into(),
        };
        assert!(password_from_secret(&secret(&marked, b"arco"), &other_key).is_err());
    }
}
