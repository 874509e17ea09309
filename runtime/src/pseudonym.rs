//! Keyed pseudonyms for customers who withheld analytics consent.
//!
//! A pseudonym is `p_` + the first 16 bytes of HMAC-SHA256(key, customer id), in hex: stable
//! (the same customer always gets the same pseudonym, so their cases still join up), and not
//! reversible without the key (an unkeyed hash of an id could be reversed by hashing every
//! plausible id). enrich replaces the customer id of a non-consenting customer with it; sink
//! keys every customer in ClickHouse by it, so analytics never hold a raw customer id.

use std::collections::HashMap;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::idempotency::{PrehashedKeys, key_hash};

/// Bytes of the HMAC kept: 128 bits make a collision between customers negligible.
const PSEUDONYM_BYTES: usize = 16;
const PREFIX: &str = "p_";

#[derive(Debug, Clone, clap::Args)]
pub struct PseudonymArgs {
    /// Secret key for customer pseudonyms. Every enrich and sink instance must share it;
    /// changing it changes every pseudonym.
    #[arg(
        long = "pseudonym-key",
        env = "BOOMERANG_PSEUDONYM_KEY",
        hide_env_values = true
    )]
    pub pseudonym_key: String,
}

#[derive(Clone)]
pub struct Pseudonymiser {
    mac: Hmac<Sha256>,
}

/// The key never reaches a log by `{:?}`.
impl std::fmt::Debug for Pseudonymiser {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("Pseudonymiser { key: <redacted> }")
    }
}

#[derive(Debug, thiserror::Error)]
#[error("the pseudonym key must be at least 16 bytes long (it is {0})")]
pub struct ShortKey(usize);

impl Pseudonymiser {
    pub fn new(key: &[u8]) -> Result<Self, ShortKey> {
        if key.len() < 16 {
            return Err(ShortKey(key.len()));
        }
        let mac = <Hmac<Sha256> as Mac>::new_from_slice(key)
            .map_err(|_invalid_length| ShortKey(key.len()))?;
        Ok(Self { mac })
    }

    pub fn from_args(args: &PseudonymArgs) -> Result<Self, ShortKey> {
        Self::new(args.pseudonym_key.as_bytes())
    }

    /// Whether `text` has a pseudonym's shape: the prefix and 32 lowercase hex digits. (Not
    /// whether this key made it: only the shape, so that a raw id is never taken for one.)
    pub fn looks_like_pseudonym(text: &str) -> bool {
        text.strip_prefix(PREFIX).is_some_and(|digits| {
            digits.len() == 32
                && digits
                    .bytes()
                    .all(|byte| byte.is_ascii_digit() || (b'a'..=b'f').contains(&byte))
        })
    }

