//! `weights-peer`: one end of a weight sync as its own process, publishing synthetic weights with
//! real checkpoint shapes or subscribing to them. The multi-process test and the benchmark drive
//! it; a user can run it to measure sync between two hosts before training.
//!
//! ```text
//! weights-peer publish   --listen EP --run R [--model tiny|smollm2|bytes:N] [--versions K]
//!                        [--holders H] [--dtype bf16|f32] [--subscribers W] [--wait-each] [--no-shm]
//! weights-peer subscribe --connect EP --run R --worker NAME [--layout replicated|tp2] [--fuse]
//!                        [--until V] [--dump DIR] [--no-shm] [--parallel N]
//! both:                  [--zenoh 'key=json5;key=json5'] (any zenoh setting) [--chunk-bytes B]
//!                        [--insecure] (listen beyond loopback without TLS: a probe of a trusted
//!                        network; the run's roles use `[security]`, docs/security.md)
//! ```
//! Every event is one JSON line on stdout.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::json;
use sluice_core::{Lineage, PolicyId, ZenohOptions};
use sluice_weights_sync::synthetic::{self, SMOLLM2_135M, TINY};
use sluice_weights_sync::{
    DType, Destination, Publisher, PublisherConfig, StalenessGate, Subscriber, SubscriberConfig,
};

type AnyResult<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

struct Args {
    values: HashMap<String, String>,
}

impl Args {
    fn parse(raw: &[String]) -> AnyResult<Args> {
        let flags = ["--fuse", "--no-shm", "--wait-each"];
        let mut values = HashMap::new();
        let mut it = raw.iter();
        while let Some(k) = it.next() {
            if !k.starts_with("--") {
                return Err(format!("unexpected argument `{k}`").into());
            }
            if flags.contains(&k.as_str()) {
                values.insert(k[2..].to_string(), "true".to_string());
                continue;
            }
            let v = it.next().ok_or_else(|| format!("`{k}` needs a value"))?;
            values.insert(k[2..].to_string(), v.clone());
        }
        Ok(Args { values })
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.values.get(key).map(String::as_str)
    }

    fn need(&self, key: &str) -> AnyResult<&str> {
        self.get(key).ok_or_else(|| format!("--{key} is required").into())
    }

    fn num(&self, key: &str, default: u64) -> AnyResult<u64> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v.parse().map_err(|e| format!("--{key} {v}: {e}").into()),
        }
    }

    fn flag(&self, key: &str) -> bool {
        self.get(key).is_some()
    }
}

fn emit(value: serde_json::Value) {
    println!("{value}");
}

async fn open(args: &Args, opts: ZenohOptions) -> AnyResult<zenoh::Session> {
    let opts = ZenohOptions { insecure: args.flag("insecure"), ..opts };
    let mut config = opts.to_config()?;
    let shm = if args.flag("no-shm") { "false" } else { "true" };
    config
        .insert_json5("transport/shared_memory/enabled", shm)
        .map_err(|e| format!("shared memory setting: {e}"))?;
    // `--zenoh key=json5;key=json5`: any zenoh setting, for tuning.
    for kv in args.get("zenoh").unwrap_or("").split(';').filter(|s| !s.is_empty()) {
        let (k, v) = kv.split_once('=').ok_or_else(|| format!("--zenoh {kv}: expected key=value"))?;
        config.insert_json5(k, v).map_err(|e| format!("--zenoh {kv}: {e}"))?;
    }
    // The config is `ZenohOptions`' (peer, no multicast scouting) with this tool's tuning on top.
    #[allow(clippy::disallowed_methods)]
    let session = zenoh::open(config).await;
    session.map_err(|e| format!("opening zenoh: {e}").into())
}

fn model(spec: &str) -> AnyResult<Vec<(String, Vec<usize>)>> {
    Ok(match spec {
        "tiny" => synthetic::llama_tensors(TINY),
        "smollm2" => synthetic::llama_tensors(SMOLLM2_135M),
        _ => match spec.strip_prefix("bytes:") {
            Some(n) => synthetic::blob_tensors(n.parse().map_err(|e| format!("--model {spec}: {e}"))?),
            None => return Err(format!("--model {spec}: expected tiny, smollm2 or bytes:N").into()),
        },
    })
}

