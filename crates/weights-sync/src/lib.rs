//! Weight sync: manifest, shard layouts and reshard planner, publisher, subscriber, staleness gate.
//!
//! Not built yet: this crate holds no API until its issue (#4) lands, so nothing can depend
//! on behaviour it does not have.
