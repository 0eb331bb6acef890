//! Who may join a room, and as what: the room's rules applied to a `join`.
//!
//! Two ways in:
//! * a **password**, checked against the room's argon2 hash (the password itself is never
//!   stored, logged or compared in the clear);
//! * a **signed join token** (JWT, HS256 only) naming the room, the nickname, the
//!   permissions and an expiry, for programmatic access. A valid token also opens a room
//!   that has a password.
//!
//! Capacity and nickname uniqueness involve everyone in the room, so the shard holding the
//! room enforces them; the gateway maps its answer to the same error codes.
//!
//! The decisions are pure functions ([`admit_with_token`], [`admit_with_password`]); the
//! expensive part, argon2, runs on threads of its own behind a bounded queue
//! ([`crate::password_queue`]).

pub use crate::password_queue::{PasswordCheck, PasswordChecker};
use crate::protocol::{ErrorCode, JoinRequest, valid_nickname};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
pub use tutti_store::password::{hash_password, is_valid_hash, verify_password};

/// Seconds of clock skew tolerated on a token's expiry.
const TOKEN_LEEWAY_SECS: u64 = 5;
/// Shortest join-token signing secret.
pub const MIN_SECRET_LEN: usize = 32;

/// What a join token says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinClaims {
    /// The room it opens.
    pub room: String,
    /// The nickname its holder joins as.
    pub name: String,
    /// Whether its holder may publish.
    #[serde(default = "yes")]
    pub publish: bool,
    /// Whether its holder may receive others' media.
    #[serde(default = "yes")]
    pub subscribe: bool,
    /// Expiry, seconds since the Unix epoch; at most [`MAX_JOIN_TOKEN_LIFETIME_SECS`]
    /// ahead.
    pub exp: u64,
    /// Not valid before, seconds since the Unix epoch (optional).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    /// Whether its holder may start and stop recordings of the room
    /// (`/v1/rooms/{room}/recording`). Joining needs no such grant.
    #[serde(default, skip_serializing_if = "is_false")]
    pub record: bool,
}

fn is_false(value: &bool) -> bool {
    !value
}

/// The longest a join token may be valid for: a leaked token must not open a room for
/// ever.
pub const MAX_JOIN_TOKEN_LIFETIME_SECS: u64 = 7 * 24 * 3600;

fn yes() -> bool {
    true
}

/// Why a token was refused (never shown in detail to clients: all are `unauthorized`).
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// Bad signature, malformed, wrong algorithm, or expired.
    #[error("invalid join token: {0}")]
    Invalid(#[from] jsonwebtoken::errors::Error),
    /// A signing secret too short to be safe.
    #[error("the join token secret must be at least {MIN_SECRET_LEN} bytes")]
    WeakSecret,
}

/// The key join tokens are signed and checked with.
#[derive(Clone)]
pub struct TokenKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
}

impl TokenKeys {
    /// Keys from a shared secret of at least [`MIN_SECRET_LEN`] bytes.
    pub fn new(secret: &[u8]) -> Result<Self, TokenError> {
        if secret.len() < MIN_SECRET_LEN {
            return Err(TokenError::WeakSecret);
        }
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = TOKEN_LEEWAY_SECS;
        validation.set_required_spec_claims(&["exp"]);
        validation.validate_exp = true;
        validation.validate_nbf = true;
        Ok(Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
        })
    }

    /// Checks a token's signature, algorithm and expiry; returns its claims.
    pub fn verify(&self, token: &str) -> Result<JoinClaims, TokenError> {
        self.verify_as(token)
    }

    /// Signs claims into a token.
    pub fn issue(&self, claims: &JoinClaims) -> Result<String, TokenError> {
        self.sign(claims)
    }

    /// Checks a token and decodes claims of any shape.
    pub fn verify_as<T: serde::de::DeserializeOwned>(&self, token: &str) -> Result<T, TokenError> {
        Ok(jsonwebtoken::decode::<T>(token, &self.decoding, &self.validation)?.claims)
    }

    /// Signs claims of any shape.
    pub fn sign<T: Serialize>(&self, claims: &T) -> Result<String, TokenError> {
        Ok(jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            claims,
            &self.encoding,
        )?)
    }
}

/// What a resume token says: who the participant was, so that it comes back as itself.
/// Resume tokens are signed with the gateways' session secret, never the join-token
/// secret, so neither kind of token passes for the other.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResumeClaims {
    /// The room.
    pub room: String,
    /// The participant id.
    pub participant: String,
    /// The nickname.
    pub name: String,
    /// May publish.
    pub publish: bool,
    /// Receives others' media.
    pub subscribe: bool,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
    /// [`password_fingerprint`] of the room's password when the token was issued.
    #[serde(default)]
    pub password: String,
}

/// How long a resume token is good for (each `joined` brings a fresh one).
pub const RESUME_TTL_SECS: u64 = 2 * 3600;

/// What ties a resume token to the room's password: a short digest of its hash (empty
/// without one). A new password makes every earlier resume token worthless.
pub fn password_fingerprint(hash: Option<&str>) -> String {
    use sha1::Digest;
    match hash {
        None => String::new(),
        Some(hash) => sha1::Sha1::digest(hash.as_bytes())[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect(),
    }
}

/// A refused join: the code and the explanation the client gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The code.
    pub code: ErrorCode,
    /// The explanation.
    pub message: String,
}

impl Refusal {
    fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

/// What an admitted participant joins as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admitted {
    /// The nickname.
    pub name: String,
    /// May publish.
    pub publish: bool,
    /// Receives others' media.
    pub subscribe: bool,
}

