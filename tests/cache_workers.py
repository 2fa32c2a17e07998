"""Processes that share a cache, for the tests of every cached dataset: ``run_together`` starts
N processes on a fresh cache at the same moment, ``kill_mid_write`` SIGKILLs a builder while it
is writing its cache file.

One launcher program runs on this interpreter: ``PRELUDE``, then the test's ``setup`` code
(imports, patches), then it forks the workers, each of which waits for the others and runs the
test's ``body``. Forking after the imports keeps the test fast on a small machine (importing
torch and PyG in 8 fresh interpreters takes half a minute of CPU there); each worker is still a
process of its own that opens and locks the cache itself. The prelude gives the code

- ``WORK`` (the test's folder), ``WORKER`` (the worker's id, a str) and ``STALL`` (True for the
  builder of ``kill_mid_write``);
- ``count_builds(owner, name)``: wraps the function ``owner.name`` (the step that builds the
  cache) so that every call appends a line to ``WORK/builds.log`` (``O_APPEND``: lines of
  concurrent builders do not overwrite each other);
- ``stall_writes(owner, name, save=None, target_arg=0)``: replaces the writer ``owner.name`` by
  one that writes the first half of the bytes ``save`` (default the writer itself) would write
  to its target (a path or an open file, argument ``target_arg``), flushes them, touches
  ``WORK/writing.<id>`` and sleeps: the test kills it there, mid-write;
- ``digest(*arrays)``: a sha256 of NumPy arrays or tensors (dtype, shape and bytes).

``body`` prints the digest of what the worker read as its last line.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

PRELUDE = r'''
import hashlib, inspect, io, json, os, sys, time, traceback
from pathlib import Path

WORK, WORKER = Path(os.environ["CACHE_TEST_WORK"]), "launcher"
STALL = os.environ.get("CACHE_TEST_STALL") == "1"


def _replace(owner, name, function):
    # a static or class method: ``function`` wraps the bound original, so it takes no self
    if isinstance(inspect.getattr_static(owner, name), (staticmethod, classmethod)):
        function = staticmethod(function)
    setattr(owner, name, function)


def count_builds(owner, name):
    real = getattr(owner, name)

    def counted(*args, **kwargs):
        with open(WORK / "builds.log", "a") as log:
            log.write(f"{WORKER}\n")
        return real(*args, **kwargs)

    _replace(owner, name, counted)


def stall_writes(owner, name, save=None, target_arg=0):
    save = save or getattr(owner, name)

    def torn(*args, **kwargs):
        args = list(args)
        target, args[target_arg] = args[target_arg], io.BytesIO()
        save(*args, **kwargs)
        data = args[target_arg].getvalue()
        out = target if hasattr(target, "write") else open(target, "wb")
        out.write(data[: len(data) // 2])
        out.flush()
        (WORK / f"writing.{WORKER}").touch()
        time.sleep(600)

    _replace(owner, name, torn)


def digest(*arrays):
    h = hashlib.sha256()
    for a in arrays:
        a = a.numpy() if hasattr(a, "numpy") else a
        h.update(f"{a.dtype}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()
'''

LAUNCHER = r'''
BODY = os.environ["CACHE_TEST_BODY"]
children = {}
for i in range(int(os.environ["CACHE_TEST_N"])):
    pid = os.fork()
    if pid == 0:
        WORKER, status = str(i), 1
        try:
            (WORK / f"pid.{i}").write_text(str(os.getpid()))
            (WORK / f"ready.{i}").touch()
            while not (WORK / "go").exists():
                time.sleep(0.005)
            with open(WORK / f"out.{i}", "w") as sys.stdout:
                exec(BODY, globals())
            status = 0
        except BaseException:
            (WORK / f"err.{i}").write_text(traceback.format_exc())
        finally:
            os._exit(status)
    children[pid] = i
statuses = {}
for pid, i in children.items():
    _, status = os.waitpid(pid, 0)
    statuses[i] = os.waitstatus_to_exitcode(status)
print(json.dumps(statuses))
'''


def _launch(setup: str, body: str, work: Path, n: int, env: dict[str, str] | None,
            stall: bool = False) -> subprocess.Popen:
    work.mkdir(parents=True, exist_ok=True)
    full_env = {**os.environ, **(env or {}), "CACHE_TEST_WORK": str(work),
                "CACHE_TEST_N": str(n), "CACHE_TEST_BODY": body,
                "CACHE_TEST_STALL": "1" if stall else "0", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-c", PRELUDE + setup + LAUNCHER], env=full_env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(predicate, timeout: float = 120.0) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError("timed out waiting for the workers")
        time.sleep(0.01)


def _statuses(proc: subprocess.Popen, timeout: float) -> dict[int, int]:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, f"launcher exited with {proc.returncode}:\n{err[-3000:]}"
    return {int(k): v for k, v in json.loads(out.strip().splitlines()[-1]).items()}


def run_together(setup: str, body: str, work: Path, n: int = 8,
                 env: dict[str, str] | None = None, timeout: float = 180.0) -> list[str]:
    """Fork ``n`` workers after ``setup``, let them run ``body`` at once when all are up, and
    return the last line each printed (in worker order). Fails naming a worker that did not
    exit 0, with its traceback."""
    proc = _launch(setup, body, work, n, env)
    try:
        _wait_for(lambda: len(list(work.glob("ready.*"))) == n or proc.poll() is not None)
        (work / "go").touch()
        statuses = _statuses(proc, timeout)
    finally:
        proc.kill()
    for i in range(n):
        err = work / f"err.{i}"
        assert statuses[i] == 0, \
            f"worker {i} exited with {statuses[i]}:\n{err.read_text() if err.exists() else ''}"
    return [(work / f"out.{i}").read_text().strip().splitlines()[-1] for i in range(n)]


def builds(work: Path) -> int:
    """How many times the workers ran the counted build step."""
    log = work / "builds.log"
    return len(log.read_text().splitlines()) if log.exists() else 0


def kill_mid_write(setup: str, body: str, work: Path, env: dict[str, str] | None = None) -> None:
    """Run ``body`` in one worker with ``STALL`` set and SIGKILL it once it is writing."""
    (work / "go").parent.mkdir(parents=True, exist_ok=True)
    (work / "go").touch()
    proc = _launch(setup, body, work, 1, env, stall=True)
    try:
        _wait_for(lambda: (work / "writing.0").exists() or proc.poll() is not None)
        assert proc.poll() is None, f"the builder ended before writing:\n{proc.communicate()[1]}"
        os.kill(int((work / "pid.0").read_text()), signal.SIGKILL)
        statuses = _statuses(proc, 60)
    finally:
        proc.kill()
    assert statuses[0] == -signal.SIGKILL
