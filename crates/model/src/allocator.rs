//! The process's allocator settings for running the model on the CPU.
//!
//! # Design
//! *Constraints.* burn's CPU backend allocates a fresh output for every tensor op and drops its
//! inputs, so a training step allocates and frees gigabytes in blocks of megabytes, mostly from
//! rayon and tokio worker threads. glibc hands a block above its mmap threshold (128 KiB, rising
//! to at most 32 MiB as it sees such blocks freed) a fresh mapping, and a thread other than the
//! first allocates from an arena of 64 MiB heaps, so bigger blocks are mapped there whatever the
//! threshold: the kernel zeroes every page of such a block on first touch and unmaps it on free.
//! On SmolLM2 the kernel took 40% of a run's CPU time (`sys` 57 s against `user` 76 s, mostly
//! `clear_page_erms` under page faults).
//! *Solution.* One arena (the first thread's, which grows without a heap limit), blocks up to
//! 1 GiB from it, freed memory kept for reuse (trim threshold 1 GiB) and the heap grown 256 MiB
//! at a time, set once at start-up.
//! The commands and benchmarks that run the model call [`keep_freed_memory`] first; a user who
//! sets glibc's own `MALLOC_*` variables or `GLIBC_TUNABLES` keeps theirs.
//! *Pros:* (`benches/allocator.sh`, BENCHMARKS.md) the learner step benchmark runs 1.17-1.23x
//! faster; a SmolLM2 run of three learner steps took 82 s instead of 96 s (`sys` 35 s instead of
//! 57 s) and peaked at 6.9 GB resident instead of 8.6 GB. *Cons:* memory freed after the peak
//! stays with the process until it exits (as with PyTorch's caching allocators); all threads
//! share one arena lock, which costs nothing measurable here (allocations are per tensor op, not
//! per element). jemalloc as the process allocator was tried and was slower (it returns freed
//! pages to the kernel eagerly: `sys` time doubled).

/// glibc's variables that, when set, mean the user tunes the allocator themselves.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const USER_SETTINGS: [&str; 5] = [
    "GLIBC_TUNABLES",
    "MALLOC_ARENA_MAX",
    "MALLOC_MMAP_THRESHOLD_",
    "MALLOC_TRIM_THRESHOLD_",
    "MALLOC_TOP_PAD_",
];

/// Sets the allocator up for the CPU backend's allocation pattern (see the module doc): one
/// arena, blocks up to 1 GiB from the heap, freed memory kept, the heap grown 256 MiB at a time.
/// Call it first thing in `main`, before other threads start. Returns whether every setting was
/// applied: not when the user set glibc's own variables, nor off glibc (where it does nothing).
pub fn keep_freed_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        if user_tunes() {
            return false;
        }
        const GIB: libc::c_int = 1 << 30;
        let settings = [
            (libc::M_ARENA_MAX, 1),
            (libc::M_MMAP_THRESHOLD, GIB),
            (libc::M_TRIM_THRESHOLD, GIB),
            (libc::M_TOP_PAD, GIB / 4),
        ];
        // Each is tried even if one before it was refused.
        settings.iter().fold(true, |all, &(param, value)| set(param, value) && all)
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    false
}

/// Whether one of [`USER_SETTINGS`] is set.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn user_tunes() -> bool {
    USER_SETTINGS.iter().any(|v| std::env::var_os(v).is_some())
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
// The one foreign call of the workspace: glibc's allocator has no safe interface.
#[allow(unsafe_code)]
fn set(param: libc::c_int, value: libc::c_int) -> bool {
    // SAFETY: `mallopt` takes two integers, touches only the allocator's own parameters under its
    // lock, and reports an unknown parameter or a refused value by returning 0.
    unsafe { libc::mallopt(param, value) == 1 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn glibc_takes_every_setting() {
        // The values themselves: a refused one (say a threshold above glibc's limit) reads 0.
        assert_eq!(keep_freed_memory(), !user_tunes());
    }
}
