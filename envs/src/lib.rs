//! Built-in environments (a module each) and the remote-env bridge; envs/python holds the Python SDK.
//!
//! Not built yet: this crate holds no API until its issue (#6) lands, so nothing can depend
//! on behaviour it does not have.
