//! The records a stage is handed and hands back, owned and compact.
//!
//! Every consumed record is copied once out of librdkafka (the loop keeps records past the
//! next poll: held, written, dead-lettered), so the copy is made cheap: the topic name is
//! shared (an `Arc<str>` per topic, not a `String` per record), key and value share one
//! buffer, and headers keep their names and values in two buffers, however many there are. A
//! `perf record` of the end-to-end benchmark had allocating and freeing a record's ten-odd
//! pieces (topic, key, value, a name and a value per header) and cloning headers into outputs
//! at a fifth of enrich's and the sink's CPU.

use std::fmt;
use std::sync::Arc;

use rdkafka::Message;
use rdkafka::message::Headers as _;
use smallvec::SmallVec;

/// A topic and partition.
pub type Partition = (Arc<str>, i32);

/// Where one header's name and value end in [`Headers`]' buffers; each starts where the one
/// before ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    name_end: u32,
    /// `None`: the header's value is null.
    value_end: Option<u32>,
}

/// A record's headers, owned, in order: names in one buffer, values in another.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Headers {
    names: String,
    values: Vec<u8>,
    entries: SmallVec<[Entry; 4]>,
}

impl Headers {
    pub fn new() -> Self {
        Self::default()
    }

    /// Room for `count` headers of `bytes` bytes of values in all.
    pub fn with_capacity(count: usize, names: usize, bytes: usize) -> Self {
        Self {
            names: String::with_capacity(names),
            values: Vec::with_capacity(bytes),
            entries: SmallVec::with_capacity(count),
        }
    }

    /// A consumed record's headers.
    pub fn of(message: &impl Message) -> Self {
        let Some(borrowed) = message.headers() else {
            return Self::new();
        };
        // One pass: each header read from librdkafka is a call across the FFI. The pipeline's
        // own headers (a few dozen bytes each) fit the room made up front.
        let count = borrowed.count();
        let mut headers = Self::with_capacity(count, count * 32, count * 32);
        for header in borrowed.iter() {
            headers.push(header.key, header.value);
        }
        headers
    }

    /// Appends a header.
    pub fn push(&mut self, name: &str, value: Option<&[u8]>) {
        self.names.push_str(name);
        let value_end = value.map(|value| {
            self.values.extend_from_slice(value);
            offset(self.values.len())
        });
        self.entries.push(Entry {
            name_end: offset(self.names.len()),
            value_end,
        });
    }

    /// Appends a header whose value is written by `write` (no buffer of its own), e.g.
    /// `headers.push_with(name, |value| write!(value, "{number}"))`.
    pub fn push_with(&mut self, name: &str, write: impl FnOnce(&mut Vec<u8>)) {
        self.names.push_str(name);
        write(&mut self.values);
        self.entries.push(Entry {
            name_end: offset(self.names.len()),
            value_end: Some(offset(self.values.len())),
        });
    }

    /// Appends every header of `other`.
    pub fn extend(&mut self, other: &Headers) {
        for (name, value) in other.iter() {
            self.push(name, value);
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Name and value (`None` for a null value) of each header, in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, Option<&[u8]>)> + '_ {
        let mut name_start = 0;
        let mut value_start = 0;
        self.entries.iter().map(move |entry| {
            let name_end = entry.name_end as usize;
            let name = self.names.get(name_start..name_end).unwrap_or_default();
            name_start = name_end;
            let value = entry.value_end.map(|end| {
                let end = end as usize;
                let value = self.values.get(value_start..end).unwrap_or_default();
                value_start = end;
                value
            });
            (name, value)
        })
    }

    /// The value of the first header called `name`, if it has one.
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.iter()
            .find(|(header, _)| *header == name)
            .and_then(|(_, value)| value)
    }
}

/// A buffer offset as stored: records are far below 4 GiB (`message.max.bytes` is at most
/// 1,000,000,000), and a saturated offset only shortens a slice, never panics.
fn offset(len: usize) -> u32 {
    u32::try_from(len).unwrap_or(u32::MAX)
}

impl fmt::Debug for Headers {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_list()
            .entries(
                self.iter()
                    .map(|(name, value)| (name, value.map(String::from_utf8_lossy))),
            )
            .finish()
    }
}

impl<'a> FromIterator<(&'a str, Option<&'a [u8]>)> for Headers {
    fn from_iter<I: IntoIterator<Item = (&'a str, Option<&'a [u8]>)>>(iter: I) -> Self {
        let mut headers = Self::new();
        for (name, value) in iter {
            headers.push(name, value);
        }
        headers
    }
}

/// A consumed record, owned.
#[derive(Debug, Clone)]
pub struct InputRecord {
    pub topic: Arc<str>,
    pub partition: i32,
    pub offset: i64,
    /// The record's timestamp, milliseconds since the epoch.
    pub timestamp_ms: Option<i64>,
    pub headers: Headers,
    /// The key's bytes, then the value's.
    payload: Vec<u8>,
    key_len: Option<usize>,
    has_value: bool,
}

