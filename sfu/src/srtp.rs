//! SRTP protection of the RTP packets the shard sends (RFC 3711; AES-GCM per RFC 7714),
//! done in the caller's buffer.
//!
//! A forwarded packet is written once per subscriber into a reused buffer and protected
//! there: the payload is encrypted in place and the authentication tag appended, so no
//! packet allocates. The keys are the ones the connection's DTLS handshake exported
//! (`RTCPeerConnection::srtp_session_keys`, see `vendor/README.md`); `rtc` keeps its own
//! contexts for the RTCP it sends, which uses keys derived under other labels.
//!
//! The caller owns the packet index (rollover counter and sequence number, see
//! [`RolloverCounter`]) and must never protect two different packets under one index of
//! one SSRC: both would be encrypted with the same keystream.

use aes::cipher::{BlockEncrypt, InnerIvInit, KeyInit, StreamCipher};
use bytes::BytesMut;
use ring::{aead, hmac};

/// The SRTP protection profiles a DTLS-SRTP handshake can agree on (RFC 5764, RFC 7714).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    /// AES-128 counter mode, HMAC-SHA1 tag of 80 bits.
    Aes128CmHmacSha1_80,
    /// AES-128 counter mode, HMAC-SHA1 tag of 32 bits.
    Aes128CmHmacSha1_32,
    /// AES-128 in GCM.
    AeadAes128Gcm,
    /// AES-256 in GCM.
    AeadAes256Gcm,
}

impl Profile {
    /// The profile `rtc` negotiated, if this module implements it.
    pub fn from_rtc(profile: rtc::srtp::protection_profile::ProtectionProfile) -> Option<Self> {
        use rtc::srtp::protection_profile::ProtectionProfile as P;
        match profile {
            P::Aes128CmHmacSha1_80 => Some(Self::Aes128CmHmacSha1_80),
            P::Aes128CmHmacSha1_32 => Some(Self::Aes128CmHmacSha1_32),
            P::AeadAes128Gcm => Some(Self::AeadAes128Gcm),
            P::AeadAes256Gcm => Some(Self::AeadAes256Gcm),
            _ => None,
        }
    }

    fn key_len(self) -> usize {
        match self {
            Self::AeadAes256Gcm => 32,
            _ => 16,
        }
    }

    fn salt_len(self) -> usize {
        match self {
            Self::AeadAes128Gcm | Self::AeadAes256Gcm => 12,
            _ => 14,
        }
    }

    /// Bytes the protection adds after the payload.
    pub fn tag_len(self) -> usize {
        match self {
            Self::Aes128CmHmacSha1_80 => 10,
            Self::Aes128CmHmacSha1_32 => 4,
            Self::AeadAes128Gcm | Self::AeadAes256Gcm => 16,
        }
    }
}

/// Why a sender could not be made or a packet not protected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SrtpError {
    /// The master key or salt has the wrong length for the profile.
    #[error("SRTP master key or salt of the wrong length")]
    KeyLength,
    /// The packet is shorter than the header it claims.
    #[error("RTP packet shorter than its header")]
    Truncated,
    /// The cipher refused (a payload too large for GCM's counter).
    #[error("SRTP encryption failed")]
    Cipher,
}

/// SRTP's key derivation labels (RFC 3711 section 4.3.2).
const LABEL_ENCRYPTION: u8 = 0x00;
const LABEL_AUTHENTICATION: u8 = 0x01;
const LABEL_SALT: u8 = 0x02;
/// HMAC-SHA1 session authentication key length (RFC 3711 section 5.2).
const AUTH_KEY_LEN: usize = 20;

/// Protects the RTP one connection sends, under its outbound master key.
pub struct SrtpSender {
    cipher: Cipher,
}

// One per connection, read on every packet: the GCM key stays inline rather than behind
// another pointer.
#[allow(clippy::large_enum_variant)]
enum Cipher {
    Gcm {
        key: aead::LessSafeKey,
        salt: [u8; 12],
    },
    Cm(Box<CmKeys>),
}

/// AES-CM with HMAC-SHA1 session keys (boxed: the expanded AES key is large).
struct CmKeys {
    /// The session encryption key, expanded once.
    aes: aes::Aes128,
    auth: hmac::Key,
    salt: [u8; 14],
    tag_len: usize,
}

