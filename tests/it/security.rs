//! A run secured as `docs/security.md` sets it up: replay, learner and rollout as processes of
//! their own over mutual TLS with the run's certificates, training the tiny model to its step
//! count while an intruder (this test process) tries what the threat model says it cannot do.
#![allow(clippy::disallowed_methods)]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use sluice_core::trajectory::{encode_ipc, groups_to_batch};
use sluice_core::{free_local_port, keys, Lineage, Security, ZenohOptions};
use sluice_replay::{AckRequest, SampleRequest, Sampler};

use crate::end_to_end::{config, last_step, learner_steps, records, tiny_model, wait_until, Proc};

/// `sluice certs init` into `dir/name`.
fn certs(dir: &Path, name: &str) -> std::path::PathBuf {
    let out = dir.join(name);
    let status = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["certs", "init", "--run", "e2e", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(status.status.success(), "certs init: {}", String::from_utf8_lossy(&status.stderr));
    out
}

/// The `--set` flags of `role`'s `[security]`.
fn security_flags(certs: &Path, role: &str) -> Vec<String> {
    let p = |f: &str| certs.join(f).display().to_string();
    vec![
        "--set".into(),
        format!("security.ca={}", p("ca.pem")),
        "--set".into(),
        format!("security.cert={}", p(&format!("{role}.pem"))),
        "--set".into(),
        format!("security.key={}", p(&format!("{role}.key"))),
    ]
}

/// A session of the intruder: with `certs`' `role` identity, or none (plain TCP), linked to both
/// listening roles.
async fn intruder(certs: Option<(&Path, &str)>, ports: [u16; 2]) -> zenoh::Session {
    let proto = if certs.is_some() { "tls" } else { "tcp" };
    let security = match certs {
        Some((dir, role)) => Security {
            ca: Some(dir.join("ca.pem")),
            cert: Some(dir.join(format!("{role}.pem"))),
            key: Some(dir.join(format!("{role}.key"))),
            ..Default::default()
        },
        None => Security::default(),
    };
    let opts = ZenohOptions {
        connect: ports.iter().map(|p| format!("{proto}/127.0.0.1:{p}")).collect(),
        security,
        run: Some("e2e".into()),
        ..Default::default()
    };
    let s = opts.open().await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    s
}

/// What a replay query gets back: Ok(body) or Err(error text), one per reply (none when refused
/// by access control or unreachable).
async fn ask(s: &zenoh::Session, op: &str, payload: Vec<u8>) -> Vec<Result<Vec<u8>, String>> {
    let replies =
        s.get(keys::replay("e2e", 0, op)).payload(payload).timeout(Duration::from_secs(2)).await.unwrap();
    let mut out = Vec::new();
    while let Ok(r) = replies.recv_async().await {
        out.push(match r.result() {
            Ok(sample) => Ok(sample.payload().to_bytes().into_owned()),
            Err(e) => Err(String::from_utf8_lossy(&e.payload().to_bytes()).into_owned()),
        });
    }
    out
}

fn sample_request(learner: Lineage, groups: u32, consumer: &str) -> Vec<u8> {
    serde_json::to_vec(&SampleRequest {
        sampler: Sampler::Fifo,
        groups,
        learner,
        max_staleness: 1_000_000,
        consumer: consumer.into(),
        drop_zero_variance: false,
        dedup: false,
        exclude: Vec::new(),
    })
    .unwrap()
}

/// The one error reply `replies` holds; panics naming `what` otherwise.
fn refused(what: &str, replies: Vec<Result<Vec<u8>, String>>, needle: &str) {
    match replies.as_slice() {
        [Err(e)] if e.contains(needle) => eprintln!("{what}: refused: {e}"),
        other => panic!("{what}: expected one error naming `{needle}`, got {other:?}"),
    }
}

#[test]
fn a_run_over_mutual_tls_trains_while_an_intruder_is_refused_everything() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let model = tiny_model(d);
    let steps = 1000;
    let cfg = config(d, &model, steps);
    let cfg_s = cfg.to_str().unwrap();
    let run = d.join("run");
    let (ca, other_ca) = (certs(d, "certs"), certs(d, "other"));
    let ports = [free_local_port().unwrap(), free_local_port().unwrap()];
    let (replay_ep, learner_ep) =
        (format!("tls/127.0.0.1:{}", ports[0]), format!("tls/127.0.0.1:{}", ports[1]));
    let role = |name: &str, role: &str, args: &[&str]| {
        let mut all: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        all.extend(security_flags(&ca, role));
        let all: Vec<&str> = all.iter().map(|s| s.as_str()).collect();
        Proc::start(d, name, &all)
    };
    let mut replay = role("replay", "replay", &["replay", cfg_s, "--listen", &replay_ep]);
    replay.wait_for("\"ready\"", Duration::from_secs(60));
    let mut learner =
        role("learner", "learner", &["learner", cfg_s, "--listen", &learner_ep, "--connect", &replay_ep]);
    let mut rollout = role(
        "rollout",
        "rollout",
        &["rollout", cfg_s, "--name", "a", "--connect", &replay_ep, "--connect", &learner_ep],
    );
    wait_until(
        "step 3",
        Duration::from_secs(120),
        || last_step(&run) >= 3,
        &mut [&mut learner, &mut rollout],
    );

    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let valid = sample_request(Lineage::start(1), 1, "intruder");
        // No certificate, or one of another CA: no link opens, nothing is answered.
        let plain = intruder(None, ports).await;
        assert!(ask(&plain, "sample", valid.clone()).await.is_empty(), "a peer without TLS was answered");
        let stranger = intruder(Some((&other_ca, "learner")), ports).await;
        assert!(
            ask(&stranger, "sample", valid.clone()).await.is_empty(),
            "another CA's learner was answered"
        );
        stranger.put(keys::done("e2e"), "{}").await.unwrap();

        // A rollout certificate: its own requests are answered, the learner's are not.
        let worker = intruder(Some((&ca, "rollout")), ports).await;
        let stats = ask(&worker, "stats", Vec::new()).await;
        assert!(matches!(stats.as_slice(), [Ok(_)]), "a rollout's stats request: {stats:?}");
        assert!(ask(&worker, "sample", valid.clone()).await.is_empty(), "a rollout certificate sampled");
        let ack = serde_json::to_vec(&AckRequest {
            consumer: "learner".into(),
            group_ids: (0..64).collect(),
            dropped: false,
        })
        .unwrap();
        assert!(ask(&worker, "ack", ack).await.is_empty(), "a rollout certificate acknowledged");
        worker
            .put(
                keys::weights("e2e", "announce"),
                r#"{"lineage":{"epoch":9,"version":9},"digest":0,"bytes":1}"#,
            )
            .await
            .unwrap();
        worker.put(keys::done("e2e"), "{}").await.unwrap();
        // Appends it may make, but not of a group of the wrong size or outside the vocabulary.
        let group = |gid: u64, n: u16, token: u32| {
            sluice_core::testing::group(
                gid,
                (0..n).map(|i| sluice_core::testing::sample(gid, i, 0, vec![token, 1])),
            )
        };
        let ipc = |g| encode_ipc(&[groups_to_batch(&[g]).unwrap()]).unwrap();
        refused(
            "a group of 7",
            ask(&worker, "append", ipc(group(900_001, 7, 1))).await,
            "the run's groups have 8",
        );
        refused(
            "token id 100000",
            ask(&worker, "append", ipc(group(900_002, 8, 100_000))).await,
            "vocabulary has",
        );

        // The learner's own certificate (any identity): what no learner can ask is refused.
        let rogue = intruder(Some((&ca, "learner")), ports).await;
        refused(
            "learner version u64::MAX",
            ask(&rogue, "sample", sample_request(Lineage::start(1).at(u64::MAX), 1, "intruder")).await,
            "versions past version",
        );
        refused(
            "groups u32::MAX",
            ask(&rogue, "sample", sample_request(Lineage::start(1), u32::MAX, "intruder")).await,
            "4294967295 groups",
        );
        // Groups drawn by one consumer cannot be acknowledged by another.
        let mut drawn = Vec::new();
        for _ in 0..50 {
            let r = ask(&rogue, "sample", valid.clone()).await;
            let body = r.into_iter().next().unwrap().unwrap();
            let (info, _) = sluice_replay::unframe_sample(&body).unwrap();
            let info: serde_json::Value = serde_json::from_slice(info).unwrap();
            if info["groups"].as_u64() > Some(0) {
                let (_, ipc) = sluice_replay::unframe_sample(&body).unwrap();
                let batch = sluice_core::trajectory::decode_ipc(ipc).unwrap();
                drawn = sluice_core::trajectory::batch_to_groups(&batch)
                    .unwrap()
                    .iter()
                    .map(|g| g.group_id)
                    .collect();
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(!drawn.is_empty(), "the intruder never drew a group");
        let ack = serde_json::to_vec(&AckRequest {
            consumer: "someone-else".into(),
            group_ids: drawn,
            dropped: false,
        })
        .unwrap();
        refused(
            "an ack of another consumer's groups",
            ask(&rogue, "ack", ack).await,
            "delivered to another consumer",
        );
        for s in [plain, stranger, worker, rogue] {
            let _ = s.close().await;
        }
    });
    // All of it while the run went on: nobody stopped it.
    assert!(
        learner.child.try_wait().unwrap().is_none(),
        "the run ended before the intruder was done:\n{}",
        learner.log()
    );
    assert!(replay.child.try_wait().unwrap().is_none(), "the replay stopped:\n{}", replay.log());

    let status = learner.wait(Duration::from_secs(300));
    assert!(status.success(), "learner {status}:\n{}\nrollout:\n{}", learner.log(), rollout.log());
    assert!(rollout.wait(Duration::from_secs(30)).success(), "rollout:\n{}", rollout.log());
    assert!(replay.wait(Duration::from_secs(30)).success(), "replay:\n{}", replay.log());
    assert_eq!(learner_steps(&records(&run)).len() as u64, steps, "one record per learner step");
    // The replay counted what its checks refused.
    let stopped: serde_json::Value = replay
        .log()
        .lines()
        .find(|l| l.contains("\"stopped\""))
        .map(|l| serde_json::from_str(l).unwrap())
        .unwrap();
    let stats = &stopped["stats"][0];
    eprintln!("replay counters: {stats}");
    assert!(stats["rejected_requests"].as_u64() >= Some(2), "{stats}");
    assert!(stats["refused_acks"].as_u64() >= Some(1), "{stats}");
    assert!(stats["rejected_batches"].as_u64() >= Some(2), "{stats}");
}
