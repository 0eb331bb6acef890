//! HLS in a cluster: each broadcast that asks for it is packaged by the shard holding its
//! stage (the origin), through that shard's admin API (`PUT /v1/hls/{broadcast}` with the
//! stage and the shard's own signaling URL); a packager on any other shard, or of a
//! broadcast that no longer asks, is stopped. Gateways serve the files from the origin.
//!
//! The decisions are a pure function of what is asked and what shards report running.

use std::collections::BTreeSet;
use tutti_shard_api::client::{AdminCallError, ShardAdmin};
use tutti_shard_api::hls::{Packaging, PackagingSpec};
use tutti_store::{LiveView, ShardRecord};

/// A broadcast to package, where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wanted {
    /// The broadcast.
    pub broadcast: String,
    /// Its stage room.
    pub room: String,
    /// The shard holding the stage.
    pub shard: String,
    /// That shard's signaling URL.
    pub from: String,
}

/// What to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Start (or point at the stage's shard) the broadcast's packager on `shard`.
    Package {
        /// The shard.
        shard: String,
        /// What to package.
        wanted: Wanted,
    },
    /// Stop a packager.
    Stop {
        /// The shard running it.
        shard: String,
        /// Its broadcast.
        broadcast: String,
    },
}

/// The steps that bring `running` (per shard, as reported) to `wanted`.
pub fn decide(wanted: &[Wanted], running: &[(String, Packaging)]) -> Vec<Step> {
    let mut steps = Vec::new();
    for want in wanted {
        let current = running.iter().any(|(shard, p)| {
            *shard == want.shard
                && p.broadcast == want.broadcast
                && p.room == want.room
                && p.from == want.from
        });
        if !current {
            steps.push(Step::Package {
                shard: want.shard.clone(),
                wanted: want.clone(),
            });
        }
    }
    for (shard, packaging) in running {
        let wanted_here = wanted.iter().any(|w| {
            w.shard == *shard && w.broadcast == packaging.broadcast && w.room == packaging.room
        });
        if !wanted_here {
            steps.push(Step::Stop {
                shard: shard.clone(),
                broadcast: packaging.broadcast.clone(),
            });
        }
    }
    steps
}

/// Runs the packagers the live state asks for.
pub struct HlsDriver<S> {
    store: S,
    admin_token: String,
    /// Shards seen running a packager, or never asked yet: asked what they run.
    watched: std::sync::Mutex<Option<BTreeSet<String>>>,
}

impl<S: LiveView> HlsDriver<S> {
    /// A driver over `store`, calling shards with `admin_token`.
    pub fn new(store: S, admin_token: String) -> Self {
        Self {
            store,
            admin_token,
            watched: std::sync::Mutex::new(None),
        }
    }

    fn admin(&self, shard: &ShardRecord) -> ShardAdmin {
        ShardAdmin::new(&shard.admin_url, &self.admin_token)
    }

    /// The broadcasts to package now, each on the shard holding its stage.
    pub fn wanted(&self) -> Vec<Wanted> {
        self.store
            .broadcasts()
            .into_iter()
            .filter(|b| b.hls)
            .filter_map(|b| {
                let route = self.store.route(&b.stage)?;
                let shard = self.store.shard(&route.shard)?;
                Some(Wanted {
                    broadcast: b.name,
                    room: b.stage,
                    shard: shard.id,
                    from: shard.signal_url,
                })
            })
            .collect()
    }

