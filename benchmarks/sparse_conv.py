"""Sparse convolution backends side by side: geossm's torch gather-GEMM vs spconv, one process.

Measures, for each case (a batch of KITTI frames, or synthetic scenes when no KITTI data is
found) and each backend:

1. ``lion_step``: one LION training step (forward + backward + AdamW; bf16 autocast on CUDA,
   as the trainer runs with ``train.amp``) with ``model.sparse_backend`` set to the backend;
   the same initial weights for every backend.
2. ``subm_layer``: the bare ``SubMConv3d(dim, dim, 3)`` on the case's voxels, forward +
   backward, with the rulebook built in every step (a fresh voxel set, as in training:
   ``rulebook_ms`` included) and with it cached (``cached_ms``).
3. ``agreement``: fp32 forward + backward of the LION step from the same weights on every
   backend against the torch backend: the largest heatmap difference and the largest
   difference of the conv weights' gradients (relative to their largest entry), and the
   heatmap difference in eval mode under ``no_grad``, so that a run on the GPU also checks
   spconv's CUDA paths (training and inference rulebooks).

Backends: ``torch``, ``spconv`` (spconv's default algorithm: masked implicit GEMM on CUDA,
native on the CPU) and ``spconv-native`` (CUDA only). Prints one JSON line per measurement
(medians over ``--steps`` after ``--warmup``), also written to ``--out``.

    python benchmarks/sparse_conv.py [--root KITTI_DIR] [--cases fov1,fov4,frame8]
        [--steps 10] [--warmup 3] [--out results.jsonl] [key=value config overrides ...]
    python benchmarks/sparse_conv.py --tiny     # CPU smoke test: tiny model, synthetic scenes
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from geossm.config import apply_overrides, load_config
from geossm.registry import TASKS

import geossm.tasks.detection  # noqa: F401  (registers the task)
from geossm.tasks.detection.sparse import SparseVoxels, SubMConv3d, spconv_available, voxelize
from geossm.tasks.detection.synthetic import generate_scene

sys.path.insert(0, str(Path(__file__).resolve().parent))
from detection_lion import (ARCHIVE, REPO, batch_of, device_batch, load_kitti_frames,  # noqa: E402
                            write_rows)

#: overrides of ``--tiny``: the synthetic CPU config shrunk to seconds per step
TINY_OVERRIDES = ["model.dim=8", "model.stem_dim=8", "model.bev_channels=8",
                  "model.group_sizes=[64]", "model.stem_stride=[1,1,1]"]


def backends_for(device: torch.device) -> list[tuple[str, str]]:
    """``(label, spconv_algo)`` of the backends to compare on ``device`` (``algo`` is
    ignored by the torch path); spconv only when it imports."""
    out = [("torch", "auto")]
    if spconv_available():
        out.append(("spconv", "auto"))
        if device.type == "cuda":
            out.append(("spconv-native", "native"))
    return out


def set_backend(model: torch.nn.Module, label: str, algo: str) -> None:
    """Every ``SubMConv3d`` of ``model`` on backend ``label`` (``spconv-*`` = spconv)."""
    for m in model.modules():
        if isinstance(m, SubMConv3d):
            m.backend = "torch" if label == "torch" else "spconv"
            m.spconv_algo = algo


def synthetic_frames(count: int) -> list[dict[str, np.ndarray]]:
    """``count`` ray-cast scenes in the layout of ``load_frames`` (no image: ``fov`` = all)."""
    frames = []
    for i in range(count):
        pts = generate_scene(np.random.default_rng(i), x_range=(3.0, 60.0))["points"]
        frames.append({"all": pts, "fov": pts})
    return frames


def parse_case(case: str) -> tuple[str, int]:
    """``"fov8"`` -> ``("fov", 8)``, ``"frame1"`` -> ``("all", 1)``, ``"syn2"`` -> ``("all", 2)``."""
    for prefix, key in (("fov", "fov"), ("frame", "all"), ("syn", "all")):
        if case.startswith(prefix) and case[len(prefix):].isdigit():
            return key, int(case[len(prefix):])
    raise ValueError(f"--cases: expected fovN, frameN or synN, got {case!r}")


def autocast_for(device: torch.device, amp: bool):
    return (torch.autocast("cuda", torch.bfloat16) if device.type == "cuda" and amp
            else contextlib.nullcontext())


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def median_ms(times: list[float]) -> float:
    return round(1000 * statistics.median(times), 2)


def time_lion_steps(task, model, batch, steps: int, warmup: int, device: torch.device,
                    amp: bool) -> list[float]:
    """Seconds of each timed training step (after ``warmup``)."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    times = []
    for i in range(warmup + steps):
        sync(device)
        t0 = time.perf_counter()
        with autocast_for(device, amp):
            loss = task.loss(task.forward(model, batch), batch)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return times


def conv_grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters()
            if p.grad is not None and n.endswith(("conv.weight", "stem.weight"))}


def lion_agreement(task, model, state, batch, backends, device) -> list[dict]:
    """fp32 forward + backward from ``state`` per backend, compared with the torch backend."""
    runs = {}
    for label, algo in backends:
        model.load_state_dict(state)
        set_backend(model, label, algo)
        model.zero_grad(set_to_none=True)
        # Same random stream per backend: drop-path masks must match for the training rows.
        torch.manual_seed(0)
        out = task.forward(model, batch)
        task.loss(out, batch)["loss"].backward()
        grads = conv_grads(model)
        model.eval()
        with torch.no_grad():  # inference builds spconv's forward-only rulebook
            eval_heatmap = task.forward(model, batch)["heatmap"].float()
        model.train()
        runs[label] = out["heatmap"].detach().float(), grads, eval_heatmap
    ref_heatmap, ref_grads, ref_eval = runs["torch"]
    rows = []
    for label, (heatmap, grads, eval_heatmap) in runs.items():
        if label == "torch":
            continue
        rel = max(float((grads[n] - g).abs().max() / g.abs().max().clamp_min(1e-30))
                  for n, g in ref_grads.items())
        rows.append({"backend": label,
                     "heatmap_max_abs_diff": float((heatmap - ref_heatmap).abs().max()),
                     "eval_heatmap_max_abs_diff": float((eval_heatmap - ref_eval).abs().max()),
                     "conv_grad_max_rel_diff": rel})
    return rows


