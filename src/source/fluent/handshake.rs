//! The Forward protocol's handshake, when the source has a `shared_key` (Fluent Bit's
//! `Shared_Key`, fluent-logger's `security.sharedKey`).
//!
//! On connecting, flaghook sends `["HELO", {"nonce": <16 random bytes>, "auth": "",
//! "keepalive": true}]` (an empty `auth`: no user names and passwords). The client answers
//! `["PING", client_hostname, salt, hex(sha512(salt + client_hostname + nonce + key)),
//! username, password_digest]`. flaghook computes the same digest and compares it in
//! constant time; it answers `["PONG", true, "", self_hostname, hex(sha512(salt +
//! self_hostname + nonce + key))]`, so that the client knows flaghook holds the key too, or
//! `["PONG", false, "shared_key mismatch", self_hostname, ""]` and closes the connection.
//! Only then are entries read. The key itself never leaves the process, nor reaches a log.

use rmpv::Value;
use sha2::{Digest, Sha512};
use subtle::ConstantTimeEq;

use super::forward::Broken;
use crate::sink::webhook::Secret;

/// A PING is a few hundred bytes. A larger message before the handshake is refused before
/// it is decoded, so that a client without the key cannot make flaghook build a large tree.
pub(super) const MAX_PING_BYTES: usize = 64 * 1024;

/// The reason a PONG gives for a wrong key (in_forward's own words, which clients log).
pub(crate) const KEY_MISMATCH: &str = "shared_key mismatch";

/// The server's side of one connection's handshake.
pub(crate) struct Handshake<'a> {
    pub(crate) key: &'a Secret,
    pub(crate) self_hostname: &'a str,
    pub(crate) nonce: [u8; 16],
}

/// How a PING was answered.
#[derive(Debug)]
pub(crate) struct Answer {
    /// The PONG to send.
    pub(crate) pong: Vec<u8>,
    /// The client's hostname as its PING gave it (at most 64 characters, for the log).
    pub(crate) client: String,
    /// Why the client was refused; `None` when it may send entries.
    pub(crate) refused: Option<&'static str>,
}

impl Handshake<'_> {
    /// A handshake with a fresh random nonce.
    pub(crate) fn new<'a>(key: &'a Secret, self_hostname: &'a str) -> Handshake<'a> {
        Handshake {
            key,
            self_hostname,
            nonce: rand::random(),
        }
    }

    /// The HELO that opens the connection.
    pub(crate) fn helo(&self) -> Vec<u8> {
        encode(&Value::Array(vec![
            "HELO".into(),
            Value::Map(vec![
                ("nonce".into(), Value::Binary(self.nonce.to_vec())),
                ("auth".into(), "".into()),
                ("keepalive".into(), true.into()),
            ]),
        ]))
    }

    /// Checks the client's PING (one whole msgpack value) and makes the PONG.
    pub(crate) fn answer(&self, ping: &[u8]) -> Result<Answer, Broken> {
        if ping.len() > MAX_PING_BYTES {
            return Err(Broken(format!(
                "a handshake message of {} bytes where a PING was expected",
                ping.len()
            )));
        }
        let value = rmpv::decode::read_value(&mut &ping[..])
            .map_err(|e| Broken(format!("a handshake message that is not msgpack: {e}")))?;
        let Some(parsed) = Ping::parse(&value) else {
            return Ok(Answer {
                pong: self.pong(false, "invalid ping message", &[]),
                client: String::new(),
                refused: Some("invalid ping message"),
            });
        };
        let client = parsed.hostname.chars().take(64).collect();
        let expected = digest(
            parsed.salt,
            parsed.hostname.as_bytes(),
            &self.nonce,
            self.key,
        );
        let claimed = parsed.digest.as_bytes();
        let matches =
            expected.len() == claimed.len() && bool::from(expected.as_bytes().ct_eq(claimed));
        if !matches {
            return Ok(Answer {
                pong: self.pong(false, KEY_MISMATCH, &[]),
                client,
                refused: Some(KEY_MISMATCH),
            });
        }
        Ok(Answer {
            pong: self.pong(true, "", parsed.salt),
            client,
            refused: None,
        })
    }

    fn pong(&self, accepted: bool, reason: &str, salt: &[u8]) -> Vec<u8> {
        let proof = if accepted {
            digest(salt, self.self_hostname.as_bytes(), &self.nonce, self.key)
        } else {
            String::new()
        };
        encode(&Value::Array(vec![
            "PONG".into(),
            accepted.into(),
            reason.into(),
            self.self_hostname.into(),
            proof.into(),
        ]))
    }
}

/// The fields of a PING that matter.
struct Ping<'a> {
    hostname: &'a str,
    salt: &'a [u8],
    digest: &'a str,
}

