//! Simulcast layer ranking and per-subscriber layer choice.
//!
//! A publisher names its encodings by `rid`; the names are the application's choice, so
//! quality is ranked from the common conventions (`q`/`h`/`f`, `low`/`mid`/`high`,
//! `0`/`1`/`2`) and otherwise from the order the publisher offered them. A subscriber
//! asks for a quality; it gets the best layer at or below that quality that is actually
//! flowing (a publisher short on bandwidth pauses its top layers), or the lowest flowing
//! layer when nothing at or below is.

pub use tutti_shard_api::protocol::Quality;

pub use tutti_shard_api::simulcast::{rank_layers, rid_rank};

/// Picks the layer to forward: the highest-ranked active layer at or below the target,
/// else the lowest-ranked active layer; none for [`Quality::Off`]. `layers` holds
/// `(rank, active)`; returns an index.
pub fn select_layer(layers: &[(u8, bool)], target: Quality) -> Option<usize> {
    select_layer_up_to(layers, target.rank()?)
}

/// [`select_layer`] for a rank: the highest-ranked active layer at or below `max_rank`,
/// else the lowest-ranked active layer.
pub fn select_layer_up_to(layers: &[(u8, bool)], max_rank: u8) -> Option<usize> {
    let at_or_below = layers
        .iter()
        .enumerate()
        .filter(|(_, (rank, active))| *active && *rank <= max_rank)
        .max_by_key(|(_, (rank, _))| *rank)
        .map(|(index, _)| index);
    at_or_below.or_else(|| {
        layers
            .iter()
            .enumerate()
            .filter(|(_, (_, active))| *active)
            .min_by_key(|(_, (rank, _))| *rank)
            .map(|(index, _)| index)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selects_best_active_layer_at_or_below_target() {
        let layers = [(0, true), (1, true), (2, true)];
        assert_eq!(select_layer(&layers, Quality::High), Some(2));
        assert_eq!(select_layer(&layers, Quality::Medium), Some(1));
        assert_eq!(select_layer(&layers, Quality::Low), Some(0));
        // The top layer is paused by the publisher.
        let paused = [(0, true), (1, true), (2, false)];
        assert_eq!(select_layer(&paused, Quality::High), Some(1));
        // Only a higher layer flows: better than nothing.
        let only_high = [(0, false), (1, false), (2, true)];
        assert_eq!(select_layer(&only_high, Quality::Low), Some(2));
        assert_eq!(select_layer(&[(0, false)], Quality::Low), None);
        assert_eq!(select_layer(&[], Quality::Low), None);
        assert_eq!(select_layer(&layers, Quality::Off), None);
    }
}