    pub fn pseudonym(&self, customer_id: &str) -> String {
        let mut mac = self.mac.clone();
        mac.update(customer_id.as_bytes());
        let digest = mac.finalize().into_bytes();
        // Written as bytes, then made a string once: pushing 32 chars one at a time was half
        // of this function's time in the sink (`perf`), which pseudonymises every event.
        let mut out = [0u8; PREFIX.len() + 2 * PSEUDONYM_BYTES];
        out[..PREFIX.len()].copy_from_slice(PREFIX.as_bytes());
        for (pair, byte) in out[PREFIX.len()..]
            .chunks_exact_mut(2)
            .zip(&digest[..PSEUDONYM_BYTES])
        {
            pair[0] = HEX[usize::from(byte >> 4)];
            pair[1] = HEX[usize::from(byte & 0x0f)];
        }
        // ASCII only: the prefix and hex digits.
        String::from_utf8_lossy(&out).into_owned()
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Pseudonyms already made, by customer id, for a stage that pseudonymises every event: the
/// sink does, and a customer has many events. HMAC-SHA256 for each one was a tenth of the
/// sink's main thread (`perf`, 2026-12-04); a hit costs one xxh3 hash and one lookup.
///
/// Keyed by the id's 128-bit xxh3 hash, as idempotency keys are remembered (a collision is
/// negligible). Bounded: emptied once it holds [`Self::CAPACITY`] customers, so memory stays
/// flat whatever the number of customers, and a busy customer's pseudonym is made again at
/// most once per emptying.
pub struct PseudonymCache {
    pseudonymiser: Pseudonymiser,
    known: HashMap<u128, Box<str>, PrehashedKeys>,
}

impl PseudonymCache {
    /// Customers remembered before the cache is emptied: about 5 MiB.
    pub const CAPACITY: usize = 65_536;

    pub fn new(pseudonymiser: Pseudonymiser) -> Self {
        Self {
            pseudonymiser,
            known: HashMap::default(),
        }
    }

    /// [`Pseudonymiser::pseudonym`] of `customer_id`, made once.
    pub fn pseudonym(&mut self, customer_id: &str) -> &str {
        if self.known.len() >= Self::CAPACITY {
            self.known.clear();
        }
        let pseudonymiser = &self.pseudonymiser;
        self.known
            .entry(key_hash(customer_id))
            .or_insert_with(|| pseudonymiser.pseudonym(customer_id).into_boxed_str())
    }

    /// How many customers' pseudonyms are remembered.
    pub fn len(&self) -> usize {
        self.known.len()
    }

    pub fn is_empty(&self) -> bool {
        self.known.is_empty()
    }
}

impl std::fmt::Debug for PseudonymCache {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("PseudonymCache")
            .field("known", &self.known.len())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stable_keyed_and_not_the_id() {
        let one = Pseudonymiser::new(b"0123456789abcdef-one").expect("key");
        let two = Pseudonymiser::new(b"0123456789abcdef-two").expect("key");
        let pseudonym = one.pseudonym("cu-42");
        assert_eq!(pseudonym, one.pseudonym("cu-42"), "stable");
        assert_ne!(pseudonym, one.pseudonym("cu-43"), "per customer");
        assert_ne!(pseudonym, two.pseudonym("cu-42"), "depends on the key");
        assert!(!pseudonym.contains("cu-42"));
        assert_eq!(pseudonym.len(), 2 + 32);
        assert!(pseudonym.starts_with("p_"));
    }

    #[test]
    fn the_cache_answers_as_the_pseudonymiser_and_stays_bounded() {
        let pseudonymiser = Pseudonymiser::new(b"a-long-enough-key-for-tests").expect("key");
        let mut cache = PseudonymCache::new(pseudonymiser.clone());
        for round in 0..2 {
            for n in 0..100 {
                let id = format!("cus-{n}");
                assert_eq!(
                    cache.pseudonym(&id),
                    pseudonymiser.pseudonym(&id),
                    "{round}"
                );
            }
        }
        assert_eq!(cache.len(), 100, "each customer once");
        for n in 0..PseudonymCache::CAPACITY + 10 {
            cache.pseudonym(&n.to_string());
        }
        assert!(cache.len() <= PseudonymCache::CAPACITY);
        assert_eq!(cache.pseudonym("cus-7"), pseudonymiser.pseudonym("cus-7"));
    }

    #[test]
    fn a_pseudonym_has_its_shape_and_a_raw_id_has_not() {
        let pseudonymiser = Pseudonymiser::new(b"a-long-enough-key-for-tests").expect("key");
        assert!(Pseudonymiser::looks_like_pseudonym(
            &pseudonymiser.pseudonym("cus-1")
        ));
        for raw in [
            "",
            "cus-1",
            "p_",
            "p_0123",
            &format!("p_{}", "G".repeat(32)),
        ] {
            assert!(!Pseudonymiser::looks_like_pseudonym(raw), "{raw}");
        }
    }

    #[test]
    fn short_keys_are_refused() {
        assert!(Pseudonymiser::new(b"short").is_err());
    }

    #[test]
    fn debug_hides_the_key() {
        let pseudonymiser = Pseudonymiser::new(b"0123456789abcdef-secret").expect("key");
        assert!(!format!("{pseudonymiser:?}").contains("secret"));
    }
}
