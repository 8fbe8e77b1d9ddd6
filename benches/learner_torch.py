"""PyTorch side of benches/learner.sh: one GRPO step on the same weights and shapes as
crates/learner/benches/step.rs. Prints one JSON object per measurement.

    python benches/learner_torch.py DIR COMPLETIONS PROMPT COMPLETION ITERS

The step: forward with logits only at the completion positions, log-probs, the clipped surrogate
(ratio against the behaviour log-probs, GRPO advantages, seq-mean-token-mean), with beta > 0 a k3
KL to a frozen reference computed under no_grad, backward, clip_grad_norm_(1.0), AdamW.
"""
import copy
import json
import statistics
import sys
import time

import torch
from transformers import AutoModelForCausalLM

d = sys.argv[1]
n, prompt, completion, iters = map(int, sys.argv[2:6])
G = 4
torch.manual_seed(0)
model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32)
vocab = model.config.vocab_size
p = torch.randint(3, vocab, (n // G, prompt)).repeat_interleave(G, dim=0)
c = torch.randint(3, vocab, (n, completion))
seq = torch.cat([p, c], dim=1)
rewards = torch.tensor([float(i % 2) for i in range(n)])
r = rewards.view(-1, G)
adv = ((r - r.mean(1, keepdim=True)) / (r.std(1, keepdim=True) + 1e-6)).view(-1, 1)
behavior = torch.full((n, completion), -9.0)


def logprobs(m):
    hidden = m.model(input_ids=seq).last_hidden_state[:, prompt - 1 : prompt - 1 + completion]
    logp = torch.log_softmax(m.lm_head(hidden).float(), dim=-1)
    return logp.gather(-1, c.unsqueeze(-1)).squeeze(-1)


def run(beta):
    policy = copy.deepcopy(model)
    policy.train()
    reference = copy.deepcopy(model).eval() if beta > 0 else None
    opt = torch.optim.AdamW(policy.parameters(), lr=1e-6, weight_decay=0.01)

    def step():
        opt.zero_grad(set_to_none=True)
        logp = logprobs(policy)
        ratio = torch.exp(logp - behavior)
        per_token = -torch.min(ratio * adv, torch.clamp(ratio, 0.8, 1.2) * adv)
        if reference is not None:
            with torch.no_grad():
                ref = logprobs(reference)
            dlt = (ref - logp).clamp(-10, 10)
            per_token = per_token + beta * (torch.exp(dlt) - dlt - 1)
        loss = per_token.mean(dim=1).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
        opt.step()

    step()  # warm-up
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


for beta in (0.0, 0.04):
    secs = run(beta)
    print(json.dumps({"impl": "torch", "beta": beta, "completions": n, "prompt": prompt, "completion": completion,
                      "seconds": secs}))
