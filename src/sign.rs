//! `X-Hub-Signature-256`: HMAC-SHA256 over the exact body bytes, as GO Feature Flag
//! and GitHub compute it. Pure functions, no I/O.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

type HmacSha256 = Hmac<Sha256>;

/// The header value for `body`: `sha256=` followed by the lowercase hex digest.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC accepts keys of any length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// Whether `claimed` (a header value such as `sha256=ab12...`) is the signature of `body`.
/// The comparison takes the same time wherever the first difference is.
pub fn verify(secret: &[u8], body: &[u8], claimed: &str) -> bool {
    let expected = signature(secret, body);
    let claimed = claimed.trim();
    expected.len() == claimed.len() && bool::from(expected.as_bytes().ct_eq(claimed.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The vector from GO Feature Flag's own webhook exporter test.
    const BODY: &str = concat!(
        r#"{"meta":{"hostname":"hostname"},"events":["#,
        r#"{"kind":"feature","contextKind":"anonymousUser","userKey":"ABCD","creationDate":1617970547,"key":"random-key","variation":"Default","value":"YO","default":false,"version":"","source":"SERVER"},"#,
        r#"{"kind":"feature","contextKind":"anonymousUser","userKey":"EFGH","creationDate":1617970701,"key":"random-key","variation":"Default","value":"YO2","default":false,"version":"127","source":"SERVER"}"#,
        "]}"
    );
    const SIG: &str = "sha256=f1f9766836d4e513035986c035ee9f091b895709be47a802b5840467007e1ec0";

    #[test]
    fn known_answer_vector() {
        assert_eq!(signature(b"secret", BODY.as_bytes()), SIG);
    }

    #[test]
    fn verify_accepts_only_the_right_signature() {
        assert!(verify(b"secret", BODY.as_bytes(), SIG));
        assert!(!verify(b"Secret", BODY.as_bytes(), SIG));
        assert!(!verify(b"secret", b"{}", SIG));
        assert!(!verify(b"secret", BODY.as_bytes(), &SIG[..SIG.len() - 1]));
    }
}
