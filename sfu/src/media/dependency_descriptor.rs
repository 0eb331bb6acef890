//! The AV1 RTP dependency descriptor (AV1 RTP specification, Appendix A): the header
//! extension that tells an SFU, for every packet, which frame it belongs to, that frame's
//! spatial and temporal layer and the frames it references, without reading the payload.
//!
//! A publisher sends the *template dependency structure* (how many layers, one template
//! per kind of frame) with the first packet of a key frame; every packet after it names
//! a template by a 6-bit ID and may override the template's references. So the reader keeps
//! the structure of each stream ([`Structure`]) and reads each packet against it
//! ([`parse`]). Everything has fixed capacity: reading a packet allocates nothing, and a
//! descriptor that names more than the capacity is refused as malformed, not cut.

use super::codec::FrameLayers;
use super::spatial::SpatialInfo;
use super::temporal::{References as TemporalReferences, TemporalInfo};
use super::vp9::{MAX_SPATIAL_LAYERS, Scalability};

/// The header extension's URI in SDP.
pub const URI: &str =
    "https://aomediacodec.github.io/av1-rtp-spec/#dependency-descriptor-rtp-header-extension";

/// Templates a structure may hold: template IDs have 6 bits.
pub const MAX_TEMPLATES: usize = 64;
/// Decode targets a structure may declare (`dt_cnt_minus_one` has 5 bits).
pub const MAX_DECODE_TARGETS: usize = 32;
/// Frames one frame may reference. libaom's scalability structures reference at most two;
/// a frame naming more is refused.
pub const MAX_REFERENCES: usize = 4;
/// Spatial layers whose render resolution is kept (a browser sends at most three).
pub const MAX_RESOLUTIONS: usize = 4;

/// Decode target indication (Table A.1): what a frame means to one decode target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Indication {
    /// The frame is not part of the decode target.
    NotPresent,
    /// It is, and no later frame of the target references it.
    Discardable,
    /// A decoder may start the target here once every chain's frame before it arrived.
    Switch,
    /// It is, and later frames of the target reference it.
    Required,
}

impl Indication {
    fn from_bits(bits: u64) -> Self {
        match bits & 3 {
            0 => Self::NotPresent,
            1 => Self::Discardable,
            2 => Self::Switch,
            _ => Self::Required,
        }
    }
}

/// One template: a kind of frame the encoder makes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Template {
    spatial: u8,
    temporal: u8,
    /// Two bits per decode target, target 0 in the lowest bits.
    indications: u64,
    references: References,
}

/// The frames a frame references, as differences of frame numbers back from it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct References {
    diffs: [u16; MAX_REFERENCES],
    count: u8,
}

impl References {
    /// The differences, each at least 1.
    pub fn diffs(&self) -> &[u16] {
        &self.diffs[..usize::from(self.count)]
    }

    fn push(&mut self, diff: u16) -> Result<(), Malformed> {
        let slot = self
            .diffs
            .get_mut(usize::from(self.count))
            .ok_or(Malformed)?;
        *slot = diff;
        self.count += 1;
        Ok(())
    }
}

/// A stream's template dependency structure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Structure {
    /// The frame number of the descriptor that brought it: an older one's structure is
    /// stale.
    frame_number: u16,
    template_id_offset: u8,
    decode_targets: u8,
    chains: u8,
    templates: [Template; MAX_TEMPLATES],
    template_count: u8,
    resolutions: [(u16, u16); MAX_RESOLUTIONS],
    resolution_count: u8,
    max_spatial: u8,
    max_temporal: u8,
}

impl Default for Structure {
    fn default() -> Self {
        Self {
            frame_number: 0,
            template_id_offset: 0,
            decode_targets: 0,
            chains: 0,
            templates: [Template::default(); MAX_TEMPLATES],
            template_count: 0,
            resolutions: [(0, 0); MAX_RESOLUTIONS],
            resolution_count: 0,
            max_spatial: 0,
            max_temporal: 0,
        }
    }
}

