"""Generates the JSONL task files of the `knights_knaves` and `gsm_symbolic` sources offline with
the PyPI package reasoning-gym (pinned), in sluice's task format:

    {"id": ..., "source": ..., "prompt": ..., "answer": ..., "metadata": {...}}

    python3 -m venv /tmp/rg && /tmp/rg/bin/pip install reasoning-gym==0.1.25
    /tmp/rg/bin/python envs/data/generate.py            # rewrites envs/data/*.jsonl

Answers are checked by sluice's own Rust scorers (envs/src/knights_knaves.rs, the integer scorer
for gsm_symbolic), not by reasoning-gym.
"""

import json
import os

import reasoning_gym

ROWS = 2000
SEED = 42
HERE = os.path.dirname(os.path.abspath(__file__))


def knights_knaves():
    out = []
    per = ROWS // 2
    for n_people in (2, 3):
        ds = reasoning_gym.create_dataset("knights_knaves", size=per, seed=SEED + n_people, n_people=n_people)
        for i, x in enumerate(ds):
            m = x["metadata"]
            names = [str(n) for n in m["names"]]
            terms = m["knight_knave_terms"]
            roles = {name: (terms["knight"] if truthful else terms["knave"]) for name, truthful in zip(names, m["solution"])}
            out.append({
                "id": f"kk{n_people}-{i}",
                "source": "knights_knaves",
                "prompt": x["question"],
                "answer": roles,
                "metadata": {"knight": terms["knight"], "knave": terms["knave"], "n_people": n_people},
            })
    return out


def gsm_symbolic():
    out = []
    ds = reasoning_gym.create_dataset("gsm_symbolic", size=ROWS, seed=SEED)
    for i, x in enumerate(ds):
        value = x["metadata"]["answer_value"]
        if not float(value).is_integer():
            continue
        out.append({
            "id": f"gsm-{i}",
            "source": "gsm_symbolic",
            "prompt": x["question"] + " Put the final answer in \\boxed{}.",
            "answer": int(value),
            "metadata": {"difficulty": x["metadata"].get("difficulty")},
        })
    return out


def write(name, rows):
    path = os.path.join(HERE, f"{name}.jsonl")
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    print(f"{path}: {len(rows)} tasks")


if __name__ == "__main__":
    write("knights_knaves", knights_knaves())
    write("gsm_symbolic", gsm_symbolic())
