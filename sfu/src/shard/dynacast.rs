//! Tells each publisher which simulcast layers, or spatial layers of an SVC track, its
//! subscribers need (`media::dynacast`): a layer that no subscriber receives, whether it
//! shows the video small, hides it or cannot take more over its downlink, is paused at the
//! publisher.

use super::router::MediaRouter;
use super::{LAYER_IDLE, PublishedTrack, SessionId};
use crate::media::dynacast::{LayerSwitch, MAX_LAYERS};
use std::time::Instant;
use tutti_shard_api::protocol::{ServerMessage, SpatialLayers};

impl MediaRouter {
    /// Updates which layers each simulcast track's publisher is to encode; returns a
    /// message for each publisher that must change what it encodes.
    pub(super) fn switch_publisher_layers(
        &mut self,
        now: Instant,
    ) -> Vec<(SessionId, ServerMessage)> {
        let mut out = Vec::new();
        for track in self.tracks.values_mut() {
            if let Some(message) = switch_spatial_layers(track, now) {
                out.push((track.session, message));
            }
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
                    spatial: None,
                },
            ));
        }
        out
    }
}

/// Updates which spatial layers of an SVC track (one published layer of several spatial
/// ones, from a publisher of this shard) its publisher is to encode; the message for the
/// publisher when that changed.
fn switch_spatial_layers(track: &mut PublishedTrack, now: Instant) -> Option<ServerMessage> {
    let [layer] = &track.layers[..] else {
        return None;
    };
    if !layer.svc || track.peer.is_none() {
        return None;
    }
    // As many layers as the stream has shown while all were encoded: an encoder that
    // adds one later (as its uplink grows) gets a switch that counts it.
    let seen = layer.spatial_rates.seen().min(MAX_LAYERS);
    let grown = track
        .spatial_switch
        .as_ref()
        .is_none_or(|s| s.all_active() && s.len() < seen);
    if grown {
        track.spatial_switch = Some(LayerSwitch::new(seen, now));
    }
    let switch = track.spatial_switch.as_mut()?;
    let count = switch.len();
    let mut layers = [(0u8, false); MAX_LAYERS];
    let mut pausable = [false; MAX_LAYERS];
    for (sid, (slot, may_pause)) in layers.iter_mut().zip(&mut pausable).enumerate().take(count) {
        let flowing = layer.spatial_rates.is_flowing(sid, now, LAYER_IDLE);
        *slot = (sid as u8, switch.available(sid, flowing, now));
        *may_pause = layer.spatial_rates.flowing_bps(sid).is_some();
    }
    let caps = track.downtracks.iter().filter_map(|d| d.state.max_rank());
    let needed = LayerSwitch::needed_spatial(&layers[..count], caps);
    let active = switch.update(&needed[..count], &pausable[..count], now)?;
    Some(ServerMessage::PublishLayers {
        track: track.source_track_id.clone(),
        active: Vec::new(),
        spatial: Some(SpatialLayers {
            encode: LayerSwitch::spatial_count(active),
            of: count as u8,
        }),
    })
}