impl Structure {
    /// Spatial layers the structure declares.
    pub fn spatial_layers(&self) -> u8 {
        self.max_spatial + 1
    }

    /// Temporal layers the structure declares.
    pub fn temporal_layers(&self) -> u8 {
        self.max_temporal + 1
    }

    /// Decode targets the structure declares.
    pub fn decode_targets(&self) -> u8 {
        self.decode_targets
    }

    /// The render width and height of spatial layer `sid`, when the encoder gave them.
    pub fn resolution(&self, sid: usize) -> Option<(u16, u16)> {
        self.resolutions[..usize::from(self.resolution_count)]
            .get(sid)
            .copied()
    }
}

/// What one packet's descriptor says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Descriptor {
    /// The packet is the first of its frame.
    pub start_of_frame: bool,
    /// The packet is the last of its frame.
    pub end_of_frame: bool,
    /// The frame's number: it counts frames (each spatial layer's frame is one), modulo
    /// 2^16.
    pub frame_number: u16,
    /// The frame's spatial layer.
    pub spatial: u8,
    /// The frame's temporal layer.
    pub temporal: u8,
    /// The frames it references.
    pub references: References,
    /// The packet carried a new template dependency structure (now the stream's).
    pub new_structure: bool,
    /// The decode targets the encoder says are active (bit `i` for target `i`), when the
    /// packet says; a new structure makes them all active.
    pub active_decode_targets: Option<u32>,
    indications: u64,
}

impl Descriptor {
    /// What the frame means to decode target `target`.
    pub fn indication(&self, target: usize) -> Indication {
        if target >= MAX_DECODE_TARGETS {
            return Indication::NotPresent;
        }
        Indication::from_bits(self.indications >> (2 * target))
    }
}

/// Why a descriptor could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("malformed or unsupported dependency descriptor")]
pub struct Malformed;

/// Why a packet's descriptor gave nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// The descriptor is cut short, names something impossible or exceeds the capacity.
    #[error(transparent)]
    Malformed(#[from] Malformed),
    /// It refers to a structure the stream has not received (it came in a lost packet, or
    /// the stream joined mid-way): wait for the next key frame.
    #[error("no dependency structure received yet")]
    NoStructure,
    /// Its template ID is not one of the structure's.
    #[error("template ID not in the dependency structure")]
    UnknownTemplate,
}

/// Reads one packet's descriptor (`bytes`, the extension's value) against `structure`,
/// the stream's. A descriptor carrying a whole structure replaces `structure`, even when
/// the rest of it turns out malformed, unless it is older than the one there (a late
/// resend of an earlier key frame): then it is read against its own structure, and
/// `structure` stays.
pub fn parse(bytes: &[u8], structure: &mut Option<Structure>) -> Result<Descriptor, ParseError> {
    let mut reader = BitReader::new(bytes);
    let start_of_frame = reader.bit()?;
    let end_of_frame = reader.bit()?;
    let template_id = reader.bits(6)? as u8;
    let frame_number = reader.bits(16)? as u16;
    let mut new_structure = false;
    let mut stale: Option<Structure> = None;
    let mut active_decode_targets = None;
    let (mut custom_dtis, mut custom_fdiffs, mut custom_chains) = (false, false, false);
    if bytes.len() > 3 {
        let structure_present = reader.bit()?;
        let active_present = reader.bit()?;
        custom_dtis = reader.bit()?;
        custom_fdiffs = reader.bit()?;
        custom_chains = reader.bit()?;
        if structure_present {
            // Read aside, so that a malformed one leaves no half of itself behind.
            let mut read = Structure {
                frame_number,
                ..Structure::default()
            };
            read_structure(&mut reader, &mut read)?;
            active_decode_targets = Some(all_targets(read.decode_targets));
            let older = structure.as_ref().is_some_and(|current| {
                (frame_number.wrapping_sub(current.frame_number) as i16) < 0
            });
            if older {
                stale = Some(read);
            } else {
                new_structure = true;
                *structure = Some(read);
            }
        }
        if active_present {
            let targets = stale
                .as_ref()
                .or(structure.as_ref())
                .ok_or(ParseError::NoStructure)?;
            active_decode_targets = Some(reader.bits(u32::from(targets.decode_targets))? as u32);
        }
    }
    let structure = stale
        .as_ref()
        .or(structure.as_ref())
        .ok_or(ParseError::NoStructure)?;
    let index = (usize::from(template_id) + MAX_TEMPLATES
        - usize::from(structure.template_id_offset))
        % MAX_TEMPLATES;
    if index >= usize::from(structure.template_count) {
        return Err(ParseError::UnknownTemplate);
    }
    let template = structure.templates[index];
    let indications = if custom_dtis {
        reader.bits(2 * u32::from(structure.decode_targets))?
    } else {
        template.indications
    };
    let references = if custom_fdiffs {
        let mut references = References::default();
        loop {
            let size = reader.bits(2)?;
            if size == 0 {
                break;
            }
            references.push(reader.bits(4 * size as u32)? as u16 + 1)?;
        }
        references
    } else {
        template.references
    };
    if custom_chains {
        // One byte per chain, up to 32 of them: read one at a time.
        for _ in 0..structure.chains {
            reader.bits(8)?;
        }
    }
    Ok(Descriptor {
        start_of_frame,
        end_of_frame,
        frame_number,
        spatial: template.spatial,
        temporal: template.temporal,
        references,
        new_structure,
        active_decode_targets,
        // Custom indications were read target 0 first, in the highest bits.
        indications: if custom_dtis {
            reverse_pairs(indications, structure.decode_targets)
        } else {
            indications
        },
    })
}

