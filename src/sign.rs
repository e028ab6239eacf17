//! Request signatures, over the exact bytes sent. Pure functions, no I/O.
//!
//! - [`Scheme::Hub`]: `X-Hub-Signature-256: sha256=<hex>`, HMAC-SHA256 of the body, as GO
//!   Feature Flag and GitHub compute it. It signs the body only: a captured request can be
//!   sent again at any time and still verifies.
//! - [`Scheme::StandardWebhooks`]: the Standard Webhooks specification. `webhook-id`,
//!   `webhook-timestamp` (Unix seconds) and `webhook-signature: v1,<base64>`, HMAC-SHA256 of
//!   `"{id}.{timestamp}.{body}"` with the key given as `whsec_<base64>`. A receiver rejects
//!   timestamps outside its tolerance (replays) and de-duplicates by id.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

type HmacSha256 = Hmac<Sha256>;

/// Which signature requests carry (`signature` in a webhook sink; `--scheme` of `receive`
/// and `verify`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Scheme {
    /// `X-Hub-Signature-256`, GO Feature Flag's.
    #[default]
    Hub,
    /// Standard Webhooks' `webhook-id`, `webhook-timestamp`, `webhook-signature`.
    StandardWebhooks,
}

impl Scheme {
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Hub => "hub",
            Scheme::StandardWebhooks => "standard-webhooks",
        }
    }
}

impl FromStr for Scheme {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "hub" => Ok(Scheme::Hub),
            "standard-webhooks" => Ok(Scheme::StandardWebhooks),
            _ => Err("use \"hub\" or \"standard-webhooks\"".to_owned()),
        }
    }
}

/// How far a Standard Webhooks timestamp may be from now, by default (the specification's
/// and its reference libraries' five minutes).
pub const DEFAULT_TOLERANCE: Duration = Duration::from_secs(5 * 60);

/// The `X-Hub-Signature-256` value for `body`: `sha256=` followed by the lowercase hex
/// digest.
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

/// The Standard Webhooks key of a `whsec_<base64>` secret (padding optional, as the
/// reference libraries accept it). The error says what is wrong without quoting the secret.
pub fn standard_key(secret: &[u8]) -> Result<Vec<u8>, &'static str> {
    let Some(encoded) = secret.strip_prefix(b"whsec_") else {
        return Err("does not start with `whsec_`");
    };
    let engine = base64::engine::GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
    );
    match engine.decode(encoded) {
        Ok(key) if key.is_empty() => Err("has no key after `whsec_`"),
        Ok(key) => Ok(key),
        Err(_) => Err("is not base64 after `whsec_` (standard alphabet)"),
    }
}

/// The `webhook-signature` value: `v1,` and the base64 HMAC-SHA256 of
/// `"{id}.{timestamp}.{body}"`.
pub fn standard_signature(key: &[u8], id: &str, timestamp: u64, body: &[u8]) -> String {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC accepts keys of any length");
    mac.update(id.as_bytes());
    mac.update(format!(".{timestamp}.").as_bytes());
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(digest)
    )
}

/// Why a Standard Webhooks request does not verify.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejected {
    /// `webhook-timestamp` is not a number of seconds.
    BadTimestamp,
    /// The timestamp is older than the tolerance allows: a replay, or a request held too long.
    Stale { age: u64 },
    /// The timestamp is later than the tolerance allows.
    Future { ahead: u64 },
    /// No `v1` signature in the header matches.
    Mismatch,
}

impl Rejected {
    /// The word `receive` reports.
    pub fn as_str(&self) -> &'static str {
        match self {
            Rejected::Stale { .. } | Rejected::Future { .. } => "stale",
            Rejected::BadTimestamp | Rejected::Mismatch => "invalid",
        }
    }
}

impl fmt::Display for Rejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rejected::BadTimestamp => f.write_str("webhook-timestamp is not Unix seconds"),
            Rejected::Stale { age } => write!(
                f,
                "webhook-timestamp is {age}s old, outside the tolerance (a replayed or delayed request)"
            ),
            Rejected::Future { ahead } => write!(
                f,
                "webhook-timestamp is {ahead}s in the future, outside the tolerance"
            ),
            Rejected::Mismatch => {
                f.write_str("the signature does not match this body, id, timestamp and secret")
            }
        }
    }
}