def layer_rows(sp: SparseVoxels, dim: int, backends, steps: int, warmup: int,
               device: torch.device, amp: bool) -> list[dict]:
    """Forward + backward of one ``SubMConv3d(dim, dim, 3)`` on ``sp``'s voxels per backend."""
    torch.manual_seed(0)
    feats = torch.randn(sp.indices.shape[0], dim, device=device)
    conv = SubMConv3d(dim, dim, 3, bias=False).to(device)
    rows = []
    for label, algo in backends:
        set_backend(conv, label, algo)
        fresh, cached = [], []
        shared = SparseVoxels(feats, sp.indices, sp.spatial_shape, sp.batch_size)
        for i in range(warmup + steps):
            for times, voxels in ((fresh, None), (cached, shared)):
                x = feats.detach().requires_grad_(True)
                voxels = (SparseVoxels(x, sp.indices, sp.spatial_shape, sp.batch_size)
                          if voxels is None else voxels.replace(x))
                conv.zero_grad(set_to_none=True)
                sync(device)
                t0 = time.perf_counter()
                with autocast_for(device, amp):
                    out = conv(voxels).features
                out.float().square().mean().backward()
                sync(device)
                if i >= warmup:
                    times.append(time.perf_counter() - t0)
        rows.append({"backend": label, "step_ms": median_ms(fresh),
                     "cached_ms": median_ms(cached)})
    return rows


def case_voxels(task, model, batch, device) -> SparseVoxels:
    """The voxels of ``batch`` at the model's voxel size (what the stem conv sees)."""
    cu = batch["cu_seqlens"]
    b = cu.numel() - 1
    owner = torch.repeat_interleave(torch.arange(b, device=device), (cu[1:] - cu[:-1]).long())
    return voxelize(batch["points"].float(), owner, b, model.voxel_size, model.pcr)[0]


def run_case(task, case: str, frames, ns, device: torch.device) -> list[dict]:
    key, size = parse_case(case)
    torch.manual_seed(0)
    model = task.build_model().to(device).train()
    clouds = batch_of(frames, key, size, model.pcr)
    batch = device_batch(task, clouds, device)
    sp = case_voxels(task, model, batch, device)
    backends = backends_for(device)
    state = copy.deepcopy(model.state_dict())
    common = {"case": case, "batch": size, "points": int(sum(len(c) for c in clouds)),
              "voxels": int(sp.indices.shape[0]), "amp": bool(ns.amp and device.type == "cuda"),
              "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu"}
    rows = []
    for label, algo in backends:
        model.load_state_dict(state)
        set_backend(model, label, algo)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        times = time_lion_steps(task, model, batch, ns.steps, ns.warmup, device, ns.amp)
        row = {"bench": "lion_step", **common, "backend": label, "step_ms": median_ms(times)}
        if device.type == "cuda":
            row["peak_mem_gib"] = round(torch.cuda.max_memory_allocated() / 2 ** 30, 2)
        rows.append(row)
    dim = int(task.cfg.model.get("dim", 32))
    for row in layer_rows(sp, dim, backends, ns.steps, ns.warmup, device, ns.amp):
        rows.append({"bench": "subm_layer", **common, "channels": dim, **row})
    for row in lion_agreement(task, model, state, batch, backends, device):
        rows.append({"bench": "agreement", **common, "amp": False, **row})
    if not spconv_available():
        rows.append({"bench": "lion_step", **common, "backend": "spconv",
                     "skipped": "spconv is not importable here"})
    return rows


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=None, help="unpacked KITTI object folder")
    ap.add_argument("--config", type=Path, default=REPO / "configs/detection/kitti_lion.yaml")
    ap.add_argument("--cases", default="fov1,fov4,frame8")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--no-amp", dest="amp", action="store_false",
                    help="fp32 on CUDA (default: bf16 autocast, as train.amp)")
    ap.add_argument("--synthetic", action="store_true", help="synthetic scenes even with KITTI")
    ap.add_argument("--tiny", action="store_true", help="CPU smoke test (tiny model, 1 step)")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("overrides", nargs="*")
    ns = ap.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() and not ns.tiny else "cpu")
    if ns.tiny:
        ns.config = REPO / "configs/detection/synthetic_lion.yaml"
        ns.overrides = TINY_OVERRIDES + ns.overrides
        ns.cases, ns.steps, ns.warmup, ns.synthetic = "syn2", 1, 0, True
    cfg = apply_overrides(load_config(ns.config), ns.overrides)
    task = TASKS.get("DetectionTask")(cfg)
    frames = None
    if not ns.synthetic and (ns.root or ARCHIVE.exists()):
        frames = load_kitti_frames(ns.root)
    data = "kitti" if frames else "synthetic"
    if frames is None:
        frames = synthetic_frames(2 if ns.tiny else 6)
    rows = []
    for case in ns.cases.split(","):
        for row in run_case(task, case, frames, ns, device):
            row["data"] = data
            print(json.dumps(row), flush=True)
            rows.append(row)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    write_rows(rows, ns.out)


if __name__ == "__main__":
    main()
