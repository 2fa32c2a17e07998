"""DDP on CPU: the CLI under torchrun with 2 gloo processes (kept small: < 60 s)."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from geossm.config import load_config
from geossm.engine import Trainer, load_checkpoint
from geossm.engine.distributed import all_gather_lists
from toy_task import write_toy_config

HERE = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_torchrun_two_cpu_processes(tmp_path):
    cfg_path = write_toy_config(tmp_path / "toy.yaml", train={"epochs": 2, "batch_size": 2})
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(HERE), os.environ.get("PYTHONPATH", "")]), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
           "--master_addr=127.0.0.1", f"--master_port={free_port()}",
           "-m", "geossm", "train", str(cfg_path), f"output_dir={run}"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    assert len(lines) == 1, proc.stdout  # only rank 0 prints
    summary = json.loads(lines[0])
    assert summary["run_dir"] == str(run) and summary["last"]["epoch"] == 2
    ckpt = load_checkpoint(run / "last.pt")
    assert len(ckpt["rng"]) == 2  # one RNG state per rank
    rows = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows if r["split"] == "val"] == [1, 2]  # written once (rank 0)
    assert len(list((run / "tb").iterdir())) == 1  # one TensorBoard writer (rank 0)
    # Each rank trained on half the samples per epoch: 16 samples / (2 ranks x batch 2).
    assert ckpt["scheduler"]["last_epoch"] == 2 * 4
    # Metrics reduced over ranks equal a single-process evaluation of the same weights.
    single = Trainer(load_config(cfg_path)).evaluate_checkpoint(run / "last.pt")["val"]
    for key in ("acc", "macc", "miou"):
        assert single[key] == pytest.approx(summary["last"][key], rel=1e-9), key
    # The mean loss weights per-batch means by samples, and batches differ between 2 shards
    # and one process: close, not equal.
    assert single["loss"] == pytest.approx(summary["last"]["loss"], rel=0.05)


def _gather_on_rank(rank: int, world_size: int, init_file: str, out: str) -> None:
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                                         world_size=world_size)
    try:
        scores, ids = all_gather_lists([f"r{rank}"] * (rank + 1), [rank])
        Path(f"{out}.{rank}").write_text(json.dumps([scores, ids]))
    finally:
        torch.distributed.destroy_process_group()


def test_all_gather_lists_concatenates_in_rank_order(tmp_path):
    assert all_gather_lists(["a", "b"], [1]) == (["a", "b"], [1])  # one process
    torch.multiprocessing.spawn(_gather_on_rank, nprocs=2,
                                args=(2, str(tmp_path / "init"), str(tmp_path / "out")))
    for rank in range(2):
        gathered = json.loads((tmp_path / f"out.{rank}").read_text())
        assert gathered == [["r0", "r1", "r1"], [0, 1]]
