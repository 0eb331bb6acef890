//! A room's audio settings, as the live state keeps them and the shard applies them.

use serde::{Deserialize, Serialize};

/// What a room's audio is for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AudioProfile {
    /// Voices: the browser's echo cancellation, noise suppression and gain control, mono
    /// Opus at the browser's bitrate with discontinuous transmission allowed.
    #[default]
    Speech,
    /// Instruments: no processing of the microphone, stereo Opus at a music bitrate
    /// without DTX, redundancy (RED) where the browser offers it, short receive buffers.
    Music,
}

impl AudioProfile {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Speech => "speech",
            Self::Music => "music",
        }
    }

    /// Parses a wire name.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "speech" => Some(Self::Speech),
            "music" => Some(Self::Music),
            _ => None,
        }
    }
}

/// A room's audio: its profile and, for music, how Opus is tuned.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AudioSettings {
    /// The profile.
    #[serde(default)]
    pub profile: AudioProfile,
    /// Music rooms: the Opus bitrate, bit/s ([`AudioSettings::MUSIC_BITRATES`], default
    /// 128000). Speech rooms leave the bitrate to the browser.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bitrate: Option<u32>,
    /// Opus frame duration, ms: 20 (default) or 10 (half the packetization delay for
    /// twice the packets).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ptime: Option<u8>,
}

impl AudioSettings {
    /// The bitrates a music room may ask for: 128 kbit/s is where stereo Opus stops
    /// audibly losing a violin's harmonics; 510 kbit/s is Opus's ceiling.
    pub const MUSIC_BITRATES: std::ops::RangeInclusive<u32> = 128_000..=510_000;
    /// The music bitrate when none is given.
    pub const MUSIC_DEFAULT_BITRATE: u32 = 128_000;

    /// Music with the default tuning.
    pub fn music() -> Self {
        Self {
            profile: AudioProfile::Music,
            ..Self::default()
        }
    }

    /// Whether the room is for music.
    pub fn is_music(&self) -> bool {
        self.profile == AudioProfile::Music
    }

    /// Whether these are the defaults of a speech room (nothing worth storing).
    pub fn is_speech_default(&self) -> bool {
        *self == Self::default()
    }

    /// Checks the bounds; the message names the field as the rooms file and the Room
    /// resource spell it.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(bitrate) = self.bitrate {
            if self.profile != AudioProfile::Music {
                return Err("audio bitrate is set only for the music profile".into());
            }
            if !Self::MUSIC_BITRATES.contains(&bitrate) {
                return Err(format!(
                    "audio bitrate must be {}..={} bit/s",
                    Self::MUSIC_BITRATES.start(),
                    Self::MUSIC_BITRATES.end()
                ));
            }
        }
        if let Some(ptime) = self.ptime
            && ptime != 10
            && ptime != 20
        {
            return Err("audio ptime must be 10 or 20 (ms)".into());
        }
        Ok(())
    }

    /// The Opus bitrate the room asks publishers for: `None` leaves it to the browser.
    pub fn opus_bitrate(&self) -> Option<u32> {
        match self.profile {
            AudioProfile::Music => Some(self.bitrate.unwrap_or(Self::MUSIC_DEFAULT_BITRATE)),
            AudioProfile::Speech => None,
        }
    }

    /// The Opus frame duration in ms.
    pub fn ptime_ms(&self) -> u8 {
        self.ptime.unwrap_or(20)
    }
}
