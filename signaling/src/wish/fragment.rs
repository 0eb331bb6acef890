//! SDP fragments (`application/trickle-ice-sdpfrag`, RFC 8840 §9) as WHIP and WHEP clients
//! PATCH them, and the few rewrites of whole descriptions an ICE restart needs.
//!
//! A fragment carries the ICE credentials it belongs to and candidates under the `m=`
//! line and `a=mid` of their media section. Everything here is bounded: a fragment is at
//! most [`MAX_FRAGMENT_BYTES`], [`MAX_FRAGMENT_LINES`] lines and [`MAX_FRAGMENT_CANDIDATES`]
//! candidates, each as long as the client protocol allows one.

/// The largest fragment body accepted.
pub const MAX_FRAGMENT_BYTES: usize = 16 * 1024;
/// The most lines a fragment may have.
pub const MAX_FRAGMENT_LINES: usize = 256;
/// The most candidates one fragment may carry (a shard takes 32 per connection in all).
pub const MAX_FRAGMENT_CANDIDATES: usize = 32;
/// The longest `candidate:` value, as in the client protocol.
const MAX_CANDIDATE_LEN: usize = 512;

/// A candidate of a fragment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrickledCandidate {
    /// The value after `a=`: `candidate:…`.
    pub candidate: String,
    /// The `a=mid` of its media section, when the fragment named one.
    pub mid: Option<String>,
    /// Its media section's place in the fragment (0 for the first `m=` line).
    pub m_line_index: Option<u16>,
}

/// What a PATCH fragment says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IceFragment {
    /// `a=ice-ufrag`: the ICE username fragment the candidates belong to.
    pub ufrag: Option<String>,
    /// `a=ice-pwd`.
    pub pwd: Option<String>,
    /// The candidates, in order.
    pub candidates: Vec<TrickledCandidate>,
    /// Whether it ends with `a=end-of-candidates`.
    pub end_of_candidates: bool,
}

/// Whether `value` is an ICE credential of `min..=256` `ice-char`s (RFC 8839 §5.4).
fn ice_chars(value: &str, min: usize) -> bool {
    (min..=256).contains(&value.len())
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
}

/// Parses a PATCH body; the error says what is wrong with it.
pub fn parse_fragment(text: &str) -> Result<IceFragment, String> {
    if text.len() > MAX_FRAGMENT_BYTES {
        return Err(format!("a fragment is at most {MAX_FRAGMENT_BYTES} bytes"));
    }
    let mut fragment = IceFragment::default();
    let mut section: Option<u16> = None;
    let mut mid: Option<String> = None;
    let lines = text.split('\n').map(|l| l.trim_end_matches('\r'));
    for (number, line) in lines.enumerate() {
        if number >= MAX_FRAGMENT_LINES {
            return Err(format!("a fragment has at most {MAX_FRAGMENT_LINES} lines"));
        }
        if line.is_empty() {
            continue;
        }
        let Some((kind, value)) = line.split_once('=') else {
            return Err(format!("line {} is not an SDP line", number + 1));
        };
        match kind {
            "m" => {
                section = Some(section.map_or(0, |s| s.saturating_add(1)));
                mid = None;
            }
            "a" => {
                let (name, attribute) = value.split_once(':').unwrap_or((value, ""));
                match name {
                    "ice-ufrag" => {
                        if !ice_chars(attribute, 4) {
                            return Err("a=ice-ufrag is 4-256 ICE characters".into());
                        }
                        fragment.ufrag.get_or_insert_with(|| attribute.to_owned());
                    }
                    "ice-pwd" => {
                        if !ice_chars(attribute, 22) {
                            return Err("a=ice-pwd is 22-256 ICE characters".into());
                        }
                        fragment.pwd.get_or_insert_with(|| attribute.to_owned());
                    }
                    "mid" => {
                        if attribute.is_empty() || attribute.len() > 64 {
                            return Err("a=mid is 1-64 characters".into());
                        }
                        mid = Some(attribute.to_owned());
                    }
                    "candidate" => {
                        if value.len() > MAX_CANDIDATE_LEN {
                            return Err(format!(
                                "a candidate is at most {MAX_CANDIDATE_LEN} characters"
                            ));
                        }
                        if fragment.candidates.len() >= MAX_FRAGMENT_CANDIDATES {
                            return Err(format!(
                                "a fragment carries at most {MAX_FRAGMENT_CANDIDATES} candidates"
                            ));
                        }
                        fragment.candidates.push(TrickledCandidate {
                            candidate: value.to_owned(),
                            mid: mid.clone(),
                            m_line_index: section,
                        });
                    }
                    "end-of-candidates" => fragment.end_of_candidates = true,
                    // `a=group:BUNDLE`, `a=ice-options` and the like say nothing new.
                    _ => {}
                }
            }
            _ if kind.len() == 1 => {}
            _ => return Err(format!("line {} is not an SDP line", number + 1)),
        }
    }
    if fragment.ufrag.is_some() != fragment.pwd.is_some() {
        return Err("a=ice-ufrag and a=ice-pwd come together".into());
    }
    Ok(fragment)
}

