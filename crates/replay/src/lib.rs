//! Streaming replay store: segments, index, samplers, staleness filter, durability (log + parquet), zenoh service and client.
//!
//! Not built yet: this crate holds no API until its issue (#3) lands, so nothing can depend
//! on behaviour it does not have.
