"""The Python SDK's episode ids are unguessable and abandoned episodes expire (real zenoh).

Usage: episode_ids.py ENDPOINT; prints "ok" on success, raises otherwise.
"""

import json
import sys
import time

import zenoh

sys.path.insert(0, __file__.rsplit("/tests/", 1)[0] + "/envs/python")
import sluice_env  # noqa: E402


class Echo(sluice_env.Env):
    def reset(self, task):
        return ""

    def step(self, action):
        return sluice_env.observe("again")


def call(session, op, body):
    replies = list(session.get(f"sluice/t/env/echo/{op}", payload=json.dumps(body).encode(), timeout=5.0))
    assert len(replies) == 1, f"{op}: {len(replies)} replies"
    r = replies[0]
    if r.ok is not None:
        return True, json.loads(r.ok.payload.to_bytes())
    return False, json.loads(r.err.payload.to_bytes())


def main(endpoint):
    server_session = zenoh.open(sluice_env.zenoh_config(listen=endpoint))
    server = sluice_env.Server(Echo, "echo", "t", server_session, episode_ttl=0.3)
    client = zenoh.open(sluice_env.zenoh_config(connect=endpoint))
    time.sleep(0.5)
    task = {"id": "task-7", "source": "t", "prompt": "p", "answer": 1, "metadata": {}}
    replies = [call(client, "reset", {"task": task})[1] for _ in range(2)]
    assert all(r["server"] == str(server_session.info.zid()) for r in replies), replies
    ids = [r["episode"] for r in replies]
    for i in ids:
        assert len(i) == 32 and all(c in "0123456789abcdef" for c in i), i
        assert "task-7" not in i, i
    assert ids[0] != ids[1]
    ok, reply = call(client, "step", {"episode": "task-7-0", "action": "x"})
    assert not ok and "unknown episode" in reply["error"], reply
    # Episode 1 is used, episode 0 abandoned; past the ttl the next reset closes episode 0.
    time.sleep(0.2)
    assert call(client, "step", {"episode": ids[1], "action": "x"})[0]
    time.sleep(0.2)
    call(client, "reset", {"task": task})
    ok, reply = call(client, "step", {"episode": ids[0], "action": "x"})
    assert not ok and "unknown episode" in reply["error"], f"the abandoned episode expired: {reply}"
    assert call(client, "step", {"episode": ids[1], "action": "x"})[0]
    server.close()
    client.close()
    server_session.close()
    print("ok")


if __name__ == "__main__":
    main(sys.argv[1])