/// The first `a=ice-ufrag` and `a=ice-pwd` of a description.
pub fn ice_credentials(sdp: &str) -> Option<(String, String)> {
    let find = |prefix: &str| {
        sdp.lines()
            .find_map(|l| l.trim_end().strip_prefix(prefix).map(str::to_owned))
    };
    Some((find("a=ice-ufrag:")?, find("a=ice-pwd:")?))
}

/// `offer` with ICE credentials `ufrag` and `pwd` instead of its own, without its old
/// candidates, and with its `o=` session version one higher: the offer an ICE restart by
/// PATCH stands for (RFC 9725 §4.3.2: everything but ICE is as negotiated before; RFC 8829
/// §5.2.2: each new offer of a session increases the version).
pub fn with_ice_credentials(offer: &str, ufrag: &str, pwd: &str) -> String {
    let mut out = String::with_capacity(offer.len());
    for line in offer.split('\n').map(|l| l.trim_end_matches('\r')) {
        if line.is_empty() {
            continue;
        }
        if line.starts_with("a=candidate:") || line == "a=end-of-candidates" {
            continue;
        }
        if line.starts_with("a=ice-ufrag:") {
            out.push_str("a=ice-ufrag:");
            out.push_str(ufrag);
        } else if line.starts_with("a=ice-pwd:") {
            out.push_str("a=ice-pwd:");
            out.push_str(pwd);
        } else if let Some(origin) = line.strip_prefix("o=") {
            out.push_str("o=");
            out.push_str(&next_version(origin));
        } else {
            out.push_str(line);
        }
        out.push_str("\r\n");
    }
    out
}

/// An `o=` value (`username sess-id sess-version nettype addrtype address`) with its
/// version one higher; as it was when the version is not a number.
fn next_version(origin: &str) -> String {
    let fields: Vec<&str> = origin.split(' ').collect();
    match fields.get(2).and_then(|v| v.parse::<u64>().ok()) {
        Some(version) if fields.len() == 6 => {
            let next = version.saturating_add(1).to_string();
            let mut fields = fields;
            fields[2] = &next;
            fields.join(" ")
        }
        _ => origin.to_owned(),
    }
}

