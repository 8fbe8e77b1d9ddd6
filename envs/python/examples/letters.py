"""A two-try letter game served to sluice over zenoh (the Rust test `tests/remote_env.rs` trains
against it).

Task: "say X:" for a letter X. The model's first turn earns 1 if it contains X; otherwise it is
told `<no>` and may try once more for 0.5.

    python3 envs/python/examples/letters.py --run RUN --connect tcp/127.0.0.1:7447
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import sluice_env  # noqa: E402

LETTERS = "abcde"


class Letters(sluice_env.Env):
    def reset(self, task):
        self.target = task["answer"]
        self.tries = 0
        return ""

    def step(self, action):
        self.tries += 1
        hit = self.target in action
        if hit:
            return sluice_env.done(reward=1.0 if self.tries == 1 else 0.5, parts={"correct": 1.0})
        if self.tries == 1:
            return sluice_env.observe("<no>")
        return sluice_env.done(reward=0.0, parts={"correct": 0.0})


def tasks(seed):
    i = 0
    while True:
        letter = LETTERS[(i * 7 + seed) % len(LETTERS)]
        yield sluice_env.task(f"letters-{i}", "letters", f"say {letter}:", answer=letter)
        i += 1


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True)
    p.add_argument("--name", default="letters")
    p.add_argument("--connect")
    p.add_argument("--listen")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    print("serving", a.name, flush=True)
    sluice_env.serve(Letters, name=a.name, run=a.run, connect=a.connect, listen=a.listen, tasks=tasks(a.seed))
