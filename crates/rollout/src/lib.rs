//! Rollout workers: worker loop, batched interruptible generation scheduler, multi-turn env runner, curriculum, weight refresh.
//!
//! Not built yet: this crate holds no API until its issue (#6) lands, so nothing can depend
//! on behaviour it does not have.
