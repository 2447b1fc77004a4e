//! Random secrets, their hashes and constant-time comparisons.
//!
//! - Passwords: argon2id (the crate's default parameters: 19 MiB, 2 passes, one
//!   lane), stored as PHC strings.
//! - API tokens and session ids: 32 random bytes, so a single SHA-256 is enough to
//!   store them (nobody can brute-force 256 bits); only the hash reaches the
//!   registry.

use argon2::password_hash::SaltString;
use argon2::{Argon2, PasswordHash, PasswordHasher, PasswordVerifier};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};

/// Prefix of the API tokens this crate generates.
pub(crate) const TOKEN_PREFIX: &str = "sc_";

/// `n` random bytes from the thread-local CSPRNG (ChaCha, seeded by the OS).
fn random_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    rand::fill(&mut b[..]);
    b
}

/// A new session id: 32 random bytes, base64url.
pub(crate) fn new_session_id() -> String {
    URL_SAFE_NO_PAD.encode(random_bytes::<32>())
}

/// A new API token: `sc_` and 32 random bytes, base64url.
pub(crate) fn new_token() -> String {
    format!(
        "{TOKEN_PREFIX}{}",
        URL_SAFE_NO_PAD.encode(random_bytes::<32>())
    )
}

/// A new token id: 16 lowercase hex digits.
pub(crate) fn new_token_id() -> String {
    hex(&random_bytes::<8>())
}

/// A generated password: 18 random bytes, base64url (24 characters, 144 bits).
pub(crate) fn new_password() -> String {
    URL_SAFE_NO_PAD.encode(random_bytes::<18>())
}

/// Lowercase hex.
pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// SHA-256 of `secret`, lowercase hex: how tokens and session ids are stored.
pub(crate) fn sha256_hex(secret: &str) -> String {
    hex(&Sha256::digest(secret.as_bytes()))
}

/// The CSRF token of a session: derived from the session id (so it needs no
/// storage), in its own domain so it never equals the stored hash.
pub(crate) fn csrf_token(session_id: &str) -> String {
    let mut h = Sha256::new();
    h.update(b"shardcron csrf token\0");
    h.update(session_id.as_bytes());
    URL_SAFE_NO_PAD.encode(h.finalize())
}

/// Equality whose time depends only on the lengths.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let mut diff = 0u8;
    for (x, y) in a.iter().zip(b) {
        diff |= x ^ y;
    }
    std::hint::black_box(diff) == 0
}

/// Hash a password with argon2id into a PHC string (CPU-heavy: call off the
/// async threads).
pub(crate) fn hash_password(password: &str) -> Result<String, String> {
    let salt = SaltString::encode_b64(&random_bytes::<16>()).map_err(|e| e.to_string())?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| format!("cannot hash the password: {e}"))
}

/// Whether `password` matches the PHC string `phc` (false if `phc` is not a
/// valid hash). CPU-heavy: call off the async threads.
pub(crate) fn verify_password(password: &str, phc: &str) -> bool {
    match PasswordHash::new(phc) {
        Ok(parsed) => Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok(),
        Err(_) => false,
    }
}

/// Spend as long as [`verify_password`] does, for a user that does not exist,
/// so that user names cannot be probed by timing (always false).
pub(crate) fn verify_nobody(password: &str) -> bool {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let dummy = DUMMY.get_or_init(|| hash_password(&new_password()).unwrap_or_default());
    let _ = verify_password(password, dummy);
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_hash_with_argon2id_and_verify() {
        let h = hash_password("correct horse battery").unwrap();
        assert!(h.starts_with("$argon2id$v=19$"), "{h}");
        assert!(!h.contains("correct horse"));
        assert!(verify_password("correct horse battery", &h));
        assert!(!verify_password("correct horse batterY", &h));
        assert!(!verify_password("correct horse battery", "not a hash"));
        // A new salt every time.
        assert_ne!(h, hash_password("correct horse battery").unwrap());
    }

    #[test]
    fn secrets_are_random_and_well_formed() {
        let t = new_token();
        assert!(t.starts_with("sc_") && t.len() == 3 + 43, "{t}");
        assert_ne!(t, new_token());
        assert_eq!(new_session_id().len(), 43);
        assert_eq!(new_password().len(), 24);
        let id = new_token_id();
        assert!(id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(
            sha256_hex("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_ne!(csrf_token("a"), csrf_token("b"));
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
