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
//!
//! [`SrtpReceiver`] is the other direction, SRTP and SRTCP, with replay windows, also in
//! place. Nothing in the shard uses it yet: it is for the links between shards, for
//! reading subscribers' RTCP without `rtc`'s general path, and for a lean load generator
//! (issue 17; `docs/notes/relay-pipes.md`).

use crate::FastMap;
use aes::cipher::{BlockEncrypt, InnerIvInit, KeyInit, StreamCipher};
use bytes::BytesMut;
use ring::{aead, hmac};
use std::collections::hash_map::Entry;

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
    /// Every SRTCP index of these keys has been used.
    #[error("SRTCP index exhausted: the keys must change")]
    Exhausted,
}

/// SRTP's key derivation labels (RFC 3711 section 4.3.2).
const LABEL_ENCRYPTION: u8 = 0x00;
const LABEL_AUTHENTICATION: u8 = 0x01;
const LABEL_SALT: u8 = 0x02;
const LABEL_RTCP_ENCRYPTION: u8 = 0x03;
const LABEL_RTCP_AUTHENTICATION: u8 = 0x04;
const LABEL_RTCP_SALT: u8 = 0x05;
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

/// The key derivation labels of one direction's session keys (RFC 3711 section 4.3.2):
/// encryption, authentication, salt.
const RTP_LABELS: [u8; 3] = [LABEL_ENCRYPTION, LABEL_AUTHENTICATION, LABEL_SALT];
const RTCP_LABELS: [u8; 3] = [
    LABEL_RTCP_ENCRYPTION,
    LABEL_RTCP_AUTHENTICATION,
    LABEL_RTCP_SALT,
];

impl Cipher {
    /// The session keys under `labels` of a master key and salt, derived once (key
    /// derivation rate 0, as DTLS-SRTP requires).
    fn new(
        profile: Profile,
        master_key: &[u8],
        master_salt: &[u8],
        [encryption, authentication, salting]: [u8; 3],
    ) -> Result<Self, SrtpError> {
        if master_key.len() != profile.key_len() || master_salt.len() != profile.salt_len() {
            return Err(SrtpError::KeyLength);
        }
        let derive = |label: u8, out: &mut [u8]| derive(master_key, master_salt, label, out);
        Ok(match profile {
            Profile::AeadAes128Gcm | Profile::AeadAes256Gcm => {
                let mut key = [0u8; 32];
                let key = &mut key[..profile.key_len()];
                derive(encryption, key)?;
                let mut salt = [0u8; 12];
                derive(salting, &mut salt)?;
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
                derive(encryption, &mut key)?;
                let mut auth = [0u8; AUTH_KEY_LEN];
                derive(authentication, &mut auth)?;
                let mut salt = [0u8; 14];
                derive(salting, &mut salt)?;
                // SRTCP's tag is 80 bits under both HMAC-SHA1 profiles (RFC 3711 section
                // 5.2; RFC 5764 section 4.1.2): `_32` shortens only SRTP's.
                let tag_len = if encryption == LABEL_RTCP_ENCRYPTION {
                    10
                } else {
                    profile.tag_len()
                };
                Cipher::Cm(Box::new(CmKeys {
                    aes: aes::Aes128::new(&key.into()),
                    auth: hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, &auth),
                    salt,
                    tag_len,
                }))
            }
        })
    }

    fn tag_len(&self) -> usize {
        match self {
            Cipher::Gcm { .. } => 16,
            Cipher::Cm(keys) => keys.tag_len,
        }
    }
}

/// RFC 7714's GCM nonce: the 12 bytes `00 00 || SSRC || high || low` XORed with the salt,
/// where SRTP has the rollover counter and sequence number and SRTCP zeros and the index.
fn gcm_nonce(salt: &[u8; 12], ssrc: u32, middle: [u8; 4], last: [u8; 2]) -> aead::Nonce {
    let mut iv = [0u8; 12];
    iv[2..6].copy_from_slice(&ssrc.to_be_bytes());
    iv[6..10].copy_from_slice(&middle);
    iv[10..12].copy_from_slice(&last);
    for (byte, salt) in iv.iter_mut().zip(salt) {
        *byte ^= salt;
    }
    aead::Nonce::assume_unique_for_key(iv)
}

