//! Who may say what on a run's zenoh network (`docs/security.md`).
//!
//! # Design
//! *Constraints.* Roles meet over zenoh peer links; anyone who can open a link to a role must not
//! be able to feed it trajectories, draw the learner's batches, announce weights or end the run.
//! zenoh peers do not route for one another, so every process decides alone what it accepts from
//! each of its links. *Solution.* Mutual TLS with one CA per run: a link opens only between holders
//! of certificates the run CA signed, and a certificate's common name is its holder's role
//! (`replay`, `learner`, `rollout`, `env`). Every process applies the same access control, generated
//! here from [`ROLE_PERMISSIONS`]: what a peer of each role may send it (ingress), by zenoh
//! message kind and key; anything else is denied, and a process may send anything (egress). The
//! replay may put `done` as well as the learner: it passes on the learner's (`sluice` roles), so a
//! worker whose link to the learner is down still stops. *Cons:* a role's certificate is its whole
//! authority (a stolen `learner` key can train the run); the services check what they are told
//! besides (request sizes, version jumps, lease holders), so a peer within its role still cannot
//! crash them or corrupt accepted data.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::error::{Error, Result};

/// The roles a run certificate may name (its common name), in the order of [`ROLE_PERMISSIONS`].
pub const ROLES: [&str; 4] = ["replay", "learner", "rollout", "env"];

/// What a peer holding each role's certificate may send: (role, zenoh message kinds, keys under
/// `sluice/{run}/`). Every process applies it to its incoming messages.
pub const ROLE_PERMISSIONS: &[(&str, &[&str], &[&str])] = &[
    // The replay serves its shards' queryables and passes on `done`.
    ("replay", &["declare_queryable", "reply"], &["replay/**"]),
    ("replay", &["declare_subscriber", "put"], &["done"]),
    // The learner samples and acknowledges, publishes weights, ends the run, and follows the
    // workers' liveliness and reports.
    ("learner", &["query"], &["replay/*/sample", "replay/*/ack", "replay/*/stats"]),
    ("learner", &["put"], &["weights/announce", "done"]),
    ("learner", &["declare_queryable", "reply"], &["weights/manifest/**", "weights/chunk/**"]),
    ("learner", &["declare_subscriber"], &["weights/ack/*", "metrics/**", "done"]),
    ("learner", &["liveliness_token"], &["learner"]),
    ("learner", &["declare_liveliness_subscriber", "liveliness_query"], &["rollout/*"]),
    // Rollout workers take tickets and append, fetch weights, acknowledge them, query
    // environments, and report.
    (
        "rollout",
        &["query"],
        &[
            "replay/*/tickets",
            "replay/*/append",
            "replay/*/stats",
            "weights/manifest/**",
            "weights/chunk/**",
            "env/**",
        ],
    ),
    ("rollout", &["put"], &["weights/ack/*", "metrics/rollout/*"]),
    ("rollout", &["declare_subscriber"], &["weights/announce", "done"]),
    ("rollout", &["liveliness_token"], &["rollout/*"]),
    // Environment servers answer the workers.
    ("env", &["declare_queryable", "reply"], &["env/**"]),
    ("env", &["declare_subscriber"], &["done"]),
];

/// `[security]`: mutual TLS for every link of a role's zenoh session, and the run's access control.
/// Every path is PEM, as `sluice certs init` writes them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Security {
    /// The run CA's certificate: a peer must present a certificate it signed. Unset: no TLS (only
    /// loopback endpoints are then allowed to listen, unless `--insecure`).
    pub ca: Option<PathBuf>,
    /// This process's certificate, signed by the run CA; its common name is the role.
    pub cert: Option<PathBuf>,
    /// This process's private key.
    pub key: Option<PathBuf>,
    /// Optional: zenoh's user/password dictionary (`user:password` lines). With it every peer must
    /// also present one of its pairs, and this process presents the pair of `user`.
    pub users_file: Option<PathBuf>,
    /// This process's user in `users_file`.
    pub user: Option<String>,
    /// Check that a listener's certificate names the host connected to (its subject alternative
    /// names; `sluice certs init --host` adds them).
    pub verify_hostnames: bool,
}

