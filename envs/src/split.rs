//! Train/held-out split of generated tasks, by the task's content.
//!
//! A generator with two different seeds can still draw the same question; evaluating on it would
//! measure memorisation. So every generator decides a task's split from a hash of its content
//! (FNV-1a, stable across platforms and releases): one task in [`HELD_OUT_ONE_IN`] is held out,
//! and a source configured for one split redraws until it has a task of that split.

use serde::{Deserialize, Serialize};

/// One task in this many is held out.
pub const HELD_OUT_ONE_IN: u64 = 8;

/// Which tasks a source yields.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Split {
    /// Training tasks.
    #[default]
    Train,
    /// Held-out tasks (evaluation), disjoint from training ones.
    HeldOut,
}

/// The split of a task whose content is `key`: one in [`HELD_OUT_ONE_IN`] held out.
pub fn split_of(key: &str) -> Split {
    split_one_in(key, HELD_OUT_ONE_IN)
}

/// The split of a task whose content is `key` when one task in `one_in` (at least 2) is held out:
/// for a small task space whose held-out share under the default would be too few questions to
/// measure (one-digit arithmetic holds out 38 of 300 at one in eight, 150 at one in two).
pub fn split_one_in(key: &str, one_in: u64) -> Split {
    if sluice_core::fnv1a64(key.as_bytes()).is_multiple_of(one_in.max(2)) {
        Split::HeldOut
    } else {
        Split::Train
    }
}