/// SRTCP's GCM nonce and additional data (RFC 7714 section 9.1): the first 8 bytes of the
/// packet and the E||index word are authenticated, not encrypted.
fn srtcp_gcm(
    salt: &[u8; 12],
    ssrc: u32,
    first: &[u8],
    word: [u8; 4],
) -> (aead::Nonce, [u8; 8 + SRTCP_INDEX_LEN]) {
    let nonce = gcm_nonce(
        salt,
        ssrc,
        [0, 0, word[0] & 0x7f, word[1]],
        [word[2], word[3]],
    );
    let mut aad = [0u8; 8 + SRTCP_INDEX_LEN];
    aad[..8].copy_from_slice(first);
    aad[8..].copy_from_slice(&word);
    (nonce, aad)
}

/// RFC 3711 section 4.1.1's counter: (salt * 2^16) XOR (SSRC * 2^64) XOR (index * 2^16).
fn cm_counter(keys: &CmKeys, ssrc: u32, index: u64) -> ctr::Ctr128BE<aes::Aes128> {
    let mut iv = [0u8; 16];
    iv[..14].copy_from_slice(&keys.salt);
    for (byte, value) in iv[4..8].iter_mut().zip(ssrc.to_be_bytes()) {
        *byte ^= value;
    }
    for (byte, value) in iv[8..14].iter_mut().zip(&index.to_be_bytes()[2..]) {
        *byte ^= value;
    }
    ctr::Ctr128BE::<aes::Aes128>::from_core(ctr::CtrCore::inner_iv_init(
        keys.aes.clone(),
        &iv.into(),
    ))
}

/// Whether `tag` is the first bytes of HMAC-SHA1 over `parts`, compared in constant time.
fn cm_verify(keys: &CmKeys, parts: &[&[u8]], tag: &[u8]) -> bool {
    let mut mac = hmac::Context::with_key(&keys.auth);
    for part in parts {
        mac.update(part);
    }
    let full = mac.sign();
    full.as_ref()
        .get(..tag.len())
        .is_some_and(|expected| bool::from(subtle::ConstantTimeEq::ct_eq(expected, tag)))
}

impl SrtpSender {
    /// A sender for `profile` with the connection's outbound master key and salt.
    pub fn new(profile: Profile, master_key: &[u8], master_salt: &[u8]) -> Result<Self, SrtpError> {
        Ok(Self {
            cipher: Cipher::new(profile, master_key, master_salt, RTP_LABELS)?,
        })
    }

    /// Bytes [`Self::protect`] appends.
    pub fn tag_len(&self) -> usize {
        self.cipher.tag_len()
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
                // RFC 7714 section 8.1.
                let nonce = gcm_nonce(salt, ssrc, roc.to_be_bytes(), (index as u16).to_be_bytes());
                let (header, payload) = packet.split_at_mut(header_len);
                let tag = key
                    .seal_in_place_separate_tag(nonce, aead::Aad::from(&*header), payload)
                    .map_err(|_| SrtpError::Cipher)?;
                packet.extend_from_slice(tag.as_ref());
            }
            Cipher::Cm(keys) => {
                cm_counter(keys, ssrc, index).apply_keystream(&mut packet[header_len..]);
                // RFC 3711 section 4.2: the tag covers the packet and the rollover counter.
                let mut mac = hmac::Context::with_key(&keys.auth);
                mac.update(packet);
                mac.update(&roc.to_be_bytes());
                let tag = mac.sign();
                packet.extend_from_slice(&tag.as_ref()[..keys.tag_len]);
            }
        }
        Ok(())
    }
}

/// Protects the RTCP one endpoint sends, under its outbound master key: SRTCP with the
/// E flag set and its own 31-bit index, which it counts.
pub struct SrtcpSender {
    cipher: Cipher,
    /// The index of the next packet.
    index: u32,
}

/// SRTCP's index is 31 bits; the keys must change before it wraps (RFC 3711 section 9.2).
const MAX_SRTCP_INDEX: u32 = 0x7fff_ffff;

