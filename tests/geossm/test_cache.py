"""Caches shared by processes: 8 processes on a fresh cache build it once and read the same
bytes; a builder killed mid-write (SIGKILL) leaves no final file and the next run rebuilds."""

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from geossm import cache
from geossm.cache import (COMPLETE_MARKER, atomic_path, atomic_write, build_once, file_lock,
                          files_digest, is_whole_npz)

# One worker process: waits for the start signal, then asks for the cache. Its builder writes
# the cache in PIECES pieces, slowly, and logs one line per build into builds.log (O_APPEND:
# lines of concurrent builders would not overwrite each other). It prints the sha256 of what it
# then reads. argv: cache path, kind (file|dir), work folder, piece delay in s, worker id.
WORKER = r"""
import hashlib, os, sys, time
from pathlib import Path
from geossm.cache import build_once

path, kind, work = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
delay, wid = float(sys.argv[4]), sys.argv[5]
PIECES = 8

def write_pieces(f):
    for i in range(PIECES):
        f.write(bytes([i]) * 4096)
        f.flush()
        if i == 0:
            (work / f"half.{wid}").touch()  # the test may kill us now
        time.sleep(delay)

def build(tmp):
    with open(work / "builds.log", "a") as log:
        log.write(f"{wid}\n")
    if kind == "dir":
        (tmp / "sub").mkdir()
        (tmp / "meta.txt").write_text("v1")
        with open(tmp / "sub" / "data.bin", "wb") as f:
            write_pieces(f)
    else:
        with open(tmp, "wb") as f:
            write_pieces(f)

(work / f"ready.{wid}").touch()
while not (work / "go").exists():
    time.sleep(0.005)
build_once(path, build, directory=kind == "dir", timeout=60)
data = (path / "sub" / "data.bin").read_bytes() if kind == "dir" else path.read_bytes()
print(hashlib.sha256(data).hexdigest(), len(data))
"""

EXPECTED = b"".join(bytes([i]) * 4096 for i in range(8))


