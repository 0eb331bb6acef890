//! Dynacast: a publisher encodes only the simulcast layers some subscriber receives.
//!
//! A camera sent as three layers costs the publisher's uplink and CPU for all three even
//! when every subscriber shows it small, or hides it, or cannot take more than the lowest.
//! Each track's layers are asked for by its subscribers (each wanting the layer it would
//! get if every layer flowed); a layer nobody asked for over [`PAUSE_AFTER`] is paused at
//! the publisher, and resumed as soon as someone asks for it. The wait keeps a tile that
//! is resized back and forth, or a downlink estimate that dips for a moment, from
//! switching the publisher's encoder on and off.

use super::simulcast::select_layer_up_to;
use std::time::{Duration, Instant};

/// The most layers of a track switched; a track with more (no browser sends more than
/// four) is left alone.
pub const MAX_LAYERS: usize = 8;

/// How long a layer must have been unneeded before its publisher is told to pause it.
pub const PAUSE_AFTER: Duration = Duration::from_secs(3);

/// The layer a subscriber allowed up to `max_rank` needs from a track whose layers have
/// `ranks`: the one it would receive if every layer flowed.
pub fn needed_layer(ranks: &[u8], max_rank: u8) -> Option<usize> {
    let all: Vec<(u8, bool)> = ranks.iter().map(|&rank| (rank, true)).collect();
    select_layer_up_to(&all, max_rank)
}

/// Which layers of one published track its publisher is asked to encode.
#[derive(Debug, Clone)]
pub struct LayerSwitch {
    /// Per layer: whether the publisher is to encode it.
    active: Vec<bool>,
    /// Per layer: since when nobody has needed it.
    unneeded_since: Vec<Option<Instant>>,
}

impl LayerSwitch {
    /// A track of `layers` layers, all encoded: what a publisher starts with.
    pub fn new(layers: usize) -> Self {
        Self {
            active: vec![true; layers],
            unneeded_since: vec![None; layers],
        }
    }

    /// Whether layer `index` is being encoded (as far as the publisher was told).
    pub fn is_active(&self, index: usize) -> bool {
        self.active.get(index).copied().unwrap_or(true)
    }

    /// Takes which layers are needed at `now` (`needed[i]` for layer `i`); returns the
    /// layers to encode when that changed and the publisher must be told.
    pub fn update(&mut self, needed: &[bool], now: Instant) -> Option<&[bool]> {
        let mut changed = false;
        for (index, active) in self.active.iter_mut().enumerate() {
            let since = &mut self.unneeded_since[index];
            if needed.get(index).copied().unwrap_or(false) {
                *since = None;
                if !*active {
                    *active = true;
                    changed = true;
                }
            } else {
                let unneeded_for = now.saturating_duration_since(*since.get_or_insert(now));
                if *active && unneeded_for >= PAUSE_AFTER {
                    *active = false;
                    changed = true;
                }
            }
        }
        changed.then_some(self.active.as_slice())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const Q_H_F: [u8; 3] = [0, 1, 2];

    #[test]
    fn a_subscriber_needs_the_layer_it_would_receive_if_all_flowed() {
        assert_eq!(needed_layer(&Q_H_F, 2), Some(2));
        assert_eq!(needed_layer(&Q_H_F, 0), Some(0));
        // Layers offered top first, as some publishers do.
        assert_eq!(needed_layer(&[2, 1, 0], 1), Some(1));
        // Nothing at or below: the lowest.
        assert_eq!(needed_layer(&[1, 2], 0), Some(0));
        assert_eq!(needed_layer(&[], 2), None);
    }

    #[test]
    fn an_unneeded_layer_pauses_after_a_while_and_resumes_at_once() {
        let t0 = Instant::now();
        let mut switch = LayerSwitch::new(3);
        // Every subscriber shows the track small: only the lowest layer is needed.
        let small = [true, false, false];
        assert_eq!(switch.update(&small, t0), None);
        assert_eq!(switch.update(&small, t0 + PAUSE_AFTER / 2), None);
        assert_eq!(
            switch.update(&small, t0 + PAUSE_AFTER),
            Some(&[true, false, false][..])
        );
        assert!(!switch.is_active(2));
        // Said once.
        assert_eq!(switch.update(&small, t0 + PAUSE_AFTER * 2), None);
        // Someone enlarges the tile: the top layer comes back on the next update.
        let large = [false, false, true];
        let t1 = t0 + PAUSE_AFTER * 3;
        assert_eq!(switch.update(&large, t1), Some(&[true, false, true][..]));
        // The lowest layer, now unneeded, is paused only after the wait.
        assert_eq!(switch.update(&large, t1 + PAUSE_AFTER / 2), None);
        assert_eq!(
            switch.update(&large, t1 + PAUSE_AFTER),
            Some(&[false, false, true][..])
        );
    }

    #[test]
    fn a_layer_needed_again_within_the_wait_is_never_paused() {
        let t0 = Instant::now();
        let mut switch = LayerSwitch::new(2);
        assert_eq!(switch.update(&[true, false], t0), None);
        assert_eq!(switch.update(&[true, true], t0 + PAUSE_AFTER / 2), None);
        // The wait starts over from the next time it is unneeded.
        assert_eq!(switch.update(&[true, false], t0 + PAUSE_AFTER), None);
        assert_eq!(
            switch.update(&[true, false], t0 + PAUSE_AFTER * 2),
            Some(&[true, false][..])
        );
    }

    #[test]
    fn a_track_nobody_receives_pauses_every_layer() {
        let t0 = Instant::now();
        let mut switch = LayerSwitch::new(3);
        assert_eq!(switch.update(&[], t0), None);
        assert_eq!(
            switch.update(&[], t0 + PAUSE_AFTER),
            Some(&[false, false, false][..])
        );
        assert_eq!(
            switch.update(&[false, true], t0 + PAUSE_AFTER * 2),
            Some(&[false, true, false][..])
        );
    }
}