impl SrtcpSender {
    /// A sender for `profile` with the endpoint's outbound master key and salt.
    pub fn new(profile: Profile, master_key: &[u8], master_salt: &[u8]) -> Result<Self, SrtpError> {
        Ok(Self {
            cipher: Cipher::new(profile, master_key, master_salt, RTCP_LABELS)?,
            // libsrtp, and rtc after it, number the first packet 1.
            index: 1,
        })
    }

    /// Bytes [`Self::protect`] appends.
    pub fn overhead(&self) -> usize {
        self.cipher.tag_len() + SRTCP_INDEX_LEN
    }

    /// Protects the compound RTCP packet in `packet` in place: everything after the first
    /// header and sender SSRC is encrypted, and the E flag with the index and the tag are
    /// appended (in the order of the profile). Leave [`Self::overhead`] bytes of spare
    /// capacity and nothing is allocated.
    pub fn protect(&mut self, packet: &mut BytesMut) -> Result<(), SrtpError> {
        if packet.len() < 8 {
            return Err(SrtpError::Truncated);
        }
        if self.index > MAX_SRTCP_INDEX {
            return Err(SrtpError::Exhausted);
        }
        let word = (0x8000_0000 | self.index).to_be_bytes();
        let ssrc = u32::from_be_bytes([packet[4], packet[5], packet[6], packet[7]]);
        match &self.cipher {
            Cipher::Gcm { key, salt } => {
                let (nonce, aad) = srtcp_gcm(salt, ssrc, &packet[..8], word);
                let tag = key
                    .seal_in_place_separate_tag(nonce, aead::Aad::from(&aad), &mut packet[8..])
                    .map_err(|_| SrtpError::Cipher)?;
                packet.extend_from_slice(tag.as_ref());
                packet.extend_from_slice(&word);
            }
            Cipher::Cm(keys) => {
                // RFC 3711 section 3.4: the tag covers the packet and E||index.
                cm_counter(keys, ssrc, u64::from(self.index)).apply_keystream(&mut packet[8..]);
                packet.extend_from_slice(&word);
                let tag = hmac::sign(&keys.auth, packet);
                packet.extend_from_slice(&tag.as_ref()[..keys.tag_len]);
            }
        }
        self.index += 1;
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
        let index = estimate_index(self.highest, seq);
        if self.highest.is_none_or(|highest| index > highest) {
            self.highest = Some(index);
        }
        index
    }
}

