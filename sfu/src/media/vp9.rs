//! VP9's RTP payload descriptor (RFC 9628 §4.2): what the shard reads of each packet to
//! leave temporal layers out.
//!
//! ```text
//!      0 1 2 3 4 5 6 7
//!     +-+-+-+-+-+-+-+-+
//!     |I|P|L|F|B|E|V|Z|
//!     +-+-+-+-+-+-+-+-+
//! I:  |M| PICTURE ID  |   7 bits, or 15 with M set and a second byte
//! L:  | TID |U| SID |D|
//!     |   TL0PICIDX   |   non-flexible mode (F clear) only
//! P,F:| P_DIFF      |N|   flexible mode, inter-picture predicted: up to three
//! V:  | N_S |Y|G|-|-|-|   scalability structure (key pictures): spatial layers − 1,
//!     |  WIDTH, HEIGHT|   with Y, 16 bits each per spatial layer; then, with G,
//!     |  ...          |   the picture group (not read)
//! ```
//!
//! Chromium sends flexible mode since M129: each picture names the pictures it references
//! as differences back from its own ID, so whether a subscriber can decode a picture is
//! known exactly, from which pictures it was sent. Older senders use non-flexible mode,
//! where U (switching up point) says a higher temporal layer may start.

use super::codec::FrameLayers;
use super::spatial::SpatialInfo;
use super::temporal::{References, TemporalInfo};

/// Most references one picture may name (RFC 9628 §4.2).
const MAX_REFERENCES: usize = 3;

/// Most spatial layers a scalability structure may describe (N_S is three bits).
pub const MAX_SPATIAL_LAYERS: usize = 8;

/// A scalability structure (V): what the encoder makes now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scalability {
    /// How many spatial layers it encodes.
    pub layers: u8,
    /// Their widths, lowest first, when it says (Y); the first `layers` are set.
    pub widths: Option<[u16; MAX_SPATIAL_LAYERS]>,
}

/// The fields of one VP9 payload descriptor the shard acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Vp9Descriptor {
    /// The picture ID and whether it is the 15-bit form.
    pub picture_id: Option<(u16, bool)>,
    /// Inter-picture predicted (P).
    pub predicted: bool,
    /// Flexible mode (F).
    pub flexible: bool,
    /// The packet starts a layer frame (B).
    pub begins_frame: bool,
    /// The packet ends a layer frame (E).
    pub ends_frame: bool,
    /// The layer indices, when the descriptor carries them (L).
    pub layer: Option<LayerIndices>,
    /// Flexible mode: the P_DIFFs of the pictures this one references, `count` of them.
    pub diffs: [u8; MAX_REFERENCES],
    /// How many of `diffs` hold a reference.
    pub count: u8,
    /// The scalability structure, when the packet carries one whole (V).
    pub scalability: Option<Scalability>,
}

/// The layer-index byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayerIndices {
    /// Temporal layer (TID).
    pub tid: u8,
    /// Switching up point (U): later pictures above `tid` reference none before this one.
    pub switching_up: bool,
    /// Spatial layer (SID).
    pub sid: u8,
    /// Inter-layer dependency (D): the frame references the spatial layer below.
    pub inter_layer: bool,
}

impl Vp9Descriptor {
    /// RFC 9628 §4.2: a keyframe is not inter-picture predicted (P=0), starts a frame (B)
    /// and, with layer indices present, is on the base spatial layer.
    pub fn keyframe(&self) -> bool {
        !self.predicted && self.begins_frame && self.layer.is_none_or(|layer| layer.sid == 0)
    }
}

/// Reads a VP9 payload descriptor; `None` when it is cut short or malformed (a P_DIFF of
/// zero, or more references than the RFC allows).
pub fn parse(payload: &[u8]) -> Option<Vp9Descriptor> {
    let first = *payload.first()?;
    let mut offset = 1;
    let picture_id = if first & 0x80 != 0 {
        let high = *payload.get(offset)?;
        if high & 0x80 != 0 {
            let low = *payload.get(offset + 1)?;
            offset += 2;
            Some((u16::from(high & 0x7f) << 8 | u16::from(low), true))
        } else {
            offset += 1;
            Some((u16::from(high), false))
        }
    } else {
        None
    };
    let predicted = first & 0x40 != 0;
    let flexible = first & 0x10 != 0;
    let layer = if first & 0x20 != 0 {
        let byte = *payload.get(offset)?;
        offset += 1;
        if !flexible {
            payload.get(offset)?; // TL0PICIDX
            offset += 1;
        }
        Some(LayerIndices {
            tid: byte >> 5,
            switching_up: byte & 0x10 != 0,
            sid: (byte >> 1) & 0x07,
            inter_layer: byte & 0x01 != 0,
        })
    } else {
        None
    };
    let mut diffs = [0u8; MAX_REFERENCES];
    let mut count = 0u8;
    if flexible && predicted {
        loop {
            let byte = *payload.get(offset)?;
            offset += 1;
            let slot = diffs.get_mut(usize::from(count))?;
            *slot = byte >> 1;
            if *slot == 0 {
                return None;
            }
            count += 1;
            if byte & 0x01 == 0 {
                break;
            }
        }
    }
    let scalability = if first & 0x02 != 0 {
        payload.get(offset..).and_then(scalability)
    } else {
        None
    };
    Some(Vp9Descriptor {
        picture_id,
        predicted,
        flexible,
        begins_frame: first & 0x08 != 0,
        ends_frame: first & 0x04 != 0,
        layer,
        diffs,
        count,
        scalability,
    })
}

