//! Publisher and subscribers over real zenoh sessions on loopback TCP: corruption in flight,
//! abandoned versions, late joiners, older announces, tensor-parallel and fused destinations,
//! and the staleness gate driven by real announces.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use sluice_core::{free_local_port, Lineage, PolicyId, ZenohOptions};

use crate::common;
use sluice_weights_sync::synthetic::{self, TINY};
use sluice_weights_sync::{
    wire::Announce, DType, Destination, Publisher, PublisherConfig, StalenessGate, Subscriber,
    SubscriberConfig,
};

async fn sessions() -> (zenoh::Session, zenoh::Session) {
    let ep = format!("tcp/127.0.0.1:{}", free_local_port().unwrap());
    let a = ZenohOptions::listen_on(ep.clone()).open().await.unwrap();
    let b = ZenohOptions::connect_to(ep).open().await.unwrap();
    (a, b)
}

fn sub_config(run: &str, worker: &str) -> SubscriberConfig {
    SubscriberConfig { poll: Duration::from_millis(100), ..SubscriberConfig::new(run, worker) }
}

async fn publisher(session: &zenoh::Session, run: &str) -> Publisher {
    let cfg = PublisherConfig { chunk_bytes: 4096, shm: false, ..PublisherConfig::new(run) };
    Publisher::start(session, cfg).await.unwrap()
}

/// Version `n` of epoch 0.
fn v(n: u64) -> PolicyId {
    PolicyId::new(0, n)
}

/// Publishes `version` of the tiny model held by two FSDP ranks.
async fn publish(p: &Publisher, version: u64) -> Announce {
    let snap = synthetic::snapshot(version, &synthetic::llama_tensors(TINY), 2);
    p.publish(Lineage::default().at(version), snap).await.unwrap().unwrap()
}

/// The bf16 bytes of the full tensor `t` at `version`, computed without the planner.
fn full_bytes(version: u64, t: usize, shape: &[usize]) -> Vec<u8> {
    DType::Bf16.encode(&synthetic::values(version, t, shape.iter().product()))
}

fn assert_replicated(w: &sluice_weights_sync::Weights, version: u64) {
    let tensors = synthetic::llama_tensors(TINY);
    assert_eq!(w.version, version);
    assert_eq!(w.tensors.len(), tensors.len());
    for (t, (name, shape)) in tensors.iter().enumerate() {
        let (staged, bytes) = w.tensor(name).unwrap();
        assert_eq!(&staged.shape, shape, "{name}");
        assert!(bytes == full_bytes(version, t, shape).as_slice(), "{name} differs at version {version}");
    }
}

