//! What travels between publisher and subscribers, and under which keys (`docs/design.md`,
//! "Weight sync").
//!
//! | key (under `sluice/{run}/weights/`) | kind       | payload                                  |
//! |-------------------------------------|------------|------------------------------------------|
//! | `announce`                          | put        | [`Announce`] JSON, on every publish       |
//! | `latest`                            | queryable  | [`Announce`] JSON of the newest version   |
//! | `manifest/{epoch}/{version}`        | queryable  | [`crate::Manifest`] JSON                  |
//! | `chunk/{epoch}/{version}/{index}`   | queryable  | the bytes of chunk `index` of the table   |
//! | `ack/{worker}`                      | put        | [`Ack`] JSON, once a version is applied   |
//!
//! Failures of a queryable are `reply_err` with a UTF-8 message.

use serde::{Deserialize, Serialize};
use sluice_core::{keys, Lineage, PolicyId};

/// A published version, as announced: the learner's lineage at it (its epoch, version and
/// ancestry), so that a worker's staleness gate can tell whether the weights it holds are still
/// on the learner's lineage after a resume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Announce {
    /// The learner's lineage at this version.
    pub lineage: Lineage,
    /// The manifest's digest; a fetched manifest must carry the same.
    pub digest: u64,
    /// Bytes of every chunk.
    pub bytes: u64,
}

impl Announce {
    /// The version announced.
    pub fn id(&self) -> PolicyId {
        self.lineage.now()
    }
}

/// A subscriber's acknowledgement: `worker` now generates with `version` of `epoch`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    /// The worker.
    pub worker: String,
    /// The epoch of the version applied.
    #[serde(default)]
    pub epoch: u64,
    /// The version applied.
    pub version: u64,
}

pub(crate) fn announce_key(run: &str) -> String {
    keys::weights(run, "announce")
}

pub(crate) fn latest_key(run: &str) -> String {
    keys::weights(run, "latest")
}

pub(crate) fn manifest_key(run: &str, id: PolicyId) -> String {
    keys::weights(run, &format!("manifest/{}/{}", id.epoch, id.version))
}

pub(crate) fn chunk_key(run: &str, id: PolicyId, index: usize) -> String {
    keys::weights(run, &format!("chunk/{}/{}/{index}", id.epoch, id.version))
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
        let k = chunk_key("r", PolicyId::new(2, 12), 7);
        assert_eq!(k, "sluice/r/weights/chunk/2/12/7");
        assert_eq!(trailing_numbers::<3>(&k), Some([2, 12, 7]));
        assert_eq!(trailing_numbers::<2>(&manifest_key("r", PolicyId::new(1, 3))), Some([1, 3]));
        assert_eq!(trailing_numbers::<3>("sluice/r/weights/chunk/1/x/7"), None);
    }
}
