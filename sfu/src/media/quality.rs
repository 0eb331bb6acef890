//! A subscriber's reception in one word, as a person would judge the call: from the loss
//! its receiver reports state, the round trip of its downlink, and whether its downlink
//! holds video back; and a participant's connection, with the loss of what it publishes.

use tutti_shard_api::admin::Reception;

/// Loss above which reception is no longer good, percent (audio concealment starts to be
/// heard; video freezes now and then).
pub const FAIR_LOSS_PERCENT: f64 = 2.0;
/// Loss above which it is poor, percent.
pub const POOR_LOSS_PERCENT: f64 = 10.0;
/// Round trip above which a conversation starts to overlap, ms.
pub const FAIR_RTT_MS: u32 = 300;
/// Round trip above which it is poor, ms.
pub const POOR_RTT_MS: u32 = 600;

/// What the shard knows of one subscriber's reception.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Signals {
    /// The worst loss its latest receiver reports state, percent.
    pub loss_percent: f64,
    /// Its downlink's round trip, if measured.
    pub rtt_ms: Option<u32>,
    /// Video tracks its downlink holds below what it asked for.
    pub held_back: u32,
    /// Video tracks its downlink pauses.
    pub paused: u32,
}

/// The word for `signals`.
pub fn judge(signals: &Signals) -> Reception {
    let rtt = signals.rtt_ms.unwrap_or(0);
    if signals.loss_percent > POOR_LOSS_PERCENT || rtt > POOR_RTT_MS || signals.paused > 0 {
        Reception::Poor
    } else if signals.loss_percent > FAIR_LOSS_PERCENT || rtt > FAIR_RTT_MS || signals.held_back > 0
    {
        Reception::Fair
    } else {
        Reception::Good
    }
}

/// A participant's connection in one word: the worse of how its uplink delivers (the
/// loss of what it publishes, if it publishes) and how its downlink receives (if it
/// subscribes).
pub fn participant_quality(
    uplink_loss_percent: Option<f64>,
    downlink: Option<&Signals>,
) -> Reception {
    let uplink = uplink_loss_percent.map(|loss_percent| {
        judge(&Signals {
            loss_percent,
            ..Signals::default()
        })
    });
    let downlink = downlink.map(judge);
    [uplink, downlink]
        .into_iter()
        .flatten()
        .max_by_key(|r| rank(*r))
        .unwrap_or(Reception::Good)
}

/// Worse is higher.
fn rank(reception: Reception) -> u8 {
    match reception {
        Reception::Good => 0,
        Reception::Fair => 1,
        Reception::Poor => 2,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_participant_is_as_good_as_the_worse_of_its_two_directions() {
        let clean = Signals::default();
        let held = Signals {
            held_back: 1,
            ..Signals::default()
        };
        assert_eq!(participant_quality(None, None), Reception::Good);
        assert_eq!(
            participant_quality(Some(0.5), Some(&clean)),
            Reception::Good
        );
        assert_eq!(participant_quality(Some(0.5), Some(&held)), Reception::Fair);
        assert_eq!(
            participant_quality(Some(15.0), Some(&held)),
            Reception::Poor
        );
        assert_eq!(participant_quality(Some(5.0), None), Reception::Fair);
        assert_eq!(participant_quality(None, Some(&held)), Reception::Fair);
    }

    #[test]
    fn each_signal_lowers_the_word_on_its_own() {
        assert_eq!(judge(&Signals::default()), Reception::Good);
        let fair = [
            Signals {
                loss_percent: 3.0,
                ..Signals::default()
            },
            Signals {
                rtt_ms: Some(350),
                ..Signals::default()
            },
            Signals {
                held_back: 1,
                ..Signals::default()
            },
        ];
        for signals in fair {
            assert_eq!(judge(&signals), Reception::Fair, "{signals:?}");
        }
        let poor = [
            Signals {
                loss_percent: 12.0,
                ..Signals::default()
            },
            Signals {
                rtt_ms: Some(700),
                ..Signals::default()
            },
            Signals {
                paused: 1,
                held_back: 1,
                ..Signals::default()
            },
        ];
        for signals in poor {
            assert_eq!(judge(&signals), Reception::Poor, "{signals:?}");
        }
        // At the thresholds, still the better word.
        let edge = Signals {
            loss_percent: 2.0,
            rtt_ms: Some(300),
            ..Signals::default()
        };
        assert_eq!(judge(&edge), Reception::Good);
    }
}
