//! Garbage collection of media pipelines that nothing owns any more.
//!
//! The seed system leaked Kurento pipelines whenever a client vanished; here the operator
//! compares, on a period and whenever the set of shards changes, what every shard hosts
//! (its admin API) with what the resources say it should, and releases the rest. A grace
//! period keeps it from racing a room created a moment ago.

use std::time::Duration;
use tutti_shard_api::admin::PipelineInfo;
use tutti_shard_api::client::ShardAdmin;
use tutti_store::LiveView;

/// One pipeline released.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Released {
    /// The shard it was on.
    pub shard: String,
    /// The pipeline (room) name.
    pub pipeline: String,
    /// The owner it claimed, if any.
    pub owner: Option<String>,
}

/// What one collection did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Pipelines released.
    pub released: Vec<Released>,
    /// Shards that could not be listed or refused a release.
    pub errors: Vec<String>,
}

/// Releases every pipeline older than `grace` that `owned(shard, pipeline)` disowns.
pub async fn collect<V: LiveView + ?Sized>(
    view: &V,
    admin_token: &str,
    grace: Duration,
    owned: impl Fn(&str, &PipelineInfo) -> bool,
) -> Report {
    let mut report = Report::default();
    for shard in view.shards() {
        let admin = ShardAdmin::new(&shard.admin_url, admin_token);
        let pipelines = match admin.pipelines().await {
            Ok(pipelines) => pipelines,
            Err(err) => {
                report.errors.push(format!("shard {}: {err}", shard.id));
                continue;
            }
        };
        for pipeline in pipelines {
            if pipeline.age_seconds < grace.as_secs() || owned(&shard.id, &pipeline) {
                continue;
            }
            match admin.release(&pipeline.name).await {
                Ok(()) => report.released.push(Released {
                    shard: shard.id.clone(),
                    pipeline: pipeline.name.clone(),
                    owner: pipeline.spec.owner.clone(),
                }),
                Err(err) if err.is_not_found() => {}
                Err(err) => report.errors.push(format!(
                    "shard {}: release {}: {err}",
                    shard.id, pipeline.name
                )),
            }
        }
    }
    report
}

/// `Kind/namespace/name` of an owner string.
pub fn parse_owner(owner: &str) -> Option<(&str, &str, &str)> {
    let mut parts = owner.splitn(3, '/');
    let kind = parts.next()?;
    let namespace = parts.next()?;
    let name = parts.next()?;
    (!kind.is_empty() && !namespace.is_empty() && !name.is_empty() && !name.contains('/'))
        .then_some((kind, namespace, name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_parse_strictly() {
        assert_eq!(
            parse_owner("Room/music/lesson"),
            Some(("Room", "music", "lesson"))
        );
        for bad in ["", "Room", "Room/music", "Room//x", "Room/a/b/c", "/a/b"] {
            assert_eq!(parse_owner(bad), None, "{bad}");
        }
    }
}
