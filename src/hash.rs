//! The router's few hash functions: stable across processes and releases (instance ids,
//! affinity keys) and well spread (request ids, poll jitter, random picks). Imports
//! nothing of the crate.

/// A 64-bit finalizer (splitmix64): spreads similar inputs over the whole range.
pub fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// FNV-1a: a stable hash of bytes (instance ids, affinity keys) across processes and
/// releases, unlike std's randomized `DefaultHasher`.
pub fn stable_hash(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ *b as u64).wrapping_mul(0x0000_0100_0000_01b3)
    })
}
