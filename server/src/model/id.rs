use std::fmt;
use std::str::FromStr;

use mongodb::bson::oid::ObjectId;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A 24-hex-digit ObjectId: the id of every user, room and message.
///
/// ObjectIds sort by creation time, which the embedded store relies on to list
/// rooms in creation order without a secondary index. On the wire and in JSON it
/// is always the plain hex string, never BSON's `{"$oid": ...}` form.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Id(ObjectId);

#[derive(Debug, thiserror::Error)]
#[error("not a 24-digit hexadecimal id")]
pub struct InvalidId;

impl Id {
    pub fn new() -> Self {
        Self(ObjectId::new())
    }

    pub fn bytes(&self) -> [u8; 12] {
        self.0.bytes()
    }

    pub fn from_bytes(bytes: [u8; 12]) -> Self {
        Self(ObjectId::from_bytes(bytes))
    }

    pub fn object_id(&self) -> ObjectId {
        self.0
    }
}

impl Default for Id {
    fn default() -> Self {
        Self::new()
    }
}

impl From<ObjectId> for Id {
    fn from(oid: ObjectId) -> Self {
        Self(oid)
    }
}

impl FromStr for Id {
    type Err = InvalidId;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // ObjectId::parse_str accepts upper case too; ids we hand out are lower case,
        // and accepting both spellings would give one object two URLs.
        if s.len() != 24
            || !s
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(InvalidId);
        }
        ObjectId::parse_str(s).map(Self).map_err(|_| InvalidId)
    }
}

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0.to_hex())
    }
}

impl fmt::Debug for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Id({})", self.0.to_hex())
    }
}

/// On the wire an id is its 24 hex digits.
impl ts_rs::TS for Id {
    type WithoutGenerics = Self;
    type OptionInnerType = Self;

    fn name(_: &ts_rs::Config) -> String {
        "string".to_owned()
    }

    fn inline(_: &ts_rs::Config) -> String {
        "string".to_owned()
    }
}

impl Serialize for Id {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0.to_hex())
    }
}

impl<'de> Deserialize<'de> for Id {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_json_as_a_hex_string() {
        let id = Id::new();
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, format!("\"{id}\""));
        assert_eq!(serde_json::from_str::<Id>(&json).unwrap(), id);
    }

    #[test]
    fn rejects_anything_but_24_lower_hex_digits() {
        for bad in [
            "",
            "abc",
            "zzzzzzzzzzzzzzzzzzzzzzzz",
            "65F1A2B3C4D5E6F7A8B9C0D1",
            "{\"$gt\":\"\"}",
        ] {
            assert!(bad.parse::<Id>().is_err(), "{bad} should be rejected");
        }
        assert!("65f1a2b3c4d5e6f7a8b9c0d1".parse::<Id>().is_ok());
    }

    #[test]
    fn ids_sort_by_creation() {
        let a = Id::new();
        let b = Id::new();
        assert!(a < b);
    }
}
