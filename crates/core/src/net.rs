//! zenoh session setup shared by every role (`docs/design.md`, "Roles and settings").
//!
//! A peer on explicit endpoints, multicast scouting off: a zenoh peer otherwise listens on every
//! interface and scouts the LAN, which is never what a training run wants. A user's own zenoh
//! config file (routers, tuning, more access control) replaces these defaults; `listen`/`connect`
//! and [`Security`] (mutual TLS and the run's access control, `crate::security`) are still applied
//! on top of it. Without TLS, only loopback addresses may listen unless `insecure` is set.

use std::path::PathBuf;

use crate::error::{Error, Result};
use crate::security::{self, Security};

/// How a role joins the zenoh network.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ZenohOptions {
    /// Endpoints to listen on, e.g. `tcp/127.0.0.1:7447`. Empty: listen nowhere (connect only).
    pub listen: Vec<String>,
    /// Endpoints of peers or routers to connect to.
    pub connect: Vec<String>,
    /// A zenoh JSON5 config file used as the base instead of sluice's defaults.
    pub config_file: Option<PathBuf>,
    /// Mutual TLS and access control (`docs/security.md`); off when its paths are unset.
    pub security: Security,
    /// The run whose keys the access control names (with TLS; required then).
    pub run: Option<String>,
    /// Listen on a non-loopback address without TLS anyway (warned about at every start).
    pub insecure: bool,
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
        let listen = configured_endpoints(&config, "listen/endpoints");
        if self.security.enabled()? {
            self.security.apply(&mut config)?;
            let run = self.run.as_deref().ok_or_else(|| {
                Error::Zenoh("TLS is configured but the session names no run for its access control".into())
            })?;
            for e in listen.iter().chain(&configured_endpoints(&config, "connect/endpoints")) {
                if security::protocol(e) != "tls" {
                    return Err(Error::Zenoh(format!(
                        "endpoint {e} is not TLS: with [security] every endpoint is tls/HOST:PORT"
                    )));
                }
            }
            let user_acl: Option<serde_json::Value> = config
                .get_json("access_control")
                .ok()
                .and_then(|t| serde_json::from_str(&t).ok())
                .filter(|v: &serde_json::Value| v.get("enabled") == Some(&serde_json::Value::Bool(true)));
            let acl = security::access_control(run, user_acl.as_ref());
            config
                .insert_json5("access_control", &acl.to_string())
                .map_err(|e| zerr("access_control generated from the role map", e))?;
        } else if let Some(e) = listen.iter().find(|e| !security::is_loopback(e)) {
            if !self.insecure {
                return Err(Error::Zenoh(format!(
                    "refusing to listen on {e} without TLS: anyone who reaches it could append, sample, \
                     announce weights or end the run. Set up [security] (sluice certs init; \
                     docs/security.md), listen on a loopback address, or pass --insecure"
                )));
            }
            tracing::warn!(
                "listening on {e} without TLS (--insecure): anyone who reaches it is trusted with the run"
            );
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

/// The endpoints `config` holds at `key` for its mode (the value may be a list or a per-mode map).
fn configured_endpoints(config: &zenoh::Config, key: &str) -> Vec<String> {
    let Ok(text) = config.get_json(key) else { return Vec::new() };
    let mut out = Vec::new();
    fn collect(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::String(s) => out.push(s.clone()),
            serde_json::Value::Array(a) => a.iter().for_each(|x| collect(x, out)),
            _ => {}
        }
    }
    let mode = config.get_json("mode").ok().and_then(|m| serde_json::from_str::<String>(&m).ok());
    let mode = mode.unwrap_or_else(|| "peer".into());
    match serde_json::from_str::<serde_json::Value>(&text) {
        Ok(serde_json::Value::Object(per_mode)) => {
            per_mode.get(&mode).into_iter().for_each(|v| collect(v, &mut out))
        }
        Ok(v) => collect(&v, &mut out),
        Err(_) => {}
    }
    out
}

/// A free TCP port on 127.0.0.1 (for tests and single-host runs that pick their own endpoints).
pub fn free_local_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}
