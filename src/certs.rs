//! `sluice certs init`: a run's certificate authority and one key and certificate per role, the
//! role as the certificate's common name (what the run's access control binds permissions to;
//! `sluice_core::security`).

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use rand::RngCore;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use sluice_core::security::ROLES;

/// `sluice certs init`.
#[derive(Debug, Clone, clap::Args)]
pub struct InitArgs {
    /// The run the CA is for (named in its common name).
    #[arg(long)]
    pub run: String,
    /// Directory to write into (created; existing files are never overwritten).
    #[arg(long)]
    pub out: PathBuf,
    /// More certificates, common name NAME (repeatable): identities a user's own access control
    /// (`zenoh.config_file`) can grant more to.
    #[arg(long = "extra", value_name = "NAME")]
    pub extras: Vec<String>,
    /// Host names or addresses the listening roles are reached at (repeatable), added to every
    /// certificate's subject alternative names beside localhost and 127.0.0.1.
    #[arg(long = "host", value_name = "HOST")]
    pub hosts: Vec<String>,
    /// Days the certificates are valid.
    #[arg(long, default_value_t = 365)]
    pub days: u32,
}

/// What `init` wrote.
#[derive(Debug)]
pub struct Written {
    /// The CA's certificate (every role's `security.ca`).
    pub ca: PathBuf,
    /// Per identity: (name, certificate, key).
    pub identities: Vec<(String, PathBuf, PathBuf)>,
    /// `user:password` lines, one per identity (`security.users_file`).
    pub users: PathBuf,
}

/// Writes `ca.pem` (and `ca.key`, kept off the hosts that run roles), `{name}.pem` and
/// `{name}.key` for each role and extra, and `users.txt`; keys are written with mode 0600.
pub fn init(args: &InitArgs) -> Result<Written> {
    sluice_core::keys::check_name("run", &args.run).map_err(|e| anyhow::anyhow!("--run: {e}"))?;
    let mut names: Vec<String> = ROLES.iter().map(|r| r.to_string()).collect();
    for extra in &args.extras {
        sluice_core::keys::check_name("certificate name", extra)
            .map_err(|e| anyhow::anyhow!("--extra: {e}"))?;
        if names.contains(extra) {
            bail!("--extra {extra}: that identity is already written");
        }
        names.push(extra.clone());
    }
    if args.days == 0 {
        bail!("--days must be at least 1");
    }
    std::fs::create_dir_all(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
    let now = time::OffsetDateTime::now_utc();
    let until = now + time::Duration::days(i64::from(args.days));

    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.distinguished_name.push(DnType::CommonName, format!("sluice run {} CA", args.run));
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages =
        vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    (ca.not_before, ca.not_after) = (now, until);
    let ca_key = KeyPair::generate()?;
    let ca_key_pem = ca_key.serialize_pem();
    let issuer = CertifiedIssuer::self_signed(ca, ca_key)?;
    let ca_path = args.out.join("ca.pem");
    write_new(&ca_path, issuer.pem().as_bytes(), false)?;
    write_new(&args.out.join("ca.key"), ca_key_pem.as_bytes(), true)?;

    let mut sans = vec!["localhost".to_string(), "127.0.0.1".to_string()];
    sans.extend(args.hosts.iter().cloned());
    let mut identities = Vec::new();
    let mut users = String::new();
    for name in &names {
        let mut p = CertificateParams::new(sans.clone())
            .with_context(|| format!("subject alternative names {sans:?}"))?;
        p.distinguished_name.push(DnType::CommonName, name.as_str());
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        p.extended_key_usages =
            vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        (p.not_before, p.not_after) = (now, until);
        let key = KeyPair::generate()?;
        let cert = p.signed_by(&key, &issuer)?;
        let (cert_path, key_path) =
            (args.out.join(format!("{name}.pem")), args.out.join(format!("{name}.key")));
        write_new(&cert_path, cert.pem().as_bytes(), false)?;
        write_new(&key_path, key.serialize_pem().as_bytes(), true)?;
        let mut secret = [0u8; 18];
        rand::rng().fill_bytes(&mut secret);
        let password: String = secret.iter().map(|b| format!("{b:02x}")).collect();
        users += &format!("{name}:{password}\n");
        identities.push((name.clone(), cert_path, key_path));
    }
    let users_path = args.out.join("users.txt");
    write_new(&users_path, users.as_bytes(), true)?;
    Ok(Written { ca: ca_path, identities, users: users_path })
}

/// Creates `path` (refusing to replace a file), mode 0600 for secrets.
fn write_new(path: &Path, bytes: &[u8], secret: bool) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(if secret { 0o600 } else { 0o644 })
        .open(path)
        .with_context(|| format!("creating {} (certs init never overwrites a file)", path.display()))?;
    f.write_all(bytes).with_context(|| format!("writing {}", path.display()))
}

