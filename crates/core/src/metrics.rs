//! Metric names: the one list every role logs under, so `metrics.jsonl`, TensorBoard and the plots
//! agree on what a number is called.
//!
//! A record is one JSON object per line: [`STEP`] and [`VERSION`] say where it was taken, the other
//! keys are the names below. Histograms (such as [`STALENESS_HIST`]) are arrays whose index is the
//! bucket (staleness 0, 1, 2, ...).

/// Learner steps (batches) taken when the record was written.
pub const STEP: &str = "step";
/// The policy version after the step: the number of batches whose update was applied
/// (`docs/design.md`, "Versions and staleness").
pub const VERSION: &str = "version";
/// Which role wrote the record (`learner`, `rollout`).
pub const ROLE: &str = "role";

/// Mean reward over the batch's samples (after reward shaping).
pub const REWARD_MEAN: &str = "reward/mean";
/// Standard deviation of the batch's rewards.
pub const REWARD_STD: &str = "reward/std";
/// Fraction of samples judged correct: the mean of the reward part named [`ACCURACY_PART`], where
/// the environment reports it (absent otherwise).
pub const ACCURACY: &str = "reward/accuracy";
/// The reward part environments use for "the answer is right" (0 or 1).
pub const ACCURACY_PART: &str = "correct";

/// The loss that was differentiated (the sum of the terms below).
pub const LOSS_TOTAL: &str = "loss/total";
/// The policy-gradient term (clipped surrogate, importance-weighted).
pub const LOSS_POLICY: &str = "loss/policy";
/// The KL penalty term (`beta * KL`, reduced like the policy loss).
pub const LOSS_KL: &str = "loss/kl";
/// The trajectory-balance loss.
pub const LOSS_TB: &str = "loss/tb";

/// Mean per-token KL estimate to the reference policy (the configured estimator).
pub const KL: &str = "kl/mean";
/// Mean per-token entropy of the policy at the sampling temperature.
pub const ENTROPY: &str = "policy/entropy";
/// Fraction of trained tokens whose ratio fell outside the clip range.
pub const CLIP_FRACTION: &str = "policy/clip_fraction";
/// Mean of the off-policy importance weights over trained tokens (after truncation or masking).
pub const IS_WEIGHT_MEAN: &str = "is/weight_mean";
/// Largest raw importance weight `exp(logp_prox - logp_behavior)` seen in the batch.
pub const IS_WEIGHT_MAX: &str = "is/weight_max";
/// Smallest raw importance weight in the batch.
pub const IS_WEIGHT_MIN: &str = "is/weight_min";
/// Fraction of trained tokens the correction truncated or masked.
pub const IS_CORRECTED_FRACTION: &str = "is/corrected_fraction";
/// Mean |logp_prox - logp_behavior| per token: the train/inference log-prob mismatch plus the
/// policy's drift since sampling.
pub const LOGP_MISMATCH: &str = "is/logp_abs_diff";
/// Trajectory balance: the temperature `beta` of this step.
pub const TB_BETA: &str = "tb/beta";
/// Trajectory balance: mean of the per-group VarGrad `log Z`.
pub const TB_LOG_Z: &str = "tb/log_z";

/// Global gradient norm before clipping.
pub const GRAD_NORM: &str = "optim/grad_norm";
/// Factor the gradients were scaled by (1 when not clipped).
pub const GRAD_CLIP_SCALE: &str = "optim/clip_scale";
/// Learning rate of the step.
pub const LR: &str = "optim/lr";
/// Optimizer updates of the step left out because the loss or the gradient norm was not finite
/// (the weights, the moments and the version stay as they were).
pub const SKIPPED_NONFINITE: &str = "optim/skipped_nonfinite";

/// Mean staleness (learner version minus behavior version) of the batch's samples.
pub const STALENESS_MEAN: &str = "staleness/mean";
/// Largest staleness in the batch.
pub const STALENESS_MAX: &str = "staleness/max";
/// Samples per staleness value (array: index = staleness).
pub const STALENESS_HIST: &str = "staleness/hist";

/// Groups trained on in the step.
pub const GROUPS: &str = "data/groups";
/// Samples (rows) trained on in the step.
pub const SAMPLES: &str = "data/samples";
/// Completion tokens trained on (loss mask 1) in the step.
pub const TOKENS: &str = "data/tokens";
/// Forward/backward passes the step's batch was cut into (whole groups, cut where the scorer's
/// packing says a cut pays, within `learner.micro_batch_groups`).
pub const MICRO_BATCHES: &str = "data/micro_batches";
/// Positions the step's forward passes computed (packed rows x their width, summed over
/// micro-batches): against the batch's prompt and completion tokens, what padding cost and
/// what sharing a group's prompt saved.
pub const POSITIONS: &str = "data/positions";
/// Zero-variance groups dropped before the step (dynamic sampling), by the replay and here.
pub const ZERO_VARIANCE_DROPPED: &str = "data/zero_variance_dropped";
/// Failed episodes (`finish = error`) in the step's groups: left out of the loss and of their
/// group's statistics.
pub const FAILED_SAMPLES: &str = "data/failed_samples";
/// Groups dropped before the step because fewer than two of their samples were valid.
pub const FAILED_GROUPS_DROPPED: &str = "data/failed_groups_dropped";
/// Failed episodes among every group drawn for the step, trained or dropped (what the error
/// budget, `learner.max_failed_fraction`, counts).
pub const FAILED_EPISODES: &str = "data/failed_episodes";
/// `data/failed_episodes` over the episodes of every group drawn for the step.
pub const FAILED_FRACTION: &str = "data/failed_fraction";
/// Sample requests it took to fill the batch.
pub const SAMPLE_REQUESTS: &str = "data/sample_requests";
/// Groups sampled by weights this learner's lineage orphaned (a resume threw those versions
/// away): dropped before the step, never trained on. The replay drops them too; these got past
/// it in flight.
pub const ORPHANED_DROPPED: &str = "data/orphaned_dropped";
/// Groups redelivered by the replay that this learner had already trained on (skipped).
pub const DUPLICATES_SKIPPED: &str = "data/duplicates_skipped";

/// Seconds spent waiting for the batch.
pub const WAIT_DATA_S: &str = "time/wait_data_s";
/// Seconds of the step itself (forward, backward, optimizer).
pub const STEP_S: &str = "time/step_s";
/// Seconds of the step a data-parallel rank spent in all-reduces (batch counts, gradients and
/// metrics), waiting for the other ranks included.
pub const ALL_REDUCE_S: &str = "time/all_reduce_s";
/// Seconds since the run's report was opened, on every record of `metrics.jsonl`.
pub const WALL_S: &str = "time/wall_s";
/// Trained tokens per second of step time.
pub const TOKENS_PER_S: &str = "throughput/tokens_per_s";
