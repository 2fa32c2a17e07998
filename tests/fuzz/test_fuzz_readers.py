"""Fuzzing every binary reader with hypothesis: random bytes, truncations, bit flips, and a real
header followed by random bytes, seeded with the real samples of ``../shared/data`` (or files
written by the spec encoders of the event tests where no real sample exists).

Each reader may only raise its documented exceptions (``ValueError`` subclasses naming the
file; ``EventFileError`` for event files); it must not crash the interpreter, hang (a case gets
CASE_TIMEOUT seconds; a watchdog aborts the process if C code never returns) or allocate more
than ``MEMORY_FACTOR`` times the file size plus a constant (a header that claims 2^32 events
must not allocate them). Each test prints ``fuzz <reader>: <n> cases ...`` (see ``-rA``).

``GEOSSM_FUZZ_EXAMPLES`` sets the cases per reader (default 300; AEDAT4, whose seed is a 1 MB
recording, gets a third): about 35 s in all on an idle 2-core CPU, 2-3 minutes on a loaded one.
``GEOSSM_SHARED_DATA`` names the sample folder when it is not ``../shared/data``.
"""

from __future__ import annotations

import collections
import contextlib
import faulthandler
import os
import resource
import signal
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis", reason="hypothesis not installed: no fuzzing")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from tests.shared_data import unpack  # noqa: E402

MAX_EXAMPLES = int(os.environ.get("GEOSSM_FUZZ_EXAMPLES", "300"))
CASE_TIMEOUT = 20.0           # seconds per case (generous: CI's 2 cores are shared)
MEMORY_FACTOR = 512           # bytes allocated per byte of input, at most (+ MEMORY_SLACK)
MEMORY_SLACK = 64 << 20


class CaseTimeout(Exception):
    """A reader ran past CASE_TIMEOUT on one input."""


@contextlib.contextmanager
def time_limit(seconds: float):
    def on_alarm(signum, frame):
        raise CaseTimeout(f"reader still running after {seconds} s")
    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    # SIGALRM is only seen between Python bytecodes: a loop stuck in C or numba code is caught by
    # the watchdog, which dumps every thread's stack and ends the process.
    faulthandler.dump_traceback_later(3 * seconds, exit=True)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        faulthandler.cancel_dump_traceback_later()


def _maxrss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


class Case(tuple):
    """``(kind, bytes)`` with a short repr (hypothesis prints failing cases)."""

    def __repr__(self) -> str:
        kind, blob = self
        return f"Case({kind!r}, {len(blob)} bytes, head={blob[:48]!r})"


def _case(kind: str, blob: bytes) -> Case:
    return Case((kind, blob))


@st.composite
def mutations(draw, seed: bytes):
    """``Case(kind, bytes)``: a mutation of ``seed``."""
    kind = draw(st.sampled_from(["random", "truncate", "bitflip", "header+random", "overwrite"]))
    if kind == "random":
        return _case(kind, draw(st.binary(max_size=2048)))
    if kind == "truncate":
        return _case(kind, seed[:draw(st.integers(0, max(0, len(seed) - 1)))])
    if kind == "header+random":
        cut = draw(st.integers(0, min(len(seed), 512)))
        return _case(kind, seed[:cut] + draw(st.binary(min_size=1, max_size=2048)))
    data = bytearray(seed)
    if kind == "bitflip" and data:
        for bit in draw(st.lists(st.integers(0, 8 * len(data) - 1), min_size=1, max_size=16)):
            data[bit // 8] ^= 1 << (bit % 8)
    elif kind == "overwrite" and data:
        at = draw(st.integers(0, len(data) - 1))
        chunk = draw(st.binary(min_size=1, max_size=64))
        data[at:at + len(chunk)] = chunk
    return _case(kind, bytes(data))


def fuzz(name: str, read, seed: bytes, suffix: str, allowed: tuple[type[BaseException], ...],
         folder: Path, check=None) -> collections.Counter:
    """Run ``read(path)`` on MAX_EXAMPLES mutations of ``seed``; returns outcome counts."""
    counts: collections.Counter = collections.Counter()
    path = folder / f"case{suffix}"
    path.write_bytes(seed)
    result = read(path)  # the seed itself is valid (and warms up any JIT compilation)
    if check is not None:
        check(result)

    @settings(max_examples=MAX_EXAMPLES, deadline=None, database=None, derandomize=False,
              suppress_health_check=list(HealthCheck))
    @given(case=mutations(seed))
    def run(case):
        kind, blob = case
        path.write_bytes(blob)
        rss0 = _maxrss()
        tracemalloc.start()
        try:
            with time_limit(CASE_TIMEOUT):
                try:
                    out = read(path)
                except allowed as err:
                    outcome = type(err).__name__
                    # the message must say which file was bad (the CLI prints only the message)
                    assert path.name in str(err), f"{name}: {outcome} does not name the file: {err}"
                else:
                    outcome = "ok"
                    if check is not None:
                        check(out)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        budget = MEMORY_FACTOR * len(blob) + MEMORY_SLACK
        assert peak <= budget, f"{name}: {peak} bytes allocated for a {len(blob)}-byte {kind} file"
        assert _maxrss() - rss0 <= budget, f"{name}: resident memory grew past {budget} bytes"
        counts["cases"] += 1
        counts[kind] += 1
        counts[outcome] += 1

    run()
    detail = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()) if k != "cases")
    print(f"\nfuzz {name}: {counts['cases']} cases ({detail})")
    assert counts["cases"] >= 1
    return counts