impl<'a> Ping<'a> {
    fn parse(value: &'a Value) -> Option<Ping<'a>> {
        let items = value.as_array()?;
        if items.len() != 6 || items[0].as_str() != Some("PING") {
            return None;
        }
        Some(Ping {
            hostname: text(&items[1])?,
            salt: bytes(&items[2])?,
            digest: text(&items[3])?,
        })
    }
}

/// A string, or a bin holding UTF-8 text.
fn text(value: &Value) -> Option<&str> {
    match value {
        Value::String(s) => s.as_str(),
        Value::Binary(b) => std::str::from_utf8(b).ok(),
        _ => None,
    }
}

/// The bytes of a string or a bin.
fn bytes(value: &Value) -> Option<&[u8]> {
    match value {
        Value::String(s) => Some(s.as_bytes()),
        Value::Binary(b) => Some(b),
        _ => None,
    }
}

/// `hex(sha512(salt + hostname + nonce + key))`.
fn digest(salt: &[u8], hostname: &[u8], nonce: &[u8], key: &Secret) -> String {
    let mut h = Sha512::new();
    h.update(salt);
    h.update(hostname);
    h.update(nonce);
    h.update(key.expose());
    hex::encode(h.finalize())
}

fn encode(value: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    rmpv::encode::write_value(&mut out, value).expect("writing to a Vec cannot fail");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ping(hostname: &str, salt: &[u8], digest: &str) -> Vec<u8> {
        encode(&Value::Array(vec![
            "PING".into(),
            hostname.into(),
            Value::Binary(salt.to_vec()),
            digest.into(),
            "".into(),
            "".into(),
        ]))
    }

    fn pong_fields(pong: &[u8]) -> Vec<Value> {
        match rmpv::decode::read_value(&mut &pong[..]).unwrap() {
            Value::Array(items) => items,
            other => panic!("not an array: {other}"),
        }
    }

    #[test]
    fn the_right_key_is_accepted_and_proven_back() {
        let key = Secret::new("s3cret");
        let hs = Handshake::new(&key, "flaghook-host");
        let salt = b"0123456789abcdef";
        let mut h = Sha512::new();
        h.update(salt);
        h.update(b"client-a");
        h.update(hs.nonce);
        h.update(b"s3cret");
        let answer = hs
            .answer(&ping("client-a", salt, &hex::encode(h.finalize())))
            .unwrap();
        assert_eq!(answer.refused, None);
        assert_eq!(answer.client, "client-a");
        let pong = pong_fields(&answer.pong);
        assert_eq!(pong[0].as_str(), Some("PONG"));
        assert_eq!(pong[1].as_bool(), Some(true));
        assert_eq!(pong[3].as_str(), Some("flaghook-host"));
        let mut h = Sha512::new();
        h.update(salt);
        h.update(b"flaghook-host");
        h.update(hs.nonce);
        h.update(b"s3cret");
        assert_eq!(pong[4].as_str(), Some(hex::encode(h.finalize()).as_str()));
    }

    #[test]
    fn a_wrong_key_is_refused_with_the_protocols_reason() {
        let key = Secret::new("s3cret");
        let hs = Handshake::new(&key, "flaghook-host");
        let mut h = Sha512::new();
        h.update(b"salt");
        h.update(b"client-a");
        h.update(hs.nonce);
        h.update(b"wrong");
        let answer = hs
            .answer(&ping("client-a", b"salt", &hex::encode(h.finalize())))
            .unwrap();
        assert_eq!(answer.refused, Some(KEY_MISMATCH));
        let pong = pong_fields(&answer.pong);
        assert_eq!(pong[1].as_bool(), Some(false));
        assert_eq!(pong[2].as_str(), Some(KEY_MISMATCH));
        assert_eq!(pong[4].as_str(), Some(""));
        let text = String::from_utf8_lossy(&answer.pong);
        assert!(!text.contains("s3cret"));
    }

    #[test]
    fn helo_carries_the_nonce_and_no_user_auth() {
        let key = Secret::new("k");
        let hs = Handshake::new(&key, "h");
        let helo = pong_fields(&hs.helo());
        assert_eq!(helo[0].as_str(), Some("HELO"));
        let options = helo[1].as_map().unwrap();
        let get = |k: &str| {
            options
                .iter()
                .find(|(key, _)| key.as_str() == Some(k))
                .map(|(_, v)| v)
        };
        assert_eq!(get("nonce").and_then(Value::as_slice), Some(&hs.nonce[..]));
        assert_eq!(get("auth").and_then(Value::as_str), Some(""));
    }

    #[test]
    fn a_message_that_is_not_a_ping_is_refused() {
        let key = Secret::new("k");
        let hs = Handshake::new(&key, "h");
        let entry = encode(&Value::Array(vec![
            "tag".into(),
            1.into(),
            Value::Map(vec![]),
        ]));
        let answer = hs.answer(&entry).unwrap();
        assert_eq!(answer.refused, Some("invalid ping message"));
        let big = vec![0xc0; MAX_PING_BYTES + 1];
        assert!(hs.answer(&big).is_err());
    }
}