impl SrtpSender {
    /// A sender for `profile` with the connection's outbound master key and salt. The
    /// session keys are derived here once (key derivation rate 0, as DTLS-SRTP requires).
    pub fn new(profile: Profile, master_key: &[u8], master_salt: &[u8]) -> Result<Self, SrtpError> {
        if master_key.len() != profile.key_len() || master_salt.len() != profile.salt_len() {
            return Err(SrtpError::KeyLength);
        }
        let derive = |label: u8, out: &mut [u8]| derive(master_key, master_salt, label, out);
        let cipher = match profile {
            Profile::AeadAes128Gcm | Profile::AeadAes256Gcm => {
                let mut key = [0u8; 32];
                let key = &mut key[..profile.key_len()];
                derive(LABEL_ENCRYPTION, key)?;
                let mut salt = [0u8; 12];
                derive(LABEL_SALT, &mut salt)?;
                let algorithm = if profile == Profile::AeadAes128Gcm {
                    &aead::AES_128_GCM
                } else {
                    &aead::AES_256_GCM
                };
                let key =
                    aead::UnboundKey::new(algorithm, key).map_err(|_| SrtpError::KeyLength)?;
                Cipher::Gcm {
                    key: aead::LessSafeKey::new(key),
                    salt,
                }
            }
            Profile::Aes128CmHmacSha1_80 | Profile::Aes128CmHmacSha1_32 => {
                let mut key = [0u8; 16];
                derive(LABEL_ENCRYPTION, &mut key)?;
                let mut auth = [0u8; AUTH_KEY_LEN];
                derive(LABEL_AUTHENTICATION, &mut auth)?;
                let mut salt = [0u8; 14];
                derive(LABEL_SALT, &mut salt)?;
                Cipher::Cm(Box::new(CmKeys {
                    aes: aes::Aes128::new(&key.into()),
                    auth: hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, &auth),
                    salt,
                    tag_len: profile.tag_len(),
                }))
            }
        };
        Ok(Self { cipher })
    }

    /// Bytes [`Self::protect`] appends.
    pub fn tag_len(&self) -> usize {
        match &self.cipher {
            Cipher::Gcm { .. } => 16,
            Cipher::Cm(keys) => keys.tag_len,
        }
    }

    /// Protects the RTP packet in `packet` (a header of `header_len` bytes, extensions
    /// included, then the payload) as packet `index` (rollover counter << 16 | sequence
    /// number) of `ssrc`: the payload is encrypted in place and the tag appended. Leave
    /// [`Self::tag_len`] bytes of spare capacity and nothing is allocated.
    pub fn protect(
        &self,
        packet: &mut BytesMut,
        header_len: usize,
        ssrc: u32,
        index: u64,
    ) -> Result<(), SrtpError> {
        if packet.len() < header_len {
            return Err(SrtpError::Truncated);
        }
        let roc = (index >> 16) as u32;
        match &self.cipher {
            Cipher::Gcm { key, salt } => {
                // RFC 7714 section 8.1: 00 00 || SSRC || ROC || SEQ, XORed with the salt.
                let mut iv = [0u8; 12];
                iv[2..6].copy_from_slice(&ssrc.to_be_bytes());
                iv[6..10].copy_from_slice(&roc.to_be_bytes());
                iv[10..12].copy_from_slice(&(index as u16).to_be_bytes());
                for (byte, salt) in iv.iter_mut().zip(salt) {
                    *byte ^= salt;
                }
                let (header, payload) = packet.split_at_mut(header_len);
                let tag = key
                    .seal_in_place_separate_tag(
                        aead::Nonce::assume_unique_for_key(iv),
                        aead::Aad::from(&*header),
                        payload,
                    )
                    .map_err(|_| SrtpError::Cipher)?;
                packet.extend_from_slice(tag.as_ref());
            }
            Cipher::Cm(keys) => {
                let CmKeys {
                    aes,
                    auth,
                    salt,
                    tag_len,
                } = &**keys;
                // RFC 3711 section 4.1.1: (salt * 2^16) XOR (SSRC * 2^64) XOR (index * 2^16).
                let mut iv = [0u8; 16];
                iv[..14].copy_from_slice(salt);
                for (byte, value) in iv[4..8].iter_mut().zip(ssrc.to_be_bytes()) {
                    *byte ^= value;
                }
                for (byte, value) in iv[8..14].iter_mut().zip(&index.to_be_bytes()[2..]) {
                    *byte ^= value;
                }
                let mut keystream = ctr::Ctr128BE::<aes::Aes128>::from_core(
                    ctr::CtrCore::inner_iv_init(aes.clone(), &iv.into()),
                );
                keystream.apply_keystream(&mut packet[header_len..]);
                // RFC 3711 section 4.2: the tag covers the packet and the rollover counter.
                let mut mac = hmac::Context::with_key(auth);
                mac.update(packet);
                mac.update(&roc.to_be_bytes());
                let tag = mac.sign();
                packet.extend_from_slice(&tag.as_ref()[..*tag_len]);
            }
        }
        Ok(())
    }
}