/// Admits a join that carries a token: the token must be valid and for this room; its name
/// and permissions win over what the join asks (a join may only narrow them).
pub fn admit_with_token(
    join: &JoinRequest,
    claims: Result<JoinClaims, TokenError>,
) -> Result<Admitted, Refusal> {
    let claims = claims.map_err(|err| {
        tracing::info!(room = %join.room, %err, "join token refused");
        Refusal::new(
            ErrorCode::Unauthorized,
            "the join token is invalid or expired",
        )
    })?;
    if claims.room != join.room {
        return Err(Refusal::new(
            ErrorCode::Unauthorized,
            "the join token is for another room",
        ));
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    if claims.exp > now.saturating_add(MAX_JOIN_TOKEN_LIFETIME_SECS) {
        return Err(Refusal::new(
            ErrorCode::Unauthorized,
            "the join token is valid for longer than 7 days; issue shorter-lived tokens",
        ));
    }
    if !valid_nickname(&claims.name) {
        return Err(Refusal::new(
            ErrorCode::Unauthorized,
            "the join token's name is not a valid nickname",
        ));
    }
    Ok(Admitted {
        name: claims.name.trim().to_owned(),
        publish: claims.publish && join.publish.unwrap_or(true),
        subscribe: claims.subscribe && join.subscribe.unwrap_or(true),
    })
}

/// Admits a join without a token.
pub fn admit_with_password(join: &JoinRequest, check: PasswordCheck) -> Result<Admitted, Refusal> {
    match check {
        PasswordCheck::Missing => {
            return Err(Refusal::new(
                ErrorCode::PasswordRequired,
                "this room needs a password",
            ));
        }
        PasswordCheck::Wrong => {
            return Err(Refusal::new(
                ErrorCode::WrongPassword,
                "the password is not right",
            ));
        }
        PasswordCheck::Busy => {
            return Err(Refusal::new(
                ErrorCode::RateLimited,
                "the gateway is busy checking passwords; try again in a moment",
            ));
        }
        PasswordCheck::NotNeeded | PasswordCheck::Matched => {}
    }
    let Some(name) = join.name.as_deref() else {
        return Err(Refusal::new(
            ErrorCode::BadMessage,
            "a join needs a name (or a token that carries one)",
        ));
    };
    Ok(Admitted {
        name: name.trim().to_owned(),
        publish: join.publish.unwrap_or(true),
        subscribe: join.subscribe.unwrap_or(true),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"a-test-secret-of-at-least-32-bytes!!";

    fn now() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    fn join(room: &str, name: Option<&str>) -> JoinRequest {
        JoinRequest {
            room: room.into(),
            name: name.map(Into::into),
            password: None,
            token: None,
            publish: None,
            subscribe: None,
            resume: None,
            watch: false,
            audio: None,
            rtt: None,
            offer_subscriber: false,
        }
    }

    fn claims(room: &str, exp: u64) -> JoinClaims {
        JoinClaims {
            room: room.into(),
            name: "Cellist".into(),
            publish: false,
            subscribe: true,
            exp,
            nbf: None,
            record: false,
        }
    }

    #[test]
    fn a_valid_token_admits_with_its_name_and_permissions() {
        let keys = TokenKeys::new(SECRET).unwrap();
        let token = keys.issue(&claims("quartet", now() + 60)).unwrap();
        let admitted =
            admit_with_token(&join("quartet", Some("Someone else")), keys.verify(&token)).unwrap();
        assert_eq!(
            admitted,
            Admitted {
                name: "Cellist".into(),
                publish: false,
                subscribe: true
            }
        );
    }

    #[test]
    fn expired_forged_foreign_and_unsigned_tokens_are_unauthorized() {
        let keys = TokenKeys::new(SECRET).unwrap();
        let other = TokenKeys::new(b"another-secret-of-at-least-32-bytes!").unwrap();
        let expired = keys.issue(&claims("quartet", now() - 120)).unwrap();
        let forged = other.issue(&claims("quartet", now() + 60)).unwrap();
        let foreign = keys.issue(&claims("trio", now() + 60)).unwrap();
        // alg=none with the same claims: must never pass.
        use base64::Engine;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let unsigned = format!(
            "{}.{}.",
            b64.encode(r#"{"alg":"none","typ":"JWT"}"#),
            b64.encode(serde_json::to_vec(&claims("quartet", now() + 60)).unwrap())
        );
        for token in [expired, forged, foreign, unsigned, "not.a.jwt".into()] {
            let refusal =
                admit_with_token(&join("quartet", None), keys.verify(&token)).unwrap_err();
            assert_eq!(refusal.code, ErrorCode::Unauthorized, "{token}");
        }
        assert!(matches!(
            TokenKeys::new(b"short"),
            Err(TokenError::WeakSecret)
        ));
    }

    #[test]
    fn password_rules() {
        let hash = hash_password("allegro").unwrap();
        assert!(hash.starts_with("$argon2id$"));
        assert!(!hash.contains("allegro"));
        assert!(is_valid_hash(&hash));
        assert!(!is_valid_hash("allegro"));
        assert!(verify_password(&hash, "allegro"));
        assert!(!verify_password(&hash, "Allegro"));
        assert!(!verify_password("not-a-hash", "allegro"));
        let j = join("lesson", Some("Student"));
        assert_eq!(
            admit_with_password(&j, PasswordCheck::Missing)
                .unwrap_err()
                .code,
            ErrorCode::PasswordRequired
        );
        assert_eq!(
            admit_with_password(&j, PasswordCheck::Wrong)
                .unwrap_err()
                .code,
            ErrorCode::WrongPassword
        );
        assert!(admit_with_password(&j, PasswordCheck::Matched).is_ok());
        assert_eq!(
            admit_with_password(&join("lesson", None), PasswordCheck::NotNeeded)
                .unwrap_err()
                .code,
            ErrorCode::BadMessage
        );
    }
}
