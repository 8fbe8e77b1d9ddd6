//! What travels between publisher and subscribers, and under which keys (`docs/design.md`,
//! "Weight sync").
//!
//! | key (under `sluice/{run}/weights/`) | kind       | payload                                  |
//! |-------------------------------------|------------|------------------------------------------|
//! | `announce`                          | put        | [`Announce`] JSON, on every publish       |
//! | `latest`                            | queryable  | [`Announce`] JSON of the newest version   |
//! | `manifest/{version}`                | queryable  | [`crate::Manifest`] JSON                  |
//! | `chunk/{version}/{index}`           | queryable  | the bytes of chunk `index` of the table   |
//! | `ack/{worker}`                      | put        | [`Ack`] JSON, once a version is applied   |
//!
//! Failures of a queryable are `reply_err` with a UTF-8 message.

use serde::{Deserialize, Serialize};
use sluice_core::keys;

/// A published version, as announced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Announce {
    /// The policy version.
    pub version: u64,
    /// The manifest's digest; a fetched manifest must carry the same.
    pub digest: u64,
    /// Bytes of every chunk.
    pub bytes: u64,
}

/// A subscriber's acknowledgement: `worker` now generates with `version`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    /// The worker.
    pub worker: String,
    /// The version applied.
    pub version: u64,
}

pub(crate) fn announce_key(run: &str) -> String {
    keys::weights(run, "announce")
}

pub(crate) fn latest_key(run: &str) -> String {
    keys::weights(run, "latest")
}

pub(crate) fn manifest_key(run: &str, version: u64) -> String {
    keys::weights(run, &format!("manifest/{version}"))
}

pub(crate) fn chunk_key(run: &str, version: u64, index: usize) -> String {
    keys::weights(run, &format!("chunk/{version}/{index}"))
}

pub(crate) fn ack_key(run: &str, worker: &str) -> String {
    keys::weights(run, &format!("ack/{worker}"))
}

/// The last `/`-separated fields of a key expression, parsed as numbers.
pub(crate) fn trailing_numbers<const N: usize>(key: &str) -> Option<[u64; N]> {
    let mut out = [0u64; N];
    let mut parts = key.rsplit('/');
    for slot in out.iter_mut().rev() {
        *slot = parts.next()?.parse().ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_keys_parse_back() {
        let k = chunk_key("r", 12, 7);
        assert_eq!(k, "sluice/r/weights/chunk/12/7");
        assert_eq!(trailing_numbers::<2>(&k), Some([12, 7]));
        assert_eq!(trailing_numbers::<1>(&manifest_key("r", 3)), Some([3]));
        assert_eq!(trailing_numbers::<2>("sluice/r/weights/chunk/x/7"), None);
    }
}
