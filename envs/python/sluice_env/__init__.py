"""Serve a Python environment to sluice rollout workers over zenoh.

An environment is a class with one instance per episode::

    import sluice_env

    class Guess(sluice_env.Env):
        def reset(self, task):            # task: dict with id, source, prompt, answer, metadata
            self.answer = task["answer"]
            return ""                     # an observation appended to the prompt ("" for none)

        def step(self, action):           # action: the model's text of this turn
            if str(self.answer) in action:
                return sluice_env.done(reward=1.0, parts={"correct": 1.0})
            return sluice_env.observe("<result>try again</result>")

    def tasks():                          # optional: the environment's own tasks
        for i in range(1000):
            yield sluice_env.task(f"g{i}", "guess", f"Say {i}.", answer=i)

    sluice_env.serve(Guess, name="guess", run="my-run", connect="tcp/127.0.0.1:7447", tasks=tasks())

The wire protocol (JSON over zenoh queryables under ``sluice/{run}/env/{name}/{task,reset,step,close}``)
is documented in ``envs/src/remote.rs``; this module is the whole Python side of it.
"""

import json
import secrets
import sys
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor

import zenoh

__all__ = ["Env", "serve", "Server", "task", "observe", "done", "zenoh_config"]


class Env:
    """Base class of an environment; sluice creates one instance per episode."""

    def reset(self, task):
        """Starts the episode for ``task`` (a dict); returns an observation ("" for none)."""
        return ""

    def step(self, action):
        """Takes the model's text for this turn; returns ``observe(...)`` or ``done(...)``."""
        raise NotImplementedError

    def close(self):
        """Called once when the episode ends or is abandoned."""


def task(id, source, prompt, answer=None, metadata=None):
    """A task dict; ``prompt`` is a string or a list of ``{"role", "content"}`` messages."""
    return {"id": str(id), "source": source, "prompt": prompt, "answer": answer, "metadata": metadata}


def _reward(reward, parts):
    if reward is None:
        return None
    total = float(reward)
    if total != total or total in (float("inf"), float("-inf")):
        raise ValueError(f"reward {reward!r} is not finite")
    return {"total": total, "parts": {k: float(v) for k, v in (parts or {}).items()}}


def observe(observation, reward=None, parts=None, info=None):
    """The episode goes on; ``observation`` is shown to the model (tokenized once, not trained on)."""
    return {"observation": observation, "reward": _reward(reward, parts), "done": False, "info": info}


def done(reward=0.0, parts=None, info=None):
    """The episode ends with ``reward`` (and named ``parts``)."""
    return {"observation": None, "reward": _reward(reward, parts), "done": True, "info": info}


def zenoh_config(connect=None, listen=None, config_file=None):
    """A peer configuration with multicast scouting off and explicit endpoints, as sluice uses."""
    conf = zenoh.Config.from_file(config_file) if config_file else zenoh.Config()
    conf.insert_json5("mode", '"peer"')
    conf.insert_json5("scouting/multicast/enabled", "false")
    if connect:
        conf.insert_json5("connect/endpoints", json.dumps([connect] if isinstance(connect, str) else list(connect)))
    if listen:
        conf.insert_json5("listen/endpoints", json.dumps([listen] if isinstance(listen, str) else list(listen)))
    return conf