/// The packet index of `seq` given the highest index seen (RFC 3711 section 3.3.1): the
/// rollover counter that puts it nearest.
pub fn estimate_index(highest: Option<u64>, seq: u16) -> u64 {
    let Some(highest) = highest else {
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
    (guess << 16) | u64::from(seq)
}

/// Packets remembered behind the newest for replay detection (RFC 3711 section 3.3.2).
const REPLAY_WINDOW: u64 = 64;
/// SSRCs one receiver keeps replay windows for (a peer has a few streams at a time).
/// A stream past the bound takes the place of the one that has been quiet longest.
const MAX_RECEIVED_SSRCS: usize = 64;
/// Streams whose window was given up whose highest index is still kept: a layer paused
/// for an hour comes back under the rollover counter it left with, not 0 (it would fail
/// authentication for good once its sequence numbers had wrapped).
const MAX_RETIRED_SSRCS: usize = 1024;

/// Which recent indexes of one stream arrived.
#[derive(Debug, Default, Clone, Copy)]
struct ReplayWindow {
    highest: Option<u64>,
    /// Bit n: index `highest - n` arrived.
    seen: u64,
    /// When the stream last had a packet accepted, in the receiver's own count.
    last_used: u64,
}

impl ReplayWindow {
    /// Whether `index` is new and not too old to tell.
    fn fresh(&self, index: u64) -> bool {
        match self.highest {
            None => true,
            Some(highest) if index > highest => true,
            Some(highest) => {
                let behind = highest - index;
                behind < REPLAY_WINDOW && self.seen & (1 << behind) == 0
            }
        }
    }

    /// Records an authenticated `index`.
    fn accept(&mut self, index: u64) {
        match self.highest {
            Some(highest) if index <= highest => self.seen |= 1 << (highest - index),
            Some(highest) => {
                let ahead = index - highest;
                self.seen = if ahead >= REPLAY_WINDOW {
                    0
                } else {
                    self.seen << ahead
                } | 1;
                self.highest = Some(index);
            }
            None => {
                self.highest = Some(index);
                self.seen = 1;
            }
        }
    }
}

/// Verifies and decrypts the SRTP and SRTCP one connection receives, under its inbound
/// master key, in the caller's buffer, refusing replays.
pub struct SrtpReceiver {
    rtp: Cipher,
    rtcp: Cipher,
    /// Per SSRC: replay windows of RTP (over packet indexes) and SRTCP (over its own).
    rtp_windows: ReplayWindows,
    rtcp_windows: ReplayWindows,
}

/// The replay windows of one kind of packet (RTP or SRTCP), by SSRC.
#[derive(Default)]
struct ReplayWindows {
    live: FastMap<u32, ReplayWindow>,
    /// Streams whose window was given up: the highest index each had, and when it was
    /// given up (the oldest goes first past the bound).
    retired: FastMap<u32, (u64, u64)>,
    /// Packets accepted so far: the clock of the windows' `last_used`.
    accepted: u64,
}

impl ReplayWindows {
    /// Checks a packet of `ssrc` against its stream's window and, if `open` (given the
    /// packet's index, which `index_of` reads against the window) authenticates it,
    /// records the index. A known stream costs one lookup. Only an authenticated packet
    /// makes a window, so forged SSRCs cannot take a real stream's place; past the bound,
    /// the window quiet longest is given up, keeping its highest index.
    fn check<T>(
        &mut self,
        ssrc: u32,
        index_of: impl FnOnce(&ReplayWindow) -> u64,
        open: impl FnOnce(u64) -> Result<T, UnprotectError>,
    ) -> Result<T, UnprotectError> {
        let entry = self.live.entry(ssrc);
        let window = match &entry {
            Entry::Occupied(live) => *live.get(),
            // Never seen: empty. Given up: everything up to the highest index it had
            // counts as seen (its packets from before cannot be replayed, and its
            // rollover counter carries on).
            Entry::Vacant(_) => match self.retired.get(&ssrc) {
                Some(&(highest, _)) => ReplayWindow {
                    highest: Some(highest),
                    seen: u64::MAX,
                    last_used: 0,
                },
                None => ReplayWindow::default(),
            },
        };
        let index = index_of(&window);
        if !window.fresh(index) {
            return Err(UnprotectError::Replayed);
        }
        let opened = open(index)?;
        self.accepted += 1;
        match entry {
            Entry::Occupied(mut live) => {
                let live = live.get_mut();
                live.accept(index);
                live.last_used = self.accepted;
            }
            Entry::Vacant(vacant) => {
                let mut window = window;
                window.accept(index);
                window.last_used = self.accepted;
                vacant.insert(window);
                self.retired.remove(&ssrc);
                self.give_up_past_bound();
            }
        }
        Ok(opened)
    }

    /// Past [`MAX_RECEIVED_SSRCS`] windows, gives up the one quiet longest (never the one
    /// just made, which was used last), keeping its highest index.
    fn give_up_past_bound(&mut self) {
        if self.live.len() <= MAX_RECEIVED_SSRCS {
            return;
        }
        let Some((quietest, highest)) = self
            .live
            .iter()
            .min_by_key(|(_, w)| w.last_used)
            .map(|(ssrc, w)| (*ssrc, w.highest))
        else {
            return;
        };
        self.live.remove(&quietest);
        if let Some(highest) = highest {
            if self.retired.len() >= MAX_RETIRED_SSRCS
                && let Some(oldest) = self
                    .retired
                    .iter()
                    .min_by_key(|(_, (_, at))| *at)
                    .map(|(ssrc, _)| *ssrc)
            {
                self.retired.remove(&oldest);
            }
            self.retired.insert(quietest, (highest, self.accepted));
        }
    }
}

/// Why a received packet was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UnprotectError {
    /// Shorter than its header and tag.
    #[error("SRTP packet too short")]
    Truncated,
    /// Its tag does not verify: forged, damaged, or under other keys.
    #[error("SRTP authentication failed")]
    Authentication,
    /// Its index arrived before, or is too old to tell.
    #[error("SRTP packet replayed")]
    Replayed,
    /// An SRTCP packet sent unencrypted (the E flag clear), which DTLS-SRTP never does.
    #[error("SRTCP packet not encrypted")]
    Unencrypted,
}

