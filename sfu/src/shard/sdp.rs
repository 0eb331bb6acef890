//! Reading what the shard needs from a client's SDP, and the one edit it makes to its own.
//!
//! The `rtc` stack applies descriptions; these helpers answer the questions it does not:
//! which media sections a publisher still sends on after a renegotiation (so removed
//! tracks can be unpublished), which simulcast layers a section announces, and how to cap
//! a publisher's video bitrate (`b=AS`/`b=TIAS` in the answer, which browsers honour as a
//! send limit).

/// Direction attribute of a media section, from the side that wrote the SDP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// `a=sendrecv` (also the default when none is given).
    SendRecv,
    /// `a=sendonly`.
    SendOnly,
    /// `a=recvonly`.
    RecvOnly,
    /// `a=inactive`.
    Inactive,
}

/// The parts of one `m=` section the shard uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaSection {
    /// `audio`, `video` or `application`.
    pub kind: String,
    /// The port; 0 marks a rejected or stopped section.
    pub port: u16,
    /// The `a=mid` value.
    pub mid: Option<String>,
    /// The direction.
    pub direction: Direction,
    /// Whether a direction attribute says it (without one, `direction` is the default).
    pub direction_given: bool,
    /// `a=bundle-only`: port 0, and still in use through the bundle.
    pub bundle_only: bool,
    /// Rids of `a=rid:<id> send` lines, in order.
    pub send_rids: Vec<String>,
    /// Every `a=rid` line, whatever its direction, and whether each names a valid rid.
    pub rid_lines: usize,
    /// Whether some `a=rid` line names an id that is not 1-16 characters of
    /// `A-Z a-z 0-9 - _` (RFC 8851's grammar, with a length bound).
    pub bad_rid: bool,
}

/// Media sections a description may hold (camera, microphone, screen share and room to
/// spare; each becomes a track every subscriber negotiates).
pub const MAX_MEDIA_SECTIONS: usize = 16;
/// `a=rid` lines one media section may hold: simulcast sends three layers; every layer
/// gets buffers up front, so an offer may not ask for hundreds.
pub const MAX_RIDS_PER_SECTION: usize = 4;

/// The media sections of a description from outside, or why it is refused: too many
/// sections, too many rids in one, or a malformed rid.
pub fn checked_sections(sdp: &str) -> Result<Vec<MediaSection>, String> {
    let sections = media_sections(sdp);
    if sections.len() > MAX_MEDIA_SECTIONS {
        return Err(format!(
            "a description may have at most {MAX_MEDIA_SECTIONS} media sections"
        ));
    }
    if sections.iter().any(|s| s.rid_lines > MAX_RIDS_PER_SECTION) {
        return Err(format!(
            "a media section may have at most {MAX_RIDS_PER_SECTION} a=rid lines"
        ));
    }
    if sections.iter().any(|s| s.bad_rid) {
        return Err("a=rid ids are 1-16 characters of A-Z a-z 0-9 - _".into());
    }
    Ok(sections)
}

impl MediaSection {
    /// Whether the writer of the SDP sends media in this section.
    pub fn sends(&self) -> bool {
        self.port != 0 && matches!(self.direction, Direction::SendRecv | Direction::SendOnly)
    }
}

