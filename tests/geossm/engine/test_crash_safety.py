"""Crash safety: a training process killed with SIGKILL at random moments never loses a finished
epoch, and ``resume=true`` finishes with the same weights and metrics as an uninterrupted run.

Runs are children of a ``forkserver`` that has imported geossm and the toy task once, so each
trial starts in milliseconds instead of paying the import again; every child is a real separate
process killed with SIGKILL (no cleanup handler runs).
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import random
import signal
import sys
import time
from pathlib import Path

import pytest
import torch

from geossm.cli import main
from geossm.engine import load_checkpoint
from toy_task import write_toy_config

TRIALS = 6               # independent kill/resume chains
KILLS_PER_TRIAL = 2      # SIGKILLs tried per chain before the final resume
SEED = int(os.environ.get("GEOSSM_CRASH_SEED", "0"))  # kill times are reproducible
EPOCHS = 6
TIMING = ("time_s", "samples_per_s", "data_wait_s")


@pytest.fixture(scope="module")
def ctx():
    if not hasattr(os, "fork"):
        pytest.skip("needs os.fork (forkserver) and SIGKILL: POSIX only")
    context = mp.get_context("forkserver")
    # what every run imports, loaded once in the server (torch._dynamo: optimizers and
    # use_deterministic_algorithms import it lazily, seconds on a loaded machine)
    context.set_forkserver_preload(["geossm.cli", "geossm.engine", "toy_task", "torch._dynamo",
                                    "torch.utils.tensorboard", "geossm.config"])
    return context


def toy_config(tmp_path: Path) -> Path:
    # 12 steps per epoch, validation every epoch: kills land in steps, evaluations and saves.
    return write_toy_config(tmp_path / "toy.yaml", deterministic=True,
                            data={"num_samples": 48, "min_points": 40, "max_points": 120},
                            train={"epochs": EPOCHS, "batch_size": 4, "num_workers": 0})


def _train(argv: list[str], until_epoch: int | None = None) -> None:
    """Child process body: the CLI, with its return code as the exit status; or, with
    ``until_epoch``, a run that stops cleanly after that epoch's checkpoint."""
    # One thread: intra-op worker threads of many processes on a shared 2-core machine spin
    # against each other (10x slower); every run of the comparison uses the same setting.
    torch.set_num_threads(1)
    if until_epoch is None:
        sys.exit(main(argv))
    from geossm.config import load_config
    from geossm.engine import Trainer
    cfg = load_config(argv[1], [a for a in argv[2:]])
    Trainer(cfg).fit(until_epoch=until_epoch)


def start(ctx, cfg: Path, run: Path, resume: bool, until_epoch: int | None = None):
    argv = ["train", str(cfg), f"output_dir={run}"] + (["resume=true"] if resume else [])
    proc = ctx.Process(target=_train, args=(argv, until_epoch), daemon=True)
    proc.start()
    return proc


def rows(run: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING}
            for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]


def checkpoint_epoch(run: Path) -> int:
    """Epoch of ``last.pt`` (0 if none yet); it must load whenever it exists."""
    path = run / "last.pt"
    if not path.exists():
        return 0
    ckpt = load_checkpoint(path)  # raises CheckpointError on a torn file
    assert set(ckpt) >= {"model", "optimizer", "scheduler", "epoch", "rng"}
    return int(ckpt["epoch"])


def assert_same_run(a: Path, b: Path) -> None:
    ca, cb = load_checkpoint(a / "last.pt"), load_checkpoint(b / "last.pt")
    assert ca["epoch"] == cb["epoch"] == EPOCHS
    assert ca["model"].keys() == cb["model"].keys()
    for key in ca["model"]:
        torch.testing.assert_close(ca["model"][key], cb["model"][key], rtol=0, atol=0, msg=key)
    for k, st in ca["optimizer"]["state"].items():
        for name in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(st[name], cb["optimizer"]["state"][k][name], rtol=0,
                                       atol=0)
    assert ca["best"] == cb["best"] and ca["last_metrics"] == cb["last_metrics"]
    assert rows(a) == rows(b)


