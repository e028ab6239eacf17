//! `X-Hub-Signature-256`: HMAC-SHA256 of the exact body bytes, `sha256=<hex>`, the signature
//! flaghook's webhook sink sends. The secret comes from an environment variable
//! (`--secret-env NAME`), never from the command line, and is never printed.

use hmac::{Hmac, Mac};
use sha2::Sha256;

pub(crate) type HmacSha256 = Hmac<Sha256>;

/// The secret named by `--secret-env`, if given.
pub(crate) fn secret_from_env(name: Option<&str>) -> Result<Option<Vec<u8>>, String> {
    let Some(name) = name else { return Ok(None) };
    std::env::var(name)
        .map(|s| Some(s.into_bytes()))
        .map_err(|_| format!("environment variable {name} (--secret-env) is not set"))
}

/// A MAC ready to hash a body as it arrives.
pub(crate) fn new_mac(secret: &[u8]) -> HmacSha256 {
    HmacSha256::new_from_slice(secret).expect("HMAC accepts any key length")
}

/// The hex HMAC-SHA256 of `body` (without the `sha256=` prefix).
pub(crate) fn sign_hex(secret: &[u8], body: &[u8]) -> String {
    let mut mac = new_mac(secret);
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

/// Whether `signature` (`sha256=<hex>`) is the MAC of the body `mac` has hashed; compared in
/// constant time.
pub(crate) fn verify(mac: HmacSha256, signature: &str) -> bool {
    signature
        .strip_prefix("sha256=")
        .and_then(|h| hex::decode(h).ok())
        .is_some_and(|expected| mac.verify_slice(&expected).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 4231, test case 2.
    #[test]
    fn known_answer() {
        assert_eq!(
            sign_hex(b"Jefe", b"what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn verify_accepts_its_own_signature_only() {
        let sig = format!("sha256={}", sign_hex(b"key", b"body"));
        let hashed = |body: &[u8]| {
            let mut mac = new_mac(b"key");
            mac.update(body);
            mac
        };
        assert!(verify(hashed(b"body"), &sig));
        assert!(!verify(hashed(b"bodY"), &sig));
        assert!(!verify(hashed(b"body"), sig.trim_start_matches("sha256=")));
        assert!(!verify(hashed(b"body"), "sha256=zz"));
    }
}