/// Splits an SDP into its media sections. Unknown lines are ignored; nothing panics on
/// malformed input (a section without a parsable port gets port 0).
pub fn media_sections(sdp: &str) -> Vec<MediaSection> {
    let mut sections: Vec<MediaSection> = Vec::new();
    for line in sdp.lines() {
        let line = line.trim_end_matches('\r');
        if let Some(rest) = line.strip_prefix("m=") {
            let mut fields = rest.split_whitespace();
            let kind = fields.next().unwrap_or_default().to_owned();
            let port = fields
                .next()
                .and_then(|p| p.split('/').next())
                .and_then(|p| p.parse().ok())
                .unwrap_or(0);
            sections.push(MediaSection {
                kind,
                port,
                mid: None,
                direction: Direction::SendRecv,
                direction_given: false,
                bundle_only: false,
                send_rids: Vec::new(),
                rid_lines: 0,
                bad_rid: false,
            });
            continue;
        }
        let Some(section) = sections.last_mut() else {
            continue;
        };
        if let Some(mid) = line.strip_prefix("a=mid:") {
            section.mid = Some(mid.trim().to_owned());
        } else if let Some(direction) = match line {
            "a=sendrecv" => Some(Direction::SendRecv),
            "a=sendonly" => Some(Direction::SendOnly),
            "a=recvonly" => Some(Direction::RecvOnly),
            "a=inactive" => Some(Direction::Inactive),
            _ => None,
        } {
            section.direction = direction;
            section.direction_given = true;
        } else if line == "a=bundle-only" {
            section.bundle_only = true;
        } else if let Some(rid) = line.strip_prefix("a=rid:") {
            section.rid_lines += 1;
            let mut parts = rid.split_whitespace();
            let id = parts.next().unwrap_or_default();
            if !(1..=16).contains(&id.len())
                || !id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                section.bad_rid = true;
            } else if parts.next() == Some("send") {
                section.send_rids.push(id.to_owned());
            }
        }
    }
    sections
}

/// One format a media section accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Format {
    pub payload_type: u8,
    /// The codec's name, lowercased (`opus`, `vp8`, `rtx`).
    pub name: String,
    /// Its `a=fmtp` parameters, empty without any.
    pub fmtp: String,
}

impl Format {
    /// The payload type an RTX format repairs (`apt=`, RFC 4588 §8.1).
    pub fn apt(&self) -> Option<u8> {
        self.fmtp
            .split(';')
            .find_map(|p| p.trim().strip_prefix("apt="))
            .and_then(|pt| pt.trim().parse().ok())
    }
}

/// The formats a description accepts in the media section with `mid`, in its order: what
/// an answer really negotiated, which the stack's sender parameters (the offer's
/// preferences) do not tell.
pub fn section_formats(sdp: &str, mid: &str) -> Vec<Format> {
    let mut formats = Vec::new();
    let mut accepted: Vec<u8> = Vec::new();
    let mut section_mid: Option<&str> = None;
    let mut names: Vec<(u8, String)> = Vec::new();
    let mut fmtps: Vec<(u8, &str)> = Vec::new();
    let mut flush = |section_mid: Option<&str>,
                     accepted: &[u8],
                     names: &mut Vec<(u8, String)>,
                     fmtps: &mut Vec<(u8, &str)>| {
        if section_mid == Some(mid) {
            for pt in accepted {
                if let Some((_, name)) = names.iter().find(|(p, _)| p == pt) {
                    let fmtp = fmtps.iter().find(|(p, _)| p == pt).map_or("", |(_, f)| f);
                    formats.push(Format {
                        payload_type: *pt,
                        name: name.clone(),
                        fmtp: fmtp.to_owned(),
                    });
                }
            }
        }
        names.clear();
        fmtps.clear();
    };
    for line in sdp.lines() {
        let line = line.trim_end_matches('\r');
        if let Some(rest) = line.strip_prefix("m=") {
            flush(section_mid, &accepted, &mut names, &mut fmtps);
            let fields: Vec<&str> = rest.split_whitespace().collect();
            let rejected = fields.get(1).is_some_and(|port| *port == "0");
            accepted = if rejected {
                Vec::new()
            } else {
                fields
                    .iter()
                    .skip(3)
                    .filter_map(|f| f.parse().ok())
                    .collect()
            };
            section_mid = None;
        } else if let Some(value) = line.strip_prefix("a=mid:") {
            section_mid = Some(value.trim());
        } else if let Some(rest) = line.strip_prefix("a=rtpmap:")
            && let Some((pt, codec)) = rest.split_once(' ')
            && let Ok(pt) = pt.parse()
        {
            let name = codec
                .split('/')
                .next()
                .unwrap_or_default()
                .to_ascii_lowercase();
            names.push((pt, name));
        } else if let Some(rest) = line.strip_prefix("a=fmtp:")
            && let Some((pt, parameters)) = rest.split_once(' ')
            && let Ok(pt) = pt.parse()
        {
            fmtps.push((pt, parameters.trim()));
        }
    }
    flush(section_mid, &accepted, &mut names, &mut fmtps);
    formats
}