/// The fragment that answers an ICE restart, from the shard's new answer: its credentials
/// and the RTP candidates of the section that carries the bundle (the first mid of
/// `a=group:BUNDLE`, else the first section), in the shape of RFC 9725's examples.
pub fn restart_fragment(answer: &str) -> Option<String> {
    let (ufrag, pwd) = ice_credentials(answer)?;
    let bundle_tag = answer.lines().find_map(|l| {
        l.trim_end()
            .strip_prefix("a=group:BUNDLE ")?
            .split(' ')
            .next()
            .map(str::to_owned)
    });
    // The answer's sections: each `m=` line with its mid and candidates.
    let mut sections: Vec<(&str, Option<&str>, Vec<&str>)> = Vec::new();
    let mut lite = false;
    for line in answer.lines().map(str::trim_end) {
        if line == "a=ice-lite" {
            lite = true;
        } else if line.starts_with("m=") {
            sections.push((line, None, Vec::new()));
        } else if let Some(section) = sections.last_mut() {
            if let Some(mid) = line.strip_prefix("a=mid:") {
                section.1 = Some(mid);
            } else if let Some(candidate) = line.strip_prefix("a=candidate:") {
                // RTP's component only: with `a=rtcp-mux` (which BUNDLE requires) RTCP
                // shares it, and a second candidate per address only trips clients (the
                // draft author's reference client joins several wrongly).
                if candidate.split(' ').nth(1) == Some("1") {
                    section.2.push(line);
                }
            }
        }
    }
    let index = bundle_tag
        .and_then(|tag| {
            sections
                .iter()
                .position(|(_, mid, _)| *mid == Some(tag.as_str()))
        })
        .unwrap_or(0);
    let (m_line, mid, candidates) = sections.get(index)?;
    let mut out = String::new();
    if lite {
        out.push_str("a=ice-lite\r\n");
    }
    out.push_str(&format!(
        "a=ice-ufrag:{ufrag}\r\na=ice-pwd:{pwd}\r\n{m_line}\r\n"
    ));
    if let Some(mid) = mid {
        out.push_str(&format!("a=mid:{mid}\r\n"));
    }
    for candidate in candidates {
        out.push_str(candidate);
        out.push_str("\r\n");
    }
    out.push_str("a=end-of-candidates\r\n");
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TRICKLE: &str = "a=ice-ufrag:EsAw\r\n\
        a=ice-pwd:P2uYro0UCOQ4zxjKXaWCBui1\r\n\
        a=group:BUNDLE 0 1\r\n\
        m=audio 9 UDP/TLS/RTP/SAVPF 111\r\n\
        a=mid:0\r\n\
        a=candidate:1387637174 1 udp 2122260223 192.0.2.1 61764 typ host generation 0\r\n\
        a=candidate:3471623853 1 udp 2122194687 198.51.100.2 61765 typ host generation 0\r\n\
        a=end-of-candidates\r\n";

    #[test]
    fn reads_the_rfc_8840_example_shape() {
        let fragment = parse_fragment(TRICKLE).unwrap();
        assert_eq!(fragment.ufrag.as_deref(), Some("EsAw"));
        assert_eq!(fragment.pwd.as_deref(), Some("P2uYro0UCOQ4zxjKXaWCBui1"));
        assert_eq!(fragment.candidates.len(), 2);
        assert_eq!(fragment.candidates[0].mid.as_deref(), Some("0"));
        assert_eq!(fragment.candidates[0].m_line_index, Some(0));
        assert!(
            fragment.candidates[1]
                .candidate
                .starts_with("candidate:3471623853 ")
        );
        assert!(fragment.end_of_candidates);
        // Bare newlines read the same.
        assert_eq!(
            parse_fragment(&TRICKLE.replace("\r\n", "\n")).unwrap(),
            fragment
        );
    }

    #[test]
    fn refuses_what_is_not_a_bounded_fragment() {
        for (body, why) in [
            ("hello", "not an SDP line"),
            (
                "a=ice-ufrag:ab\r\na=ice-pwd:P2uYro0UCOQ4zxjKXaWCBui1",
                "ice-ufrag",
            ),
            ("a=ice-ufrag:EsAw\r\na=ice-pwd:short", "ice-pwd"),
            ("a=ice-ufrag:EsAw", "come together"),
            (
                "a=ice-ufrag:Es\"w\r\na=ice-pwd:P2uYro0UCOQ4zxjKXaWCBui1",
                "ice-ufrag",
            ),
            ("xx=1", "not an SDP line"),
        ] {
            let err = parse_fragment(body).unwrap_err();
            assert!(err.contains(why), "{body:?}: {err}");
        }
        let long = format!("a=candidate:{}", "1".repeat(600));
        assert!(parse_fragment(&long).unwrap_err().contains("at most 512"));
        let many = "a=candidate:1 1 udp 1 192.0.2.1 9 typ host\r\n".repeat(33);
        assert!(parse_fragment(&many).unwrap_err().contains("at most 32"));
        let lines = "a=end-of-candidates\r\n".repeat(300);
        assert!(parse_fragment(&lines).unwrap_err().contains("lines"));
        let big = "a".repeat(MAX_FRAGMENT_BYTES + 1);
        assert!(parse_fragment(&big).unwrap_err().contains("bytes"));
    }

    #[test]
    fn a_restart_offer_has_the_new_credentials_and_no_old_candidates() {
        let offer = "v=0\r\no=- 4611731400430051336 2 IN IP4 127.0.0.1\r\na=ice-ufrag:old1\r\na=ice-pwd:oldoldoldoldoldoldoldold\r\n\
            m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\na=ice-ufrag:old1\r\n\
            a=ice-pwd:oldoldoldoldoldoldoldold\r\na=candidate:1 1 udp 1 192.0.2.1 9 typ host\r\n\
            a=end-of-candidates\r\na=rtpmap:111 opus/48000/2\r\n";
        let restarted = with_ice_credentials(offer, "new2", "newnewnewnewnewnewnewnew");
        assert_eq!(restarted.matches("a=ice-ufrag:new2\r\n").count(), 2);
        assert_eq!(
            restarted
                .matches("a=ice-pwd:newnewnewnewnewnewnewnew\r\n")
                .count(),
            2
        );
        assert!(!restarted.contains("old"));
        assert!(!restarted.contains("a=candidate"));
        assert!(restarted.contains("a=rtpmap:111 opus/48000/2\r\n"));
        assert!(restarted.contains("o=- 4611731400430051336 3 IN IP4 127.0.0.1\r\n"));
        let again = with_ice_credentials(&restarted, "new3", "newnewnewnewnewnewnewnew");
        assert!(again.contains("o=- 4611731400430051336 4 IN IP4 127.0.0.1\r\n"));
        assert_eq!(next_version("- x y IN IP4 0.0.0.0"), "- x y IN IP4 0.0.0.0");
        assert_eq!(
            ice_credentials(&restarted),
            Some(("new2".into(), "newnewnewnewnewnewnewnew".into()))
        );
    }

    #[test]
    fn a_restart_is_answered_with_the_first_sections_credentials_and_candidates() {
        let answer = "v=0\r\na=ice-lite\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\n\
            a=ice-ufrag:shrd\r\na=ice-pwd:shardshardshardshardshard\r\n\
            a=candidate:1 1 udp 2130706431 192.0.2.7 3478 typ host\r\n\
            a=candidate:1 2 udp 2130706431 192.0.2.7 3478 typ host\r\n\
            a=candidate:2 1 tcp 1671430143 192.0.2.7 3478 typ host tcptype passive\r\n\
            m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:1\r\n\
            a=candidate:1 1 udp 2130706431 192.0.2.7 3478 typ host\r\n";
        let fragment = restart_fragment(answer).unwrap();
        assert_eq!(
            fragment,
            "a=ice-lite\r\na=ice-ufrag:shrd\r\na=ice-pwd:shardshardshardshardshard\r\n\
             m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\n\
             a=candidate:1 1 udp 2130706431 192.0.2.7 3478 typ host\r\n\
             a=candidate:2 1 tcp 1671430143 192.0.2.7 3478 typ host tcptype passive\r\n\
             a=end-of-candidates\r\n"
        );
        // What it answers with parses as the fragment it is.
        let parsed = parse_fragment(&fragment).unwrap();
        assert_eq!(parsed.candidates.len(), 2);
        assert_eq!(restart_fragment("v=0\r\n"), None);
        // Bundled on a later section: that section's candidates.
        let on_video = answer.replacen("a=ice-lite", "a=group:BUNDLE 1 0", 1);
        let fragment = restart_fragment(&on_video).unwrap();
        assert!(fragment.contains("m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:1\r\n"));
        assert_eq!(fragment.matches("a=candidate:").count(), 1);
        assert!(!fragment.contains("a=ice-lite"));
    }
}
