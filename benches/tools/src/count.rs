//! The reference parser of a webhook body, `{"meta":{...},"events":[{...},...]}`, on serde_json:
//! every event fully parsed (serde_json validates the syntax of every value it skips), no
//! allocation per event. The receiver uses it with `--latency`, where it also reads each event's
//! `metadata.sentAtUs`; the scanner (`scan.rs`) is tested against it.

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use std::fmt;

/// Parses a webhook body and returns its number of events. With `lat`, pushes
/// `now_us - metadata.sentAtUs` for each event that carries that stamp.
pub(crate) fn count_events(
    body: &[u8],
    lat: Option<&mut Vec<u64>>,
    now_us: u64,
) -> Result<u64, serde_json::Error> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let n = de::Deserializer::deserialize_map(&mut de, BodyVisitor { lat, now_us })?;
    de.end()?;
    Ok(n)
}

/// An object key compared without allocating.
struct Key(u8);
const K_OTHER: u8 = 0;
const K_META: u8 = 1;
const K_EVENTS: u8 = 2;
const K_KIND: u8 = 3;
const K_METADATA: u8 = 4;
const K_SENT_AT: u8 = 5;

impl<'de> de::Deserialize<'de> for Key {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Key, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Key;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object key")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Key, E> {
                Ok(Key(match s {
                    "meta" => K_META,
                    "events" => K_EVENTS,
                    "kind" => K_KIND,
                    "metadata" => K_METADATA,
                    "sentAtUs" => K_SENT_AT,
                    _ => K_OTHER,
                }))
            }
        }
        d.deserialize_str(V)
    }
}

struct BodyVisitor<'a> {
    lat: Option<&'a mut Vec<u64>>,
    now_us: u64,
}

impl<'de, 'a> Visitor<'de> for BodyVisitor<'a> {
    type Value = u64;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(r#"{"meta":{...},"events":[...]}"#)
    }
    fn visit_map<A: MapAccess<'de>>(mut self, mut map: A) -> Result<u64, A::Error> {
        let mut events = None;
        let mut meta = false;
        while let Some(Key(k)) = map.next_key::<Key>()? {
            match k {
                K_META => {
                    map.next_value::<MetaCheck>()?;
                    meta = true;
                }
                K_EVENTS => {
                    let seed = EventsSeed {
                        lat: self.lat.as_deref_mut(),
                        now_us: self.now_us,
                    };
                    events = Some(map.next_value_seed(seed)?);
                }
                _ => {
                    return Err(de::Error::custom(
                        "unexpected top-level key (want meta and events only)",
                    ))
                }
            }
        }
        if !meta {
            return Err(de::Error::missing_field("meta"));
        }
        events.ok_or_else(|| de::Error::missing_field("events"))
    }
}

/// `meta` must be an object of string values.
struct MetaCheck;
impl<'de> de::Deserialize<'de> for MetaCheck {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<MetaCheck, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = MetaCheck;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object of strings")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<MetaCheck, A::Error> {
                while map.next_entry::<IgnoredAny, StrCheck>()?.is_some() {}
                Ok(MetaCheck)
            }
        }
        d.deserialize_map(V)
    }
}

struct StrCheck;
impl<'de> de::Deserialize<'de> for StrCheck {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<StrCheck, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = StrCheck;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<StrCheck, E> {
                Ok(StrCheck)
            }
        }
        d.deserialize_str(V)
    }
}

struct EventsSeed<'a> {
    lat: Option<&'a mut Vec<u64>>,
    now_us: u64,
}

impl<'de, 'a> DeserializeSeed<'de> for EventsSeed<'a> {
    type Value = u64;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<u64, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de, 'a> Visitor<'de> for EventsSeed<'a> {
    type Value = u64;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an array of events")
    }
    fn visit_seq<A: SeqAccess<'de>>(mut self, mut seq: A) -> Result<u64, A::Error> {
        let mut n = 0u64;
        while let Some(sent) = seq.next_element_seed(EventSeed {
            want_stamp: self.lat.is_some(),
        })? {
            n += 1;
            if let (Some(lat), Some(sent)) = (self.lat.as_deref_mut(), sent) {
                lat.push(self.now_us.saturating_sub(sent));
            }
        }
        Ok(n)
    }
}

/// One event: an object with a `kind`; returns `metadata.sentAtUs` when asked and present.
struct EventSeed {
    want_stamp: bool,
}

impl<'de> DeserializeSeed<'de> for EventSeed {
    type Value = Option<u64>;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Option<u64>, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for EventSeed {
    type Value = Option<u64>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an event object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Option<u64>, A::Error> {
        let mut kind = false;
        let mut stamp = None;
        while let Some(Key(k)) = map.next_key::<Key>()? {
            match k {
                K_KIND => {
                    map.next_value::<StrCheck>()?;
                    kind = true;
                }
                K_METADATA if self.want_stamp => stamp = map.next_value::<Stamp>()?.0,
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        if !kind {
            return Err(de::Error::missing_field("kind"));
        }
        Ok(stamp)
    }
}

/// `metadata` -> its `sentAtUs`, if any.
struct Stamp(Option<u64>);
impl<'de> de::Deserialize<'de> for Stamp {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Stamp, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Stamp;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a metadata object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Stamp, A::Error> {
                let mut ts = None;
                while let Some(Key(k)) = map.next_key::<Key>()? {
                    if k == K_SENT_AT {
                        ts = Some(map.next_value::<u64>()?);
                    } else {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
                Ok(Stamp(ts))
            }
        }
        d.deserialize_any(V)
    }
}