/// The `[security]` section for the holder of `name`'s certificate, as `certs init` prints it.
pub fn section(w: &Written, name: &str) -> Option<String> {
    let (_, cert, key) = w.identities.iter().find(|(n, _, _)| n == name)?;
    Some(format!(
        "[security]\nca = {:?}\ncert = {:?}\nkey = {:?}\n",
        w.ca.display().to_string(),
        cert.display().to_string(),
        key.display().to_string()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_writes_a_ca_and_one_identity_per_role_with_private_keys_kept_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let args = InitArgs {
            run: "r".into(),
            out: dir.path().join("certs"),
            extras: vec!["ops".into()],
            hosts: vec!["10.0.0.7".into()],
            days: 30,
        };
        let w = init(&args).unwrap();
        let names: Vec<&str> = w.identities.iter().map(|(n, _, _)| n.as_str()).collect();
        assert_eq!(names, ["replay", "learner", "rollout", "env", "ops"]);
        for (_, cert, key) in &w.identities {
            assert!(std::fs::read_to_string(cert).unwrap().starts_with("-----BEGIN CERTIFICATE-----"));
            assert_eq!(std::fs::metadata(key).unwrap().permissions().mode() & 0o777, 0o600);
        }
        assert_eq!(
            std::fs::metadata(dir.path().join("certs/ca.key")).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(std::fs::read_to_string(&w.users).unwrap().lines().count(), 5);
        assert!(section(&w, "learner").unwrap().contains("learner.key"));
        // A second init into the same directory replaces nothing.
        let e = init(&args).unwrap_err();
        assert!(format!("{e:#}").contains("never overwrites"), "{e:#}");
        let e = init(&InitArgs { extras: vec!["learner".into()], out: dir.path().join("b"), ..args })
            .unwrap_err();
        assert!(e.to_string().contains("already written"), "{e}");
    }

    fn options(w: &Written, name: &str, listen: &[String], connect: &[String]) -> sluice_core::ZenohOptions {
        let (_, cert, key) = w.identities.iter().find(|(n, _, _)| n == name).unwrap();
        sluice_core::ZenohOptions {
            listen: listen.to_vec(),
            connect: connect.to_vec(),
            security: sluice_core::Security {
                ca: Some(w.ca.clone()),
                cert: Some(cert.clone()),
                key: Some(key.clone()),
                ..Default::default()
            },
            run: Some("r".into()),
            ..Default::default()
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn over_mutual_tls_only_the_learner_may_sample_and_strangers_cannot_connect() {
        let dir = tempfile::tempdir().unwrap();
        let ca = |out: &str| {
            init(&InitArgs {
                run: "r".into(),
                out: dir.path().join(out),
                extras: vec![],
                hosts: vec![],
                days: 1,
            })
            .unwrap()
        };
        let (w, other) = (ca("a"), ca("b"));
        let port = sluice_core::free_local_port().unwrap();
        let ep = vec![format!("tls/127.0.0.1:{port}")];
        let replay = options(&w, "replay", &ep, &[]).open().await.unwrap();
        let q = replay.declare_queryable(sluice_core::keys::replay("r", 0, "*")).await.unwrap();
        tokio::spawn(async move {
            while let Ok(query) = q.recv_async().await {
                let _ = query.reply(query.key_expr().clone(), "batch").await;
            }
        });
        let ask = |s: zenoh::Session, op: &'static str| {
            let key = sluice_core::keys::replay("r", 0, op);
            async move {
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                let replies = s.get(&key).timeout(std::time::Duration::from_secs(2)).await.unwrap();
                let mut n = 0;
                while let Ok(r) = replies.recv_async().await {
                    n += r.result().is_ok() as usize;
                }
                n
            }
        };
        let learner = options(&w, "learner", &[], &ep).open().await.unwrap();
        assert_eq!(ask(learner.clone(), "sample").await, 1, "the learner's sample request was not answered");
        let rollout = options(&w, "rollout", &[], &ep).open().await.unwrap();
        assert_eq!(ask(rollout.clone(), "tickets").await, 1, "the worker's ticket request was not answered");
        assert_eq!(ask(rollout.clone(), "sample").await, 0, "a rollout certificate could sample");
        // A certificate of another run's CA opens no link: its request reaches nobody.
        let stranger = options(&other, "learner", &[], &ep).open().await.unwrap();
        assert_eq!(ask(stranger.clone(), "sample").await, 0, "another CA's learner could sample");
        // No certificate at all: plain TCP to the TLS port opens no link either.
        let plain =
            sluice_core::ZenohOptions::connect_to(format!("tcp/127.0.0.1:{port}")).open().await.unwrap();
        assert_eq!(ask(plain.clone(), "sample").await, 0, "a peer without TLS could sample");
        for s in [learner, rollout, stranger, plain, replay] {
            let _ = s.close().await;
        }
    }

    #[test]
    fn listening_beyond_loopback_without_tls_is_refused_unless_insecure() {
        let mut o = sluice_core::ZenohOptions::listen_on("tcp/0.0.0.0:7447");
        let e = o.to_config().unwrap_err().to_string();
        assert!(e.contains("refusing to listen on tcp/0.0.0.0:7447 without TLS"), "{e}");
        o.insecure = true;
        assert!(o.to_config().is_ok());
        assert!(sluice_core::ZenohOptions::listen_on("tcp/127.0.0.1:7447").to_config().is_ok());
    }
}