/// Bytes of SRTCP's E flag and index word.
const SRTCP_INDEX_LEN: usize = 4;

impl SrtpReceiver {
    /// A receiver for `profile` with the connection's inbound master key and salt.
    pub fn new(profile: Profile, master_key: &[u8], master_salt: &[u8]) -> Result<Self, SrtpError> {
        Ok(Self {
            rtp: Cipher::new(profile, master_key, master_salt, RTP_LABELS)?,
            rtcp: Cipher::new(profile, master_key, master_salt, RTCP_LABELS)?,
            rtp_windows: ReplayWindows::default(),
            rtcp_windows: ReplayWindows::default(),
        })
    }

    /// Verifies and decrypts the SRTP packet in `packet`; returns the length of the plain
    /// RTP packet now at its start (the tag removed).
    pub fn unprotect_rtp(&mut self, packet: &mut [u8]) -> Result<usize, UnprotectError> {
        let header_len = rtp_header_len(packet).ok_or(UnprotectError::Truncated)?;
        let tag_len = self.rtp.tag_len();
        let end = packet
            .len()
            .checked_sub(tag_len)
            .filter(|end| *end >= header_len)
            .ok_or(UnprotectError::Truncated)?;
        let seq = u16::from_be_bytes([packet[2], packet[3]]);
        let ssrc = u32::from_be_bytes([packet[8], packet[9], packet[10], packet[11]]);
        let rtp = &self.rtp;
        self.rtp_windows.check(
            ssrc,
            |window| estimate_index(window.highest, seq),
            |index| {
                let roc = (index >> 16) as u32;
                match rtp {
                    Cipher::Gcm { key, salt } => {
                        let nonce = gcm_nonce(salt, ssrc, roc.to_be_bytes(), seq.to_be_bytes());
                        let (header, rest) = packet.split_at_mut(header_len);
                        key.open_in_place(nonce, aead::Aad::from(&*header), rest)
                            .map_err(|_| UnprotectError::Authentication)?;
                    }
                    Cipher::Cm(keys) => {
                        let (body, tag) = packet.split_at_mut(end);
                        if !cm_verify(keys, &[body, &roc.to_be_bytes()], tag) {
                            return Err(UnprotectError::Authentication);
                        }
                        cm_counter(keys, ssrc, index).apply_keystream(&mut body[header_len..]);
                    }
                }
                Ok(end)
            },
        )
    }

    /// Verifies and decrypts the SRTCP packet in `packet`; returns the length of the plain
    /// compound RTCP packet now at its start (index and tag removed).
    pub fn unprotect_rtcp(&mut self, packet: &mut [u8]) -> Result<usize, UnprotectError> {
        let tag_len = self.rtcp.tag_len();
        if packet.len() < 8 + SRTCP_INDEX_LEN + tag_len {
            return Err(UnprotectError::Truncated);
        }
        let ssrc = u32::from_be_bytes([packet[4], packet[5], packet[6], packet[7]]);
        // GCM: header, ciphertext, tag, then E||index. CM: header, ciphertext, E||index,
        // then the tag over everything before it.
        let index_at = match self.rtcp {
            Cipher::Gcm { .. } => packet.len() - SRTCP_INDEX_LEN,
            Cipher::Cm(_) => packet.len() - tag_len - SRTCP_INDEX_LEN,
        };
        let word: [u8; 4] = packet[index_at..index_at + SRTCP_INDEX_LEN]
            .try_into()
            .map_err(|_| UnprotectError::Truncated)?;
        if word[0] & 0x80 == 0 {
            return Err(UnprotectError::Unencrypted);
        }
        let index = u64::from(u32::from_be_bytes(word) & 0x7fff_ffff);
        let rtcp = &self.rtcp;
        self.rtcp_windows.check(
            ssrc,
            |_| index,
            |index| match rtcp {
                Cipher::Gcm { key, salt } => {
                    let (nonce, aad) = srtcp_gcm(salt, ssrc, &packet[..8], word);
                    let (_, rest) = packet[..index_at].split_at_mut(8);
                    key.open_in_place(nonce, aead::Aad::from(&aad), rest)
                        .map_err(|_| UnprotectError::Authentication)?;
                    Ok(index_at - tag_len)
                }
                Cipher::Cm(keys) => {
                    let (body, tag) = packet.split_at_mut(index_at + SRTCP_INDEX_LEN);
                    if !cm_verify(keys, &[body], tag) {
                        return Err(UnprotectError::Authentication);
                    }
                    cm_counter(keys, ssrc, index).apply_keystream(&mut body[8..index_at]);
                    Ok(index_at)
                }
            },
        )
    }
}

