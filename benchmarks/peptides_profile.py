"""Where the time of one Peptides-func GMN training step goes (torch.profiler).

    python3 benchmarks/peptides_profile.py DATA_ROOT [CACHE.npz] [--batch 256] [--steps 5]

Builds the validation split (2,331 peptides, with the config's encodings), the model of
``configs/graph/peptides_func_gmn.yaml``, and runs training steps (forward, backward, AdamW,
bf16 autocast on CUDA as the trainer does) on batches of that split: one pass over all of
them to warm up (Triton compiles a kernel again for new shape specialisations: the first
batches cost seconds each), then ``--steps`` timed ones, then the same under the profiler.
Prints the wall time per step, the operator count and the top operators by device and by host
time.

Measured on one H200 (batch 1 of this session, 2 warm-up steps only, so the 2.6 s "step" there
still held compilation): under the profiler 146 ms of host time and 54 ms of device time per
step of 256 graphs (38k nodes), 12.2k operator calls per step; the training itself ran 43
steps in 4.4-5.2 s (~110 ms per step): the step is bound by the host's operator dispatch, not
by the GPU, so a larger batch costs little more per step.
"""

from __future__ import annotations

import argparse
import contextlib
import time

import torch
from torch.profiler import ProfilerActivity, profile
from torch_geometric.data import Batch

from geossm.config import find_config, load_config, to_container
from geossm.registry import MODELS
from geossm.tasks.graph.datasets import PeptidesFunc


def batches(root: str, cache: str | None, pe: dict, size: int) -> list[Batch]:
    """The validation split cut into PyG batches of ``size`` graphs."""
    ds = PeptidesFunc(root, "val", pe=pe, cache=cache)
    return [Batch.from_data_list([ds[i] for i in range(s, min(s + size, len(ds)))])
            for s in range(0, len(ds) - size + 1, size)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("root")
    ap.add_argument("cache", nargs="?")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--steps", type=int, default=5)
    args = ap.parse_args()
    # the model is built here without the trainer, so the dataset-read width is named
    cfg = load_config(find_config("graph/peptides_func_gmn"), ["model.num_classes=10"])
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = MODELS.build(cfg.model).to(dev).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=dev.type == "cuda" or None)
    data = [b.to(dev) for b in batches(args.root, args.cache, dict(to_container(cfg.data.pe)),
                                       args.batch)]
    amp = (torch.autocast("cuda", dtype=torch.bfloat16) if dev.type == "cuda"
           else contextlib.nullcontext())

    def step(b: Batch) -> None:
        with amp:
            out = model(b.x, b.edge_index, edge_attr=b.edge_attr, batch=b.batch, pe=b.pe)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(out.float(), b.y.float())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize()

    t = time.perf_counter()
    for b in data:
        step(b)
    sync()
    print(f"warm-up ({len(data)} steps, compilation): {time.perf_counter() - t:.1f} s")
    timed = [data[i % len(data)] for i in range(args.steps)]
    t = time.perf_counter()
    for b in timed:
        step(b)
    sync()
    per = (time.perf_counter() - t) / len(timed)
    nodes = sum(b.num_nodes for b in timed) / len(timed)
    print(f"step: {per * 1e3:.1f} ms at {args.batch} graphs ({nodes:.0f} nodes) on {dev}")
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
    with profile(activities=acts) as prof:
        for b in timed:
            step(b)
        sync()
    ev = prof.key_averages()
    print(f"operator calls per step: {sum(e.count for e in ev if e.key.startswith('aten::')) / len(timed):.0f}")
    if dev.type == "cuda":
        print(ev.table(sort_by="self_cuda_time_total", row_limit=25, max_name_column_width=60))
    print(ev.table(sort_by="self_cpu_time_total", row_limit=25, max_name_column_width=60))


if __name__ == "__main__":
    main()
