//! Room passwords as the live state keeps them: argon2id PHC strings, never the password.
//!
//! The operator hashes a Room's Secret into its record; gateways verify joins against it.
//! A check needs the hash's memory cost (19 MiB by default) as scratch space: a
//! [`Verifier`] keeps its own and reuses it, because allocating it per check let glibc
//! keep every thread's copies (measured: 100 checks on two threads grew a process by
//! 430 MiB, against 41 MiB with reused scratch).

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use subtle::ConstantTimeEq;

/// The most memory a stored hash may ask a check to use, in KiB: hashes beyond it are
/// refused rather than letting a configuration make each check take gigabytes.
pub const MAX_MEMORY_KIB: u32 = 64 * 1024;
/// The most passes a stored hash may ask for.
pub const MAX_PASSES: u32 = 16;
/// The most lanes a stored hash may ask for.
pub const MAX_LANES: u32 = 8;

/// Hashes a password with argon2id and a random salt, as a PHC string.
pub fn hash_password(password: &str) -> Result<String, String> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(|e| e.to_string())
}

/// What a check needs from a PHC string.
struct Stored<'a> {
    argon2: Argon2<'a>,
    salt: Vec<u8>,
    expected: Vec<u8>,
}

fn parse(hash: &str) -> Option<Stored<'static>> {
    let parsed = PasswordHash::new(hash).ok()?;
    let algorithm = Algorithm::try_from(parsed.algorithm).ok()?;
    let version = match parsed.version {
        Some(v) => Version::try_from(v).ok()?,
        None => Version::default(),
    };
    let params = Params::try_from(&parsed).ok()?;
    if params.m_cost() > MAX_MEMORY_KIB
        || params.t_cost() > MAX_PASSES
        || params.p_cost() > MAX_LANES
    {
        return None;
    }
    let expected = parsed.hash?.as_bytes().to_vec();
    let mut salt = [0u8; 64];
    let salt = parsed.salt?.decode_b64(&mut salt).ok()?.to_vec();
    Some(Stored {
        argon2: Argon2::new(algorithm, version, params),
        salt,
        expected,
    })
}

/// Whether a PHC string is an argon2 hash that can be checked against (within the costs
/// a gateway accepts).
pub fn is_valid_hash(hash: &str) -> bool {
    parse(hash).is_some()
}

/// Checks passwords, reusing its scratch memory from one check to the next.
#[derive(Default)]
pub struct Verifier {
    blocks: Vec<Block>,
}

impl Verifier {
    /// A verifier with no scratch yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether `password` matches the PHC hash (false for a malformed or too costly hash).
    pub fn verify(&mut self, hash: &str, password: &str) -> bool {
        let Some(stored) = parse(hash) else {
            return false;
        };
        let blocks = stored.argon2.params().block_count();
        self.blocks.resize(blocks, Block::default());
        let mut output = vec![0u8; stored.expected.len()];
        stored
            .argon2
            .hash_password_into_with_memory(
                password.as_bytes(),
                &stored.salt,
                &mut output,
                &mut self.blocks[..blocks],
            )
            .is_ok_and(|()| bool::from(output.ct_eq(&stored.expected)))
    }
}

/// Whether `password` matches the PHC hash (false for a malformed hash); for one-off
/// checks (a gateway checks on threads that keep a [`Verifier`]).
pub fn verify_password(hash: &str, password: &str) -> bool {
    Verifier::new().verify(hash, password)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_verifier_matches_its_own_hashes_and_refuses_costly_or_broken_ones() {
        let hash = hash_password("con brio").unwrap();
        let mut verifier = Verifier::new();
        assert!(verifier.verify(&hash, "con brio"));
        assert!(!verifier.verify(&hash, "con brio "));
        assert!(verifier.verify(&hash, "con brio"), "scratch reused");
        assert!(!verifier.verify("not-a-hash", "con brio"));
        // A hash asking for 1 GiB per check is not checked at all.
        let costly = hash.replacen("m=19456", "m=1048576", 1);
        assert_ne!(costly, hash);
        assert!(!is_valid_hash(&costly));
        assert!(!verifier.verify(&costly, "con brio"));
        // Hashes of other parameters within the bounds work (argon2i, fewer KiB).
        let other = Argon2::new(
            Algorithm::Argon2i,
            Version::V0x13,
            Params::new(8 * 1024, 3, 1, None).unwrap(),
        )
        .hash_password(b"largo", &SaltString::generate(&mut OsRng))
        .unwrap()
        .to_string();
        assert!(verifier.verify(&other, "largo"));
        assert!(!verifier.verify(&other, "lento"));
    }
}