impl Default for Security {
    fn default() -> Self {
        Security { ca: None, cert: None, key: None, users_file: None, user: None, verify_hostnames: true }
    }
}

impl Security {
    /// Whether TLS is configured (`ca`, `cert` and `key` all set); an error naming what is missing
    /// when only some are.
    pub fn enabled(&self) -> Result<bool> {
        let set = [("ca", &self.ca), ("cert", &self.cert), ("key", &self.key)];
        let missing: Vec<&str> = set.iter().filter(|(_, p)| p.is_none()).map(|(n, _)| *n).collect();
        match missing.len() {
            3 if self.users_file.is_none() => Ok(false),
            0 => {
                for (name, path) in set {
                    let path = path.as_ref().expect("checked above");
                    if !path.is_file() {
                        return Err(Error::Zenoh(format!(
                            "security.{name}: {} is not a file",
                            path.display()
                        )));
                    }
                }
                if self.users_file.is_some() != self.user.is_some() {
                    return Err(Error::Zenoh("security.users_file and security.user go together".into()));
                }
                Ok(true)
            }
            _ => Err(Error::Zenoh(format!(
                "security: {} unset; TLS needs ca, cert and key (sluice certs init writes them)",
                missing.join(", ")
            ))),
        }
    }

    /// Writes the TLS (and user/password) settings into `config`.
    pub(crate) fn apply(&self, config: &mut zenoh::Config) -> Result<()> {
        let path = |p: &Option<PathBuf>| json!(p.as_ref().map(|p| p.display().to_string()));
        let tls = json!({
            "root_ca_certificate": path(&self.ca),
            "listen_private_key": path(&self.key),
            "listen_certificate": path(&self.cert),
            "connect_private_key": path(&self.key),
            "connect_certificate": path(&self.cert),
            "enable_mtls": true,
            "verify_name_on_connect": self.verify_hostnames,
        });
        insert(config, "transport/link/tls", &tls)?;
        if let (Some(file), Some(user)) = (&self.users_file, &self.user) {
            let text = std::fs::read_to_string(file)
                .map_err(|e| Error::Zenoh(format!("security.users_file {}: {e}", file.display())))?;
            let password = text
                .lines()
                .filter_map(|l| l.split_once(':'))
                .find(|(u, _)| u.trim() == user)
                .map(|(_, p)| p.trim().to_string())
                .ok_or_else(|| {
                    Error::Zenoh(format!("security.user {user:?} has no line in {}", file.display()))
                })?;
            let usrpwd =
                json!({"user": user, "password": password, "dictionary_file": path(&self.users_file)});
            insert(config, "transport/auth/usrpwd", &usrpwd)?;
        }
        Ok(())
    }
}

fn insert(config: &mut zenoh::Config, key: &str, value: &Value) -> Result<()> {
    config.insert_json5(key, &value.to_string()).map_err(|e| Error::Zenoh(format!("zenoh config {key}: {e}")))
}

