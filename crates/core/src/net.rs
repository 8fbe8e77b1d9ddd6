//! zenoh session setup shared by every role (`docs/design.md`, "Roles and settings").
//!
//! A peer on explicit endpoints, multicast scouting off: a zenoh peer otherwise listens on every
//! interface and scouts the LAN, which is never what a training run wants. A user's own zenoh
//! config file (TLS, user/password, routers) replaces these defaults; `listen`/`connect` given on
//! the command line are still applied on top of it.

use std::path::PathBuf;

use crate::error::{Error, Result};

/// How a role joins the zenoh network.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ZenohOptions {
    /// Endpoints to listen on, e.g. `tcp/127.0.0.1:7447`. Empty: listen nowhere (connect only).
    pub listen: Vec<String>,
    /// Endpoints of peers or routers to connect to.
    pub connect: Vec<String>,
    /// A zenoh JSON5 config file used as the base instead of sluice's defaults.
    pub config_file: Option<PathBuf>,
}

impl ZenohOptions {
    /// A peer that listens on `endpoint` only.
    pub fn listen_on(endpoint: impl Into<String>) -> Self {
        ZenohOptions { listen: vec![endpoint.into()], ..Default::default() }
    }

    /// A peer that listens nowhere and connects to `endpoint`.
    pub fn connect_to(endpoint: impl Into<String>) -> Self {
        ZenohOptions { connect: vec![endpoint.into()], ..Default::default() }
    }

    /// The zenoh configuration these options describe.
    pub fn to_config(&self) -> Result<zenoh::Config> {
        let zerr = |what: &str, e: zenoh::Error| Error::Zenoh(format!("{what}: {e}"));
        let mut config = match &self.config_file {
            Some(path) => zenoh::Config::from_file(path)
                .map_err(|e| zerr(&format!("zenoh config file {}", path.display()), e))?,
            None => {
                let mut c = zenoh::Config::default();
                c.insert_json5("mode", "\"peer\"").map_err(|e| zerr("mode", e))?;
                c.insert_json5("scouting/multicast/enabled", "false").map_err(|e| zerr("scouting", e))?;
                c.insert_json5("listen/endpoints", "[]").map_err(|e| zerr("listen", e))?;
                c
            }
        };
        let endpoints = |list: &[String]| serde_json::to_string(list).unwrap_or_else(|_| "[]".into());
        if !self.listen.is_empty() {
            config
                .insert_json5("listen/endpoints", &endpoints(&self.listen))
                .map_err(|e| zerr(&format!("listen endpoints {:?}", self.listen), e))?;
        }
        if !self.connect.is_empty() {
            config
                .insert_json5("connect/endpoints", &endpoints(&self.connect))
                .map_err(|e| zerr(&format!("connect endpoints {:?}", self.connect), e))?;
        }
        Ok(config)
    }

    /// Opens a session (needs a tokio multi-thread runtime).
    pub async fn open(&self) -> Result<zenoh::Session> {
        let config = self.to_config()?;
        // The one place a session is opened, from the settings above.
        #[allow(clippy::disallowed_methods)]
        let session = zenoh::open(config).await;
        session.map_err(|e| {
            Error::Zenoh(format!(
                "opening a session (listen {:?}, connect {:?}): {e}",
                self.listen, self.connect
            ))
        })
    }
}

/// A free TCP port on 127.0.0.1 (for tests and single-host runs that pick their own endpoints).
pub fn free_local_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}