/// The AES counter-mode key derivation of RFC 3711 section 4.3.3 with a key derivation
/// rate of 0: the PRF's input block is the master salt (from its first byte, so a 96-bit
/// GCM salt lines up as RFC 7714 section 11 and libsrtp have it), with the label XORed in
/// at byte 7 and a block counter in the last two bytes.
fn derive(
    master_key: &[u8],
    master_salt: &[u8],
    label: u8,
    out: &mut [u8],
) -> Result<(), SrtpError> {
    match master_key.len() {
        16 => derive_with::<aes::Aes128>(master_key, master_salt, label, out),
        32 => derive_with::<aes::Aes256>(master_key, master_salt, label, out),
        _ => Err(SrtpError::KeyLength),
    }
}

fn derive_with<Prf: KeyInit + BlockEncrypt<BlockSize = aes::cipher::consts::U16>>(
    master_key: &[u8],
    master_salt: &[u8],
    label: u8,
    out: &mut [u8],
) -> Result<(), SrtpError> {
    let prf = Prf::new_from_slice(master_key).map_err(|_| SrtpError::KeyLength)?;
    if master_salt.len() > 14 {
        return Err(SrtpError::KeyLength);
    }
    for (counter, chunk) in out.chunks_mut(16).enumerate() {
        let mut block = [0u8; 16];
        block[..master_salt.len()].copy_from_slice(master_salt);
        block[7] ^= label;
        block[14..].copy_from_slice(&(counter as u16).to_be_bytes());
        let mut block = block.into();
        prf.encrypt_block(&mut block);
        chunk.copy_from_slice(&block[..chunk.len()]);
    }
    Ok(())
}

/// The rollover counter of one outgoing SSRC: turns each 16-bit sequence number into the
/// 48-bit packet index SRTP encrypts under, the way a receiver estimates it (RFC 3711
/// section 3.3.1), so resends of older numbers get the index they were first sent with.
#[derive(Debug, Default, Clone, Copy)]
pub struct RolloverCounter {
    /// The highest index sent.
    highest: Option<u64>,
}