    /// One pass: asks the shards that matter what they package, then starts and stops
    /// packagers. The problems met, by shard.
    pub async fn pass(&self) -> Vec<(String, String)> {
        let wanted = self.wanted();
        let shards = self.store.shards();
        // The first pass asks every shard (packagers a restarted operator does not know
        // of); later ones the origins and the shards seen packaging.
        let asked: Vec<&ShardRecord> = {
            let watched = self.watched.lock().ok().and_then(|w| w.clone());
            shards
                .iter()
                .filter(|s| {
                    watched.as_ref().is_none_or(|w| w.contains(&s.id))
                        || wanted.iter().any(|w| w.shard == s.id)
                })
                .collect()
        };
        let mut running = Vec::new();
        let mut problems = Vec::new();
        let mut seen = BTreeSet::new();
        for shard in asked {
            match self.admin(shard).packagings().await {
                Ok(list) => {
                    if !list.is_empty() {
                        seen.insert(shard.id.clone());
                    }
                    running.extend(list.into_iter().map(|p| (shard.id.clone(), p)));
                }
                // Shards without `--hls-dir` package nothing.
                Err(AdminCallError::Status { status, .. }) if status.as_u16() == 501 => {}
                Err(err) => {
                    // Unknown: nothing of it is stopped, and it is asked again.
                    seen.insert(shard.id.clone());
                    problems.push((shard.id.clone(), err.to_string()));
                }
            }
        }
        for step in decide(&wanted, &running) {
            match step {
                Step::Package { shard, wanted } => {
                    let Some(record) = self.store.shard(&shard) else {
                        continue;
                    };
                    let spec = PackagingSpec {
                        room: wanted.room.clone(),
                        from: wanted.from.clone(),
                    };
                    match self
                        .admin(&record)
                        .put_packaging(&wanted.broadcast, &spec)
                        .await
                    {
                        Ok(_) => {
                            seen.insert(shard.clone());
                        }
                        Err(err) => problems.push((shard, err.to_string())),
                    }
                }
                Step::Stop { shard, broadcast } => {
                    let Some(record) = self.store.shard(&shard) else {
                        continue;
                    };
                    if let Err(err) = self.admin(&record).stop_packaging(&broadcast).await {
                        problems.push((shard, err.to_string()));
                    }
                }
            }
        }
        if let Ok(mut watched) = self.watched.lock() {
            *watched = Some(seen);
        }
        problems
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn want(broadcast: &str, shard: &str) -> Wanted {
        Wanted {
            broadcast: broadcast.into(),
            room: format!("{broadcast}-stage"),
            shard: shard.into(),
            from: format!("ws://{shard}/v1/signal"),
        }
    }

    fn runs(shard: &str, broadcast: &str) -> (String, Packaging) {
        (
            shard.into(),
            Packaging {
                broadcast: broadcast.into(),
                room: format!("{broadcast}-stage"),
                from: format!("ws://{shard}/v1/signal"),
            },
        )
    }

    #[test]
    fn each_broadcast_is_packaged_on_its_origin_and_nowhere_else() {
        assert_eq!(
            decide(&[want("gala", "s1")], &[]),
            vec![Step::Package {
                shard: "s1".into(),
                wanted: want("gala", "s1")
            }]
        );
        assert_eq!(decide(&[want("gala", "s1")], &[runs("s1", "gala")]), vec![]);
        // The stage moved: packaged on its new shard, stopped on the old one.
        assert_eq!(
            decide(&[want("gala", "s2")], &[runs("s1", "gala")]),
            vec![
                Step::Package {
                    shard: "s2".into(),
                    wanted: want("gala", "s2")
                },
                Step::Stop {
                    shard: "s1".into(),
                    broadcast: "gala".into()
                },
            ]
        );
        // No longer asked for.
        assert_eq!(
            decide(&[], &[runs("s1", "gala")]),
            vec![Step::Stop {
                shard: "s1".into(),
                broadcast: "gala".into()
            }]
        );
        // Its shard's address changed: asked again with the new one (the same packager).
        let mut moved = runs("s1", "gala");
        moved.1.from = "ws://old/v1/signal".into();
        assert_eq!(
            decide(&[want("gala", "s1")], &[moved]),
            vec![Step::Package {
                shard: "s1".into(),
                wanted: want("gala", "s1")
            }]
        );
    }
}
