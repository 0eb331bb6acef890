//! Leader election with a `coordination.k8s.io/v1` Lease, so that of several operator
//! replicas exactly one writes placement and status.
//!
//! The holder renews the Lease every `renew` interval; a Lease not renewed for its duration
//! may be taken by another replica, which bumps `leaseTransitions`. Every write is made
//! against the `resourceVersion` that was read, so two replicas racing for an expired Lease
//! cannot both win. A replica that loses the Lease stops (the process exits and restarts
//! as a follower), rather than risk writing alongside the new leader.

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::Api;
use kube::api::PostParams;
use std::time::Duration;

/// Who asks for the Lease, and its timing.
#[derive(Debug, Clone)]
pub struct LeaseConfig {
    /// The Lease's name.
    pub name: String,
    /// This replica's identity (its pod name).
    pub identity: String,
    /// How long a Lease lasts without renewal.
    pub duration: Duration,
    /// How often the holder renews it.
    pub renew: Duration,
}

/// What to do with the Lease as it stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// There is none: create it, held by us.
    Create,
    /// We hold it: renew it.
    Renew,
    /// Its holder let it expire: take it over.
    Take,
    /// Someone else holds it.
    Wait,
}

/// Decides from the Lease's spec, our identity and the time.
pub fn decide(spec: Option<&LeaseSpec>, identity: &str, now: Timestamp) -> Decision {
    let Some(spec) = spec else {
        return Decision::Create;
    };
    match spec.holder_identity.as_deref() {
        Some(holder) if holder == identity => return Decision::Renew,
        None | Some("") => return Decision::Take,
        Some(_) => {}
    }
    let duration = SignedDuration::from_secs(i64::from(spec.lease_duration_seconds.unwrap_or(15)));
    let renewed = spec
        .renew_time
        .as_ref()
        .or(spec.acquire_time.as_ref())
        .map(|t| t.0);
    match renewed {
        Some(at) if at.checked_add(duration).is_ok_and(|expiry| expiry > now) => Decision::Wait,
        _ => Decision::Take,
    }
}

/// The Lease spec after a decision that makes us the holder.
pub fn held_spec(
    previous: Option<&LeaseSpec>,
    decision: Decision,
    config: &LeaseConfig,
    now: Timestamp,
) -> LeaseSpec {
    let previous = previous.cloned().unwrap_or_default();
    let transitions = previous.lease_transitions.unwrap_or(0);
    LeaseSpec {
        holder_identity: Some(config.identity.clone()),
        lease_duration_seconds: Some(config.duration.as_secs().min(i32::MAX as u64) as i32),
        acquire_time: match decision {
            Decision::Renew => previous.acquire_time.or(Some(MicroTime(now))),
            _ => Some(MicroTime(now)),
        },
        renew_time: Some(MicroTime(now)),
        lease_transitions: Some(match decision {
            Decision::Take => transitions.saturating_add(1),
            _ => transitions,
        }),
        ..previous
    }
}

/// One attempt to hold the Lease; whether we hold it afterwards.
pub async fn try_hold(api: &Api<Lease>, config: &LeaseConfig) -> Result<bool, kube::Error> {
    let now = Timestamp::now();
    let current = api.get_opt(&config.name).await?;
    let decision = decide(
        current.as_ref().and_then(|l| l.spec.as_ref()),
        &config.identity,
        now,
    );
    if decision == Decision::Wait {
        return Ok(false);
    }
    let spec = held_spec(
        current.as_ref().and_then(|l| l.spec.as_ref()),
        decision,
        config,
        now,
    );
    let result = match current {
        None => {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(config.name.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(spec),
            };
            api.create(&PostParams::default(), &lease).await
        }
        Some(mut lease) => {
            // `replace` carries the resourceVersion read above: a concurrent writer makes
            // this fail with 409 instead of both replicas believing they lead.
            lease.spec = Some(spec);
            api.replace(&config.name, &PostParams::default(), &lease)
                .await
        }
    };
    match result {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
        Err(err) => Err(err),
    }
}

/// Waits until this replica holds the Lease.
pub async fn acquire(api: &Api<Lease>, config: &LeaseConfig) {
    loop {
        match try_hold(api, config).await {
            Ok(true) => return,
            Ok(false) => {}
            Err(err) => tracing::warn!(%err, lease = %config.name, "lease not acquired"),
        }
        tokio::time::sleep(config.renew).await;
    }
}

/// Renews the Lease until it is lost (someone else holds it, or it could not be renewed
/// within its duration); returns then.
pub async fn keep(api: &Api<Lease>, config: &LeaseConfig) {
    let mut last_renewed = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(config.renew).await;
        match try_hold(api, config).await {
            Ok(true) => last_renewed = tokio::time::Instant::now(),
            Ok(false) => return,
            Err(err) => {
                tracing::warn!(%err, lease = %config.name, "lease not renewed");
                if last_renewed.elapsed() >= config.duration {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_second(seconds).unwrap()
    }

    fn spec(holder: &str, renewed: i64) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(holder.into()),
            lease_duration_seconds: Some(15),
            renew_time: Some(MicroTime(at(renewed))),
            acquire_time: Some(MicroTime(at(renewed))),
            lease_transitions: Some(3),
            ..LeaseSpec::default()
        }
    }

    #[test]
    fn decisions_follow_holder_and_expiry() {
        assert_eq!(decide(None, "a", at(100)), Decision::Create);
        assert_eq!(decide(Some(&spec("a", 90)), "a", at(100)), Decision::Renew);
        assert_eq!(decide(Some(&spec("b", 90)), "a", at(100)), Decision::Wait);
        assert_eq!(decide(Some(&spec("b", 80)), "a", at(100)), Decision::Take);
        assert_eq!(
            decide(Some(&LeaseSpec::default()), "a", at(100)),
            Decision::Take
        );
    }

    #[test]
    fn taking_over_counts_a_transition_and_renewing_keeps_the_acquire_time() {
        let config = LeaseConfig {
            name: "tutti-operator".into(),
            identity: "a".into(),
            duration: Duration::from_secs(15),
            renew: Duration::from_secs(5),
        };
        let taken = held_spec(Some(&spec("b", 80)), Decision::Take, &config, at(100));
        assert_eq!(taken.holder_identity.as_deref(), Some("a"));
        assert_eq!(taken.lease_transitions, Some(4));
        assert_eq!(taken.acquire_time, Some(MicroTime(at(100))));
        let renewed = held_spec(Some(&taken), Decision::Renew, &config, at(105));
        assert_eq!(renewed.acquire_time, Some(MicroTime(at(100))));
        assert_eq!(renewed.renew_time, Some(MicroTime(at(105))));
        assert_eq!(renewed.lease_transitions, Some(4));
    }
}
