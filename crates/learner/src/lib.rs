//! Learner: advantages, losses (GRPO family, TB, KL, IS corrections), optimizer and schedules, training loop, checkpoint/resume.
//!
//! Not built yet: this crate holds no API until its issue (#5) lands, so nothing can depend
//! on behaviour it does not have.