/// What an AV1 packet's descriptor says of its layers, as the shard reads VP9's: a picture
/// (temporal unit) starts at the first packet of its base spatial layer's frame, and the
/// frames a picture references decide whether a subscriber may move up a temporal layer
/// at it. `keyframe` is the payload's own word (the aggregation header's N bit). Spatial
/// layers come from the structure on the packets that carry one.
pub fn frame_layers(descriptor: &Descriptor, structure: &Structure, keyframe: bool) -> FrameLayers {
    let picture_start = descriptor.start_of_frame && descriptor.spatial == 0;
    let scalability = descriptor.new_structure.then(|| {
        let mut widths = [0u16; MAX_SPATIAL_LAYERS];
        let mut named = true;
        for (sid, width) in widths
            .iter_mut()
            .enumerate()
            .take(structure.spatial_layers().into())
        {
            match structure.resolution(sid) {
                Some((w, _)) => *width = w,
                None => named = false,
            }
        }
        Scalability {
            layers: structure.spatial_layers(),
            widths: named.then_some(widths),
        }
    });
    FrameLayers {
        keyframe,
        temporal: Some(TemporalInfo {
            tid: descriptor.temporal,
            sync: false,
            frame_start: picture_start,
            references: Some(TemporalReferences::frames(
                descriptor.frame_number,
                descriptor.references.diffs(),
            )),
        }),
        spatial: Some(SpatialInfo {
            sid: descriptor.spatial,
            ends_layer_frame: descriptor.end_of_frame,
            picture_start,
        }),
        scalability,
    }
}

fn all_targets(count: u8) -> u32 {
    if count >= 32 {
        u32::MAX
    } else {
        (1u32 << count) - 1
    }
}

/// Two-bit fields read most significant first (target 0 in the highest pair) rearranged
/// so that target 0 is in the lowest pair.
fn reverse_pairs(read: u64, count: u8) -> u64 {
    let mut out = 0;
    for target in 0..u32::from(count) {
        let shift = 2 * (u32::from(count) - 1 - target);
        out |= ((read >> shift) & 3) << (2 * target);
    }
    out
}

