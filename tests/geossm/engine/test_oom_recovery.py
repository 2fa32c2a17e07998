"""Out-of-memory recovery in the training loop, with ``torch.OutOfMemoryError`` injected
from the model's forward on chosen training batches (CPU: the same code path as CUDA, less
``torch.cuda.empty_cache`` and the peak-memory figure)."""

import json

import pytest
import torch

from geossm.config import load_config
from geossm.engine import Trainer, load_checkpoint
from geossm.engine.trainer import OutOfMemoryStop
from toy_task import write_toy_config


def trainer_failing_on(tmp_path, failing_calls, *overrides):
    """A toy-task trainer whose forward raises ``torch.OutOfMemoryError`` on the training
    forwards numbered in ``failing_calls`` (0-based; evaluation forwards are not counted)."""
    cfg = load_config(write_toy_config(tmp_path / "toy.yaml"),
                      [f"output_dir={tmp_path / 'run'}", "data.num_samples=16",
                       "train.batch_size=4", *overrides])
    trainer = Trainer(cfg)
    forward = trainer.task.forward
    calls = {"train": 0}

    def flaky_forward(model, batch):
        if model.training:
            index = calls["train"]
            calls["train"] += 1
            if failing_calls(index):
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return forward(model, batch)

    trainer.task.forward = flaky_forward
    return trainer, calls


def test_one_oom_batch_is_skipped_with_one_clear_line_and_training_goes_on(tmp_path):
    trainer, calls = trainer_failing_on(tmp_path, lambda i: i == 1, "train.epochs=2")
    summary = trainer.fit()
    log = (tmp_path / "run" / "train.log").read_text().splitlines()
    warnings = [ln for ln in log if "out of memory" in ln]
    assert len(warnings) == 1 and " WARNING " in warnings[0]
    msg = warnings[0]
    assert "out of memory at epoch 1, batch 1 (4 samples, " in msg and " points on cpu)" in msg
    assert "batch skipped" in msg and "lower train.batch_size (now 4)" in msg
    assert "model.grad_checkpoint=true" in msg
    assert "Traceback" not in msg
    assert calls["train"] == 8  # 2 epochs x 4 batches, all attempted
    rows = [json.loads(ln) for ln in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    train = {r["epoch"]: r for r in rows if r["split"] == "train"}
    assert train[1]["oom_skipped"] == 1 and train[2]["oom_skipped"] == 0
    assert summary["last"]["epoch"] == 2
    # 7 optimizer steps were taken (the skipped batch took none), weights are finite.
    ckpt = load_checkpoint(tmp_path / "run" / "last.pt")
    assert ckpt["scheduler"]["last_epoch"] == 7
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values())


def test_consecutive_oom_batches_stop_with_a_clear_error(tmp_path):
    trainer, calls = trainer_failing_on(tmp_path, lambda i: i >= 2, "train.oom_skip_limit=2")
    with pytest.raises(OutOfMemoryStop, match=r"out of memory at epoch 1, batch 3 \(4 samples, "
                       r"\d+ points on cpu\): 2 consecutive batches did not fit "
                       r"\(train.oom_skip_limit=2\); lower train.batch_size"):
        trainer.fit()
    assert calls["train"] == 4  # batches 0, 1 trained; 2 skipped; 3 stopped the run
    assert isinstance(OutOfMemoryStop("x"), ValueError)  # the CLI prints it as one line


def test_other_errors_are_not_swallowed(tmp_path):
    trainer, _ = trainer_failing_on(tmp_path, lambda i: False)
    trainer.task.forward = lambda model, batch: (_ for _ in ()).throw(RuntimeError("bad op"))
    with pytest.raises(RuntimeError, match="bad op"):
        trainer.fit()


def test_oom_in_evaluation_stops_instead_of_reporting_part_of_the_split(tmp_path):
    trainer, _ = trainer_failing_on(tmp_path, lambda i: False)
    forward = trainer.task.forward
    calls = {"eval": 0}

    def eval_fails_once(model, batch):
        if not model.training:
            calls["eval"] += 1
            if calls["eval"] == 2:
                raise torch.OutOfMemoryError("CUDA out of memory.")
        return forward(model, batch)

    trainer.task.forward = eval_fails_once
    with pytest.raises(OutOfMemoryStop, match=r"out of memory evaluating split 'val', batch 1 "
                       r"\(4 samples, \d+ points on cpu\); lower eval.batch_size"):
        trainer.fit()
