//! Reading a consumed record's headers.

use rdkafka::Message;
use rdkafka::message::Headers;

/// The value of a record's first header called `name`.
pub fn header<'a>(message: &'a impl Message, name: &str) -> Option<&'a [u8]> {
    message
        .headers()?
        .iter()
        .find(|header| header.key == name)
        .and_then(|header| header.value)
}

/// A consumed record's headers, owned: name and value (`None` for a null value), in order.
/// Tools' form of [`crate::stage_loop::Headers::of`], the loop's own copy.
pub fn owned_headers(message: &impl Message) -> Vec<(String, Option<Vec<u8>>)> {
    crate::stage_loop::Headers::of(message)
        .iter()
        .map(|(name, value)| (name.to_string(), value.map(<[u8]>::to_vec)))
        .collect()
}
