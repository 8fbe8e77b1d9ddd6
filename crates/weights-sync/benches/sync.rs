//! Weight-sync benchmark: time from announce to every subscriber having applied a version, for
//! SmolLM2-135M's shapes (269 MB in bf16) and 1 GB, to 1 and 2 subscriber processes on this
//! host, over TCP loopback and (with `--features shm`) zenoh shared memory, against a plain
//! memcpy of the same bytes in the same run.
//!
//! `cargo bench -p sluice-weights-sync --features shm --bench sync [-- --sizes smollm2,1g --versions 4]`

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Instant;

const PEER: &str = env!("CARGO_BIN_EXE_weights-peer");

/// Seconds of the fastest of `reps` copies of `bytes` bytes between two touched buffers.
fn memcpy_s(bytes: usize, reps: usize) -> f64 {
    let src: Vec<u8> = (0..bytes).map(|i| i as u8).collect();
    let mut dst = vec![1u8; bytes];
    let mut best = f64::MAX;
    for _ in 0..reps {
        let t = Instant::now();
        dst.copy_from_slice(&src);
        best = best.min(t.elapsed().as_secs_f64());
        std::hint::black_box(&dst);
    }
    best
}

/// Median sync seconds of versions 2.. (version 1 pays for first-touch allocations).
fn sync_s(model: &str, subscribers: usize, shm: bool, versions: u64, port: u16) -> (f64, u64) {
    let ep = format!("tcp/127.0.0.1:{port}");
    let run = format!("bench{port}");
    let mut common: Vec<String> = vec!["--run".into(), run];
    if !shm {
        common.push("--no-shm".into());
    }
    let mut publisher = Command::new(PEER)
        .args(["publish", "--listen", &ep, "--model", model, "--wait-each"])
        .args(["--versions", &versions.to_string(), "--subscribers", &subscribers.to_string()])
        .args(&common)
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawning the publisher");
    let mut lines = BufReader::new(publisher.stdout.take().expect("stdout")).lines();
    let first = lines.next().expect("publisher output").expect("a line");
    assert!(first.contains("ready"), "{first}");
    let subs: Vec<_> = (0..subscribers)
        .map(|i| {
            Command::new(PEER)
                .args([
                    "subscribe",
                    "--connect",
                    &ep,
                    "--worker",
                    &format!("w{i}"),
                    "--until",
                    &versions.to_string(),
                ])
                .args(&common)
                .stdout(Stdio::null())
                .spawn()
                .expect("spawning a subscriber")
        })
        .collect();
    let mut times = Vec::new();
    let mut bytes = 0;
    for line in lines {
        let v: serde_json::Value = serde_json::from_str(&line.expect("a line")).expect("json");
        match v["event"].as_str() {
            Some("published") => bytes = v["bytes"].as_u64().unwrap_or(0),
            Some("synced") if v["version"].as_u64() > Some(1) => {
                times.push(v["sync_ms"].as_f64().unwrap_or(0.0) / 1e3)
            }
            _ => {}
        }
    }
    assert!(publisher.wait().expect("publisher").success(), "the publisher failed");
    for mut s in subs {
        assert!(s.wait().expect("subscriber").success(), "a subscriber failed");
    }
    times.sort_by(f64::total_cmp);
    (times[times.len() / 2], bytes)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let get = |k: &str| args.iter().position(|a| a == k).and_then(|i| args.get(i + 1)).cloned();
    let sizes = get("--sizes").unwrap_or_else(|| "smollm2,1g".into());
    let versions: u64 = get("--versions").and_then(|v| v.parse().ok()).unwrap_or(4);
    let transports: &[bool] = if cfg!(feature = "shm") { &[false, true] } else { &[false] };
    if !cfg!(feature = "shm") {
        println!("(built without the shm feature: TCP only; add --features shm for shared memory)");
    }
    println!("| payload | transport | subscribers | sync (median) | memcpy same bytes | ratio | GB/s per subscriber |");
    println!("|---|---|---|---|---|---|---|");
    let mut port = sluice_core::free_local_port().expect("a port");
    for size in sizes.split(',') {
        let model = match size {
            "smollm2" => "smollm2".to_string(),
            "1g" => "bytes:1000000000".to_string(),
            other => other.to_string(),
        };
        for &shm in transports {
            for subscribers in [1usize, 2] {
                port = port.wrapping_add(1).max(20000);
                let (s, bytes) = sync_s(&model, subscribers, shm, versions, port);
                let total = bytes as usize * subscribers;
                let m = memcpy_s(total, 3);
                println!(
                    "| {size} ({:.0} MB) | {} | {subscribers} | {:.1} ms | {:.1} ms | {:.2}x | {:.2} |",
                    bytes as f64 / 1e6,
                    if shm { "shm" } else { "tcp" },
                    s * 1e3,
                    m * 1e3,
                    s / m,
                    bytes as f64 / s / 1e9
                );
            }
        }
    }
}
