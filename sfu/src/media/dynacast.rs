//! Dynacast: a publisher encodes only the simulcast layers some subscriber receives.
//!
//! A camera sent as three layers costs the publisher's uplink and CPU for all three even
//! when every subscriber shows it small, or hides it, or cannot take more than the lowest.
//! Each subscriber needs the layer it would receive if every layer that can flow did:
//! those flowing, those paused here (the publisher resumes one when told), and those just
//! resumed whose packets are not in yet. A layer the publisher does not send on its own
//! (a browser sends no full-resolution layer of a small camera, and drops top layers when
//! its uplink is short) is not one a subscriber can need. A layer nobody needed over
//! [`PAUSE_AFTER`] is paused at the publisher, and resumed as soon as someone needs it;
//! the wait keeps a tile resized back and forth, or a downlink estimate that dips for a
//! moment, from switching the publisher's encoder on and off.

use super::simulcast::select_layer_up_to;
use std::time::{Duration, Instant};

/// The most layers of a track switched; a track with more (no browser sends more than
/// four) is left alone.
pub const MAX_LAYERS: usize = 8;

/// How long a layer must have been unneeded before its publisher is told to pause it.
pub const PAUSE_AFTER: Duration = Duration::from_secs(3);

/// How long after a layer was resumed (or the track started) it counts as about to flow:
/// the publisher's encoder starts it with a keyframe within a round trip or so.
pub const RESUME_GRACE: Duration = Duration::from_secs(2);

/// Which layers of one published track its publisher is asked to encode.
#[derive(Debug, Clone)]
pub struct LayerSwitch {
    /// Per layer: whether the publisher is to encode it.
    active: Vec<bool>,
    /// Per layer: since when nobody has needed it.
    unneeded_since: Vec<Option<Instant>>,
    /// Per layer: when it was last resumed (or the track started).
    resumed_at: Vec<Instant>,
}

impl LayerSwitch {
    /// A track of `layers` layers that started at `now`, all encoded: what a publisher
    /// starts with.
    pub fn new(layers: usize, now: Instant) -> Self {
        Self {
            active: vec![true; layers],
            unneeded_since: vec![None; layers],
            resumed_at: vec![now; layers],
        }
    }

    /// Whether layer `index` is being encoded (as far as the publisher was told).
    pub fn is_active(&self, index: usize) -> bool {
        self.active.get(index).copied().unwrap_or(true)
    }

    /// Whether layer `index` would reach a subscriber who needed it: it is `flowing`,
    /// or paused here, or resumed so recently that its packets may not be in yet.
    pub fn available(&self, index: usize, flowing: bool, now: Instant) -> bool {
        flowing
            || !self.is_active(index)
            || self
                .resumed_at
                .get(index)
                .is_some_and(|at| now.saturating_duration_since(*at) < RESUME_GRACE)
    }

    /// The layers subscribers need, given each layer's `(rank, available)` and the rank
    /// cap of each subscriber that receives the track: per layer, whether one needs it.
    pub fn needed(layers: &[(u8, bool)], caps: impl Iterator<Item = u8>) -> [bool; MAX_LAYERS] {
        let mut needed = [false; MAX_LAYERS];
        for cap in caps {
            if let Some(index) = select_layer_up_to(layers, cap)
                && let Some(slot) = needed.get_mut(index)
            {
                *slot = true;
            }
        }
        needed
    }

    /// The spatial layers of an SVC stream subscribers need, given each layer's `(sid,
    /// available)` and each subscriber's rank cap: a subscriber on a layer receives every
    /// layer below it too.
    pub fn needed_spatial(
        layers: &[(u8, bool)],
        caps: impl Iterator<Item = u8>,
    ) -> [bool; MAX_LAYERS] {
        let mut needed = Self::needed(layers, caps);
        for sid in (0..MAX_LAYERS - 1).rev() {
            needed[sid] |= needed[sid + 1];
        }
        needed
    }

    /// How many spatial layers, lowest first, an SVC encoder is to make of `active`: up to
    /// the highest active one, as no layer is encoded without those below it.
    pub fn spatial_count(active: &[bool]) -> u8 {
        active
            .iter()
            .rposition(|on| *on)
            .map_or(0, |sid| sid as u8 + 1)
    }