async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..200 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupted_chunks_are_refetched_and_persistent_corruption_abandons_the_version() {
    let (ps, ss) = sessions().await;
    let p = publisher(&ps, "corrupt").await;
    let sub = Subscriber::start(
        &ss,
        sub_config("corrupt", "w0"),
        Destination::REPLICATED,
        StalenessGate::new(4, PolicyId::default()),
    )
    .await
    .unwrap();

    p.corrupt_next_replies(3);
    publish(&p, 1).await;
    let w = tokio::time::timeout(Duration::from_secs(20), sub.next_ready()).await.unwrap();
    assert_replicated(&w, 1);
    let stats = sub.stats();
    assert_eq!(stats.chunk_refetches, 3, "{stats:?}");
    assert_eq!(stats.versions_abandoned, 0);
    sub.applied(v(1)).await.unwrap();
    drop(w);

    // Every reply corrupted: the version is given up, never handed out.
    p.corrupt_next_replies(u32::MAX);
    publish(&p, 2).await;
    eventually("version 2 to be abandoned", || sub.stats().versions_abandoned == 1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(sub.ready().is_none(), "an abandoned version is never handed out");
    let stats = sub.stats();
    assert!(stats.last_error.as_deref().unwrap().contains("version 2 (epoch 0) abandoned"), "{stats:?}");
    assert_eq!(sub.gate().versions(), (v(2), v(1)));

    p.corrupt_next_replies(0);
    publish(&p, 3).await;
    let w = tokio::time::timeout(Duration::from_secs(20), sub.next_ready()).await.unwrap();
    assert_replicated(&w, 3);
    sub.applied(v(3)).await.unwrap();
    assert!(p.wait_for_acks(v(3), 1, Duration::from_secs(10)).await);
    assert_eq!(p.acks().get("w0"), Some(&v(3)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_joiner_gets_the_latest_version_in_its_own_layout_and_ignores_older_announces() {
    let (ps, ss) = sessions().await;
    let p = publisher(&ps, "late").await;
    for v in 1..=3 {
        publish(&p, v).await;
    }
    let sub = Subscriber::start(
        &ss,
        sub_config("late", "whole"),
        Destination::REPLICATED,
        StalenessGate::new(1, PolicyId::default()),
    )
    .await
    .unwrap();
    let tp = Subscriber::start(
        &ss,
        sub_config("late", "tp1"),
        Destination { tensor_parallel: Some((2, 1)), fuse: true },
        StalenessGate::new(1, PolicyId::default()),
    )
    .await
    .unwrap();
    let w = tokio::time::timeout(Duration::from_secs(20), sub.next_ready()).await.unwrap();
    assert_replicated(&w, 3);
    assert_eq!(sub.stats().versions_staged, 1, "the late joiner fetches only the latest version");
    sub.applied(v(3)).await.unwrap();

    // Rank 1 of 2-way tensor parallelism with fused qkv and gate_up.
    let w = tokio::time::timeout(Duration::from_secs(20), tp.next_ready()).await.unwrap();
    assert_eq!(w.version, 3);
    let tensors = synthetic::llama_tensors(TINY);
    let full = |name: &str| {
        let t = tensors.iter().position(|(n, _)| n == name).unwrap();
        (full_bytes(3, t, &tensors[t].1), tensors[t].1.clone())
    };
    for (name, shape) in &tensors {
        let (bytes, _) = full(name);
        let want = match shape.len() {
            1 => bytes,
            _ if name.ends_with("o_proj.weight") || name.ends_with("down_proj.weight") => {
                common::half(&bytes, shape, 1, 1)
            }
            _ if name.contains("q_proj") || name.contains("k_proj") || name.contains("v_proj") => continue,
            _ if name.contains("gate_proj") || name.contains("up_proj") => continue,
            _ => common::half(&bytes, shape, 0, 1),
        };
        assert!(w.tensor(name).unwrap().1 == want.as_slice(), "{name}");
    }
    for l in 0..TINY.layers {
        let p = format!("model.layers.{l}");
        for (fused, parts) in [
            ("self_attn.qkv_proj", &["q_proj", "k_proj", "v_proj"][..]),
            ("mlp.gate_up_proj", &["gate_proj", "up_proj"][..]),
        ] {
            let prefix = if fused.starts_with("mlp") { "mlp" } else { "self_attn" };
            let mut want = Vec::new();
            for part in parts {
                let (bytes, shape) = full(&format!("{p}.{prefix}.{part}.weight"));
                want.extend(common::half(&bytes, &shape, 0, 1));
            }
            let (staged, got) = w.tensor(&format!("{p}.{fused}.weight")).unwrap();
            assert!(got == want.as_slice(), "{p}.{fused}");
            assert_eq!(staged.shape[1], TINY.hidden);
        }
    }

    // An announce older than what is applied is ignored.
    let stale = Announce { lineage: Lineage::default().at(2), digest: 0, bytes: 0 };
    ps.put("sluice/late/weights/announce", serde_json::to_vec(&stale).unwrap()).await.unwrap();
    eventually("the older announce to be counted", || sub.stats().older_ignored == 1).await;
    assert!(sub.ready().is_none());
    assert_eq!(sub.stats().versions_staged, 1);
    assert!(p.wait_for_acks(v(3), 1, Duration::from_secs(10)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_lagging_beyond_max_staleness_is_blocked_until_it_applies_a_newer_version() {
    let (ps, ss) = sessions().await;
    let p = publisher(&ps, "lag").await;
    let gate = StalenessGate::new(1, PolicyId::default());
    let sub =
        Subscriber::start(&ss, sub_config("lag", "w"), Destination::REPLICATED, gate.clone()).await.unwrap();
    publish(&p, 1).await;
    publish(&p, 2).await;
    eventually("the learner's version to arrive", || gate.versions().0 == v(2)).await;
    assert!(!gate.may_start(), "two versions behind with max_staleness 1");
    let waiter = {
        let gate = gate.clone();
        tokio::spawn(async move { gate.until_may_start().await })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!waiter.is_finished(), "blocked while the owner has applied nothing");
    let w = tokio::time::timeout(Duration::from_secs(20), sub.next_ready()).await.unwrap();
    assert_eq!(w.version, 2, "only the newest version is fetched");
    sub.applied(w.id()).await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), waiter).await.unwrap().unwrap();
    assert!(gate.may_start());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_moves_to_a_resumed_learner_whose_version_number_is_lower() {
    // Epoch 1 published up to version 8 and died; epoch 2 resumed from its checkpoint at 5. The
    // worker holds the orphaned version 8: it must take epoch 2's version 5 (fails on a subscriber
    // that orders by version number alone, which ignores 5 < 8), and its gate must shut meanwhile.
    let (ps, ss) = sessions().await;
    let run = "resume";
    let gate = StalenessGate::new(4, PolicyId::default());
    let sub =
        Subscriber::start(&ss, sub_config(run, "w"), Destination::REPLICATED, gate.clone()).await.unwrap();
    let tensors = synthetic::llama_tensors(TINY);
    let first = publisher(&ps, run).await;
    let e1 = Lineage::start(1);
    for n in [5, 8] {
        first.publish(e1.clone().at(n), synthetic::snapshot(n, &tensors, 1)).await.unwrap().unwrap();
    }
    let w = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let w = sub.next_ready().await;
            if w.version == 8 {
                return w;
            }
            sub.applied(w.id()).await.unwrap();
        }
    })
    .await
    .unwrap();
    sub.applied(w.id()).await.unwrap();
    assert!(gate.may_start());
    drop(first);

    let second = publisher(&ps, run).await;
    let resumed = e1.at(5).fork(2);
    // Different bytes under a version number the first learner used too.
    second.publish(resumed.clone(), synthetic::snapshot(105, &tensors, 1)).await.unwrap().unwrap();
    eventually("the resumed learner's lineage to reach the gate", || {
        gate.versions().0 == PolicyId::new(2, 5)
    })
    .await;
    assert!(!gate.may_start(), "version 8 of epoch 1 is orphaned by the resume");
    let w = tokio::time::timeout(Duration::from_secs(20), sub.next_ready()).await.unwrap();
    assert_eq!(w.id(), PolicyId::new(2, 5));
    let (_, bytes) = w.tensor(&tensors[0].0).unwrap();
    assert!(bytes == full_bytes(105, 0, &tensors[0].1).as_slice(), "the resumed learner's weights");
    sub.applied(w.id()).await.unwrap();
    assert!(gate.may_start());
    assert_eq!(sub.stats().versions_abandoned, 0, "no version number was mistaken for another");
    assert!(second.wait_for_acks(PolicyId::new(2, 5), 1, Duration::from_secs(10)).await);
}