/// Whether a format of `fmtp` can carry a stream encoded for `wanted` of the same codec
/// when their lines differ: H.264 must keep its packetization mode and profile (a level
/// may differ), VP9 and AV1 their profile; other codecs have nothing that matters here.
pub fn fmtp_compatible(mime_type: &str, wanted: &str, fmtp: &str) -> bool {
    let param = |line: &str, key: &str| {
        line.split(';').find_map(|p| {
            let (k, v) = p.trim().split_once('=')?;
            k.trim()
                .eq_ignore_ascii_case(key)
                .then(|| v.trim().to_ascii_lowercase())
        })
    };
    let same = |key: &str, default: &str, prefix: usize| {
        let a = param(wanted, key).unwrap_or_else(|| default.to_owned());
        let b = param(fmtp, key).unwrap_or_else(|| default.to_owned());
        a.get(..prefix).unwrap_or(&a) == b.get(..prefix).unwrap_or(&b)
    };
    match mime_type.to_ascii_lowercase().as_str() {
        // RFC 6184 §8.1: without the parameters, mode 0 and Constrained Baseline's
        // neighbour 42 00 0a; the profile is the first byte (profile_idc).
        "video/h264" => {
            same("packetization-mode", "0", usize::MAX) && same("profile-level-id", "42000a", 2)
        }
        "video/vp9" => same("profile-id", "0", usize::MAX),
        "video/av1" => same("profile", "0", usize::MAX),
        _ => true,
    }
}

/// The id a description gives header extension `uri` in the media section with `mid`.
pub fn section_extension(sdp: &str, mid: &str, uri: &str) -> Option<u8> {
    let mut in_section = false;
    let mut found: Option<u8> = None;
    let mut section_mid: Option<&str> = None;
    for line in sdp.lines() {
        let line = line.trim_end_matches('\r');
        if line.starts_with("m=") {
            if in_section && section_mid == Some(mid) && found.is_some() {
                return found;
            }
            in_section = true;
            section_mid = None;
            found = None;
        } else if let Some(value) = line.strip_prefix("a=mid:") {
            section_mid = Some(value.trim());
        } else if let Some(rest) = line.strip_prefix("a=extmap:")
            && let Some((id, rest)) = rest.split_once(' ')
            && rest.split_whitespace().next() == Some(uri)
        {
            // `a=extmap:<id>[/<direction>] <uri>`
            found = id.split('/').next().and_then(|id| id.parse().ok());
        }
    }
    if section_mid == Some(mid) {
        found
    } else {
        None
    }
}

/// The mid of the media section that announces `ssrc` (`a=ssrc:<ssrc> ...`).
pub fn mid_of_ssrc(sdp: &str, ssrc: u32) -> Option<String> {
    let marker = format!("a=ssrc:{ssrc} ");
    let mut mid: Option<&str> = None;
    for line in sdp.lines() {
        let line = line.trim_end_matches('\r');
        if line.starts_with("m=") {
            mid = None;
        } else if let Some(value) = line.strip_prefix("a=mid:") {
            mid = Some(value.trim());
        } else if line.starts_with(&marker) {
            return mid.map(str::to_owned);
        }
    }
    None
}

/// Adds `a=msid-semantic: WMS *` to an SDP the shard sends when it lacks one. `rtc`
/// writes it in offers made after a remote description but not in a connection's first
/// offer, and clients that honour it read stream and track ids from `a=msid` only when
/// it is there (RFC 8830 and its WebRTC usage).
pub fn ensure_msid_semantic(sdp: String) -> String {
    if sdp.lines().any(|line| line.starts_with("a=msid-semantic:")) {
        return sdp;
    }
    let line = "a=msid-semantic: WMS *\r\n";
    // Session-level attributes go before the first media section.
    let at = if sdp.starts_with("m=") {
        Some(0)
    } else {
        sdp.find("\nm=").map(|i| i + 1)
    };
    match at {
        Some(at) => {
            let mut out = String::with_capacity(sdp.len() + line.len());
            out.push_str(&sdp[..at]);
            out.push_str(line);
            out.push_str(&sdp[at..]);
            out
        }
        None => {
            let mut out = sdp;
            if !out.is_empty() && !out.ends_with('\n') {
                out.push_str("\r\n");
            }
            out.push_str(line);
            out
        }
    }
}