    /// How many layers it switches.
    pub fn len(&self) -> usize {
        self.active.len()
    }

    /// Whether it switches no layer.
    pub fn is_empty(&self) -> bool {
        self.active.is_empty()
    }

    /// Whether every layer is encoded.
    pub fn all_active(&self) -> bool {
        self.active.iter().all(|on| *on)
    }

    /// Takes which layers are needed at `now` (`needed[i]` for layer `i`) and which may be
    /// paused (`pausable[i]`: its rate while flowing is known, so that a congested
    /// subscriber's share can reach it again; a layer the publisher never sent is never
    /// told off and on); returns the layers to encode when that changed and the publisher
    /// must be told.
    pub fn update(&mut self, needed: &[bool], pausable: &[bool], now: Instant) -> Option<&[bool]> {
        let mut changed = false;
        for (index, active) in self.active.iter_mut().enumerate() {
            let since = &mut self.unneeded_since[index];
            if needed.get(index).copied().unwrap_or(false)
                || !pausable.get(index).copied().unwrap_or(false)
            {
                *since = None;
                if !*active {
                    *active = true;
                    self.resumed_at[index] = now;
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

    #[test]
    fn a_subscriber_needs_the_layer_it_would_receive_from_those_that_can_flow() {
        let all = [(0, true), (1, true), (2, true)];
        let needed = |layers: &[(u8, bool)], caps: &[u8]| {
            LayerSwitch::needed(layers, caps.iter().copied())[..layers.len()].to_vec()
        };
        assert_eq!(needed(&all, &[2, 2]), [false, false, true]);
        assert_eq!(needed(&all, &[0, 2]), [true, false, true]);
        // The publisher sends no full-resolution layer: those who want the best need the
        // middle one, which must never be paused.
        let no_top = [(0, true), (1, true), (2, false)];
        assert_eq!(needed(&no_top, &[2]), [false, true, false]);
        // Layers offered top first, as some publishers do.
        assert_eq!(
            needed(&[(2, true), (1, true), (0, true)], &[1]),
            [false, true, false]
        );
        // Nothing at or below: the lowest that can flow.
        assert_eq!(needed(&[(1, true), (2, true)], &[0]), [true, false]);
        assert_eq!(needed(&all, &[]), [false, false, false]);
    }

    #[test]
    fn a_subscriber_on_a_spatial_layer_needs_the_ones_below_it_too() {
        let two = [(0, true), (1, true)];
        let needed =
            |caps: &[u8]| LayerSwitch::needed_spatial(&two, caps.iter().copied())[..2].to_vec();
        assert_eq!(
            needed(&[0, 0]),
            [true, false],
            "small tiles: the base alone"
        );
        assert_eq!(needed(&[0, 2]), [true, true]);
        assert_eq!(needed(&[2]), [true, true], "the top needs the base");
        assert_eq!(needed(&[]), [false, false], "nobody: nothing");
        // Layer 1 stopped by the encoder itself (not available): the top cap gets the base.
        assert_eq!(
            LayerSwitch::needed_spatial(&[(0, true), (1, false)], [2].into_iter())[..2],
            [true, false]
        );
        assert_eq!(LayerSwitch::spatial_count(&[true, false, false]), 1);
        assert_eq!(LayerSwitch::spatial_count(&[true, true]), 2);
        assert_eq!(LayerSwitch::spatial_count(&[false, false]), 0);
        // A base that may pause under an upper one that may not: all up to the upper.
        assert_eq!(LayerSwitch::spatial_count(&[false, true]), 2);
    }

    #[test]
    fn a_layer_is_available_while_flowing_paused_or_just_resumed() {
        let t0 = Instant::now();
        let mut switch = LayerSwitch::new(2, t0);
        // Just started: both may not have sent anything yet.
        assert!(switch.available(1, false, t0 + RESUME_GRACE / 2));
        // Started long ago and still silent: the publisher does not send it.
        let later = t0 + RESUME_GRACE * 4;
        assert!(!switch.available(1, false, later));
        assert!(switch.available(1, true, later));
        // Paused here: it would flow once resumed.
        switch.update(&[true, false], &[true; 3], later);
        assert_eq!(
            switch.update(&[true, false], &[true; 3], later + PAUSE_AFTER),
            Some(&[true, false][..])
        );
        assert!(switch.available(1, false, later + PAUSE_AFTER));
        // Resumed: available through the grace, not after it if nothing came.
        let resumed = later + PAUSE_AFTER * 2;
        assert_eq!(
            switch.update(&[true, true], &[true; 3], resumed),
            Some(&[true, true][..])
        );
        assert!(switch.available(1, false, resumed + RESUME_GRACE / 2));
        assert!(!switch.available(1, false, resumed + RESUME_GRACE));
    }

    #[test]
    fn an_unneeded_layer_pauses_after_a_while_and_resumes_at_once() {
        let t0 = Instant::now();
        let mut switch = LayerSwitch::new(3, t0);
        // Every subscriber shows the track small: only the lowest layer is needed.
        let small = [true, false, false];
        assert_eq!(switch.update(&small, &[true; 3], t0), None);
        assert_eq!(
            switch.update(&small, &[true; 3], t0 + PAUSE_AFTER / 2),
            None
        );
        assert_eq!(
            switch.update(&small, &[true; 3], t0 + PAUSE_AFTER),
            Some(&[true, false, false][..])
        );
        assert!(!switch.is_active(2));
        // Said once.
        assert_eq!(
            switch.update(&small, &[true; 3], t0 + PAUSE_AFTER * 2),
            None
        );
        // Someone enlarges the tile: the top layer comes back on the next update.
        let large = [false, false, true];
        let t1 = t0 + PAUSE_AFTER * 3;
        assert_eq!(
            switch.update(&large, &[true; 3], t1),
            Some(&[true, false, true][..])
        );
        // The lowest layer, now unneeded, is paused only after the wait.
        assert_eq!(
            switch.update(&large, &[true; 3], t1 + PAUSE_AFTER / 2),
            None
        );
        assert_eq!(
            switch.update(&large, &[true; 3], t1 + PAUSE_AFTER),
            Some(&[false, false, true][..])
        );
    }

    #[test]
    fn a_layer_needed_again_within_the_wait_is_never_paused() {
        let t0 = Instant::now();
        let mut switch = LayerSwitch::new(2, t0);
        assert_eq!(switch.update(&[true, false], &[true; 3], t0), None);
        assert_eq!(
            switch.update(&[true, true], &[true; 3], t0 + PAUSE_AFTER / 2),
            None
        );
        // The wait starts over from the next time it is unneeded.
        assert_eq!(
            switch.update(&[true, false], &[true; 3], t0 + PAUSE_AFTER),
            None
        );
        assert_eq!(
            switch.update(&[true, false], &[true; 3], t0 + PAUSE_AFTER * 2),
            Some(&[true, false][..])
        );
    }

    /// A layer never seen flowing has no rate a congested subscriber's share could count
    /// on again: it is not paused, and a layer the publisher never sends is not told off
    /// and on forever.
    #[test]
    fn a_layer_of_unknown_rate_is_never_paused() {
        let t0 = Instant::now();
        let mut switch = LayerSwitch::new(3, t0);
        let pausable = [true, true, false];
        assert_eq!(switch.update(&[false, true, false], &pausable, t0), None);
        assert_eq!(
            switch.update(&[false, true, false], &pausable, t0 + PAUSE_AFTER),
            Some(&[false, true, true][..])
        );
        for later in 2..10u32 {
            assert_eq!(
                switch.update(&[false, true, false], &pausable, t0 + PAUSE_AFTER * later),
                None
            );
        }
    }

    #[test]
    fn a_track_nobody_receives_pauses_every_layer() {
        let t0 = Instant::now();
        let mut switch = LayerSwitch::new(3, t0);
        assert_eq!(switch.update(&[], &[true; 3], t0), None);
        assert_eq!(
            switch.update(&[], &[true; 3], t0 + PAUSE_AFTER),
            Some(&[false, false, false][..])
        );
        assert_eq!(
            switch.update(&[false, true], &[true; 3], t0 + PAUSE_AFTER * 2),
            Some(&[false, true, false][..])
        );
    }
}
