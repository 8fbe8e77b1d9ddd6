"""Checks that a directory written by `sluice convert` loads into transformers unchanged and that
transformers' greedy answer equals sluice's. Run through benches/hf_compat.sh."""
import json
import sys

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

d, prompt, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
tok = AutoTokenizer.from_pretrained(d)
model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32)
ids = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True, return_tensors="pt")
if not isinstance(ids, torch.Tensor):
    ids = ids["input_ids"]
out = model.generate(ids, max_new_tokens=n, do_sample=False)
print(json.dumps({"prompt_ids": ids[0].tolist(), "completion_ids": out[0, ids.shape[1]:].tolist()}))
