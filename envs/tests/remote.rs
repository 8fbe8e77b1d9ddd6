//! The remote-env protocol between two zenoh sessions: a Rust environment served with `serve`,
//! driven through `RemoteEnv` as the rollout worker drives any environment.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::Duration;

use sluice_core::{free_local_port, Env, TaskSource, ZenohOptions};
use sluice_envs::{serve, Arithmetic, ArithmeticConfig, Calculator, CalculatorConfig, RemoteEnv};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_served_calculator_answers_reset_step_and_task_over_zenoh() {
    tokio::time::timeout(Duration::from_secs(60), async {
        let ep = format!("tcp/127.0.0.1:{}", free_local_port().unwrap());
        let server = ZenohOptions::listen_on(ep.clone()).open().await.unwrap();
        let client = ZenohOptions::connect_to(ep).open().await.unwrap();
        let tasks =
            Arithmetic::new(ArithmeticConfig { min_digits: 3, max_digits: 3, ..Default::default() }).unwrap();
        let env = Arc::new(Calculator::new(CalculatorConfig::default()));
        let _served = serve(&server, "r", "calc", env, Some(Box::new(tasks))).await.unwrap();

        let remote = RemoteEnv::new(client.clone(), "r", "calc", Duration::from_secs(5)).unwrap();
        remote.wait_until_served(Duration::from_secs(20)).await.unwrap();
        let mut source = remote.tasks();
        let task = source.next_task().expect("the served source gives tasks");
        assert_eq!(task.source, "arithmetic");
        let answer = task.answer.as_i64().unwrap();

        let (mut ep, obs) = remote.reset(&task).await.unwrap();
        assert_eq!(obs, "");
        let r = ep.step("<calc>12*12</calc>").await.unwrap();
        assert_eq!(r.observation.as_deref(), Some("<result>144</result>"));
        assert!(!r.done);
        let r = ep.step(&format!("so \\boxed{{{answer}}}")).await.unwrap();
        assert!(r.done);
        assert_eq!(r.reward.unwrap().total, 1.1);
        // The server dropped the finished episode: stepping it again is an error naming it.
        let e = ep.step("again").await.unwrap_err().to_string();
        assert!(e.contains("unknown episode") && e.contains("sluice/r/env/calc/step"), "{e}");

        // A reset the env refuses comes back as an env error with its reason.
        let mut bad = task.clone();
        bad.answer = serde_json::Value::Null;
        let e = remote.reset(&bad).await.err().unwrap().to_string();
        assert!(e.contains("integer answer"), "{e}");

        // Nobody serves `other`: the call fails after its timeout, naming the key.
        let other = RemoteEnv::new(client.clone(), "r", "other", Duration::from_millis(300)).unwrap();
        let e = other.reset(&task).await.err().unwrap().to_string();
        assert!(e.contains("sluice/r/env/other/reset"), "{e}");
    })
    .await
    .unwrap();
}
