//! Nicknames as people see them. Two names that look alike are the same name: `Teacher`,
//! `teacher `, `Teacher\u{200B}` (a zero-width space), `Теacher` (a Cyrillic Te) and
//! `Ｔeacher` (a full-width T) all share one key, so nobody can join as the teacher's
//! double. And a name shows what it says: invisible characters (zero-width spaces, bidi
//! overrides, Hangul fillers) and control characters are refused outright.

use unicode_normalization::UnicodeNormalization;
use unicode_security::confusable_detection::skeleton;

/// Longest nickname, in characters.
pub const MAX_NAME_CHARS: usize = 64;

/// Zero-width joiner and emoji variation selector: invisible, but they are how emoji
/// like 👩‍🎤 and ❤️ are written. Anything else invisible is refused.
const EMOJI_JOINERS: [char; 2] = ['\u{200D}', '\u{FE0F}'];

/// Whether a character draws nothing: its confusable skeleton is empty (Unicode's
/// default-ignorable code points, which UTS #39 drops).
fn invisible(c: char) -> bool {
    let mut buf = [0u8; 4];
    skeleton(c.encode_utf8(&mut buf)).next().is_none()
}

/// Whether `name` is a nickname: 1-64 characters, not all spaces, no control characters
/// and nothing invisible but the joiners emoji need.
pub fn valid_nickname(name: &str) -> bool {
    !name.trim().is_empty()
        && name.chars().count() <= MAX_NAME_CHARS
        && name
            .chars()
            .all(|c| !c.is_control() && (EMOJI_JOINERS.contains(&c) || !invisible(c)))
}

/// What two nicknames are compared by: compatibility-normalised (NFKC), with spaces
/// collapsed, mapped to UTS #39 confusable skeletons and lowercased, in both orders.
/// Skeletons are case-sensitive (a capital I looks like an l; a Cyrillic т like a small
/// capital T), so neither order alone catches every lookalike: the names clash when
/// either form matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NicknameKey {
    lower_first: String,
    skeleton_first: String,
}

impl NicknameKey {
    /// Whether the names these keys come from look alike.
    pub fn clashes(&self, other: &NicknameKey) -> bool {
        self.lower_first == other.lower_first || self.skeleton_first == other.skeleton_first
    }
}

/// The key `name` is compared by.
pub fn nickname_key(name: &str) -> NicknameKey {
    let normal: String = name.nfkc().collect();
    let normal = normal.split_whitespace().collect::<Vec<_>>().join(" ");
    let lower_first: String = skeleton(&normal.to_lowercase()).collect();
    let skeleton_first = skeleton(&normal).collect::<String>().to_lowercase();
    NicknameKey {
        lower_first,
        skeleton_first,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookalikes_share_a_key() {
        let teacher = nickname_key("Teacher");
        for double in [
            "teacher",
            "TEACHER",
            "  TEACHER ",
            "Teacher\u{200B}",
            "Te\u{200D}acher",
            "\u{0422}eacher",
            "\u{FF34}eacher",
            "Teacher\u{FE0F}",
        ] {
            assert!(nickname_key(double).clashes(&teacher), "{double:?}");
        }
        assert!(!nickname_key("Teacher 2").clashes(&teacher));
        assert!(!nickname_key("지민").clashes(&nickname_key("지은")));
        assert!(nickname_key("Jimin  Park").clashes(&nickname_key("jimin park")));
        assert!(nickname_key("Ian").clashes(&nickname_key("ian")));
        assert!(
            nickname_key("Ian").clashes(&nickname_key("lan")),
            "I and l look alike"
        );
    }

    #[test]
    fn names_show_what_they_say() {
        for good in ["지민", "Ana María", "👩‍🎤 Singer", "❤️", "O'Brien", "Дмитрий"]
        {
            assert!(valid_nickname(good), "{good:?}");
        }
        for bad in [
            "",
            "   ",
            "Teacher\u{200B}",
            "\u{202E}rehcaeT",
            "Teacher\u{2066}",
            "\u{3164}",
            "a\u{0007}",
            "line\nbreak",
            &"x".repeat(65),
        ] {
            assert!(!valid_nickname(bad), "{bad:?}");
        }
    }
}