/// zenoh's `access_control` for `run` from [`ROLE_PERMISSIONS`], subjects bound to certificate
/// common names, default deny. `extend` is a user's own `access_control` (its rules, subjects and
/// policies are kept beside sluice's, so a user can allow more; its default permission is not).
pub fn access_control(run: &str, extend: Option<&Value>) -> Value {
    let subjects: Vec<Value> =
        ROLES.iter().map(|r| json!({"id": format!("sluice-{r}"), "cert_common_names": [r]})).collect();
    let mut rules = vec![json!({
        "id": "sluice-send-anything",
        "messages": ["put", "delete", "declare_subscriber", "query", "declare_queryable", "reply",
                     "liveliness_token", "declare_liveliness_subscriber", "liveliness_query"],
        "flows": ["egress"],
        "permission": "allow",
        "key_exprs": ["**"],
    })];
    let mut policies = vec![json!({
        "id": "sluice-egress",
        "rules": ["sluice-send-anything"],
        "subjects": ROLES.iter().map(|r| format!("sluice-{r}")).collect::<Vec<_>>(),
    })];
    for (i, (role, messages, keys)) in ROLE_PERMISSIONS.iter().enumerate() {
        let id = format!("sluice-{role}-{i}");
        let keys: Vec<String> = keys.iter().map(|k| format!("sluice/{run}/{k}")).collect();
        rules.push(json!({"id": id, "messages": messages, "flows": ["ingress"], "permission": "allow",
                          "key_exprs": keys}));
        policies.push(json!({"id": id, "rules": [id], "subjects": [format!("sluice-{role}")]}));
    }
    let (mut subjects, mut rules, mut policies) = (subjects, rules, policies);
    if let Some(user) = extend {
        for (list, field) in [(&mut subjects, "subjects"), (&mut rules, "rules"), (&mut policies, "policies")]
        {
            if let Some(Value::Array(more)) = user.get(field) {
                list.extend(more.iter().cloned());
            }
        }
    }
    json!({"enabled": true, "default_permission": "deny", "subjects": subjects, "rules": rules,
           "policies": policies})
}

/// Whether a zenoh endpoint (`proto/host:port[#config]`) names a loopback address.
pub fn is_loopback(endpoint: &str) -> bool {
    let address = endpoint.split(['#', '?']).next().unwrap_or("");
    let Some((_, address)) = address.split_once('/') else { return false };
    let host = match address.rsplit_once(':') {
        Some((host, _)) => host,
        None => address,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// The protocol of an endpoint (`tcp`, `tls`, ...).
pub fn protocol(endpoint: &str) -> &str {
    endpoint.split_once('/').map_or("", |(p, _)| p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_endpoints_are_told_apart_from_the_rest() {
        for e in ["tcp/127.0.0.1:7447", "tcp/localhost:1", "tcp/[::1]:7447", "tls/127.0.0.2:9#iface=lo"] {
            assert!(is_loopback(e), "{e}");
        }
        for e in ["tcp/0.0.0.0:7447", "tcp/[::]:7447", "tcp/10.0.0.3:7447", "tls/learner.example:7447", "tcp"]
        {
            assert!(!is_loopback(e), "{e}");
        }
        assert_eq!(protocol("tls/h:1"), "tls");
    }

    #[test]
    fn the_generated_access_control_is_what_zenoh_reads() {
        let acl =
            access_control("r1", Some(&json!({"subjects": [{"id": "ops", "cert_common_names": ["ops"]}]})));
        let mut config = zenoh::Config::default();
        insert(&mut config, "access_control", &acl).unwrap();
        let text = serde_json::to_string(&acl).unwrap();
        assert!(text.contains("sluice/r1/replay/*/sample") && text.contains("\"ops\""), "{text}");
        // Only the learner may sample; nobody but the learner and the replay may put `done`.
        let sample: Vec<&str> = ROLE_PERMISSIONS
            .iter()
            .filter(|(_, m, k)| m.contains(&"query") && k.contains(&"replay/*/sample"))
            .map(|(r, _, _)| *r)
            .collect();
        assert_eq!(sample, ["learner"]);
        let done: Vec<&str> = ROLE_PERMISSIONS
            .iter()
            .filter(|(_, m, k)| m.contains(&"put") && k.contains(&"done"))
            .map(|(r, _, _)| *r)
            .collect();
        assert_eq!(done, ["replay", "learner"]);
    }

    #[test]
    fn partial_tls_settings_name_what_is_missing() {
        let s = Security { ca: Some("ca.pem".into()), ..Default::default() };
        let e = s.enabled().unwrap_err().to_string();
        assert!(e.contains("cert, key unset"), "{e}");
        assert!(!Security::default().enabled().unwrap());
    }
}