/// The length of an RTP packet's header (the fixed part, CSRCs and extension block), if
/// it is one.
pub fn rtp_header_len(packet: &[u8]) -> Option<usize> {
    let first = *packet.first()?;
    if first >> 6 != 2 || packet.len() < 12 {
        return None;
    }
    let mut len = 12 + 4 * usize::from(first & 0x0f);
    if first & 0x10 != 0 {
        let words = packet.get(len + 2..len + 4)?;
        len += 4 + 4 * usize::from(u16::from_be_bytes([words[0], words[1]]));
    }
    (len <= packet.len()).then_some(len)
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

    /// SRTCP the same way: compound packets through rtc's SRTCP and ours give identical
    /// bytes, rtc's receiving context and our receiver accept ours, and the index runs out
    /// rather than wrapping.
    #[test]
    fn protects_rtcp_byte_for_byte_as_rtc_srtcp_does_for_every_profile() {
        use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
        use rtc::rtcp::transport_feedbacks::transport_layer_nack::{NackPair, TransportLayerNack};
        for (profile, theirs) in PROFILES {
            let key: Vec<u8> = (0..profile.key_len() as u8).map(|b| b ^ 0x71).collect();
            let salt: Vec<u8> = (0..profile.salt_len() as u8).map(|b| b ^ 0x17).collect();
            let mut ours = SrtcpSender::new(profile, &key, &salt).expect("sender");
            let mut reference = rtc_context(theirs, &key, &salt);
            let mut receiver = rtc_context(theirs, &key, &salt);
            let mut our_receiver = SrtpReceiver::new(profile, &key, &salt).expect("receiver");
            for step in 0..20u16 {
                let packets: Vec<Box<dyn rtc::rtcp::packet::Packet>> = vec![
                    Box::new(TransportLayerNack {
                        sender_ssrc: 0x5eed_0001,
                        media_ssrc: 0xabcd,
                        nacks: vec![NackPair {
                            packet_id: step * 100,
                            lost_packets: step,
                        }],
                    }),
                    Box::new(PictureLossIndication {
                        sender_ssrc: 0x5eed_0001,
                        media_ssrc: 0xabcd,
                    }),
                ];
                let plain = rtc::rtcp::packet::marshal(&packets).expect("marshal");
                let expected = reference.encrypt_rtcp(&plain).expect("rtc encrypts");
                let mut buf = BytesMut::with_capacity(plain.len() + ours.overhead());
                buf.extend_from_slice(&plain);
                let capacity = buf.capacity();
                ours.protect(&mut buf).expect("protect");
                assert_eq!(buf.capacity(), capacity, "{profile:?}: grew its buffer");
                assert_eq!(&buf[..], &expected[..], "{profile:?} packet {step}");
                let decrypted = receiver.decrypt_rtcp(&buf).expect("rtc decrypts ours");
                assert_eq!(&decrypted[..], &plain[..], "{profile:?}");
                let mut mine = buf.to_vec();
                let len = our_receiver
                    .unprotect_rtcp(&mut mine)
                    .expect("ours decrypts");
                assert_eq!(&mine[..len], &plain[..], "{profile:?}");
            }
            ours.index = MAX_SRTCP_INDEX;
            let pli = PictureLossIndication {
                sender_ssrc: 1,
                media_ssrc: 2,
            };
            let plain = pli.marshal().expect("marshal");
            let mut last = BytesMut::from(&plain[..]);
            assert_eq!(ours.protect(&mut last), Ok(()));
            let mut beyond = BytesMut::from(&plain[..]);
            assert_eq!(ours.protect(&mut beyond), Err(SrtpError::Exhausted));
            let mut short = BytesMut::from(&[0x80u8, 201, 0, 0][..]);
            assert_eq!(
                SrtcpSender::new(profile, &key, &salt)
                    .expect("sender")
                    .protect(&mut short),
                Err(SrtpError::Truncated)
            );
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

    /// What rtc's SRTP and SRTCP protect, ours verifies and decrypts back to the original
    /// for every profile, across a sequence-number wrap; a second copy is a replay, and a
    /// flipped bit fails authentication.
    #[test]
    fn unprotects_what_rtc_protects_and_refuses_replays_and_forgeries() {
        use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
        for (profile, theirs) in PROFILES {
            let key: Vec<u8> = (0..profile.key_len() as u8).map(|b| b ^ 0x3c).collect();
            let salt: Vec<u8> = (0..profile.salt_len() as u8).map(|b| b ^ 0xc3).collect();
            let mut sender = rtc_context(theirs, &key, &salt);
            let mut ours = SrtpReceiver::new(profile, &key, &salt).expect("receiver");
            for (step, seq) in (0xfff8u16..=0xffff).chain(0..8).enumerate() {
                let original = packet(0x0bad_cafe, seq, 30 + step * 50, step % 3 == 0);
                let plain = original.marshal().expect("marshal");
                let protected = sender.encrypt_rtp(&plain).expect("rtc encrypts");
                let mut buf = protected.to_vec();
                let len = ours.unprotect_rtp(&mut buf).expect("ours decrypts");
                assert_eq!(&buf[..len], &plain[..], "{profile:?} seq {seq}");
                let mut again = protected.to_vec();
                assert_eq!(
                    ours.unprotect_rtp(&mut again),
                    Err(UnprotectError::Replayed),
                    "{profile:?}"
                );
            }
            let mut forged = sender
                .encrypt_rtp(
                    &packet(0x0bad_cafe, 9, 40, false)
                        .marshal()
                        .expect("marshal"),
                )
                .expect("rtc encrypts")
                .to_vec();
            forged[14] ^= 0x01;
            assert_eq!(
                ours.unprotect_rtp(&mut forged),
                Err(UnprotectError::Authentication),
                "{profile:?}"
            );

            for media_ssrc in [1u32, 2, 3] {
                let pli = PictureLossIndication {
                    sender_ssrc: 0x0bad_cafe,
                    media_ssrc,
                };
                let plain = pli.marshal().expect("marshal");
                let protected = sender.encrypt_rtcp(&plain).expect("rtc encrypts RTCP");
                let mut buf = protected.to_vec();
                let len = ours.unprotect_rtcp(&mut buf).expect("ours decrypts RTCP");
                assert_eq!(&buf[..len], &plain[..], "{profile:?} RTCP");
                let mut again = protected.to_vec();
                assert_eq!(
                    ours.unprotect_rtcp(&mut again),
                    Err(UnprotectError::Replayed)
                );
                // A fresh packet (a new SRTCP index), one bit flipped.
                let mut forged = sender
                    .encrypt_rtcp(&plain)
                    .expect("rtc encrypts RTCP")
                    .to_vec();
                forged[9] ^= 0x01;
                assert_eq!(
                    ours.unprotect_rtcp(&mut forged),
                    Err(UnprotectError::Authentication),
                    "{profile:?} RTCP"
                );
            }
        }
    }

    /// A sender and a receiver under the same AES-128-GCM master key.
    fn gcm_pair() -> (SrtpSender, SrtpReceiver) {
        let profile = Profile::AeadAes128Gcm;
        let (key, salt) = ([5u8; 16], [6u8; 12]);
        (
            SrtpSender::new(profile, &key, &salt).expect("sender"),
            SrtpReceiver::new(profile, &key, &salt).expect("receiver"),
        )
    }

    #[test]
    fn our_sender_and_receiver_agree_and_bad_input_is_refused() {
        let (sender, mut receiver) = gcm_pair();
        let mut roc = RolloverCounter::default();
        let original = packet(77, 100, 300, true);
        let plain = original.marshal().expect("marshal");
        let mut buf = BytesMut::from(&plain[..]);
        sender
            .protect(&mut buf, original.header.marshal_size(), 77, roc.index(100))
            .expect("protect");
        let len = receiver.unprotect_rtp(&mut buf).expect("unprotect");
        assert_eq!(&buf[..len], &plain[..]);
        for garbage in [
            &[][..],
            &[0x80][..],
            &[0x80; 11][..],
            &[0x90; 20][..],
            &[0x00; 40][..],
        ] {
            let mut garbage = garbage.to_vec();
            assert!(receiver.unprotect_rtp(&mut garbage).is_err());
            assert!(receiver.unprotect_rtcp(&mut garbage).is_err());
        }
    }

    #[test]
    fn past_the_bound_a_new_stream_takes_the_quietest_streams_place() {
        let (sender, mut receiver) = gcm_pair();
        let protected = |ssrc: u32, seq: u16, index: u64| {
            let mut buf = BytesMut::from(&packet(ssrc, seq, 10, false).marshal().expect("m")[..]);
            sender.protect(&mut buf, 12, ssrc, index).expect("protect");
            buf
        };
        // Stream 1 is the quietest, and has wrapped its sequence numbers once.
        receiver
            .unprotect_rtp(&mut protected(1, 60_000, 60_000))
            .expect("stream 1");
        let wrapped = protected(1, 5, 65_536 + 5);
        receiver
            .unprotect_rtp(&mut wrapped.clone())
            .expect("stream 1 past the wrap");
        for ssrc in 2..=MAX_RECEIVED_SSRCS as u32 {
            receiver
                .unprotect_rtp(&mut protected(ssrc, 1, 1))
                .expect("within the bound");
        }
        // Forged packets of new SSRCs take no window.
        for ssrc in 5_000..5_100u32 {
            let mut forged = protected(ssrc, 1, 1);
            let last = forged.len() - 1;
            forged[last] ^= 1;
            assert_eq!(
                receiver.unprotect_rtp(&mut forged),
                Err(UnprotectError::Authentication)
            );
        }
        assert_eq!(receiver.rtp_windows.live.len(), MAX_RECEIVED_SSRCS);
        assert_eq!(
            receiver.unprotect_rtp(&mut protected(2, 1, 1)),
            Err(UnprotectError::Replayed),
            "stream 2's window stayed"
        );
        // A new stream is accepted, in stream 1's place.
        receiver
            .unprotect_rtp(&mut protected(9_999, 1, 1))
            .expect("a new stream past the bound");
        assert_eq!(receiver.rtp_windows.live.len(), MAX_RECEIVED_SSRCS);
        assert!(!receiver.rtp_windows.live.contains_key(&1));
        // Stream 1 comes back: what it sent before is still a replay, and it goes on
        // under the rollover counter it had (from a fresh start it would be read as 0,
        // and fail authentication for good).
        assert_eq!(
            receiver.unprotect_rtp(&mut wrapped.clone()),
            Err(UnprotectError::Replayed)
        );
        receiver
            .unprotect_rtp(&mut protected(1, 10, 65_536 + 10))
            .expect("stream 1 back, past the wrap");
        assert!(receiver.rtp_windows.live.contains_key(&1));
    }

    #[test]
    fn the_replay_window_slides() {
        let mut window = ReplayWindow::default();
        for index in [10, 12, 11, 100] {
            assert!(window.fresh(index), "{index}");
            window.accept(index);
        }
        assert!(
            !window.fresh(100) && !window.fresh(36),
            "seen, or 64 behind"
        );
        assert!(window.fresh(37) && window.fresh(99) && window.fresh(101));
        window.accept(99);
        assert!(!window.fresh(99));
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