/// Reads a scalability structure's layer count and widths; `None` when cut short (the
/// rest of the descriptor still counts).
fn scalability(bytes: &[u8]) -> Option<Scalability> {
    let first = *bytes.first()?;
    let layers = (first >> 5) + 1;
    let widths = if first & 0x10 != 0 {
        let mut widths = [0u16; MAX_SPATIAL_LAYERS];
        for (layer, width) in widths.iter_mut().enumerate().take(usize::from(layers)) {
            let at = 1 + layer * 4;
            // Width, then height, two bytes each; the height must be there too.
            let size = bytes.get(at..at + 4)?;
            *width = u16::from_be_bytes([size[0], size[1]]);
        }
        Some(widths)
    } else {
        None
    };
    Some(Scalability { layers, widths })
}

/// What a VP9 packet says of its picture: whether it starts a keyframe, and its temporal
/// and spatial layers (nothing of them without layer indices: one layer of each, or
/// malformed). A picture starts at its base spatial layer's first packet. In flexible mode
/// with picture IDs, whether a subscriber may move up a temporal layer at it depends on
/// the pictures it was sent, so the references go with it; in non-flexible mode the U bit
/// says so.
pub fn layers(payload: &[u8]) -> FrameLayers {
    let Some(descriptor) = parse(payload) else {
        return FrameLayers::default();
    };
    let keyframe = descriptor.keyframe();
    let Some(layer) = descriptor.layer else {
        return FrameLayers {
            keyframe,
            scalability: descriptor.scalability,
            ..FrameLayers::default()
        };
    };
    let references = match descriptor.picture_id {
        Some((picture, long)) if descriptor.flexible => Some(References::new(
            picture,
            long,
            &descriptor.diffs[..usize::from(descriptor.count)],
        )),
        _ => None,
    };
    let picture_start = descriptor.begins_frame && layer.sid == 0;
    FrameLayers {
        keyframe,
        temporal: Some(TemporalInfo {
            tid: layer.tid,
            sync: !descriptor.flexible && layer.switching_up,
            frame_start: picture_start,
            references,
        }),
        spatial: Some(SpatialInfo {
            sid: layer.sid,
            ends_layer_frame: descriptor.ends_frame,
            picture_start,
        }),
        scalability: descriptor.scalability,
    }
}

