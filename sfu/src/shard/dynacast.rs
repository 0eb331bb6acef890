//! Tells each publisher which simulcast layers its subscribers need (`media::dynacast`):
//! a layer that no subscriber receives, whether it shows the video small, hides it or
//! cannot take more over its downlink, is paused at the publisher.

use super::SessionId;
use super::router::MediaRouter;
use crate::media::dynacast::{MAX_LAYERS, needed_layer};
use std::time::Instant;
use tutti_shard_api::protocol::ServerMessage;

impl MediaRouter {
    /// Updates which layers each simulcast track's publisher is to encode; returns a
    /// message for each publisher that must change what it encodes.
    pub(super) fn switch_publisher_layers(
        &mut self,
        now: Instant,
    ) -> Vec<(SessionId, ServerMessage)> {
        let mut out = Vec::new();
        for track in self.tracks.values_mut() {
            let Some(switch) = track.layer_switch.as_mut() else {
                continue;
            };
            let count = track.layers.len().min(MAX_LAYERS);
            let mut ranks = [0u8; MAX_LAYERS];
            for (rank, layer) in ranks.iter_mut().zip(&track.layers) {
                *rank = layer.rank;
            }
            let mut needed = [false; MAX_LAYERS];
            for entry in &track.downtracks {
                if let Some(max_rank) = entry.state.max_rank()
                    && let Some(index) = needed_layer(&ranks[..count], max_rank)
                {
                    needed[index] = true;
                }
            }
            let Some(active) = switch.update(&needed[..count], now) else {
                continue;
            };
            let rids = track
                .layers
                .iter()
                .zip(active)
                .filter(|(_, active)| **active)
                .map(|(layer, _)| layer.rid.clone())
                .collect();
            out.push((
                track.session,
                ServerMessage::PublishLayers {
                    track: track.source_track_id.clone(),
                    active: rids,
                },
            ));
        }
        out
    }
}
