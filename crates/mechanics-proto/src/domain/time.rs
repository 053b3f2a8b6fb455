//! Times people read in the API: a unix-millisecond field written as an RFC 3339 string in UTC
//! (`2026-12-04T17:31:41.123Z`), for `#[serde(with = "...")]`. Reading takes the same form, any
//! offset (`+02:00`) converted to UTC; numbers are refused, so a caller cannot confuse the two.

use serde::{Deserialize, Deserializer, Serializer};

/// `unix_ms` as RFC 3339 in UTC, to the millisecond; `None` outside the years chrono can write.
pub fn rfc3339(unix_ms: i64) -> Option<String> {
    chrono::DateTime::from_timestamp_millis(unix_ms)
        .map(|time| time.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
}

/// Writes unix ms as RFC 3339 (the number itself if it has no date).
pub fn serialize<S: Serializer>(unix_ms: &i64, serializer: S) -> Result<S::Ok, S::Error> {
    match rfc3339(*unix_ms) {
        Some(text) => serializer.serialize_str(&text),
        None => serializer.serialize_i64(*unix_ms),
    }
}

/// Reads an RFC 3339 time as unix ms.
pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<i64, D::Error> {
    let text = String::deserialize(deserializer)?;
    chrono::DateTime::parse_from_rfc3339(&text)
        .map(|time| time.timestamp_millis())
        .map_err(|err| {
            serde::de::Error::custom(format!(
                "{text:?} is not an RFC 3339 time like 2026-12-04T17:31:41.123Z: {err}"
            ))
        })
}

#[cfg(test)]
mod tests {
    use serde::{Deserialize, Serialize};

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct At {
        #[serde(with = "super")]
        at: i64,
    }

    #[test]
    fn unix_ms_round_trip_as_rfc3339_in_utc() {
        let at = At {
            at: 1_796_405_501_123,
        };
        let text = serde_json::to_string(&at).unwrap();
        assert_eq!(text, r#"{"at":"2026-12-04T17:31:41.123Z"}"#);
        assert_eq!(serde_json::from_str::<At>(&text).unwrap(), at);
        let offset: At = serde_json::from_str(r#"{"at":"2026-12-04T19:31:41.123+02:00"}"#).unwrap();
        assert_eq!(offset, at);
        let err = serde_json::from_str::<At>(r#"{"at":"yesterday"}"#).unwrap_err();
        assert!(err.to_string().contains("RFC 3339"), "{err}");
        assert!(serde_json::from_str::<At>(r#"{"at":1796405501123}"#).is_err());
    }
}