/// The temporal layer of [`layers`].
pub fn temporal(payload: &[u8]) -> Option<TemporalInfo> {
    layers(payload).temporal
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A flexible-mode descriptor with a 15-bit picture ID, as Chromium sends.
    fn flexible(picture_id: u16, tid: u8, begins: bool, diffs: &[u8]) -> Vec<u8> {
        let predicted = !diffs.is_empty();
        let mut out = vec![
            0x80 | if predicted { 0x40 } else { 0 } | 0x20 | 0x10 | if begins { 0x08 } else { 0 },
            0x80 | (picture_id >> 8) as u8,
            picture_id as u8,
            tid << 5 | 0x10,
        ];
        for (index, diff) in diffs.iter().enumerate() {
            let more = u8::from(index + 1 < diffs.len());
            out.push(diff << 1 | more);
        }
        out.push(0x83); // the frame's first bytes
        out
    }

    #[test]
    fn a_flexible_descriptor_gives_its_layer_and_references() {
        let parsed = parse(&flexible(0x1234, 2, true, &[1, 3])).unwrap();
        assert_eq!(parsed.picture_id, Some((0x1234, true)));
        assert!(parsed.predicted && parsed.flexible && parsed.begins_frame);
        assert_eq!(
            parsed.layer,
            Some(LayerIndices {
                tid: 2,
                switching_up: true,
                sid: 0,
                inter_layer: false
            })
        );
        assert_eq!(&parsed.diffs[..usize::from(parsed.count)], &[1, 3]);

        let info = temporal(&flexible(0x1234, 2, true, &[1, 3])).unwrap();
        assert_eq!(info.tid, 2);
        assert!(info.frame_start);
        assert!(!info.sync, "U says nothing in flexible mode");
        let refs: Vec<u16> = info.references.unwrap().pictures().collect();
        assert_eq!(refs, vec![0x1233, 0x1231]);
    }

    #[test]
    fn references_wrap_in_the_picture_ids_own_width() {
        let info = temporal(&flexible(1, 1, true, &[2])).unwrap();
        let refs: Vec<u16> = info.references.unwrap().pictures().collect();
        assert_eq!(refs, vec![0x7fff]);
        // A 7-bit picture ID: I, L, F, B; M clear.
        let short = [0xb8, 0x01, 0x20, 0x00];
        let info = temporal(&short).unwrap();
        assert_eq!(info.tid, 1);
        let keyframe_refs: Vec<u16> = info.references.unwrap().pictures().collect();
        assert!(keyframe_refs.is_empty(), "not predicted: no references");
        let predicted_short = [0xf8, 0x01, 0x20, 0x04];
        let refs: Vec<u16> = temporal(&predicted_short)
            .unwrap()
            .references
            .unwrap()
            .pictures()
            .collect();
        assert_eq!(refs, vec![0x7f]);
    }

    #[test]
    fn non_flexible_mode_reads_u_and_skips_tl0picidx() {
        // I (7-bit ID 5), P, L, B; TID 1, U, SID 0; TL0PICIDX 9.
        let payload = [0xe8, 0x05, 0x30, 0x09, 0x83];
        let parsed = parse(&payload).unwrap();
        assert!(!parsed.flexible);
        assert_eq!(parsed.count, 0);
        let info = temporal(&payload).unwrap();
        assert_eq!((info.tid, info.sync, info.frame_start), (1, true, true));
        assert_eq!(info.references, None);
    }

    #[test]
    fn a_picture_starts_at_its_base_spatial_layer() {
        let mut upper = flexible(40, 0, true, &[1]);
        upper[3] |= 0x02; // SID 1
        upper[0] |= 0x04; // E: the layer frame's last packet
        let read = layers(&upper);
        assert!(!read.temporal.unwrap().frame_start && !read.keyframe);
        assert_eq!(
            read.spatial,
            Some(SpatialInfo {
                sid: 1,
                ends_layer_frame: true,
                picture_start: false
            })
        );
        let base = layers(&flexible(40, 0, true, &[1])).spatial;
        assert_eq!(
            base,
            Some(SpatialInfo {
                sid: 0,
                ends_layer_frame: false,
                picture_start: true
            })
        );
    }

    #[test]
    fn cut_short_or_malformed_descriptors_are_refused() {
        let whole = flexible(0x1234, 2, true, &[1, 3]);
        // Every cut through the descriptor (its last byte is the frame's).
        for len in 0..whole.len() - 1 {
            assert_eq!(parse(&whole[..len]), None, "cut at {len}");
        }
        // A P_DIFF of zero references the picture itself.
        assert_eq!(parse(&flexible(9, 1, true, &[0])), None);
        // A fourth reference.
        let mut four = flexible(9, 1, true, &[1, 2, 3]);
        four[6] |= 0x01;
        four.insert(7, 4 << 1);
        assert_eq!(parse(&four), None);
        // No layer indices: nothing to say of temporal layers.
        assert_eq!(temporal(&[0x88, 0x05, 0x00]), None);
    }

    #[test]
    fn a_key_pictures_scalability_structure_gives_its_layers_and_widths() {
        // Chromium's key picture of L2T3_KEY: I, L, F, B, V; picture ID 300; SID 0; then
        // N_S = 1 with Y and G: 320x240 and 640x480, and a picture group.
        let mut key = vec![0x80 | 0x20 | 0x10 | 0x08 | 0x02, 0x80 | 0x01, 0x2c, 0x00];
        key.extend([
            0x20 | 0x10 | 0x08,
            0x01,
            0x40,
            0x00,
            0xf0,
            0x02,
            0x80,
            0x01,
            0xe0,
        ]);
        key.extend([0x01, 0x04, 0x01, 0xaa]);
        let read = layers(&key);
        assert!(read.keyframe);
        let ss = read.scalability.expect("a structure");
        assert_eq!(ss.layers, 2);
        assert_eq!(ss.widths.map(|w| (w[0], w[1])), Some((320, 640)));
        // Without Y: the layer count alone.
        let no_sizes = [0x80 | 0x20 | 0x10 | 0x08 | 0x02, 0x05, 0x00, 0x40];
        assert_eq!(
            parse(&no_sizes).and_then(|d| d.scalability),
            Some(Scalability {
                layers: 3,
                widths: None
            })
        );
        // Cut inside the sizes: no structure, the rest of the descriptor still read.
        for len in 5..4 + 1 + 8 {
            let descriptor = parse(&key[..len]).expect("the descriptor");
            assert_eq!(descriptor.scalability, None, "cut at {len}");
            assert_eq!(descriptor.layer.map(|l| l.sid), Some(0));
        }
    }
}
