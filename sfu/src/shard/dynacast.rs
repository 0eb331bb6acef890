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
            for (index, (slot, layer)) in pausable.iter_mut().zip(&track.layers).enumerate() {
                let flowing = layer
                    .last_packet
                    .is_some_and(|at| now.saturating_duration_since(at) < LAYER_IDLE);
                *slot = may_pause_layer(switch.is_active(index), flowing, layer.rate.flowing_bps());
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
    // As many layers as the encoder makes while it encodes all it would: its scalability
    // structure says, else the layers seen. Taken again whenever that changes while no
    // layer is paused here (an encoder adds or drops one as its uplink or camera
    // changes); while one is, the encoder makes fewer because it was told to.
    let count = layer
        .spatial_structure
        .layers
        .map_or_else(|| layer.spatial_rates.seen(), usize::from)
        .min(MAX_LAYERS);
    let changed = track
        .spatial_switch
        .as_ref()
        .is_none_or(|s| s.all_active() && s.len() != count);
    if changed {
        track.spatial_switch = (count > 0).then(|| LayerSwitch::new(count, now));
    }
    let switch = track.spatial_switch.as_mut()?;
    let count = switch.len();
    let mut layers = [(0u8, false); MAX_LAYERS];
    let mut pausable = [false; MAX_LAYERS];
    for (sid, (slot, may_pause)) in layers.iter_mut().zip(&mut pausable).enumerate().take(count) {
        let flowing = layer.spatial_rates.is_flowing(sid, now, LAYER_IDLE);
        *slot = (sid as u8, switch.available(sid, flowing, now));
        *may_pause = may_pause_layer(
            switch.is_active(sid),
            flowing,
            layer.spatial_rates.flowing_bps(sid),
        );
    }
    let caps = track.downtracks.iter().filter_map(|d| d.state.max_rank());
    let needed = LayerSwitch::needed_spatial(&layers[..count], caps);
    let active = switch.update(&needed[..count], &pausable[..count], now)?;
    let encode = LayerSwitch::spatial_count(active);
    let width = (1..count)
        .contains(&usize::from(encode))
        .then(|| layer.spatial_structure.width(usize::from(encode) - 1))
        .flatten();
    Some(ServerMessage::PublishLayers {
        track: track.source_track_id.clone(),
        active: Vec::new(),
        spatial: Some(SpatialLayers {
            encode,
            of: count as u8,
            width,
        }),
    })
}

/// Whether a layer may be paused at its publisher: one whose rate while flowing is known
/// (a subscriber's share can reach it again), and not one its encoder stopped by itself
/// (a short uplink, a smaller camera), which pausing would only flip off and on as it
/// then counts as available, costing the encoder a reset each time; a paused one stays
/// pausable, or it would be resumed at once.
pub(super) fn may_pause_layer(active: bool, flowing: bool, flowed_bps: Option<f64>) -> bool {
    flowed_bps.is_some() && (flowing || !active)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_layer_its_encoder_stopped_by_itself_is_not_paused() {
        // Flowing, rate known: may pause.
        assert!(may_pause_layer(true, true, Some(300_000.0)));
        // Never flowed: never told off and on.
        assert!(!may_pause_layer(true, false, None));
        // Stopped by the encoder while asked for: left alone (pausing it would make it
        // count as available, and a viewer's need would resume it, again and again).
        assert!(!may_pause_layer(true, false, Some(300_000.0)));
        // Paused here: stays pausable, else it would be resumed at once.
        assert!(may_pause_layer(false, false, Some(300_000.0)));
    }
}
