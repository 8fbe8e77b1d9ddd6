//! One publisher process and two subscriber processes on loopback: one holds the model whole,
//! the other as both ranks of 2-way tensor parallelism; the publisher's source is two FSDP ranks.
//! Several versions are published back to back; every subscriber must apply versions in
//! increasing order and end with the last version's bytes exactly.
// Blocking sleeps are right here: the test polls child processes from a plain thread.
#![allow(clippy::disallowed_methods)]
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sluice_weights_sync::synthetic::{self, TINY};
use sluice_weights_sync::DType;

use crate::common;

const PEER: &str = env!("CARGO_BIN_EXE_weights-peer");

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(args: &[&str]) -> Killed {
    Killed(Command::new(PEER).args(args).stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn().unwrap())
}

/// Waits for the process to exit successfully and returns its JSON lines.
fn finish(mut p: Killed, what: &str, deadline: Instant) -> Vec<serde_json::Value> {
    loop {
        if let Some(status) = p.0.try_wait().unwrap() {
            assert!(status.success(), "{what} exited with {status}");
            break;
        }
        assert!(Instant::now() < deadline, "{what} did not finish in time");
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = p.0.stdout.take().unwrap();
    BufReader::new(out).lines().map(|l| serde_json::from_str(&l.unwrap()).unwrap()).collect()
}

fn read(dir: &Path, worker: &str, name: &str) -> Vec<u8> {
    std::fs::read(dir.join(worker).join(format!("{name}.bin"))).unwrap()
}

#[test]
fn two_subscriber_processes_with_different_layouts_end_with_the_last_version_byte_exact() {
    let dir = tempfile::tempdir().unwrap();
    let dump = dir.path().to_str().unwrap();
    let ep = format!("tcp/127.0.0.1:{}", sluice_core::free_local_port().unwrap());
    let versions = 4u64;
    let mut publisher = spawn(&[
        "publish",
        "--listen",
        &ep,
        "--run",
        "mp",
        "--model",
        "tiny",
        "--holders",
        "2",
        "--versions",
        "4",
        "--subscribers",
        "3",
        "--wait-s",
        "60",
    ]);
    // Subscribers connect once the publisher listens.
    let mut first = String::new();
    BufReader::new(publisher.0.stdout.as_mut().unwrap()).read_line(&mut first).unwrap();
    assert!(first.contains("ready"), "{first}");
    let subscriber = |worker: &str, layout: &str| {
        spawn(&[
            "subscribe",
            "--connect",
            &ep,
            "--run",
            "mp",
            "--worker",
            worker,
            "--layout",
            layout,
            "--until",
            "4",
            "--dump",
            dump,
        ])
    };
    let whole = subscriber("whole", "replicated");
    let tp = subscriber("tp", "tp2");
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut events = finish(whole, "the replicated subscriber", deadline);
    events.extend(finish(tp, "the tensor-parallel subscriber", deadline));
    let published = finish(publisher, "the publisher", deadline);
    assert_eq!(published.last().unwrap()["event"], "done", "{published:?}");

    for worker in ["whole", "tp-0", "tp-1"] {
        let applied: Vec<u64> = events
            .iter()
            .filter(|e| e["event"] == "applied" && e["worker"] == worker)
            .map(|e| e["version"].as_u64().unwrap())
            .collect();
        println!("{worker} applied {applied:?}");
        assert!(applied.windows(2).all(|w| w[0] < w[1]), "{worker} applied {applied:?} out of order");
        assert_eq!(applied.last(), Some(&versions), "{worker} applied {applied:?}");
    }
    for (t, (name, shape)) in synthetic::llama_tensors(TINY).iter().enumerate() {
        let full = DType::Bf16.encode(&synthetic::values(versions, t, shape.iter().product()));
        assert!(read(dir.path(), "whole", name) == full, "{name} of the replicated subscriber");
        let (a, b) = (read(dir.path(), "tp-0", name), read(dir.path(), "tp-1", name));
        if shape.len() == 1 {
            assert!(a == full && b == full, "{name} is replicated on both ranks");
            continue;
        }
        let dim = usize::from(name.ends_with("o_proj.weight") || name.ends_with("down_proj.weight"));
        assert!(a == common::half(&full, shape, dim, 0), "{name} of tp rank 0");
        assert!(b == common::half(&full, shape, dim, 1), "{name} of tp rank 1");
    }
}