/// A Standard Webhooks request as received: its three headers.
#[derive(Debug, Clone, Copy)]
pub struct StandardHeaders<'a> {
    pub id: &'a str,
    pub timestamp: &'a str,
    /// `webhook-signature`: one or more space-separated `v1,<base64>` (others are ignored).
    pub signature: &'a str,
}

/// Checks a Standard Webhooks request at `now` (Unix seconds): the timestamp within
/// `tolerance` of it, then one `v1` signature matching (compared in constant time).
pub fn verify_standard(
    key: &[u8],
    headers: StandardHeaders<'_>,
    body: &[u8],
    now: u64,
    tolerance: Duration,
) -> Result<(), Rejected> {
    let timestamp: u64 = headers
        .timestamp
        .trim()
        .parse()
        .map_err(|_| Rejected::BadTimestamp)?;
    let tolerance = tolerance.as_secs();
    if now > timestamp && now - timestamp > tolerance {
        return Err(Rejected::Stale {
            age: now - timestamp,
        });
    }
    if timestamp > now && timestamp - now > tolerance {
        return Err(Rejected::Future {
            ahead: timestamp - now,
        });
    }
    let expected = standard_signature(key, headers.id, timestamp, body);
    let matches = headers.signature.split(' ').any(|claimed| {
        claimed.starts_with("v1,")
            && claimed.len() == expected.len()
            && bool::from(claimed.as_bytes().ct_eq(expected.as_bytes()))
    });
    if matches {
        Ok(())
    } else {
        Err(Rejected::Mismatch)
    }
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

    /// The example of the Standard Webhooks reference libraries' documentation (the
    /// signature was checked against the PyPI `standardwebhooks` library).
    const STD_SECRET: &[u8] = b"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const STD_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const STD_TS: u64 = 1614265330;
    const STD_BODY: &[u8] = br#"{"test": 2432232314}"#;
    const STD_SIG: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    #[test]
    fn standard_webhooks_known_answer() {
        let key = standard_key(STD_SECRET).unwrap();
        assert_eq!(standard_signature(&key, STD_ID, STD_TS, STD_BODY), STD_SIG);
    }

    #[test]
    fn standard_webhooks_verification_checks_time_then_signature() {
        let key = standard_key(STD_SECRET).unwrap();
        let ts = STD_TS.to_string();
        let check = |id: &str, timestamp: &str, signature: &str, now: u64| {
            let headers = StandardHeaders {
                id,
                timestamp,
                signature,
            };
            verify_standard(&key, headers, STD_BODY, now, DEFAULT_TOLERANCE)
        };
        assert_eq!(check(STD_ID, &ts, STD_SIG, STD_TS), Ok(()));
        let two = format!("v1,bm9wZQ== {STD_SIG}");
        assert_eq!(check(STD_ID, &ts, &two, STD_TS + 300), Ok(()));
        assert_eq!(
            check(STD_ID, &ts, STD_SIG, STD_TS + 301),
            Err(Rejected::Stale { age: 301 })
        );
        assert_eq!(
            check(STD_ID, &ts, STD_SIG, STD_TS - 301),
            Err(Rejected::Future { ahead: 301 })
        );
        let v2 = STD_SIG.replace("v1,", "v2,");
        assert_eq!(check(STD_ID, &ts, &v2, STD_TS), Err(Rejected::Mismatch));
        assert_eq!(
            check("msg_other", &ts, STD_SIG, STD_TS),
            Err(Rejected::Mismatch)
        );
        assert_eq!(
            check(STD_ID, "soon", STD_SIG, STD_TS),
            Err(Rejected::BadTimestamp)
        );
    }

    #[test]
    fn standard_keys_have_their_shape() {
        assert_eq!(standard_key(b"whsec_AAEC").unwrap(), [0, 1, 2]);
        assert_eq!(standard_key(b"whsec_AAE=").unwrap(), [0, 1]);
        assert_eq!(standard_key(b"whsec_AAE").unwrap(), [0, 1]);
        assert!(standard_key(b"MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").is_err());
        assert!(standard_key(b"whsec_").is_err());
        assert!(standard_key(b"whsec_not base64!").is_err());
    }
}