def start_worker(path, kind, work, delay, wid):
    return subprocess.Popen([sys.executable, "-c", WORKER, str(path), kind, str(work), str(delay),
                             str(wid)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def wait_for(predicate, timeout=60.0):
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError("timed out waiting")
        time.sleep(0.01)


@pytest.mark.parametrize("kind", ["file", "dir"])
def test_eight_processes_on_a_fresh_cache_build_once_and_read_the_same_data(tmp_path, kind):
    work = tmp_path / "work"
    work.mkdir()
    path = tmp_path / "cache" / ("data.bin" if kind == "file" else "processed")
    procs = [start_worker(path, kind, work, 0.02, i) for i in range(8)]
    try:
        # Start them together: every process is up and waiting before any asks for the cache.
        wait_for(lambda: len(list(work.glob("ready.*"))) == 8)
        (work / "go").touch()
        results = [p.communicate(timeout=120) for p in procs]
    finally:
        for p in procs:
            p.kill()
    for p, (out, err) in zip(procs, results):
        assert p.returncode == 0, err
    lines = {out.strip() for out, _ in results}
    assert lines == {f"{hashlib.sha256(EXPECTED).hexdigest()} {len(EXPECTED)}"}
    assert len((work / "builds.log").read_text().splitlines()) == 1  # built by one process
    if kind == "dir":
        assert (path / COMPLETE_MARKER).is_file() and (path / "meta.txt").read_text() == "v1"
    # Only the cache and its lock file are left beside it: no temporaries.
    left = sorted(p.name for p in path.parent.iterdir())
    assert left == sorted([path.name, f".{path.name}.lock"])


@pytest.mark.parametrize("kind", ["file", "dir"])
def test_builder_killed_mid_write_leaves_no_final_file_and_the_next_run_rebuilds(tmp_path, kind):
    work = tmp_path / "work"
    work.mkdir()
    (work / "go").touch()
    path = tmp_path / "cache" / ("data.bin" if kind == "file" else "processed")
    proc = start_worker(path, kind, work, 30.0, 0)  # one piece, then a long pause
    try:
        wait_for(lambda: (work / "half.0").exists() or proc.poll() is not None)
        assert proc.poll() is None, proc.communicate()[1]
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == -signal.SIGKILL
    assert not path.exists()  # no torn final file
    leftovers = [p for p in path.parent.iterdir() if ".tmp" in p.name]
    assert leftovers  # the dead builder's temporary, half written

    def rebuild(tmp):
        target = tmp / "sub" / "data.bin" if kind == "dir" else tmp
        target.parent.mkdir(exist_ok=True)
        target.write_bytes(EXPECTED)

    # The dead builder's lock does not block (the kernel released its flock): a short timeout.
    assert build_once(path, rebuild, directory=kind == "dir", timeout=10) == path
    data = (path / "sub" / "data.bin").read_bytes() if kind == "dir" else path.read_bytes()
    assert data == EXPECTED
    assert not [p for p in path.parent.iterdir() if ".tmp" in p.name]  # leftovers removed


def test_build_once_returns_a_built_cache_without_building(tmp_path):
    path = tmp_path / "x.npz"
    calls = []
    build_once(path, lambda tmp: (calls.append(tmp), tmp.write_bytes(b"1")))
    build_once(path, lambda tmp: calls.append(tmp))
    assert len(calls) == 1 and path.read_bytes() == b"1"
    assert calls[0].parent == tmp_path and calls[0].name.endswith(".tmp.npz")  # suffix kept


def test_a_failing_builder_leaves_nothing_and_the_error_propagates(tmp_path):
    path = tmp_path / "y.bin"

    def fail(tmp):
        tmp.write_bytes(b"half")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        build_once(path, fail)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".y.bin.lock"]
    with pytest.raises(FileNotFoundError, match=r"atomic_path: nothing was written to .*y\.bin"):
        build_once(path, lambda tmp: None)


def test_a_folder_without_its_marker_is_rebuilt(tmp_path):
    # A processed/ folder an older version wrote in place (maybe half): no marker, so rebuilt.
    path = tmp_path / "processed"
    path.mkdir()
    (path / "stale.pt").write_bytes(b"torn")
    build_once(path, lambda tmp: (tmp / "data.pt").write_bytes(b"whole"), directory=True)
    assert sorted(p.name for p in path.iterdir()) == [COMPLETE_MARKER, "data.pt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".processed.lock", "processed"]


def test_a_file_that_valid_refuses_is_rebuilt_once(tmp_path):
    # An .npz an older version wrote in place and a kill tore: its directory (written last) is
    # missing, so is_whole_npz refuses it and build_once replaces it, once.
    path = tmp_path / "room.npz"
    np.savez(path, coord=np.arange(1000))
    path.write_bytes(path.read_bytes()[:500])
    assert not is_whole_npz(path)
    calls = []

    def build(tmp):
        calls.append(tmp)
        np.savez(tmp, coord=np.arange(3))

    for _ in range(2):
        build_once(path, build, valid=lambda p: is_whole_npz(p, ["coord"]))
    assert len(calls) == 1 and np.load(path)["coord"].tolist() == [0, 1, 2]
    assert is_whole_npz(path) and not is_whole_npz(path, ["coord", "label"])
    assert not is_whole_npz(tmp_path / "missing.npz")


def test_atomic_write_replaces_whole_or_not_at_all(tmp_path):
    path = tmp_path / "a.txt"
    with atomic_write(path, "w") as f:
        f.write("first")
    with pytest.raises(KeyError):
        with atomic_write(path, "w") as f:
            f.write("second, half")
            raise KeyError("interrupted")
    assert path.read_text() == "first" and os.listdir(tmp_path) == ["a.txt"]
    with pytest.raises(ValueError, match="mode: expected 'w' or 'wb', got 'a'"):
        with atomic_write(path, "a"):
            pass


def test_atomic_path_files_get_the_umask_permissions_not_0600(tmp_path):
    old = os.umask(0o022)
    try:
        with atomic_path(tmp_path / "shared.bin") as tmp:
            tmp.write_bytes(b"x")
    finally:
        os.umask(old)
    assert (tmp_path / "shared.bin").stat().st_mode & 0o777 == 0o644


def test_file_lock_timeout_names_the_lock_file(tmp_path):
    path = tmp_path / "c.bin"
    with file_lock(path):
        # A second process holds no flock here, but a second FileLock object of this process
        # conflicts with the first one just like another process would (flock is per open file).
        with pytest.raises(TimeoutError, match=r"cache .*c\.bin: another process has held "
                                               r".*\.c\.bin\.lock for more than 0\.1 s"):
            with file_lock(path, timeout=0.1):
                pass


def test_files_digest_follows_contents_names_and_missing_files_not_mtimes(tmp_path):
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("1, 2\n")
    first = files_digest([a, b])  # b missing
    os.utime(a, ns=(10**9, 10**9))  # a copy on another machine: same bytes, another mtime
    assert files_digest([a, b]) == first
    b.write_text("")
    assert files_digest([a, b]) != first  # a file added later (even empty)
    b.unlink()
    a.write_text("1, 3\n")  # replaced in place, same size
    assert files_digest([a, b]) != first
    assert files_digest([a]) != files_digest([tmp_path / "c.txt"])  # another name
    # names, sizes and mtimes only: an edit that keeps the size shows through its mtime
    stat = files_digest([a], content=False)
    os.utime(a, ns=(2 * 10**9, 2 * 10**9))
    assert files_digest([a], content=False) != stat
    assert files_digest([b], content=False) == files_digest([b], content=False)
    assert len(first) == 40 and int(first, 16) >= 0


def test_cache_root_follows_geossm_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GEOSSM_CACHE", str(tmp_path))
    assert cache.cache_root() == tmp_path
    monkeypatch.setenv("GEOSSM_CACHE", "")
    assert cache.cache_root() == Path.home() / ".cache" / "geossm"


def test_main_process_first_orders_rank_zero_before_the_others(monkeypatch):
    from geossm.engine import distributed
    events = []
    monkeypatch.setattr(distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(distributed, "barrier", lambda: events.append("barrier"))
    for rank in (0, 1):
        monkeypatch.setattr(distributed, "get_rank", lambda rank=rank: rank)
        with cache.main_process_first():
            events.append(f"body{rank}")
    # Rank 0 builds, then joins the barrier; rank 1 waits at the barrier, then reads.
    assert events == ["body0", "barrier", "barrier", "body1"]