/// Writes a music room's Opus tuning into an SDP the shard sends (its answer to a
/// publisher, its offer to a subscriber): stereo both ways, the room's average bitrate,
/// no DTX (a held note must not be mistaken for silence), in-band FEC, and the room's
/// frame duration. Browsers take these from the remote description: the publisher encodes
/// accordingly and the subscriber is told the stream is stereo. Other sections, and rooms
/// with the speech profile, are left as they are.
pub fn tune_opus(sdp: String, audio: &tutti_store::AudioSettings) -> String {
    let Some(bitrate) = audio.opus_bitrate() else {
        return sdp;
    };
    let ptime = audio.ptime_ms();
    let mut out = String::with_capacity(sdp.len() + 256);
    let mut opus: Option<String> = None;
    let mut in_audio = false;
    let mut fmtp_written = false;
    let finish_section = |out: &mut String, opus: &Option<String>, fmtp_written: bool| {
        if let (Some(pt), false) = (opus, fmtp_written) {
            out.push_str(&format!("a=fmtp:{pt} {}\r\n", music_fmtp("", bitrate)));
        }
    };
    for line in sdp.split_inclusive('\n') {
        let bare = line.trim_end_matches(['\r', '\n']);
        if bare.starts_with("m=") {
            if in_audio {
                finish_section(&mut out, &opus, fmtp_written);
            }
            in_audio = bare.starts_with("m=audio");
            opus = None;
            fmtp_written = false;
            out.push_str(line);
            if in_audio && ptime != 20 {
                // Session order does not matter to parsers; media-level ptime right after
                // the m= line is where browsers write it too.
                out.push_str(&format!("a=ptime:{ptime}\r\na=maxptime:{ptime}\r\n"));
            }
            continue;
        }
        if !in_audio {
            out.push_str(line);
            continue;
        }
        if bare.starts_with("a=ptime:") || bare.starts_with("a=maxptime:") {
            continue; // replaced above
        }
        if let Some(rest) = bare.strip_prefix("a=rtpmap:")
            && let Some((pt, codec)) = rest.split_once(' ')
            && codec.to_ascii_lowercase().starts_with("opus/")
        {
            opus = Some(pt.to_owned());
        }
        if let (Some(pt), Some(rest)) = (&opus, bare.strip_prefix("a=fmtp:"))
            && let Some((fmtp_pt, params)) = rest.split_once(' ')
            && fmtp_pt == pt
        {
            out.push_str(&format!("a=fmtp:{pt} {}\r\n", music_fmtp(params, bitrate)));
            fmtp_written = true;
            continue;
        }
        out.push_str(line);
    }
    if in_audio {
        finish_section(&mut out, &opus, fmtp_written);
    }
    prefer_red(out)
}

/// Puts RED first in the format list of every audio section that has it. A browser sends
/// with the first format of the remote description's section, so an answer preferring RED
/// is what makes it send redundancy.
fn prefer_red(sdp: String) -> String {
    let mut sections: Vec<(usize, usize, Option<String>)> = Vec::new(); // (m= line start, end, red pt)
    let mut offset = 0;
    for line in sdp.split_inclusive('\n') {
        let bare = line.trim_end_matches(['\r', '\n']);
        if bare.starts_with("m=") {
            sections.push((offset, offset + bare.len(), None));
        } else if let Some(rest) = bare.strip_prefix("a=rtpmap:")
            && let Some((pt, codec)) = rest.split_once(' ')
            && codec.to_ascii_lowercase().starts_with("red/48000")
            && let Some(section) = sections.last_mut()
            && sdp[section.0..section.1].starts_with("m=audio")
        {
            section.2.get_or_insert_with(|| pt.to_owned());
        }
        offset += line.len();
    }
    let mut out = sdp.clone();
    // Back to front, so earlier offsets stay valid.
    for (start, end, red) in sections.into_iter().rev() {
        let Some(red) = red else { continue };
        let m_line = &sdp[start..end];
        let mut fields: Vec<&str> = m_line.split(' ').collect();
        if fields.len() < 4 {
            continue;
        }
        let formats = fields.split_off(3);
        let reordered: Vec<&str> = std::iter::once(red.as_str())
            .chain(formats.iter().copied().filter(|f| *f != red))
            .collect();
        if !formats.contains(&red.as_str()) {
            continue;
        }
        let line = format!("{} {}", fields.join(" "), reordered.join(" "));
        out.replace_range(start..end, &line);
    }
    out
}

