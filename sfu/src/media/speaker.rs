//! Active-speaker detection from the audio levels publishers put in their packets.
//!
//! Each participant's loudness is averaged over a sliding window of level samples
//! (RFC 6464, -dBov, voice-flagged). The loudest participant above a floor becomes the
//! active speaker, but only if they beat the current one by a margin or the current one
//! has gone quiet; that hysteresis keeps the highlight from flickering between two
//! people talking over each other.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

/// The window over which loudness is averaged.
const WINDOW: Duration = Duration::from_millis(500);
/// Loudness (127 minus the -dBov level) below which nobody counts as speaking: -60 dBov.
const SPEAKING_FLOOR: f64 = 67.0;
/// How much louder a challenger must be to take over from a current speaker.
const TAKEOVER_MARGIN: f64 = 6.0;

#[derive(Debug, Default)]
struct Levels {
    samples: std::collections::VecDeque<(Instant, u8)>,
}

impl Levels {
    fn loudness(&mut self, now: Instant) -> f64 {
        while let Some(&(at, _)) = self.samples.front() {
            if now.saturating_duration_since(at) > WINDOW {
                self.samples.pop_front();
            } else {
                break;
            }
        }
        if self.samples.is_empty() {
            return 0.0;
        }
        let sum: f64 = self
            .samples
            .iter()
            .map(|&(_, loudness)| f64::from(loudness))
            .sum();
        sum / self.samples.len() as f64
    }
}

/// Tracks audio levels of a room's participants and picks the active speaker.
#[derive(Debug)]
pub struct SpeakerDetector<K> {
    levels: HashMap<K, Levels>,
    current: Option<K>,
}

impl<K: Copy + Eq + Hash> Default for SpeakerDetector<K> {
    fn default() -> Self {
        Self {
            levels: HashMap::new(),
            current: None,
        }
    }
}

impl<K: Copy + Eq + Hash> SpeakerDetector<K> {
    /// Records one packet's level. Packets without the voice flag count as silence.
    pub fn observe(&mut self, who: K, now: Instant, voice: bool, level_dbov: u8) {
        let loudness = if voice {
            127u8.saturating_sub(level_dbov.min(127))
        } else {
            0
        };
        let levels = self.levels.entry(who).or_default();
        // A publisher sends 50 packets/s; keep the window bounded even if one sends more.
        if levels.samples.len() >= 256 {
            levels.samples.pop_front();
        }
        levels.samples.push_back((now, loudness));
    }

    /// Forgets a participant that left.
    pub fn remove(&mut self, who: K) {
        self.levels.remove(&who);
        if self.current == Some(who) {
            self.current = None;
        }
    }

    /// The current active speaker.
    pub fn current(&self) -> Option<K> {
        self.current
    }

    /// Re-evaluates the active speaker; returns the new one when it changed
    /// (`Some(None)` when the room went quiet).
    pub fn evaluate(&mut self, now: Instant) -> Option<Option<K>> {
        let mut loudest: Option<(K, f64)> = None;
        let mut current_loudness = 0.0;
        for (who, levels) in self.levels.iter_mut() {
            let loudness = levels.loudness(now);
            if Some(*who) == self.current {
                current_loudness = loudness;
            }
            if loudest.is_none_or(|(_, best)| loudness > best) {
                loudest = Some((*who, loudness));
            }
        }
        let next = match (self.current, loudest) {
            (_, None) => None,
            (_, Some((_, loudness))) if loudness < SPEAKING_FLOOR => {
                if current_loudness >= SPEAKING_FLOOR {
                    self.current
                } else {
                    None
                }
            }
            (Some(current), Some((challenger, loudness))) if current_loudness >= SPEAKING_FLOOR => {
                if challenger != current && loudness >= current_loudness + TAKEOVER_MARGIN {
                    Some(challenger)
                } else {
                    Some(current)
                }
            }
            (_, Some((challenger, _))) => Some(challenger),
        };
        if next != self.current {
            self.current = next;
            Some(next)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(detector: &mut SpeakerDetector<u8>, who: u8, from: Instant, ms: u64, level: u8) {
        for i in 0..(ms / 20) {
            detector.observe(who, from + Duration::from_millis(i * 20), true, level);
        }
    }

    #[test]
    fn loudest_participant_becomes_active() {
        let t0 = Instant::now();
        let mut detector = SpeakerDetector::default();
        feed(&mut detector, 1, t0, 400, 30); // loud: 97
        feed(&mut detector, 2, t0, 400, 55); // quieter: 72
        assert_eq!(
            detector.evaluate(t0 + Duration::from_millis(400)),
            Some(Some(1))
        );
        assert_eq!(detector.current(), Some(1));
    }

    #[test]
    fn silence_clears_the_speaker() {
        let t0 = Instant::now();
        let mut detector = SpeakerDetector::default();
        feed(&mut detector, 1, t0, 400, 30);
        assert_eq!(
            detector.evaluate(t0 + Duration::from_millis(400)),
            Some(Some(1))
        );
        feed(&mut detector, 1, t0 + Duration::from_millis(400), 1000, 127);
        assert_eq!(
            detector.evaluate(t0 + Duration::from_millis(1400)),
            Some(None)
        );
    }

    #[test]
    fn hysteresis_keeps_the_current_speaker_against_a_slightly_louder_one() {
        let t0 = Instant::now();
        let mut detector = SpeakerDetector::default();
        feed(&mut detector, 1, t0, 400, 40); // 87
        assert_eq!(
            detector.evaluate(t0 + Duration::from_millis(400)),
            Some(Some(1))
        );
        let t1 = t0 + Duration::from_millis(400);
        feed(&mut detector, 1, t1, 400, 40); // 87
        feed(&mut detector, 2, t1, 400, 37); // 90: within the margin
        assert_eq!(detector.evaluate(t1 + Duration::from_millis(400)), None);
        let t2 = t1 + Duration::from_millis(400);
        feed(&mut detector, 1, t2, 500, 40);
        feed(&mut detector, 2, t2, 500, 20); // 107: takes over
        assert_eq!(
            detector.evaluate(t2 + Duration::from_millis(500)),
            Some(Some(2))
        );
    }

    #[test]
    fn unflagged_packets_count_as_silence_and_leavers_are_forgotten() {
        let t0 = Instant::now();
        let mut detector = SpeakerDetector::default();
        for i in 0..20u64 {
            detector.observe(3u8, t0 + Duration::from_millis(i * 20), false, 0);
        }
        assert_eq!(detector.evaluate(t0 + Duration::from_millis(400)), None);
        feed(&mut detector, 4, t0, 400, 10);
        assert_eq!(
            detector.evaluate(t0 + Duration::from_millis(400)),
            Some(Some(4))
        );
        detector.remove(4);
        assert_eq!(detector.current(), None);
    }
}
