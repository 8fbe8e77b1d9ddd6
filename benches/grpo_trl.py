"""TRL's GRPOTrainer on the model sluice's `runs` benchmark wrote (benches/trl.sh runs both).

    python grpo_trl.py MODEL_DIR STEPS BETA

The same task and shapes as `cargo bench --bench runs -- grpo`: bare "a+b=" questions (operands of
1-2 digits, the answer being the integer the completion starts with, reward 1 + 0.1 for a leading
integer, as sluice's `LeadingIntegerVerifier`), 8 prompts x 8 completions per step, at most 32
new tokens, temperature 1, lr 1e-5, AdamW, grad-norm clip 1.0, one optimizer step per generation
batch. Prints one JSON line: steps/s over the steps after the first WARMUP.
"""

import json
import random
import re
import sys
import time

import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast, TrainerCallback
from trl import GRPOConfig, GRPOTrainer

WARMUP = 2

model_dir, steps, beta = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])

tok = PreTrainedTokenizerFast.from_pretrained(model_dir)
tok.pad_token = "<pad>"
tok.eos_token = "<eos>"
model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
model.generation_config.pad_token_id = tok.pad_token_id
model.generation_config.eos_token_id = tok.eos_token_id
model.generation_config.bos_token_id = None

rng = random.Random(0)


def operand():
    digits = rng.randint(1, 2)
    return rng.randrange(0 if digits == 1 else 10, 10**digits)


pairs = [(operand(), operand()) for _ in range(8 * steps)]
data = Dataset.from_list([{"prompt": f"{a}+{b}=", "answer": a + b} for a, b in pairs])


def reward(completions, answer, **_):
    out = []
    for text, want in zip(completions, answer):
        m = re.match(r"-?\d+", text)
        got = int(m.group()) if m else None
        out.append((got == want) + 0.1 * (got is not None))
    return out


class Clock(TrainerCallback):
    def __init__(self):
        self.stamps = []

    def on_step_end(self, args, state, control, **kwargs):
        self.stamps.append(time.perf_counter())


cfg = GRPOConfig(
    output_dir="/tmp/grpo-trl-bench",
    use_cpu=True,
    bf16=False,
    max_steps=steps,
    per_device_train_batch_size=64,
    gradient_accumulation_steps=1,
    num_generations=8,
    max_completion_length=32,
    temperature=1.0,
    top_p=1.0,
    top_k=0,
    beta=beta,
    learning_rate=1e-5,
    max_grad_norm=1.0,
    lr_scheduler_type="constant",
    loss_type="grpo",
    logging_steps=1,
    save_strategy="no",
    report_to=[],
    dataloader_num_workers=0,
    seed=0,
    disable_tqdm=True,
)
clock = Clock()
trainer = GRPOTrainer(
    model=model, reward_funcs=reward, args=cfg, train_dataset=data, processing_class=tok, callbacks=[clock]
)
trainer.train()
rewards = [h["reward"] for h in trainer.state.log_history if "reward" in h]
t = clock.stamps
print(
    json.dumps(
        {
            "impl": "trl",
            "beta": beta,
            "steps_timed": len(t) - WARMUP,
            "seconds": t[-1] - t[WARMUP - 1],
            "steps_per_s": (len(t) - WARMUP) / (t[-1] - t[WARMUP - 1]),
            "reward_mean": sum(rewards) / max(len(rewards), 1),
            "threads": torch.get_num_threads(),
        }
    )
)
