"""The `letters` example misbehaving as the Rust tests in `tests/it/remote_env.rs` need.

    unruly_letters.py --run RUN --connect EP --mode raise       every step raises ValueError
    unruly_letters.py --run RUN --connect EP --mode hang:N      after N steps, the next step prints
                                                                "hanging" and never answers (the
                                                                test kills the process then)
    unruly_letters.py --run RUN --connect EP --mode count       prints "reset" per episode started
"""

import argparse
import os
import sys
import threading

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "envs", "python"))
sys.path.insert(0, os.path.join(HERE, "..", "..", "envs", "python", "examples"))
import letters  # noqa: E402
import sluice_env  # noqa: E402

p = argparse.ArgumentParser()
p.add_argument("--run", required=True)
p.add_argument("--connect", required=True)
p.add_argument("--mode", required=True)
a = p.parse_args()

steps = 0
lock = threading.Lock()


class Unruly(letters.Letters):
    def reset(self, task):
        if a.mode == "count":
            print("reset", flush=True)
        return super().reset(task)

    def step(self, action):
        global steps
        if a.mode == "raise":
            raise ValueError(f"cannot judge {action!r}")
        if a.mode.startswith("hang:"):
            with lock:
                steps += 1
                hang = steps > int(a.mode.split(":")[1])
            if hang:
                print("hanging", flush=True)
                threading.Event().wait()
        return super().step(action)


print("serving", flush=True)
sluice_env.serve(Unruly, name="letters", run=a.run, connect=a.connect, tasks=letters.tasks(0))