/// `template_dependency_structure()`, into a default `out`.
fn read_structure(reader: &mut BitReader<'_>, out: &mut Structure) -> Result<(), Malformed> {
    out.template_id_offset = reader.bits(6)? as u8;
    out.decode_targets = reader.bits(5)? as u8 + 1;
    let targets = usize::from(out.decode_targets);
    // template_layers()
    let (mut spatial, mut temporal) = (0u8, 0u8);
    let mut count = 0usize;
    loop {
        let template = out.templates.get_mut(count).ok_or(Malformed)?;
        template.spatial = spatial;
        template.temporal = temporal;
        count += 1;
        match reader.bits(2)? {
            0 => {}
            1 => {
                temporal = temporal.checked_add(1).ok_or(Malformed)?;
                out.max_temporal = out.max_temporal.max(temporal);
            }
            2 => {
                temporal = 0;
                spatial = spatial.checked_add(1).ok_or(Malformed)?;
            }
            _ => break,
        }
    }
    out.template_count = count as u8;
    out.max_spatial = spatial;
    // template_dtis()
    for template in &mut out.templates[..count] {
        let mut indications = 0u64;
        for target in 0..targets {
            indications |= reader.bits(2)? << (2 * target);
        }
        template.indications = indications;
    }
    // template_fdiffs()
    for template in &mut out.templates[..count] {
        while reader.bit()? {
            template.references.push(reader.bits(4)? as u16 + 1)?;
        }
    }
    // template_chains(): only their count matters here, to skip a frame's custom chains.
    out.chains = reader.non_symmetric(u32::from(out.decode_targets) + 1)? as u8;
    if out.chains > 0 {
        for _ in 0..targets {
            reader.non_symmetric(u32::from(out.chains))?;
        }
        for _ in 0..count * usize::from(out.chains) {
            reader.bits(4)?;
        }
    }
    // decode_target_layers() is derived, not sent; resolutions follow.
    if reader.bit()? {
        for sid in 0..=usize::from(spatial) {
            let width = reader.bits(16)? as u16;
            let height = reader.bits(16)? as u16;
            if let Some(slot) = out.resolutions.get_mut(sid) {
                *slot = (width.saturating_add(1), height.saturating_add(1));
                out.resolution_count = sid as u8 + 1;
            }
        }
    }
    Ok(())
}

/// Reads bits most significant first.
struct BitReader<'a> {
    bytes: &'a [u8],
    position: usize,
}