async fn publish(args: &Args) -> AnyResult<()> {
    let session = open(args, ZenohOptions::listen_on(args.need("listen")?)).await?;
    let tensors = model(args.get("model").unwrap_or("tiny"))?;
    let dtype = match args.get("dtype").unwrap_or("bf16") {
        "bf16" => DType::Bf16,
        "f32" => DType::F32,
        other => return Err(format!("--dtype {other}: expected bf16 or f32").into()),
    };
    let cfg = PublisherConfig {
        transfer_dtype: dtype,
        shm: !args.flag("no-shm"),
        ..PublisherConfig::new(args.need("run")?)
    };
    let publisher = Publisher::start(&session, cfg).await?;
    let (versions, holders, subscribers) =
        (args.num("versions", 3)?, args.num("holders", 1)? as usize, args.num("subscribers", 1)? as usize);
    let patience = Duration::from_secs(args.num("wait-s", 120)?);
    emit(json!({"event": "ready"}));
    if !publisher.wait_for_acks(PolicyId::default(), subscribers, patience).await {
        return Err(format!("{subscribers} subscribers did not join within {patience:?}").into());
    }
    emit(json!({"event": "joined", "subscribers": subscribers}));
    for v in 1..=versions {
        let snapshot = synthetic::snapshot(v, &tensors, holders);
        let t0 = Instant::now();
        let handle = publisher.publish(Lineage::default().at(v), snapshot);
        // What the training loop waits for: handing the snapshot over.
        let call_ms = t0.elapsed().as_secs_f64() * 1e3;
        let announce = handle.await??;
        let prepare_ms = t0.elapsed().as_secs_f64() * 1e3;
        emit(
            json!({"event": "published", "version": v, "bytes": announce.bytes, "call_ms": call_ms, "prepare_ms": prepare_ms, "stats": publisher.stats()}),
        );
        if args.flag("wait-each") {
            let t1 = Instant::now();
            if !publisher.wait_for_acks(PolicyId::new(0, v), subscribers, patience).await {
                return Err(
                    format!("version {v} was not acknowledged by {subscribers} within {patience:?}").into()
                );
            }
            emit(json!({"event": "synced", "version": v, "sync_ms": t1.elapsed().as_secs_f64() * 1e3}));
        }
    }
    if !publisher.wait_for_acks(PolicyId::new(0, versions), subscribers, patience).await {
        return Err(
            format!("version {versions} was not acknowledged by {subscribers} within {patience:?}").into()
        );
    }
    emit(json!({"event": "done", "version": versions, "acks": publisher.acks()}));
    Ok(())
}

async fn subscribe(args: &Args) -> AnyResult<()> {
    let session = open(args, ZenohOptions::connect_to(args.need("connect")?)).await?;
    let (run, worker) = (args.need("run")?, args.need("worker")?);
    let fuse = args.flag("fuse");
    let dests: Vec<(String, Destination)> = match args.get("layout").unwrap_or("replicated") {
        "replicated" => vec![(worker.to_string(), Destination { tensor_parallel: None, fuse })],
        "tp2" => (0..2)
            .map(|i| (format!("{worker}-{i}"), Destination { tensor_parallel: Some((2, i)), fuse }))
            .collect(),
        other => return Err(format!("--layout {other}: expected replicated or tp2").into()),
    };
    let until = args.num("until", 1)?;
    let parallel = args.num("parallel", 8)?;
    let dump = args.get("dump").map(PathBuf::from);
    let mut ranks = tokio::task::JoinSet::new();
    for (name, dest) in dests {
        let cfg = SubscriberConfig {
            poll: Duration::from_millis(200),
            parallel: parallel as usize,
            ..SubscriberConfig::new(run, name.clone())
        };
        let sub = Subscriber::start(&session, cfg, dest, StalenessGate::new(0, PolicyId::default())).await?;
        let dump = dump.clone();
        ranks.spawn(async move {
            let mut last = 0;
            loop {
                let w = sub.next_ready().await;
                if w.version <= last {
                    return Err(format!("{name}: version {} handed out after {last}", w.version).into());
                }
                last = w.version;
                sub.applied(w.id()).await?;
                let stats = sub.stats();
                emit(json!({"event": "applied", "worker": name, "version": w.version, "sync_ms": stats.last_sync_ms, "stats": stats}));
                if w.version >= until {
                    if let Some(dir) = &dump {
                        let dir = dir.join(&name);
                        std::fs::create_dir_all(&dir)?;
                        for (t, bytes) in w.tensors.iter().zip(&w.buffers) {
                            std::fs::write(dir.join(format!("{}.bin", t.name)), bytes)?;
                        }
                    }
                    // Keep acknowledging a little so the publisher hears it even if one put was lost.
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    return AnyResult::Ok(());
                }
            }
        });
    }
    while let Some(r) = ranks.join_next().await {
        r??;
    }
    emit(json!({"event": "done"}));
    Ok(())
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> std::process::ExitCode {
    let raw: Vec<String> = std::env::args().skip(1).collect();
    let result = match raw.first().map(String::as_str) {
        Some(cmd @ ("publish" | "subscribe")) => match Args::parse(&raw[1..]) {
            Ok(args) if cmd == "publish" => publish(&args).await,
            Ok(args) => subscribe(&args).await,
            Err(e) => Err(e),
        },
        _ => Err("usage: weights-peer publish|subscribe --run R ... (see the crate docs)".into()),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("weights-peer: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