# --------------------------------------------------------------------------------- seeds

@pytest.fixture(scope="module")
def kitti(tmp_path_factory) -> Path:
    return unpack(tmp_path_factory, "kitti", "kitti_object_6frames.tar.xz") / "training"


@pytest.fixture(scope="module")
def event_samples(tmp_path_factory) -> Path:
    return unpack(tmp_path_factory, "events", "event_samples.tar.xz") / "samples"


def _prefix_at_word(blob: bytes, body_start: int, size: int, word: int) -> bytes:
    """The first ``size`` bytes of a header+words file, cut at a word boundary."""
    end = body_start + ((min(size, len(blob)) - body_start) // word) * word
    return blob[:end]


def _percent_header_end(blob: bytes) -> int:
    pos = 0
    while blob.startswith(b"%", pos):
        pos = blob.index(b"\n", pos) + 1
    return pos


# -------------------------------------------------------------------------------- KITTI

def _kitti():
    return pytest.importorskip("geossm.tasks.detection.kitti", reason="detection task absent")


def test_fuzz_kitti_velodyne(kitti, tmp_path):
    k = _kitti()
    seed = (kitti / "velodyne" / "000000.bin").read_bytes()[:16 * 2048]  # 2048 real points

    def check(points):
        assert points.dtype == np.float32 and points.ndim == 2 and points.shape[1] == 4
    fuzz("kitti velodyne", k.read_velodyne, seed, ".bin", (ValueError,), tmp_path, check)


def test_fuzz_kitti_calib(kitti, tmp_path):
    k = _kitti()
    seed = (kitti / "calib" / "000000.txt").read_bytes()
    fuzz("kitti calib", k.read_calib, seed, ".txt", (ValueError,), tmp_path)


def test_fuzz_kitti_label(kitti, tmp_path):
    k = _kitti()
    seed = (kitti / "label_2" / "000001.txt").read_bytes()

    def check(label):
        n = {len(v) for v in label.values()}
        assert len(n) <= 1, f"label fields of different lengths: {n}"
    fuzz("kitti label", k.read_label, seed, ".txt", (ValueError,), tmp_path, check)


# ------------------------------------------------------------------------------- events

def _io():
    return pytest.importorskip("geossm.tasks.events.io", reason="events task absent")


def _event_check(io):
    def check(rec):
        assert rec.events.dtype == io.EVENT_DTYPE and rec.events.ndim == 1
        assert np.all(np.diff(rec.events["t"]) >= 0), "events not sorted by t"
    return check


def _read(io, fmt):
    return lambda path: io.read_events(path, format=fmt)


def test_fuzz_events_nmnist(event_samples, tmp_path):
    io = _io()
    seed = (event_samples / "sample_nmnist.bin").read_bytes()[:5 * 1500]
    fuzz("events nmnist", _read(io, "nmnist"), seed, ".bin", (io.EventFileError,), tmp_path,
         _event_check(io))


def test_fuzz_events_evt2(event_samples, tmp_path):
    io = _io()
    blob = (event_samples / "evt2_sample.raw").read_bytes()
    seed = _prefix_at_word(blob, _percent_header_end(blob), 16384, 4)
    fuzz("events evt2", _read(io, "evt2"), seed, ".raw", (io.EventFileError,), tmp_path,
         _event_check(io))


def test_fuzz_events_aedat4(event_samples, tmp_path):
    io = _io()
    seed = (event_samples / "sample.aedat4").read_bytes()
    try:
        io.read_events(event_samples / "sample.aedat4")
    except ImportError as err:  # LZ4 / Zstd codecs are optional
        pytest.skip(f"AEDAT4 decompression unavailable: {err}")
    # fewer cases: each one decompresses a ~1 MB recording
    global MAX_EXAMPLES
    saved, MAX_EXAMPLES = MAX_EXAMPLES, max(10, MAX_EXAMPLES // 3)
    try:
        fuzz("events aedat4", _read(io, "aedat4"), seed, ".aedat4", (io.EventFileError,),
             tmp_path, _event_check(io))
    finally:
        MAX_EXAMPLES = saved


def _encoded(fmt: str) -> bytes:
    enc = pytest.importorskip("tests.tasks.events.encoders",
                              reason="event spec encoders (tests/tasks/events) absent")
    ev = enc.random_events(1500, seed=3, width=300, height=240, bursts=True)
    return {"evt3": lambda: enc.evt3(ev), "dat": lambda: enc.dat(ev),
            "es": lambda: enc.es_dvs(ev), "aedat3": lambda: enc.aedat3(ev)}[fmt]()


@pytest.mark.parametrize("fmt, suffix", [("evt3", ".raw"), ("dat", ".dat"), ("es", ".es"),
                                         ("aedat3", ".aedat")])
def test_fuzz_events_spec_encoded(fmt, suffix, tmp_path):
    """Formats without a real sample: seeds written by the spec encoders of the event tests."""
    io = _io()
    fuzz(f"events {fmt}", _read(io, fmt), _encoded(fmt), suffix, (io.EventFileError,),
         tmp_path, _event_check(io))


# ------------------------------------------------------------------ predict inputs

def _predict_seed_points(kitti: Path) -> np.ndarray:
    return np.fromfile(kitti / "velodyne" / "000002.bin", np.float32).reshape(-1, 4)[:1000, :3]


def _load_input(path):
    from geossm.engine.task import Task
    return Task(cfg=None).load_input(path)


def _predict_check(sample):
    assert isinstance(sample, dict) and all(isinstance(v, np.ndarray) for v in sample.values())


def test_fuzz_predict_npy(kitti, tmp_path):
    seed_path = tmp_path / "seed.npy"
    np.save(seed_path, _predict_seed_points(kitti))
    fuzz("predict npy", _load_input, seed_path.read_bytes(), ".npy", (ValueError,), tmp_path,
         _predict_check)


def test_fuzz_predict_npz(kitti, tmp_path):
    seed_path = tmp_path / "seed.npz"
    pts = _predict_seed_points(kitti)
    np.savez(seed_path, coord=pts, label=(pts[:, 0] > 0).astype(np.int64))
    fuzz("predict npz", _load_input, seed_path.read_bytes(), ".npz", (ValueError,), tmp_path,
         _predict_check)


def test_fuzz_predict_ply(kitti, tmp_path):
    from geossm.viz import write_labeled_ply
    pts = _predict_seed_points(kitti)
    seed_path = write_labeled_ply(tmp_path / "seed.ply", pts, pred=(pts[:, 0] > 0).astype(int))
    fuzz("predict ply", _load_input, Path(seed_path).read_bytes(), ".ply", (ValueError,),
         tmp_path, _predict_check)


@pytest.mark.parametrize("header", [b"ply\nformat\nend_header\n",
                                    b"ply\nproperty float x\nend_header\n",
                                    b"ply\nformat binary_little_endian 1.0\nelement vertex x\n"
                                    b"end_header\n"])
def test_read_ply_malformed_header(tmp_path, header):
    """Header holes the fuzzer found: each is one ValueError naming the file."""
    path = tmp_path / "bad.ply"
    path.write_bytes(header)
    with pytest.raises(ValueError) as info:
        _load_input(path)
    assert path.name in str(info.value)


@pytest.mark.parametrize("version", [2, 3])
def test_npy_header_length_beyond_the_file_is_not_read(tmp_path, version):
    """Found by the fuzzer: a flipped version byte (1.0 -> 3.0) makes numpy read the 2-byte
    header length and two header bytes as a 4-byte length of ~660 MB, which it read before
    checking. The length is now checked against the file size first."""
    path = tmp_path / "flipped.npy"
    np.save(path, np.zeros((1000, 3), np.float32))
    blob = bytearray(path.read_bytes())
    blob[6] = version
    path.write_bytes(bytes(blob))
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match=r"flipped.npy: not a readable .npy file \(the header "
                                             r"declares \d+ bytes, the file has 12128\)"):
            _load_input(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1_000_000
