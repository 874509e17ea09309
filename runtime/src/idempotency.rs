//! Idempotency keys as the stages remember them: 128-bit xxh3 hashes (a collision is
//! astronomically unlikely at any realistic key count), so memory per key is the same whatever
//! the producers' key lengths, in maps that do not hash them a second time.

use std::hash::{BuildHasherDefault, Hasher};

use xxhash_rust::xxh3::xxh3_128;

pub fn key_hash(idempotency_key: &str) -> u128 {
    xxh3_128(idempotency_key.as_bytes())
}

/// The map's keys are xxh3-128 hashes already: hashing them again (SipHash) only costs time.
#[derive(Default)]
pub struct PrehashedKeyHasher(u64);

impl Hasher for PrehashedKeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only reached for keys other than u128; fold them in (FNV-1a) to stay correct.
        for byte in bytes {
            self.0 = (self.0 ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3);
        }
    }

    fn write_u128(&mut self, value: u128) {
        self.0 = value as u64 ^ (value >> 64) as u64;
    }
}

pub type PrehashedKeys = BuildHasherDefault<PrehashedKeyHasher>;