impl InputRecord {
    pub fn new(
        topic: Arc<str>,
        partition: i32,
        offset: i64,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
    ) -> Self {
        let mut payload =
            Vec::with_capacity(key.map_or(0, <[u8]>::len) + value.map_or(0, <[u8]>::len));
        if let Some(key) = key {
            payload.extend_from_slice(key);
        }
        if let Some(value) = value {
            payload.extend_from_slice(value);
        }
        Self {
            topic,
            partition,
            offset,
            timestamp_ms: None,
            headers: Headers::new(),
            payload,
            key_len: key.map(<[u8]>::len),
            has_value: value.is_some(),
        }
    }

    /// A consumed message; `topic` is its topic's shared name.
    pub fn of(message: &impl Message, topic: Arc<str>) -> Self {
        let mut record = Self::new(
            topic,
            message.partition(),
            message.offset(),
            message.key(),
            message.payload(),
        );
        record.timestamp_ms = message.timestamp().to_millis();
        record.headers = Headers::of(message);
        record
    }

    pub fn with_timestamp_ms(mut self, timestamp_ms: Option<i64>) -> Self {
        self.timestamp_ms = timestamp_ms;
        self
    }

    pub fn with_headers(mut self, headers: Headers) -> Self {
        self.headers = headers;
        self
    }

    pub fn key(&self) -> Option<&[u8]> {
        let len = self.key_len?;
        self.payload.get(..len)
    }

    pub fn value(&self) -> Option<&[u8]> {
        if !self.has_value {
            return None;
        }
        self.payload.get(self.key_len.unwrap_or(0)..)
    }

    /// The record's topic and partition.
    pub fn partition(&self) -> Partition {
        (self.topic.clone(), self.partition)
    }

    /// The bytes this record keeps in memory: key, value and headers.
    pub fn retained_bytes(&self) -> usize {
        self.payload.len() + self.headers.names.len() + self.headers.values.len()
    }
}

/// A record to produce.
#[derive(Debug, Clone)]
pub struct OutputRecord {
    pub topic: Arc<str>,
    /// `None`: the producer's partitioner picks by key.
    pub partition: Option<i32>,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    /// The record's Kafka timestamp, milliseconds since the epoch; `None`: when it is
    /// produced. Retention counts from it, so an event keeps it `None` (its event time, which
    /// may lie months back in a backfill, would have the broker delete it before it is read)
    /// and says its event time in [`Self::event_time_ms`] and a header.
    pub timestamp_ms: Option<i64>,
    /// For an event, its event time (milliseconds since the epoch): the freshness metric.
    pub event_time_ms: Option<i64>,
    pub headers: Headers,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_keep_names_values_nulls_and_order() {
        let mut headers = Headers::new();
        headers.push("a", Some(b"1"));
        headers.push("empty", Some(b""));
        headers.push("null", None);
        headers.push_with("written", |value| value.extend_from_slice(b"42"));
        headers.push("a", Some(b"2"));
        let all: Vec<_> = headers.iter().collect();
        assert_eq!(
            all,
            [
                ("a", Some(&b"1"[..])),
                ("empty", Some(&b""[..])),
                ("null", None),
                ("written", Some(&b"42"[..])),
                ("a", Some(&b"2"[..])),
            ]
        );
        assert_eq!(headers.len(), 5);
        assert_eq!(headers.get("a"), Some(&b"1"[..]), "the first of its name");
        assert_eq!(headers.get("null"), None);
        assert_eq!(headers.get("missing"), None);
        let copied: Headers = headers.iter().collect();
        assert_eq!(copied, headers);
        let mut extended = Headers::new();
        extended.push("first", None);
        extended.extend(&headers);
        assert_eq!(extended.len(), 6);
        assert_eq!(extended.iter().nth(4), Some(("written", Some(&b"42"[..]))));
    }

    #[test]
    fn a_record_tells_a_missing_key_or_value_from_an_empty_one() {
        let topic: Arc<str> = Arc::from("t");
        let both = InputRecord::new(topic.clone(), 0, 1, Some(b"key"), Some(b"value"));
        assert_eq!(
            (both.key(), both.value()),
            (Some(&b"key"[..]), Some(&b"value"[..]))
        );
        let tombstone = InputRecord::new(topic.clone(), 0, 2, Some(b"key"), None);
        assert_eq!(
            (tombstone.key(), tombstone.value()),
            (Some(&b"key"[..]), None)
        );
        let keyless = InputRecord::new(topic.clone(), 0, 3, None, Some(b""));
        assert_eq!((keyless.key(), keyless.value()), (None, Some(&b""[..])));
        let empty = InputRecord::new(topic, 0, 4, Some(b""), None);
        assert_eq!((empty.key(), empty.value()), (Some(&b""[..]), None));
    }
}