class Server:
    """Serves an environment class until ``close()``; ``wait()`` blocks until then."""

    def __init__(self, env_cls, name, run, session, tasks=None, workers=16, episode_ttl=600.0):
        self._env_cls = env_cls
        self._tasks = iter(tasks) if tasks is not None else None
        self._tasks_lock = threading.Lock()
        # Open episodes: id -> [env, last use]. Ids are 128 random bits (a peer cannot guess
        # another's); an episode untouched for ``episode_ttl`` seconds (its worker died) is closed
        # when the next one starts.
        self._episodes = {}
        self._lock = threading.Lock()
        self._episode_ttl = episode_ttl
        self._pool = ThreadPoolExecutor(max_workers=workers)
        self._closed = threading.Event()
        # Failures by kind (operation, exception type): the first of a kind is printed with its
        # traceback, the rest are counted (and said at 10, 100, 1000, ...), so an env that fails
        # every episode does not flood its log.
        self._failures = {}
        self._session = session
        self._queryables = []
        # Every operation under the shared key and under this server's own, where the episodes it
        # resets are stepped and closed: with two servers under one name, an episode stays with
        # the one that reset it. Complete queryables: a query on the shared key goes to one server
        # (zenoh's best-matching target), so a reset starts one episode and a task is drawn once.
        self._server = str(session.info.zid())
        for op in ("task", "reset", "step", "close"):
            for key in (f"sluice/{run}/env/{name}/{op}", f"sluice/{run}/env/{name}/server/{self._server}/{op}"):
                self._queryables.append(session.declare_queryable(key, self._callback(op), complete=True))

    def _callback(self, op):
        def on_query(query):
            # Replies come from the pool, so a slow step never holds zenoh's threads.
            self._pool.submit(self._answer, op, query)

        return on_query

    def _answer(self, op, query):
        try:
            body = query.payload.to_bytes() if query.payload is not None else b"{}"
            request = json.loads(body or b"{}")
            reply = getattr(self, "_" + op)(request)
            query.reply(query.key_expr, json.dumps(reply).encode())
        except Exception as e:  # every failure goes back to the worker as an env error
            message = f"{type(e).__name__}: {e}"
            self._log_failure(op, e, message)
            query.reply_err(json.dumps({"error": message}).encode())
        finally:
            query.drop()

    def _log_failure(self, op, error, message):
        kind = f"{op} {type(error).__name__}"
        with self._lock:
            n = self._failures.get(kind, 0) + 1
            self._failures[kind] = n
        if n == 1:
            traceback.print_exc()
            print(f"sluice_env: {kind}: the first of its kind; more are counted, not printed", file=sys.stderr)
        elif str(n).strip("0") == "1":
            print(f"sluice_env: {kind}: {n} so far (latest: {message})", file=sys.stderr)

    def failures(self):
        """Failures so far by kind, ``"{operation} {exception type}"`` -> count."""
        with self._lock:
            return dict(self._failures)

    def _task(self, request):
        if request.get("peek"):
            return {"task": None}
        if self._tasks is None:
            raise RuntimeError("this environment serves no tasks")
        with self._tasks_lock:
            return {"task": next(self._tasks, None)}

    def _expire(self):
        now = time.monotonic()
        with self._lock:
            old = [e for e, (_, used) in self._episodes.items() if now - used >= self._episode_ttl]
            envs = [self._episodes.pop(e)[0] for e in old]
        for env in envs:
            env.close()

    def _reset(self, request):
        self._expire()
        env = self._env_cls()
        observation = env.reset(request["task"]) or ""
        episode = secrets.token_hex(16)
        with self._lock:
            self._episodes[episode] = [env, time.monotonic()]
        return {"episode": episode, "observation": str(observation), "server": self._server}

    def _step(self, request):
        episode = request["episode"]
        with self._lock:
            entry = self._episodes.get(episode)
            if entry is not None:
                entry[1] = time.monotonic()
        if entry is None:
            raise KeyError(f"unknown episode {episode!r}")
        env = entry[0]
        result = env.step(request["action"])
        if not isinstance(result, dict) or "done" not in result:
            raise TypeError(f"step must return observe(...) or done(...), not {result!r}")
        if result["done"]:
            self._close({"episode": episode})
        return result

    def _close(self, request):
        with self._lock:
            entry = self._episodes.pop(request["episode"], None)
        if entry is not None:
            entry[0].close()
        return {}

    def wait(self):
        self._closed.wait()

    def close(self):
        for kind, n in sorted(self.failures().items()):
            print(f"sluice_env: {kind}: {n} in all", file=sys.stderr)
        for q in self._queryables:
            q.undeclare()
        self._pool.shutdown(wait=False)
        self._closed.set()


def serve(
    env_cls, name, run, connect=None, listen=None, tasks=None, config_file=None, workers=16, block=True,
    episode_ttl=600.0,
):
    """Serves ``env_cls`` as environment ``name`` of ``run``; blocks unless ``block=False``.

    An episode untouched for ``episode_ttl`` seconds is closed when the next one starts."""
    session = zenoh.open(zenoh_config(connect, listen, config_file))
    server = Server(env_cls, name, run, session, tasks=tasks, workers=workers, episode_ttl=episode_ttl)
    if block:
        try:
            server.wait()
        except KeyboardInterrupt:
            pass
        finally:
            server.close()
            session.close()
    return server
