//! Serves the example's `hot_cold` environment and its tasks over zenoh, for rollout workers of
//! run RUN on other processes or hosts:
//!
//!     cargo run -p sluice-example-custom-env -- RUN tcp/127.0.0.1:7447
//!
//! (the second argument is an endpoint to listen on; the workers connect to it).

use std::sync::Arc;

use sluice_core::ZenohOptions;
use sluice_example_custom_env::{HotCold, Secrets};

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(run), Some(listen)) = (args.next(), args.next()) else {
        return Err("usage: sluice-example-custom-env RUN LISTEN_ENDPOINT".into());
    };
    let session = ZenohOptions::listen_on(listen.clone()).open().await?;
    let env = Arc::new(HotCold { max: 20, turns: 5 });
    let _served =
        sluice_envs::serve(&session, &run, "hot_cold", env, Some(Box::new(Secrets::new(20)))).await?;
    println!("serving hot_cold for run {run} on {listen}; Ctrl-C stops");
    tokio::signal::ctrl_c().await?;
    Ok(())
}