impl<'a> BitReader<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Self { bytes, position: 0 }
    }

    fn bit(&mut self) -> Result<bool, Malformed> {
        let byte = self.bytes.get(self.position / 8).ok_or(Malformed)?;
        let bit = byte >> (7 - self.position % 8) & 1;
        self.position += 1;
        Ok(bit == 1)
    }

    /// `f(n)` for n ≤ 64 (n up to 64 for 32 decode targets' indications).
    fn bits(&mut self, count: u32) -> Result<u64, Malformed> {
        if count > 64 {
            return Err(Malformed);
        }
        let mut value = 0u64;
        for _ in 0..count {
            value = value << 1 | u64::from(self.bit()?);
        }
        Ok(value)
    }

    /// `ns(n)`: a value below `n` in a non-symmetric unsigned code.
    fn non_symmetric(&mut self, n: u32) -> Result<u64, Malformed> {
        if n == 0 {
            return Err(Malformed);
        }
        let width = 32 - n.leading_zeros();
        let m = (1u64 << width) - u64::from(n);
        let value = self.bits(width - 1)?;
        if value < m {
            return Ok(value);
        }
        let extra = u64::from(self.bit()?);
        Ok((value << 1) - m + extra)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes bits most significant first, as a publisher would.
    #[derive(Default)]
    struct BitWriter {
        bytes: Vec<u8>,
        bits: usize,
    }

    impl BitWriter {
        fn put(&mut self, value: u64, count: u32) -> &mut Self {
            for shift in (0..count).rev() {
                if self.bits.is_multiple_of(8) {
                    self.bytes.push(0);
                }
                let bit = (value >> shift & 1) as u8;
                let last = self.bytes.len() - 1;
                self.bytes[last] |= bit << (7 - self.bits % 8);
                self.bits += 1;
            }
            self
        }

        /// `ns(n)`, the writer's side.
        fn non_symmetric(&mut self, value: u64, n: u32) -> &mut Self {
            let width = 32 - n.leading_zeros();
            let m = (1u64 << width) - u64::from(n);
            if value < m {
                self.put(value, width - 1)
            } else {
                let v = value + m;
                self.put(v >> 1, width - 1).put(v & 1, 1)
            }
        }

        fn done(&self) -> Vec<u8> {
            self.bytes.clone()
        }
    }

    /// Mandatory fields.
    fn mandatory(w: &mut BitWriter, start: bool, end: bool, template: u8, frame: u16) {
        w.put(u64::from(start), 1)
            .put(u64::from(end), 1)
            .put(u64::from(template), 6)
            .put(u64::from(frame), 16);
    }

    /// libwebrtc's L1T3 structure (scalability_structure_l1t3.cc): decode targets T0, T1,
    /// T2; templates: key (T0), delta T0, T2 after T0, T1, T2 after T1; one chain.
    fn write_l1t3_structure(w: &mut BitWriter, offset: u8, resolution: Option<(u16, u16)>) {
        w.put(u64::from(offset), 6).put(2, 5); // three decode targets
        // template_layers: T0 key, T0, T1, T2, T2 (next_layer_idc between them)
        w.put(0, 2).put(1, 2).put(1, 2).put(0, 2).put(3, 2);
        // dtis per template, targets 0..3: S=2, R=3, D=1, -=0
        let dtis: [[u64; 3]; 5] = [
            [2, 2, 2], // key: switch for all
            [3, 3, 3], // T0
            [0, 2, 3], // T1: switch for T1, required for T2
            [0, 0, 1], // T2 after T1 ...
            [0, 0, 1], // T2
        ];
        for template in dtis {
            for dti in template {
                w.put(dti, 2);
            }
        }
        // fdiffs: key none; T0 -4; T1 -2; T2 -1; T2 -1
        let fdiffs: [&[u64]; 5] = [&[], &[4], &[2], &[1], &[1]];
        for template in fdiffs {
            for &d in template {
                w.put(1, 1).put(d - 1, 4);
            }
            w.put(0, 1);
        }
        // chains: one chain (ns(4) of 1), protecting each target (ns(1): zero bits)
        w.non_symmetric(1, 4);
        for _ in 0..3 {
            w.non_symmetric(0, 1);
        }
        for _ in 0..5 {
            w.put(0, 4);
        }
        match resolution {
            Some((width, height)) => {
                w.put(1, 1)
                    .put(u64::from(width) - 1, 16)
                    .put(u64::from(height) - 1, 16);
            }
            None => {
                w.put(0, 1);
            }
        }
    }

    fn key_descriptor(offset: u8) -> Vec<u8> {
        let mut w = BitWriter::default();
        mandatory(&mut w, true, false, offset, 100);
        // extended: structure present, active targets absent, no customs
        w.put(0b10000, 5);
        write_l1t3_structure(&mut w, offset, Some((640, 480)));
        w.done()
    }

    #[test]
    fn a_key_frame_brings_the_structure_that_later_packets_use() {
        let mut structure = None;
        let key = parse(&key_descriptor(5), &mut structure).expect("key frame descriptor");
        assert!(key.new_structure && key.start_of_frame && !key.end_of_frame);
        assert_eq!((key.spatial, key.temporal, key.frame_number), (0, 0, 100));
        assert_eq!(key.active_decode_targets, Some(0b111));
        assert_eq!(key.indication(0), Indication::Switch);
        let read = structure.as_ref().expect("structure kept");
        assert_eq!((read.spatial_layers(), read.temporal_layers()), (1, 3));
        assert_eq!(read.decode_targets(), 3);
        assert_eq!(read.resolution(0), Some((640, 480)));
        assert_eq!(read.resolution(1), None);

        // A T1 frame: template index 2, ID 5 + 2.
        let mut w = BitWriter::default();
        mandatory(&mut w, true, true, 7, 102);
        let t1 = parse(&w.done(), &mut structure).expect("three-byte descriptor");
        assert_eq!((t1.spatial, t1.temporal, t1.frame_number), (0, 1, 102));
        assert_eq!(t1.references.diffs(), &[2]);
        assert_eq!(t1.indication(0), Indication::NotPresent);
        assert_eq!(t1.indication(1), Indication::Switch);
        assert_eq!(t1.indication(2), Indication::Required);
        assert!(!t1.new_structure && t1.active_decode_targets.is_none());
    }

    #[test]
    fn an_older_key_frames_structure_does_not_replace_a_newer_one() {
        let mut structure = None;
        // The L1T3 structure at frame 100 (offset 5), then an L2 one at frame 200.
        parse(&key_descriptor(5), &mut structure).expect("first structure");
        let mut w = BitWriter::default();
        mandatory(&mut w, true, false, 0, 200);
        w.put(0b10000, 5);
        w.put(0, 6).put(1, 5);
        w.put(2, 2).put(3, 2); // two templates: S0, then S1
        for dtis in [[2u64, 2], [0, 2]] {
            for dti in dtis {
                w.put(dti, 2);
            }
        }
        w.put(0, 1).put(1, 1).put(0, 4).put(0, 1);
        w.non_symmetric(0, 3);
        w.put(0, 1);
        let newer = parse(&w.done(), &mut structure).expect("second structure");
        assert!(newer.new_structure);
        assert_eq!(structure.as_ref().map(Structure::spatial_layers), Some(2));
        // A late resend of frame 100's first packet: read against its own structure, and
        // the stream keeps the newer one.
        let late = parse(&key_descriptor(5), &mut structure).expect("late key frame");
        assert!(!late.new_structure);
        assert_eq!((late.spatial, late.temporal), (0, 0));
        assert_eq!(structure.as_ref().map(Structure::spatial_layers), Some(2));
        // Frame numbers wrap: 5 after 64,000 is newer.
        for frame in [32_000, 64_000] {
            let mut w = BitWriter::default();
            mandatory(&mut w, true, false, 0, frame);
            w.put(0b10000, 5);
            write_l1t3_structure(&mut w, 0, None);
            let read = parse(&w.done(), &mut structure).expect("structure before the wrap");
            assert!(read.new_structure, "{frame}");
        }
        let mut w = BitWriter::default();
        mandatory(&mut w, true, false, 3, 5);
        w.put(0b10000, 5);
        write_l1t3_structure(&mut w, 3, Some((320, 240)));
        assert!(
            parse(&w.done(), &mut structure)
                .expect("after the wrap")
                .new_structure
        );
        assert_eq!(structure.and_then(|s| s.resolution(0)), Some((320, 240)));
    }

    #[test]
    fn template_ids_wrap_around_the_offset() {
        let mut structure = None;
        parse(&key_descriptor(62), &mut structure).expect("key frame descriptor");
        // Index 3 (a T2 frame) is ID (62 + 3) % 64 = 1.
        let mut w = BitWriter::default();
        mandatory(&mut w, true, true, 1, 103);
        let t2 = parse(&w.done(), &mut structure).expect("descriptor");
        assert_eq!(t2.temporal, 2);
        // Index 5 is past the five templates.
        let mut w = BitWriter::default();
        mandatory(&mut w, true, true, 3, 104);
        assert_eq!(
            parse(&w.done(), &mut structure),
            Err(ParseError::UnknownTemplate)
        );
    }

    #[test]
    fn a_descriptor_before_any_structure_says_so() {
        let mut structure = None;
        let mut w = BitWriter::default();
        mandatory(&mut w, true, true, 0, 1);
        assert_eq!(
            parse(&w.done(), &mut structure),
            Err(ParseError::NoStructure)
        );
        assert!(structure.is_none());
    }

    #[test]
    fn custom_references_indications_and_active_targets_are_read() {
        let mut structure = None;
        parse(&key_descriptor(0), &mut structure).expect("key frame descriptor");
        let mut w = BitWriter::default();
        mandatory(&mut w, true, true, 1, 200);
        // extended: no structure, active targets, custom dtis, custom fdiffs, custom chains
        w.put(0b01111, 5);
        w.put(0b011, 3); // T0 and T1 active
        w.put(3, 2).put(1, 2).put(0, 2); // targets 0, 1, 2
        w.put(1, 2).put(5, 4); // fdiff 6 in 4 bits
        w.put(3, 2).put(299, 12); // fdiff 300 in 12 bits
        w.put(0, 2);
        w.put(9, 8); // one chain's fdiff
        let read = parse(&w.done(), &mut structure).expect("descriptor");
        assert_eq!(read.active_decode_targets, Some(0b011));
        assert_eq!(read.indication(0), Indication::Required);
        assert_eq!(read.indication(1), Indication::Discardable);
        assert_eq!(read.indication(2), Indication::NotPresent);
        assert_eq!(read.references.diffs(), &[6, 300]);
    }

    /// L2T1 with two spatial layers: the second layer's templates and resolutions.
    #[test]
    fn spatial_layers_and_their_resolutions_are_read() {
        let mut w = BitWriter::default();
        mandatory(&mut w, true, false, 0, 1);
        w.put(0b10000, 5);
        w.put(0, 6).put(1, 5); // offset 0, two decode targets
        // templates: S0 key, S0, S1 key-upper, S1
        w.put(0, 2).put(2, 2).put(0, 2).put(3, 2);
        for dtis in [[2u64, 2], [3, 3], [0, 2], [0, 3]] {
            for dti in dtis {
                w.put(dti, 2);
            }
        }
        for fdiffs in [&[][..], &[2][..], &[1][..], &[2, 1][..]] {
            for &d in fdiffs {
                w.put(1, 1).put(d - 1, 4);
            }
            w.put(0, 1);
        }
        w.non_symmetric(0, 3); // no chains
        w.put(1, 1)
            .put(319, 16)
            .put(179, 16)
            .put(639, 16)
            .put(359, 16);
        let mut structure = None;
        let key = parse(&w.done(), &mut structure).expect("descriptor");
        assert_eq!((key.spatial, key.temporal), (0, 0));
        let read = structure.as_ref().expect("structure");
        assert_eq!(read.spatial_layers(), 2);
        assert_eq!(read.resolution(1), Some((640, 360)));
        let mut w = BitWriter::default();
        mandatory(&mut w, false, true, 3, 4);
        let upper = parse(&w.done(), &mut structure).expect("descriptor");
        assert_eq!((upper.spatial, upper.references.diffs()), (1, &[2, 1][..]));
        assert_eq!(upper.indication(0), Indication::NotPresent);
        assert_eq!(upper.indication(1), Indication::Required);
    }

    #[test]
    fn malformed_descriptors_are_refused_without_panicking() {
        let key = key_descriptor(0);
        let mut structure = None;
        // Every cut of a valid descriptor is refused, and never panics.
        for len in 0..key.len() {
            let mut fresh = None;
            let result = parse(&key[..len], &mut fresh);
            if len > 3 {
                assert!(result.is_err(), "cut at {len} read as {result:?}");
            }
        }
        parse(&key, &mut structure).expect("whole descriptor");
        // Too many references for the fixed capacity.
        let mut w = BitWriter::default();
        mandatory(&mut w, true, true, 1, 9);
        w.put(0b00010, 5);
        for _ in 0..=MAX_REFERENCES {
            w.put(1, 2).put(0, 4);
        }
        w.put(0, 2);
        assert_eq!(
            parse(&w.done(), &mut structure),
            Err(ParseError::Malformed(Malformed))
        );
        // Any bytes at all: no panic.
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..20_000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let len = (seed % 40) as usize;
            let bytes: Vec<u8> = (0..len).map(|i| (seed >> (i % 8 * 8)) as u8).collect();
            let _ = parse(&bytes, &mut structure);
        }
    }

    /// Thirty-two decode targets, each protected by its own chain: widths past 64 bits
    /// in the structure's chains and a frame's custom chains.
    #[test]
    fn a_structure_of_thirty_two_targets_and_chains_is_read() {
        let mut w = BitWriter::default();
        mandatory(&mut w, true, true, 0, 5);
        w.put(0b10001, 5); // structure, custom chains
        w.put(0, 6).put(31, 5); // 32 decode targets
        w.put(3, 2); // one template
        for _ in 0..32 {
            w.put(2, 2);
        }
        w.put(0, 1); // no fdiffs
        w.non_symmetric(32, 33); // 32 chains
        for target in 0..32 {
            w.non_symmetric(target, 32);
        }
        for _ in 0..32 {
            w.put(0, 4);
        }
        w.put(0, 1); // no resolutions
        for chain in 0..32u64 {
            w.put(chain, 8);
        }
        let mut structure = None;
        let read = parse(&w.done(), &mut structure).expect("descriptor");
        assert_eq!(read.active_decode_targets, Some(u32::MAX));
        assert_eq!(read.indication(31), Indication::Switch);
        assert_eq!(structure.expect("structure").decode_targets(), 32);
    }

    #[test]
    fn layers_read_as_the_shard_reads_vp9s() {
        let mut structure = None;
        let key = parse(&key_descriptor(0), &mut structure).expect("key frame descriptor");
        let read = structure.clone().expect("structure");
        let layers = frame_layers(&key, &read, true);
        assert!(layers.keyframe);
        let spatial = layers.spatial.expect("spatial");
        assert!(spatial.picture_start && !spatial.ends_layer_frame && spatial.sid == 0);
        let scalability = layers.scalability.expect("a key frame's structure");
        assert_eq!(scalability.layers, 1);
        assert_eq!(scalability.widths.map(|w| w[0]), Some(640));

        // A T2 frame, last packet: no picture start, no structure; its reference is the
        // frame before it.
        let mut w = BitWriter::default();
        mandatory(&mut w, false, true, 4, 0xffff);
        let t2 = parse(&w.done(), &mut structure).expect("descriptor");
        let layers = frame_layers(&t2, &read, false);
        let temporal = layers.temporal.expect("temporal");
        assert_eq!(temporal.tid, 2);
        assert!(!temporal.frame_start && !temporal.sync);
        let references = temporal.references.expect("references");
        assert_eq!(references.picture(), 0xffff);
        assert_eq!(references.pictures().collect::<Vec<_>>(), vec![0xfffe]);
        assert!(layers.scalability.is_none());
        assert!(layers.spatial.expect("spatial").ends_layer_frame);

        // A frame numbered past the wrap references back across it.
        let mut w = BitWriter::default();
        mandatory(&mut w, true, true, 1, 2);
        let t0 = parse(&w.done(), &mut structure).expect("descriptor");
        let references = frame_layers(&t0, &read, false)
            .temporal
            .and_then(|t| t.references)
            .expect("references");
        assert_eq!(references.pictures().collect::<Vec<_>>(), vec![0xfffe]);

        // A structure without resolutions names the layer count, not the widths.
        let mut w = BitWriter::default();
        mandatory(&mut w, true, false, 0, 300);
        w.put(0b10000, 5);
        write_l1t3_structure(&mut w, 0, None);
        let key = parse(&w.done(), &mut structure).expect("descriptor");
        let read = structure.clone().expect("structure");
        let scalability = frame_layers(&key, &read, true)
            .scalability
            .expect("structure");
        assert_eq!((scalability.layers, scalability.widths), (1, None));
    }

    #[test]
    fn non_symmetric_codes_round_trip() {
        for n in 1..40u32 {
            for value in 0..u64::from(n) {
                let mut w = BitWriter::default();
                w.non_symmetric(value, n).put(0, 7);
                let bytes = w.done();
                let mut reader = BitReader::new(&bytes);
                assert_eq!(reader.non_symmetric(n), Ok(value), "ns({n}) of {value}");
            }
        }
    }
}