@pytest.fixture(scope="module")
def reference(ctx, tmp_path_factory):
    """An uninterrupted run and its wall time (the forkserver is warmed up first, so the time
    is training, not imports)."""
    warm = ctx.Process(target=time.sleep, args=(0,))
    warm.start()
    warm.join(timeout=180)
    tmp = tmp_path_factory.mktemp("reference")
    cfg = toy_config(tmp)
    t0 = time.monotonic()
    proc = start(ctx, cfg, tmp / "run", resume=False)
    proc.join(timeout=180)
    assert proc.exitcode == 0, f"reference run failed (exit code {proc.exitcode})"
    return tmp / "run", time.monotonic() - t0


def test_sigkill_at_random_moments_then_resume_matches_uninterrupted(ctx, reference, tmp_path):
    """TRIALS independent runs; each is SIGKILLed after a delay uniform over the uninterrupted
    run's wall time (start-up, steps, validation and checkpoint writes are all hit), its resume
    is killed the same way KILLS_PER_TRIAL - 1 more times, then it resumes to the end and must
    equal the uninterrupted run bit for bit."""
    ref_run, duration = reference
    cfg = toy_config(tmp_path)
    rng = random.Random(SEED)
    kills, finished_early, epochs = [], 0, []
    for trial in range(TRIALS):
        run = tmp_path / f"trial{trial}"
        seen = [0]
        for _ in range(KILLS_PER_TRIAL):
            proc = start(ctx, cfg, run, resume=(run / "last.pt").exists())
            delay = rng.uniform(0.0, duration)
            proc.join(timeout=delay)
            if proc.is_alive():
                # Process.kill sends SIGKILL and, unlike os.kill, tolerates a run that ended (and
                # was reaped by the forkserver) between is_alive() and the signal
                proc.kill()
                proc.join(timeout=30)
            if proc.exitcode == -signal.SIGKILL:
                kills.append(round(delay, 2))
            else:
                assert proc.exitcode == 0, f"trial {trial}: exit code {proc.exitcode}"
                finished_early += 1
            epoch = checkpoint_epoch(run)
            # a finished epoch is never lost: the checkpoint only moves forward
            assert epoch >= seen[-1], f"trial {trial}: last.pt went back to epoch {epoch}"
            seen.append(epoch)
        epochs.append(seen[1:])
        if checkpoint_epoch(run) < EPOCHS:
            proc = start(ctx, cfg, run, resume=(run / "last.pt").exists())
            proc.join(timeout=180)
            assert proc.exitcode == 0, f"trial {trial}: final resume exit code {proc.exitcode}"
        assert_same_run(ref_run, run)
        leftovers = [p.name for p in run.glob(".*.tmp")]
        # SIGKILL during a save may leave the temporary file, never a torn last.pt / best.pt
        assert all(n.startswith((".last.pt.", ".best.pt.")) for n in leftovers), leftovers
    print(f"\ncrash-safety: {TRIALS} trials (seed {SEED}), {len(kills)} SIGKILLs after {kills} s "
          f"(uninterrupted run {duration:.1f} s), {finished_early} runs ended before their kill; "
          f"last.pt epoch after each kill per trial {epochs}; every trial resumed to the "
          f"uninterrupted run's weights and metrics")
    # a sanity check of the kill window, not of the machine's speed: on a loaded machine the
    # uninterrupted reference can run slower than the trials, so ask for half of them
    assert len(kills) >= TRIALS // 2, "most runs ended before their kill: the kill window is wrong"


def test_resume_after_a_torn_metrics_line(ctx, reference, tmp_path):
    """A kill in the middle of appending to ``metrics.jsonl`` leaves half a line; resuming must
    drop it with the other rows past the checkpoint, not fail on it."""
    cfg = toy_config(tmp_path)
    run = tmp_path / "torn"
    # a run stopped right after epoch 3's checkpoint (as a kill just after the save)
    proc = start(ctx, cfg, run, resume=False, until_epoch=3)
    proc.join(timeout=180)
    assert proc.exitcode == 0
    text = (run / "metrics.jsonl").read_text()
    assert json.loads(text.splitlines()[-1])["epoch"] == 3
    (run / "metrics.jsonl").write_text(text + '{"epoch": 4, "split": "train", "lo')
    proc = start(ctx, cfg, run, resume=True)
    proc.join(timeout=180)
    assert proc.exitcode == 0, "resume failed on a torn metrics.jsonl line"
    assert_same_run(reference[0], run)
