"""PyTorch/transformers side of benches/model.sh: the same weights, shapes and measurements as
benches/model.rs. Prints one JSON object per measurement.

    python benches/model_torch.py DIR NAME GEN_BATCH TRAIN_BATCH PROMPT NEW_TOKENS ITERS
"""
import json
import statistics
import sys
import time

import torch
from transformers import AutoModelForCausalLM

d, name = sys.argv[1], sys.argv[2]
gen_batch, train_batch, prompt, new_tokens, iters = map(int, sys.argv[3:8])
torch.manual_seed(0)
model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32)
vocab = model.config.vocab_size


def timed(fn):
    fn()  # warm-up
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


ids = torch.randint(3, vocab, (gen_batch, prompt))
mask = torch.ones_like(ids)


def gen():
    with torch.inference_mode():
        out = model.generate(
            ids, attention_mask=mask, do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
            max_new_tokens=new_tokens, min_new_tokens=new_tokens, eos_token_id=None, pad_token_id=0,
        )
    assert out.shape[1] == prompt + new_tokens


secs = timed(gen)
print(json.dumps({"impl": "torch", "model": name, "what": "generate", "batch": gen_batch, "prompt": prompt,
                  "new_tokens": new_tokens, "seconds": secs, "tokens_per_s": gen_batch * new_tokens / secs}))

p = torch.randint(3, vocab, (train_batch, prompt))
c = torch.randint(3, vocab, (train_batch, new_tokens))
seq = torch.cat([p, c], dim=1)


def train():
    # The same computation as sluice's scorer: logits only at the completion positions.
    model.zero_grad(set_to_none=True)
    hidden = model.model(input_ids=seq).last_hidden_state[:, prompt - 1 : prompt - 1 + new_tokens]
    logp = torch.log_softmax(model.lm_head(hidden).float(), dim=-1)
    loss = -logp.gather(-1, c.unsqueeze(-1)).sum()
    loss.backward()


model.train()
secs = timed(train)
print(json.dumps({"impl": "torch", "model": name, "what": "train", "batch": train_batch, "seq": prompt + new_tokens,
                  "seconds": secs, "tokens_per_s": train_batch * (prompt + new_tokens) / secs}))