impl RolloverCounter {
    /// The index of `seq`, recording it as the highest when it is.
    pub fn index(&mut self, seq: u16) -> u64 {
        let Some(highest) = self.highest else {
            self.highest = Some(u64::from(seq));
            return u64::from(seq);
        };
        let roc = highest >> 16;
        let last = highest as u16;
        let guess = if last < 0x8000 {
            if seq > last && seq - last > 0x8000 {
                roc.saturating_sub(1)
            } else {
                roc
            }
        } else if last - 0x8000 > seq {
            roc + 1
        } else {
            roc
        };
        let index = (guess << 16) | u64::from(seq);
        if index > highest {
            self.highest = Some(index);
        }
        index
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtc::shared::marshal::{Marshal, MarshalSize, Unmarshal};
    use rtc::srtp::protection_profile::ProtectionProfile;

    fn rtc_context(
        profile: ProtectionProfile,
        key: &[u8],
        salt: &[u8],
    ) -> rtc::srtp::context::Context {
        let provider = rtc::crypto::default_provider().expect("crypto provider");
        rtc::srtp::context::Context::new(key, salt, profile, None, None, provider.crypto())
            .expect("rtc context")
    }

    fn packet(ssrc: u32, seq: u16, payload_len: usize, extension: bool) -> rtc::rtp::Packet {
        let mut header = rtc::rtp::header::Header {
            version: 2,
            marker: seq.is_multiple_of(3),
            payload_type: 96,
            sequence_number: seq,
            timestamp: u32::from(seq) * 3000,
            ssrc,
            ..Default::default()
        };
        if extension {
            header
                .set_extension(3, bytes::Bytes::from_static(&[0x12, 0x34]))
                .expect("extension");
        }
        rtc::rtp::Packet {
            header,
            payload: (0..payload_len)
                .map(|i| (i * 7) as u8)
                .collect::<Vec<_>>()
                .into(),
        }
    }

    const PROFILES: [(Profile, ProtectionProfile); 4] = [
        (
            Profile::Aes128CmHmacSha1_80,
            ProtectionProfile::Aes128CmHmacSha1_80,
        ),
        (
            Profile::Aes128CmHmacSha1_32,
            ProtectionProfile::Aes128CmHmacSha1_32,
        ),
        (Profile::AeadAes128Gcm, ProtectionProfile::AeadAes128Gcm),
        (Profile::AeadAes256Gcm, ProtectionProfile::AeadAes256Gcm),
    ];

    /// The same packets, through rtc's SRTP (an implementation this module shares no code
    /// with) and through ours, across a sequence-number wrap: identical bytes, and rtc's
    /// receiving context accepts ours.
    #[test]
    fn protects_byte_for_byte_as_rtc_srtp_does_for_every_profile() {
        for (profile, theirs) in PROFILES {
            let key: Vec<u8> = (0..profile.key_len() as u8)
                .map(|b| b.wrapping_mul(29) ^ 0x5a)
                .collect();
            let salt: Vec<u8> = (0..profile.salt_len() as u8)
                .map(|b| b.wrapping_mul(13) ^ 0xa5)
                .collect();
            let ours = SrtpSender::new(profile, &key, &salt).expect("sender");
            let mut reference = rtc_context(theirs, &key, &salt);
            let mut receiver = rtc_context(theirs, &key, &salt);
            let mut roc = RolloverCounter::default();
            for (step, seq) in (0xfff0u16..=0xffff).chain(0..16).enumerate() {
                let original = packet(0x1234_5678, seq, 20 + step * 37, step % 2 == 0);
                let plain = original.marshal().expect("marshal");
                let expected = reference.encrypt_rtp(&plain).expect("rtc encrypts");
                let mut buf = BytesMut::with_capacity(plain.len() + ours.tag_len());
                buf.extend_from_slice(&plain);
                let capacity = buf.capacity();
                ours.protect(
                    &mut buf,
                    original.header.marshal_size(),
                    0x1234_5678,
                    roc.index(seq),
                )
                .expect("protect");
                assert_eq!(buf.capacity(), capacity, "{profile:?}: grew its buffer");
                assert_eq!(&buf[..], &expected[..], "{profile:?} seq {seq}");
                let decrypted = receiver.decrypt_rtp(&buf).expect("rtc decrypts ours");
                let mut raw = &decrypted[..];
                let back = rtc::rtp::Packet::unmarshal(&mut raw).expect("parse");
                assert_eq!(back.payload, original.payload, "{profile:?} seq {seq}");
            }
        }
    }

    #[test]
    fn a_tampered_packet_fails_authentication() {
        for (profile, theirs) in PROFILES {
            let key = vec![7u8; profile.key_len()];
            let salt = vec![9u8; profile.salt_len()];
            let ours = SrtpSender::new(profile, &key, &salt).expect("sender");
            let original = packet(42, 1000, 100, false);
            let mut buf = BytesMut::from(&original.marshal().expect("marshal")[..]);
            ours.protect(&mut buf, 12, 42, 1000).expect("protect");
            buf[20] ^= 1;
            assert!(
                rtc_context(theirs, &key, &salt).decrypt_rtp(&buf).is_err(),
                "{profile:?}"
            );
        }
    }

    #[test]
    fn wrong_key_lengths_and_short_packets_are_refused() {
        assert_eq!(
            SrtpSender::new(Profile::AeadAes128Gcm, &[0; 16], &[0; 14]).err(),
            Some(SrtpError::KeyLength)
        );
        assert_eq!(
            SrtpSender::new(Profile::Aes128CmHmacSha1_80, &[0; 32], &[0; 14]).err(),
            Some(SrtpError::KeyLength)
        );
        let sender = SrtpSender::new(Profile::AeadAes128Gcm, &[0; 16], &[0; 12]).expect("sender");
        let mut short = BytesMut::from(&[0u8; 8][..]);
        assert_eq!(
            sender.protect(&mut short, 12, 1, 1),
            Err(SrtpError::Truncated)
        );
    }

    #[test]
    fn the_rollover_counter_follows_wraps_and_gives_late_numbers_their_first_index() {
        let mut roc = RolloverCounter::default();
        assert_eq!(roc.index(65_534), 65_534);
        assert_eq!(roc.index(65_535), 65_535);
        assert_eq!(roc.index(1), 65_537);
        // A resend of a number from before the wrap keeps its old index.
        assert_eq!(roc.index(65_534), 65_534);
        assert_eq!(roc.index(2), 65_538);
        // Half the space on, still the same rollover; past it, the next.
        assert_eq!(roc.index(30_000), 65_536 + 30_000);
        assert_eq!(roc.index(60_000), 65_536 + 60_000);
        assert_eq!(roc.index(10), 2 * 65_536 + 10);
    }
}