/// Opus format parameters for music: the ones given, with the music ones set.
fn music_fmtp(params: &str, bitrate: u32) -> String {
    const SET: [&str; 5] = [
        "stereo",
        "sprop-stereo",
        "maxaveragebitrate",
        "usedtx",
        "useinbandfec",
    ];
    let mut kept: Vec<&str> = params
        .split(';')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .filter(|p| {
            let name = p.split('=').next().unwrap_or_default();
            !SET.iter().any(|s| s.eq_ignore_ascii_case(name))
        })
        .collect();
    let music =
        format!("stereo=1;sprop-stereo=1;maxaveragebitrate={bitrate};usedtx=0;useinbandfec=1");
    kept.push(&music);
    kept.join(";")
}

/// Adds a bandwidth limit to every video section of an SDP the shard sends.
pub fn cap_video_bitrate(sdp: &str, kbps: u32) -> String {
    let mut out = String::with_capacity(sdp.len() + 64);
    let mut in_video = false;
    let mut capped = false;
    for line in sdp.split_inclusive('\n') {
        let bare = line.trim_end_matches(['\r', '\n']);
        if bare.starts_with("m=") {
            in_video = bare.starts_with("m=video");
            capped = false;
        }
        if in_video && bare.starts_with("b=") {
            // Replace any existing limit with ours.
            continue;
        }
        out.push_str(line);
        if in_video && !capped && bare.starts_with("c=") {
            out.push_str(&format!(
                "b=AS:{kbps}\r\nb=TIAS:{}\r\n",
                u64::from(kbps) * 1000
            ));
            capped = true;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const OFFER: &str = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n\
m=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\na=sendonly\r\n\
m=video 9 UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 0.0.0.0\r\nb=AS:5000\r\na=mid:1\r\na=sendonly\r\n\
a=rid:f send\r\na=rid:h send\r\na=rid:q send\r\na=simulcast:send f;h;q\r\n\
m=video 0 UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 0.0.0.0\r\na=mid:2\r\na=inactive\r\n\
m=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\na=mid:3\r\na=recvonly\r\n";

    #[test]
    fn reads_sections_mids_directions_and_rids() {
        let sections = media_sections(OFFER);
        assert_eq!(sections.len(), 4);
        assert_eq!(sections[0].mid.as_deref(), Some("0"));
        assert!(sections[0].sends());
        assert_eq!(sections[1].send_rids, vec!["f", "h", "q"]);
        assert_eq!(sections[1].rid_lines, 3);
        assert!(sections[1].sends());
        assert!(!sections[2].sends());
        assert_eq!(sections[2].port, 0);
        assert!(!sections[3].sends());
    }

    #[test]
    fn tolerates_garbage() {
        assert!(media_sections("").is_empty());
        assert!(
            media_sections("a=mid:0\nm=\nm=video x\n")
                .iter()
                .all(|s| s.port == 0)
        );
    }

    #[test]
    fn music_rooms_get_stereo_opus_at_their_bitrate_without_dtx() {
        let answer = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111 63\r\nc=IN IP4 0.0.0.0\r\n\
                      a=mid:0\r\na=rtpmap:111 opus/48000/2\r\n\
                      a=fmtp:111 minptime=10;useinbandfec=1;usedtx=1\r\n\
                      a=rtpmap:63 red/48000/2\r\na=fmtp:63 111/111\r\na=ptime:20\r\n\
                      m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:1\r\na=rtpmap:96 VP8/90000\r\n";
        let speech = tutti_store::AudioSettings::default();
        assert_eq!(tune_opus(answer.to_owned(), &speech), answer);
        let music = tutti_store::AudioSettings {
            ptime: Some(10),
            bitrate: Some(256_000),
            ..tutti_store::AudioSettings::music()
        };
        let tuned = tune_opus(answer.to_owned(), &music);
        assert!(tuned.contains(
            "a=fmtp:111 minptime=10;stereo=1;sprop-stereo=1;maxaveragebitrate=256000;usedtx=0;useinbandfec=1\r\n"
        ), "{tuned}");
        assert!(
            tuned.contains("a=fmtp:63 111/111\r\n"),
            "RED's fmtp is untouched"
        );
        assert!(
            tuned.contains("m=audio 9 UDP/TLS/RTP/SAVPF 63 111\r\n"),
            "RED is preferred: {tuned}"
        );
        assert!(tuned.contains("m=video 9 UDP/TLS/RTP/SAVPF 96\r\n"));
        assert_eq!(tuned.matches("a=ptime:").count(), 1, "{tuned}");
        assert!(tuned.contains("a=ptime:10\r\na=maxptime:10\r\n"));
        assert!(
            tuned.ends_with("a=rtpmap:96 VP8/90000\r\n"),
            "video untouched"
        );
        // An Opus section without a format line gets one.
        let bare = "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=rtpmap:111 opus/48000/2\r\n";
        let tuned = tune_opus(bare.to_owned(), &tutti_store::AudioSettings::music());
        assert!(tuned.ends_with(
            "a=fmtp:111 stereo=1;sprop-stereo=1;maxaveragebitrate=128000;usedtx=0;useinbandfec=1\r\n"
        ), "{tuned}");
    }

    #[test]
    fn reads_the_formats_a_section_accepts() {
        let answer = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:1\r\n\
                      a=rtpmap:111 opus/48000/2\r\nm=audio 9 UDP/TLS/RTP/SAVPF 63 111\r\n\
                      a=mid:3\r\na=rtpmap:63 red/48000/2\r\na=rtpmap:111 opus/48000/2\r\n\
                      m=audio 0 UDP/TLS/RTP/SAVPF 0\r\na=mid:4\r\n";
        let names = |mid: &str| -> Vec<(u8, String)> {
            section_formats(answer, mid)
                .into_iter()
                .map(|f| (f.payload_type, f.name))
                .collect()
        };
        assert_eq!(names("1"), vec![(111, "opus".to_owned())]);
        assert_eq!(
            names("3"),
            vec![(63, "red".to_owned()), (111, "opus".to_owned())]
        );
        assert!(section_formats(answer, "4").is_empty(), "rejected");
        assert!(section_formats(answer, "9").is_empty(), "absent");
        assert!(section_formats("garbage", "1").is_empty());
    }

    #[test]
    fn pairs_an_answers_rtx_formats_with_what_they_repair() {
        // Chromium's answer to a video offer: RTX for VP8 and for VP9, one with rtx-time.
        let answer = "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96 97 98 99 100\r\na=mid:2\r\n\
                      a=rtpmap:96 VP8/90000\r\na=rtpmap:97 rtx/90000\r\na=fmtp:97 apt=96\r\n\
                      a=rtpmap:98 VP9/90000\r\na=fmtp:98 profile-id=0\r\n\
                      a=rtpmap:99 rtx/90000\r\na=fmtp:99 rtx-time=3000; apt=98\r\n\
                      a=rtpmap:100 rtx/90000\r\na=fmtp:100 apt=x\r\n";
        let formats = section_formats(answer, "2");
        let rtx_for = |pt: u8| {
            formats
                .iter()
                .find(|f| f.name == "rtx" && f.apt() == Some(pt))
                .map(|f| f.payload_type)
        };
        assert_eq!(rtx_for(96), Some(97));
        assert_eq!(rtx_for(98), Some(99), "apt among other parameters");
        assert_eq!(rtx_for(100), None);
        assert_eq!(formats[2].fmtp, "profile-id=0");
        assert_eq!(formats[4].apt(), None, "an apt that is no number");
        assert_eq!(formats[0].apt(), None);
        let offer = "v=0\r\nm=video 9 X 96\r\na=mid:0\r\na=ssrc:5 cname:x\r\n\
                     m=audio 9 X 63 111\r\na=mid:1\r\na=ssrc:77 cname:y\r\n";
        assert_eq!(mid_of_ssrc(offer, 77).as_deref(), Some("1"));
        assert_eq!(mid_of_ssrc(offer, 5).as_deref(), Some("0"));
        assert_eq!(mid_of_ssrc(offer, 7), None);
        let uri = "http://www.webrtc.org/experiments/rtp-hdrext/playout-delay";
        let answer = format!(
            "v=0\r\nm=video 9 X 96\r\na=mid:0\r\na=extmap:6 {uri}\r\n\
             m=video 9 X 96\r\na=mid:2\r\na=extmap:4 urn:other\r\n"
        );
        assert_eq!(section_extension(&answer, "0", uri), Some(6));
        assert_eq!(section_extension(&answer, "2", uri), None);
        assert_eq!(section_extension(&answer, "9", uri), None);
    }

    #[test]
    fn adds_msid_semantic_at_session_level_once() {
        let added = ensure_msid_semantic(OFFER.to_owned());
        let at = added.find("a=msid-semantic: WMS *\r\n").expect("added");
        assert!(
            at < added.find("m=audio").unwrap(),
            "before the first section"
        );
        assert_eq!(ensure_msid_semantic(added.clone()), added, "only once");
        assert_eq!(
            ensure_msid_semantic("v=0".into()),
            "v=0\r\na=msid-semantic: WMS *\r\n"
        );
    }

    #[test]
    fn caps_only_video_sections_and_replaces_existing_limits() {
        let capped = cap_video_bitrate(OFFER, 800);
        assert_eq!(capped.matches("b=AS:800\r\n").count(), 2);
        assert!(!capped.contains("b=AS:5000"));
        let audio_part = &capped[capped.find("m=audio").unwrap()..capped.find("m=video").unwrap()];
        assert!(!audio_part.contains("b=AS"));
        assert!(capped.contains("b=TIAS:800000\r\n"));
    }

    #[test]
    fn descriptions_with_hundreds_of_rids_or_bad_ones_are_refused() {
        let with_rids = |n: usize, id: &dyn Fn(usize) -> String| {
            let mut sdp = String::from("v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:0\r\n");
            for i in 0..n {
                sdp.push_str(&format!("a=rid:{} send\r\n", id(i)));
            }
            sdp
        };
        assert!(checked_sections(&with_rids(3, &|i| format!("l{i}"))).is_ok());
        let flood = with_rids(1000, &|i| format!("r{i}"));
        let err = checked_sections(&flood).unwrap_err();
        assert!(err.contains("at most 4 a=rid"), "{err}");
        // Receive-direction rids count too: every one would get buffers.
        let recv = "m=video 9 RTP/SAVPF 96\r\n".to_owned() + &"a=rid:x recv\r\n".repeat(5);
        assert!(checked_sections(&recv).is_err());
        assert!(checked_sections(&with_rids(1, &|_| "a".repeat(17))).is_err());
        assert!(checked_sections(&with_rids(1, &|_| "h\u{200b}".into())).is_err());
        let sections = "m=audio 9 RTP/SAVPF 111\r\n".repeat(17);
        assert!(checked_sections(&sections).is_err());
    }

    #[test]
    fn a_format_of_another_h264_mode_or_profile_cannot_carry_a_stream() {
        let cb = "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f";
        // Baseline and Constrained Baseline share profile_idc 42; the level may differ.
        assert!(fmtp_compatible(
            "video/H264",
            cb,
            "packetization-mode=1;profile-level-id=42001f"
        ));
        assert!(fmtp_compatible(
            "video/H264",
            cb,
            "profile-level-id=42E034; packetization-mode=1"
        ));
        assert!(!fmtp_compatible(
            "video/H264",
            cb,
            "packetization-mode=0;profile-level-id=42e01f"
        ));
        assert!(!fmtp_compatible(
            "video/H264",
            cb,
            "profile-level-id=42e01f"
        ));
        assert!(!fmtp_compatible(
            "video/H264",
            cb,
            "packetization-mode=1;profile-level-id=640c1f"
        ));
        assert!(fmtp_compatible("video/VP9", "profile-id=0", ""));
        assert!(!fmtp_compatible(
            "video/VP9",
            "profile-id=0",
            "profile-id=2"
        ));
        assert!(!fmtp_compatible("video/AV1", "", "profile=1"));
        assert!(fmtp_compatible(
            "audio/opus",
            "minptime=10;useinbandfec=1",
            "stereo=1"
        ));
    }
}
