//! Tells each publisher which simulcast layers its subscribers need (`media::dynacast`):
//! a layer that no subscriber receives, whether it shows the video small, hides it or
//! cannot take more over its downlink, is paused at the publisher.

use super::router::MediaRouter;
use super::{LAYER_IDLE, SessionId};
use crate::media::dynacast::{LayerSwitch, MAX_LAYERS};
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
            let mut layers = [(0u8, false); MAX_LAYERS];
            for (index, (slot, layer)) in layers.iter_mut().zip(&track.layers).enumerate() {
                let flowing = layer
                    .last_packet
                    .is_some_and(|at| now.saturating_duration_since(at) < LAYER_IDLE);
                *slot = (layer.rank, switch.available(index, flowing, now));
            }
            let caps = track.downtracks.iter().filter_map(|d| d.state.max_rank());
            let needed = LayerSwitch::needed(&layers[..count], caps);
            let mut pausable = [false; MAX_LAYERS];
            for (slot, layer) in pausable.iter_mut().zip(&track.layers) {
                *slot = layer.rate.flowing_bps().is_some();
            }
            let Some(active) = switch.update(&needed[..count], &pausable[..count], now) else {
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
