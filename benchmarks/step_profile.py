"""Whole-step GPU efficiency of every task: wall time, GPU-busy time, launches, host syncs, memory.

For each task config and two batch sizes, one training step exactly as the trainer runs it
(``Trainer._train_step``: bf16 autocast on CUDA, the task's forward and loss, backward,
gradient clipping, the config's optimizer and schedule), on batches built by the task's own
dataset and ``collate`` from the real samples of ``../shared/data``:

- ``segmentation``: ``configs/segmentation/semantickitti_pcm.yaml`` (PCM base), crops of the
  3 SemanticKITTI scans (``data.max_points`` of the config, 120k);
- ``detection``: ``configs/detection/kitti_lion.yaml`` (LION), the 6 KITTI frames (camera
  field of view; no augmentation: it runs in the data loader, not in the step);
- ``graph``: ``configs/graph/peptides_func_gmn.yaml``, Peptides-func training graphs (the first
  ``--graphs`` molecules of the csv are converted with RDKit, not all 15,535);
- ``events``: ``configs/events/nmnist_mamba.yaml``, the 600 N-MNIST training recordings.

Per (task, batch) one JSON line: ``step_ms`` (median wall time of ``--steps`` steps after
``--warmup``, cycling over ``--batches`` distinct batches), under ``torch.profiler`` over the
same steps: ``gpu_busy_ms`` (union of the intervals in which a kernel, copy or memset runs, per
step), ``kernel_ms`` (sum of kernel durations), ``gpu_busy_frac`` = gpu_busy_ms / step_ms,
``stream_step_ms`` (wall time of the same ``--steps`` steps run back to back with one sync at the
end, per step: as an epoch runs them, the host free to queue the next step while the GPU works;
``step_ms`` syncs before and after every step, so it also counts the host's lead-in and the
sync of each step; on the batches after the timed ones, fresh ones where ``--batches`` is at
least the warm-up plus twice ``--steps``), ``gpu_busy_ms_stream`` (GPU-busy time of those same
batches, profiled in one more pass: batches differ in size, so each ratio takes its numerator
and denominator from the same batches) and ``gpu_busy_frac_stream`` = gpu_busy_ms_stream /
stream_step_ms, ``stream_repeat_step_ms`` and ``gpu_busy_frac_stream_repeat`` (the same
back-to-back steps run again right after: ``stream_step_ms`` is a mean, so it also holds what a
batch costs only the first time, e.g. a kernel compiled or a CUDA graph captured for a size first
met there; the repeat does not), ``triton_compiles`` (Triton kernel variants compiled in the
warm-up, the synced, the back-to-back and the repeated steps: ``triton_variants``),
``kernels`` (kernel launches per step), ``aten_ops`` (operator calls per step), ``syncs``
(``cudaStreamSynchronize`` / ``cudaDeviceSynchronize`` / ``cudaEventSynchronize`` calls per
step), ``dtoh_copies`` (device-to-host copies per step) and ``sync_warnings`` (what
``torch.cuda.set_sync_debug_mode("warn")`` reports over one step); ``peak_mem_gib``. LION
with ``model.graph_layers`` set adds ``layer_graphs``: the padded sizes its group layers met
and how their calls ran (``replayed`` / ``captured`` / ``padded_eager`` / ``eager``, over the
whole run). Fresh batches in the timed steps, as in training: ``--batches`` larger than
``--warmup`` plus ``--steps``.

``--cuda-graph``: the steps with ``train.cuda_graph=true`` (the forward, backward and clipping
replayed as one CUDA graph per batch layout; rows get ``"cuda_graph": true`` and the counts of
``eager`` / ``captured`` / ``replayed`` steps; the graph's warm-up and capture steps come on top
of ``--warmup``). Configs with ``train.cuda_graph: auto`` (``events/nmnist_mamba``) are graphed
on CUDA without the flag (``--cuda-graph false``: eager). ``--graph-check N``: N steps eager
and N steps graphed (or with any two sets of overrides, ``--check-a`` / ``--check-b``) from the
same weights on the same batches, randomness off, one row with the largest loss and parameter
differences and both step times (the one task ``--tasks`` names, else events).
``--loop N``: the row also times the trainer's own epoch loop over N batches of the dataset
(``Trainer._train_epoch``: DataLoader workers, pinned copies, the step, the loss meter; the
second of two epochs): ``loop_step_ms`` per step, ``loop_data_wait_ms`` of it waiting for the
loader, ``loop_copy_host_ms`` in the batch's copy to the device (``move_to``),
``loop_step_host_ms`` in the step call (``Trainer._train_step``), ``loop_other_host_ms`` the
rest (meters, callbacks, the progress bar, the epoch's start and end), ``loop_first_batch_ms``
how long a fresh epoch waits for its first batch (the loader's workers start every epoch), and
on CUDA ``loop_gpu_busy_frac``, the step's GPU-busy time over that: the share of
an epoch the GPU works, where ``gpu_busy_frac`` is the share of the step alone.
``--compile SPEC``: the steps with ``train.compile=SPEC`` (the training forward under
``torch.compile``; the warm-up steps compile). ``--op-sources``: one more row per case,
``bench: step_ops``, counting every operator of one step by the source line that called it
(``TorchDispatchMode``): the ``top_sources`` and the data-dependent ops
(``_local_scalar_dense`` = ``.item()`` / ``int()``, ``nonzero``, boolean indexing,
``repeat_interleave`` without ``output_size``, ``bincount``...), each a host sync on CUDA.
``--host-top N``: the row also gets ``host``, where the host's time of a step goes
(``host_breakdown``: the N operators with the most self CPU time, the forward of the model's
modules and the backward's autograd nodes by CPU time, ms per step).

``--points 100000 1000000 2000000``: PCM base segmentation memory per point instead (the
scaling section of ``segmentation_gpu.py``: scenes of 50k points cut from the real scans):
peak memory, activation memory per point (peak minus the memory held before the step) and
step time for each set of memory-saving paths (``set_memory_paths``: ``off`` = none,
``default`` = the library's defaults: fused Mamba, kNN embedding recomputed in the backward;
``all`` = also the opt-in fused RMSNorm), no checkpointing. ``--knn-in-loader``: the kNN
embedding's neighbours searched once on the CPU before the steps and given to the model (what
``train.knn_in_loader`` does in the loader), so the steps time the model without its search.

    python benchmarks/step_profile.py [--tasks segmentation detection graph events]
        [--steps 5] [--warmup 3] [--out steps.jsonl] [--paths off|default|all]
    python benchmarks/step_profile.py --points 100000 1000000 2000000
    python benchmarks/step_profile.py --tiny       # CPU check of the script: tiny models
    python benchmarks/step_profile.py --tasks events --cuda-graph
    python benchmarks/step_profile.py --tasks graph events --op-sources --steps 2
    python benchmarks/step_profile.py --tasks detection --batch-sizes 8 --host-top 25
    python benchmarks/step_profile.py --tasks graph --config graph/peptides_func_gcnplus.yaml \
        --batch-sizes 16
    python benchmarks/step_profile.py --tasks graph --config graph/peptides_func_gcnplus.yaml \
        --batch-sizes 16 --graph-check 200 --check-a train.compile=false \
        --check-b train.compile=true
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import statistics
import sys
import tarfile
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from geossm.kernels._common import triton_variants

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("GEOSSM_SHARED_DATA") or REPO.parent / "shared" / "data")
sys.path.insert(0, str(Path(__file__).resolve().parent))  # segmentation_gpu (scenes, steps)

#: task -> (config, default batch sizes (the config's default last), tiny overrides).
TASKS = {
    "segmentation": ("segmentation/semantickitti_pcm.yaml", (2, 8),
                     ["model.size=tiny", "model.dec_depths=[1,1]", "data.max_points=600",
                      "model.num_prompts=1"]),
    "detection": ("detection/kitti_lion.yaml", (1, 8),
                  ["model.dim=8", "+model.stem_dim=8", "model.bev_channels=8", "model.num_blocks=1",
                   "model.window_shape=[13, 13, 32]",
                   "model.group_sizes=[64]"]),
    "graph": ("graph/peptides_func_gmn.yaml", (128, 256),
              ["model.dim=16", "model.num_layers=1", "+data.pe_workers=1"]),
    "events": ("events/nmnist_mamba.yaml", (32, 128), ["model.dim=16", "model.depth=1"]),
}
TINY_BATCHES = (1, 2)
SYNC_CALLS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize")
#: Device-timeline records of waits ("Stream Sync", "Event Sync", "Context Sync", "Stream Wait
#: Event"), left out of the busy time.
DEVICE_WAITS = ("Sync", "Stream Wait")


# ------------------------------------------------------------------------------ data + task

def _unpack(archive: Path, into: Path) -> Path:
    """``archive`` unpacked into ``into`` (once: an existing folder is reused)."""
    if into.is_dir():
        return into
    if not archive.is_file():
        raise FileNotFoundError(f"real sample not found: {archive} (../shared/data)")
    with tarfile.open(archive) as tar:
        tar.extractall(into, filter="data")
    return into


def data_overrides(task: str, tmp: Path, graphs: int, peptides_cache: Path | None) -> list[str]:
    """Config overrides pointing the task's dataset at the real samples (unpacked into tmp;
    the Peptides graphs converted there too unless ``peptides_cache`` holds them)."""
    if task == "segmentation":
        root = _unpack(SHARED / "semantickitti" / "semantickitti_npy_3scans.tar.xz", tmp / "sk")
        return [f"data.root={root / 'semantickitti_npy'}",
                '+data.frames={train: ["000000", "000001", "000002"]}', "+data.loop=4"]
    if task == "detection":
        root = _unpack(SHARED / "kitti" / "kitti_object_6frames.tar.xz", tmp / "kitti")
        return [f"data.root={root}", "data.split=training", "data.augment=[]"]
    if task == "graph":
        root = SHARED / "graphs" / "peptides-functional"
        cache = peptides_cache or tmp / "cache" / f"peptides_func_{graphs}.npz"
        return [f"data.root={root}", f"+data.max_graphs={graphs}", f"data.cache={cache}"]
    root = _unpack(SHARED / "events" / "nmnist_600train_100test.tar.xz", tmp / "nmnist")
    return [f"data.root={root}"]


def task_config(task: str, config: str | None = None) -> str:
    """The config a task is measured on: ``config`` (a path under ``configs/``, e.g.
    ``graph/peptides_func_gcnplus.yaml``) or the task's default in ``TASKS``."""
    return config or TASKS[task][0]


def parse_with_config(ap: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """``ap``'s arguments plus ``--config`` (``task_config``; it names one task's config, so
    it needs exactly one ``--tasks``), parsed from ``argv``."""
    ap.add_argument("--config", default=None,
                    help="another config of the task's family (path under configs/, e.g. "
                         "graph/peptides_func_gcnplus.yaml; one task)")
    args = ap.parse_args(argv)
    if args.config and len(args.tasks) != 1:
        ap.error("--config: name one task (--tasks)")
    return args


def build_trainer(task: str, overrides: list[str], device: str, config: str | None = None):
    """A ``Trainer`` on the task's config (its model, loss, step) plus optimizer and schedule;
    ``config``: another config of the task's family (``task_config``)."""
    from geossm.config import find_config, load_config
    from geossm.engine import Trainer
    from geossm.engine.optim import build_optimizer, build_scheduler

    cfg = load_config(find_config(task_config(task, config)),
                      overrides + [f"device={device}", "train.progress=false"])
    trainer = Trainer(cfg, config_name="step_profile")
    groups = trainer.task.parameter_groups(trainer.model, float(cfg.train.weight_decay))
    optimizer = build_optimizer(trainer.model, groups, cfg.train, trainer.device)
    scheduler = build_scheduler(optimizer, cfg.train, int(cfg.train.epochs), 1000)
    return trainer, optimizer, scheduler


def training_split(trainer):
    """The training split of ``trainer``'s config (``data.split``), built."""
    return trainer.task.build_dataset(str(trainer.cfg.data.split))


def make_batches(trainer, batch_size: int, count: int, dataset=None) -> list:
    """``count`` distinct batches of ``batch_size`` training samples, on the device
    (``dataset``: the training split when already built, else built here)."""
    from geossm.engine.task import move_to

    if dataset is None:
        dataset = training_split(trainer)
    g = np.random.default_rng(0)
    batches = []
    for _ in range(count):
        idx = g.choice(len(dataset), size=batch_size, replace=batch_size > len(dataset))
        batch = trainer.task.collate([dataset[int(i)] for i in idx])
        batches.append(move_to(batch, trainer.device))
    return batches


#: paths -> (Mamba.fused, KNNEmbedding.recompute, RMSNorm.fused, MLP.fused); ``default`` is
#: the modules' own defaults (None = on for CUDA inputs)
PATHS = {"off": (False, False, False, False), "default": (True, True, None, None),
         "all": (True, True, True, True)}


def set_memory_paths(model: torch.nn.Module, paths: str) -> None:
    """Switch the memory-saving paths of every module (see ``PATHS``); ``off`` = the ops as
    they were before them."""
    from geossm.nn import MLP, Mamba, RMSNorm

    mamba, recompute, norm, mlp = PATHS[paths]
    for m in model.modules():
        if isinstance(m, Mamba):
            m.fused = mamba
        elif isinstance(m, RMSNorm):
            m.fused = norm
        elif isinstance(m, MLP):
            m.fused = mlp
        elif isinstance(getattr(m, "recompute", None), bool):  # the kNN embedding
            m.recompute = recompute


# ------------------------------------------------------------------------------ measuring

def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _run_steps(step, batches: list, steps: int, first: int = 0) -> None:
    """``steps`` steps on the batches from index ``first`` on (cycling over ``batches``)."""
    for i in range(first, first + steps):
        step(batches[i % len(batches)])


def _synced_steps(step, batches: list, steps: int, device: torch.device) -> tuple[list, list]:
    """``steps`` steps on the cycled batches, each between two syncs: what each returned and
    its seconds."""
    outputs, seconds = [], []
    for i in range(steps):
        _sync(device)
        t0 = time.perf_counter()
        outputs.append(step(batches[i % len(batches)]))
        _sync(device)
        seconds.append(time.perf_counter() - t0)
    return outputs, seconds


def _back_to_back_s(step, batches: list, steps: int, device: torch.device,
                    first: int = 0) -> float:
    """Seconds for ``steps`` steps run back to back (one sync before and one after them), on
    the batches from index ``first`` on (cycling)."""
    _sync(device)
    t0 = time.perf_counter()
    _run_steps(step, batches, steps, first)
    _sync(device)
    return time.perf_counter() - t0


def _busy_union_us(intervals: list[tuple[float, float]]) -> float:
    """Length of the union of ``[start, end)`` intervals (streams may overlap)."""
    total, end = 0.0, -math.inf
    for s, e in sorted(intervals):
        if s > end:
            total += e - s
            end = e
        elif e > end:
            total += e - end
            end = e
    return total


def profile_steps(step, batches: list, steps: int, device: torch.device, first: int = 0) -> dict:
    """Per-step averages of GPU-busy time, kernel time, launches, operators and syncs over
    ``steps`` steps on the batches from index ``first`` on (cycling)."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=acts) as prof:
        _run_steps(step, batches, steps, first)
        _sync(device)
    intervals, kernel_us, kernels, ops, syncs, dtoh = [], 0.0, 0, 0, 0, 0
    for ev in prof.events():
        name = ev.name
        if ev.device_type == DeviceType.CUDA:
            if any(tag in name for tag in DEVICE_WAITS):
                continue  # CUPTI's synchronisation records: the device waiting, not working
            intervals.append((ev.time_range.start, ev.time_range.end))
            if name.startswith("Memcpy"):
                dtoh += "DtoH" in name
            elif not name.startswith("Memset"):
                kernels += 1
                kernel_us += ev.time_range.elapsed_us()
        elif name.startswith("aten::"):
            ops += 1
        elif name in SYNC_CALLS:
            syncs += 1
    syncs -= device.type == "cuda"  # the synchronize closing the profiled steps
    return {"gpu_busy_ms": _busy_union_us(intervals) / 1e3 / steps,
            "kernel_ms": kernel_us / 1e3 / steps, "kernels": kernels / steps,
            "aten_ops": ops / steps, "syncs": syncs / steps, "dtoh_copies": dtoh / steps}


#: ``host_breakdown``'s prefixes: its forward ranges per module, and autograd's backward nodes.
MODULE_RANGE = "module::"
BACKWARD_NODE = "autograd::engine::evaluate_function: "


def host_breakdown(step, batches: list, steps: int, device: torch.device, model: torch.nn.Module,
                   top: int, depth: int = 4) -> dict:
    """Where the host's time of a step goes, in ms per step under ``torch.profiler`` (CPU
    activity only, over ``steps`` more steps): for a step bound by the host, what to cut.

    - ``ops``: the ``top`` operators by self CPU time (their own time, callees' excluded; on
      CUDA it holds their kernel launches), ``ops_self_ms`` the sum over all operators;
    - ``modules``: the forward of the model's modules down to ``depth`` levels of their
      names (``blocks.0``, ``blocks.0.descriptor``, ``blocks.0.full.0``, ...), total CPU time
      (their sub-modules' included);
    - ``backward``: the autograd nodes by type, total CPU time (on CUDA autograd's own thread).
    Step time that none of these hold is Python and the trainer's own work."""
    from torch.profiler import ProfilerActivity, profile, record_function

    open_ranges, hooks = [], []

    def enter(module, args, name):
        open_ranges.append(record_function(MODULE_RANGE + name))
        open_ranges[-1].__enter__()

    def leave(module, args, output):
        open_ranges.pop().__exit__(None, None, None)

    for name, module in model.named_modules():
        if name and name.count(".") < depth:
            hooks.append(module.register_forward_pre_hook(
                lambda m, a, _name=name: enter(m, a, _name)))
            hooks.append(module.register_forward_hook(leave))
    try:
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            _run_steps(step, batches, steps)
            _sync(device)
    finally:
        for hook in hooks:
            hook.remove()

    def ms(us: float) -> float:
        return round(us / 1e3 / steps, 3)

    averages = prof.key_averages()
    # operators: aten's and the custom ones (geossm::selective_scan, ...), not the ranges
    ops = [a for a in averages if "::" in a.key
           and not a.key.startswith((MODULE_RANGE, "autograd::", "profiler::"))]

    def ranked(prefix: str) -> dict:
        rows = [(a.key.removeprefix(prefix), ms(a.cpu_time_total)) for a in averages
                if a.key.startswith(prefix)]
        return dict(sorted(rows, key=lambda kv: -kv[1])[:top])

    by_self = sorted(ops, key=lambda a: a.self_cpu_time_total, reverse=True)[:top]
    return {"ops_self_ms": ms(sum(a.self_cpu_time_total for a in ops)),
            "ops": {a.key: ms(a.self_cpu_time_total) for a in by_self},
            "modules": ranked(MODULE_RANGE), "backward": ranked(BACKWARD_NODE)}


#: Operators whose output size or value the host must read (a host sync on CUDA).
DATA_DEPENDENT_OPS = {"_local_scalar_dense", "nonzero", "masked_select", "unique", "_unique2",
                      "unique_consecutive", "unique_dim", "bincount", "masked_scatter", "equal",
                      "is_nonzero", "histc"}
#: Top-level folders of this repository whose frames name an operator's source ...
PROJECT_DIRS = ("geossm", "tasks", "serialization", "kernels")
#: ... and path parts that mark a frame of the libraries the step calls.
LIBRARY_MARKS = ("torch/optim/", "torch_geometric/", "torch/nn/")
#: ``count_ops``'s source of operators without a project frame: on CUDA, autograd runs the
#: backward on its own thread, whose stack holds no caller.
NO_FRAME = "<autograd thread / no project frame>"


def _calling_line() -> str:
    """``file.py:line:function`` of the innermost project / library frame calling an op."""
    frame = sys._getframe(2)
    while frame is not None:
        name = frame.f_code.co_filename
        if "_python_dispatch" not in name and name != __file__ and _is_source(name):
            return f"{Path(name).name}:{frame.f_lineno}:{frame.f_code.co_name}"
        frame = frame.f_back
    return NO_FRAME


def is_project_file(filename: str) -> bool:
    """Whether a frame's file lies in one of the repository's ``PROJECT_DIRS`` (judged
    relative to the repository, so a checkout in a folder named like one of them, e.g.
    ``…/geossm/tests``, does not count its tests)."""
    try:
        return Path(filename).resolve().relative_to(REPO).parts[0] in PROJECT_DIRS
    except (ValueError, IndexError):
        return False


def _is_source(filename: str) -> bool:
    """A project frame or a frame of a library the step calls (``LIBRARY_MARKS``)."""
    return is_project_file(filename) or any(mark in filename for mark in LIBRARY_MARKS)


def _data_dependent(name: str, args: tuple, kwargs: dict) -> bool:
    if name in DATA_DEPENDENT_OPS:
        return True
    if name == "index":  # x[mask]: the number of True entries sizes the output
        return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool
                   for i in (args[1] if len(args) > 1 else ()) or ())
    if name == "repeat_interleave":  # the total of the repeats sizes the output
        return kwargs.get("output_size") is None and (
            len(args) == 1 or isinstance(args[1], torch.Tensor))
    return False


def count_ops(step, batch, top: int = 30) -> dict:
    """Every operator of one ``step(batch)`` counted by the source line calling it
    (``TorchDispatchMode``: the operators autograd and the optimizer run included)."""
    import collections
    from torch.utils._python_dispatch import TorchDispatchMode

    ops, sources, dependent = (collections.Counter() for _ in range(3))

    class Counter(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            name = func.__name__.split(".")[0]
            where = _calling_line()
            ops[name] += 1
            sources[where] += 1
            if _data_dependent(name, args, kwargs):
                dependent[f"{name} @ {where}"] += 1
            return func(*args, **kwargs)

    with Counter():
        step(batch)
    return {"ops": sum(ops.values()), "top_ops": dict(ops.most_common(top)),
            "top_sources": dict(sources.most_common(top)),
            "data_dependent": dict(dependent.most_common()),
            "data_dependent_total": sum(dependent.values())}


def sync_warnings(step, batch, device: torch.device) -> int | None:
    """Host syncs ``torch.cuda.set_sync_debug_mode("warn")`` reports over one step."""
    if device.type != "cuda":
        return None
    _sync(device)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            step(batch)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message).lower() for w in caught)


def measure_task(task: str, batch_size: int, args, tmp: Path, device: str) -> dict:
    overrides = data_overrides(task, tmp, args.graphs, args.peptides_cache)
    if args.tiny:
        overrides += TASKS[task][2]
    if args.cuda_graph is not None:
        overrides.append(f"train.cuda_graph={args.cuda_graph}")
    if args.compile:
        overrides.append(f"train.compile={args.compile}")
    overrides += args.override
    trainer, optimizer, scheduler = build_trainer(task, overrides, device, args.config)
    dev = trainer.device
    try:
        set_memory_paths(trainer.model, args.paths)
        trainer.model.train()
        clip = float(trainer.cfg.train.grad_clip or 0.0)
        dataset = training_split(trainer)
        batches = make_batches(trainer, batch_size, args.batches, dataset)

        def step(batch) -> None:
            trainer._train_step(batch, optimizer, scheduler, clip)

        # A graphed step (train.cuda_graph, or auto in the config) also warms up and captures
        # before the timed steps.
        graph = trainer.graphed_step
        compiled = [triton_variants()]
        _run_steps(step, batches, args.warmup + (graph.warmup + 1 if graph is not None else 0))
        compiled.append(triton_variants())
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        step_ms = 1e3 * statistics.median(_synced_steps(step, batches, args.steps, dev)[1])
        compiled.append(triton_variants())
        # on the batches after the timed ones (fresh where --batches >= warm-up + 2 x --steps),
        # then the same steps once more: without what a batch costs only the first time it
        # runs (a kernel compiled for a new size, a CUDA graph captured for a new padded size)
        back_to_back_ms = []
        for _ in range(2):
            back_to_back_ms.append(1e3 * _back_to_back_s(step, batches, args.steps, dev,
                                                         first=args.steps) / args.steps)
            compiled.append(triton_variants())
        stream_ms, repeat_ms = back_to_back_ms
        row = {"bench": "step_profile", "task": task, "config": task_config(task, args.config),
               "batch_size": batch_size, "paths": args.paths,
               "items_per_batch": _items(batches[0]), "step_ms": round(step_ms, 2)}
        prof = profile_steps(step, batches, args.steps, dev)
        row.update({k: round(v, 3) for k, v in prof.items()})
        row["gpu_busy_frac"] = round(prof["gpu_busy_ms"] / step_ms, 3) if dev.type == "cuda" \
            else None
        row["stream_step_ms"] = round(stream_ms, 2)
        row["stream_repeat_step_ms"] = round(repeat_ms, 2)
        row["triton_compiles"] = dict(zip(("warmup", "synced", "stream", "repeat"),
                                          np.diff(compiled).tolist()))
        if dev.type == "cuda":  # GPU-busy time of the very batches the back-to-back steps ran
            stream_busy = profile_steps(step, batches, args.steps, dev,
                                        first=args.steps)["gpu_busy_ms"]
            row["gpu_busy_ms_stream"] = round(stream_busy, 3)
            row["gpu_busy_frac_stream"] = round(stream_busy / stream_ms, 3)
            row["gpu_busy_frac_stream_repeat"] = round(stream_busy / repeat_ms, 3)
        else:
            row["gpu_busy_ms_stream"] = row["gpu_busy_frac_stream"] = None
            row["gpu_busy_frac_stream_repeat"] = None
        row["sync_warnings"] = sync_warnings(step, batches[0], dev)
        row["peak_mem_gib"] = (round(torch.cuda.max_memory_allocated(dev) / 2 ** 30, 3)
                               if dev.type == "cuda" else None)
        row["device"] = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
        row["cuda_graph"] = trainer.graphed_step is not None
        row["compile"] = args.compile
        if trainer.graphed_step is not None:
            row["graph_steps"] = dict(trainer.graphed_step.stats)
        layer_graphs = getattr(trainer.model, "layer_graphs", None)
        if layer_graphs is not None:   # LION(graph_layers=...): sizes met, how the calls ran
            row["layer_graphs"] = {"sizes": len(layer_graphs.sizes), **layer_graphs.stats}
        if args.loop:
            row.update(measure_loop(trainer, optimizer, scheduler, dataset, batch_size,
                                    args.loop))
            if dev.type == "cuda":
                row["loop_gpu_busy_frac"] = round(prof["gpu_busy_ms"] / row["loop_step_ms"], 3)
        if args.host_top:
            row["host"] = host_breakdown(step, batches, args.steps, dev, trainer.model,
                                         args.host_top)
        if args.op_sources:
            row["op_sources"] = {"bench": "step_ops", "task": task, "batch_size": batch_size,
                                 **count_ops(step, batches[0])}
        return row
    finally:
        trainer.close()
        del trainer, optimizer
        if dev.type == "cuda":
            torch.cuda.empty_cache()


class _NoLog:
    """The run logger ``Trainer._train_epoch`` writes its scalars to, dropped."""

    def scalars(self, *args, **kwargs) -> None:
        pass


def measure_loop(trainer, optimizer, scheduler, dataset, batch_size: int,
                 batches: int) -> dict:
    """The trainer's own epoch loop (``Trainer._train_epoch``: its DataLoader with workers and
    pinned memory, the copy to the device, the step, the loss meter) over the first
    ``batches * batch_size`` samples of ``dataset`` (the training split), run twice (the
    first pays the workers' start, the capture of a new layout, compilation); the second
    epoch's wall time per step, its wait for the loader and the host's time in the copy, in
    the step call and in the rest, in ms. Against the step's GPU-busy
    time this says how much of an epoch the GPU works (``step_ms`` times the step alone, on
    batches already on the GPU)."""
    from torch.utils.data import Subset

    import geossm.engine.trainer as trainer_module

    subset = Subset(dataset, range(min(len(dataset), batches * batch_size)))
    trainer.cfg.train.batch_size = batch_size
    loader = trainer._loader(subset, True)
    host = {"copy": 0.0, "step": 0.0}
    for epoch in (1, 2):
        trainer._set_epoch(loader, epoch)
        with contextlib.ExitStack() as stack:
            if epoch == 2:   # the host's time in the batch's copy and in the step call
                stack.enter_context(patched(trainer_module, "move_to", host, "copy"))
                stack.enter_context(patched(trainer, "_train_step", host, "step"))
            stats = trainer._train_epoch(loader, epoch, (epoch - 1) * len(loader), optimizer,
                                         scheduler, _NoLog())
    steps = len(loader)
    start = time.perf_counter()   # a fresh epoch's first batch: workers started, one collate
    next(iter(loader))
    first_batch_ms = 1e3 * (time.perf_counter() - start)
    per_step = {key: 1e3 * value / steps for key, value in host.items()}
    loop_ms, wait_ms = 1e3 * stats["time_s"] / steps, 1e3 * stats["data_wait_s"] / steps
    return {"loop_steps": steps, "loop_step_ms": round(loop_ms, 3),
            "loop_data_wait_ms": round(wait_ms, 3),
            "loop_copy_host_ms": round(per_step["copy"], 3),
            "loop_step_host_ms": round(per_step["step"], 3),
            "loop_other_host_ms": round(loop_ms - wait_ms - sum(per_step.values()), 3),
            "loop_first_batch_ms": round(first_batch_ms, 3),
            "loop_workers": int(trainer.cfg.train.num_workers)}


def patched(owner, name: str, totals: dict, key: str):
    """A context in which ``owner.name`` is a wrapper that adds the host's seconds in each
    call to ``totals[key]`` (no device sync added: the host's own time in the call, with any
    wait for the device that the call itself does); ``mock.patch.object`` puts it back."""
    from unittest import mock

    original = getattr(owner, name)

    def timed(*args, **kwargs):
        start = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            totals[key] += time.perf_counter() - start

    return mock.patch.object(owner, name, timed)


#: Overrides that take the randomness out of a task's step for ``--graph-check`` (graph
#: models with random orders need theirs too, e.g. ``--override model.global_order=index``).
NO_RANDOMNESS = {"events": ["model.drop_path=0.0", "model.dropout=0.0"],
                 "graph": ["model.dropout=0.0"]}


def graph_check(args, tmp: Path, device: str) -> dict:
    """``args.graph_check`` steps of one task run twice from the same weights on the same
    batches, randomness off (``NO_RANDOMNESS``): first with ``--check-a`` overrides (default
    ``train.cuda_graph=false``), then with ``--check-b`` (default ``train.cuda_graph=true``),
    e.g. ``--check-a train.compile=false --check-b train.compile=true`` for compiled against
    eager graphed steps. Returns one row: the largest differences of the losses and of the
    final parameters (bf16 autocast: float rounding at most where the two compute the same),
    and each run's median step time (synced per step, after the warm-up and capture)."""
    task = args.tasks[0] if len(args.tasks) == 1 else "events"
    steps = args.graph_check
    shared = (data_overrides(task, tmp, args.graphs, args.peptides_cache)
              + (TASKS[task][2] if args.tiny else []) + NO_RANDOMNESS.get(task, [])
              + args.override)
    batch_size = (args.batch_sizes or TASKS[task][1])[0]
    results = []
    for variant in (args.check_a, args.check_b):
        trainer, optimizer, scheduler = build_trainer(task, shared + variant, device,
                                                      args.config)
        trainer.model.train()
        batches = make_batches(trainer, batch_size, args.batches)
        clip = float(trainer.cfg.train.grad_clip or 0.0)
        outputs, times = _synced_steps(
            lambda batch: trainer._train_step(batch, optimizer, scheduler, clip)[0], batches,
            steps, trainer.device)
        losses = [float(loss) for loss in outputs]
        params = [p.detach().float().clone() for p in trainer.model.parameters()]
        stats = dict(trainer.graphed_step.stats) if trainer.graphed_step is not None else None
        settle = min(steps - 1, args.warmup + 4)   # past the warm-up, capture and compile
        results.append((losses, params, stats, 1e3 * statistics.median(times[settle:])))
        trainer.close()
    (l0, p0, s0, t0), (l1, p1, s1, t1) = results
    return {"bench": "step_profile_graph_check", "task": task,
            "config": task_config(task, args.config), "batch_size": batch_size,
            "steps": steps, "a": args.check_a, "b": args.check_b,
            "graph_steps_a": s0, "graph_steps_b": s1, "step_ms_a": round(t0, 3),
            "step_ms_b": round(t1, 3), "loss_first": l0[0], "loss_last_a": l0[-1],
            "loss_last_b": l1[-1], "max_loss_diff": max(abs(a - b) for a, b in zip(l0, l1)),
            "max_param_diff": max(float((a - b).abs().max()) for a, b in zip(p0, p1)),
            "device": torch.cuda.get_device_name() if device == "cuda" else device}


def _items(batch) -> int:
    """Rows of the batch's first packed input (points, nodes, events)."""
    for key in ("coord", "points", "x", "frames", "events"):
        value = batch.get(key) if hasattr(batch, "get") else getattr(batch, key, None)
        if isinstance(value, torch.Tensor):
            return int(value.shape[0])
    return -1


# ------------------------------------------------------------------- memory per point (PCM)

def measure_points(points: list[int], args, emit) -> None:
    """Peak and activation memory per point of the PCM base step for every ``PATHS``."""
    import segmentation_gpu as seg
    from geossm.config import find_config, load_config
    from geossm.registry import TASKS as TASK_REGISTRY
    import geossm.tasks.segmentation  # noqa: F401  (registers the task)

    device = torch.device("cpu" if args.tiny else "cuda")
    overrides = TASKS["segmentation"][2] if args.tiny else []
    cfg = load_config(find_config(TASKS["segmentation"][0]), overrides)
    task = TASK_REGISTRY.get(str(cfg.task))(cfg)
    torch.manual_seed(0)
    model = task.build_model().to(device).train()
    scans = seg.load_scans(SHARED / "semantickitti" / "semantickitti_npy_3scans.tar.xz")
    g = np.random.default_rng(0)
    for total in points:
        per_scene = min(total, 500 if args.tiny else 50_000)
        k = max(1, math.ceil(total / per_scene))
        scenes = [seg.make_scene(scans, total // k, g) for _ in range(k)]
        batch = seg.batch_of(scenes, device)
        if args.knn_in_loader:   # as train.knn_in_loader: the neighbours come with the batch
            from geossm.tasks.segmentation.neighbours import knn
            batch["neighbours"] = knn(batch["coord"].float().cpu(), batch["cu_seqlens"].cpu(),
                                      int(cfg.model.k)).to(device)
        if cfg.model.in_channels != batch["feat"].shape[1]:
            raise ValueError(f"the config's model.in_channels={cfg.model.in_channels} does not "
                             f"fit the scenes' {batch['feat'].shape[1]} features")
        for paths in ("default", "all", "off"):
            set_memory_paths(model, paths)
            held = torch.cuda.memory_allocated() if device.type == "cuda" else 0
            res = seg.step_or_oom(model, batch, iters=1 if args.tiny else 2, warmup=1)
            row = {"bench": "step_profile_points", "points": int(batch["coord"].shape[0]),
                   "scenes": k, "paths": paths, "grad_checkpoint": False,
                   "knn_in_loader": bool(args.knn_in_loader)}
            if res is None:
                row["error"] = "out of memory"
            else:
                t, peak_gib = res
                act = peak_gib * 2 ** 30 - held
                row.update({"step_s": round(t, 4), "peak_mem_gib": round(peak_gib, 2),
                            "activation_kb_per_point":
                                round(act / row["points"] / 1e3, 2) if device.type == "cuda"
                                else None})
            emit(row)
        del batch
        if device.type == "cuda":
            torch.cuda.empty_cache()


# ------------------------------------------------------------------------------------ main

def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=None,
                    help="instead of each task's two default batch sizes")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps (Triton compiles)")
    ap.add_argument("--batches", type=int, default=3, help="distinct batches cycled over")
    ap.add_argument("--graphs", type=int, default=3000,
                    help="Peptides-func molecules converted (the csv's first rows)")
    ap.add_argument("--peptides-cache", type=Path, default=None,
                    help="compact cache of the first --graphs Peptides-func molecules "
                         "(PeptidesFunc(..., max_graphs=N, cache=PATH) writes one; without it "
                         "they are converted with RDKit + OGB). Default: .cache/"
                         "peptides_func_<graphs>.npz of the repository when present")
    ap.add_argument("--paths", choices=list(PATHS), default="default",
                    help="memory-saving paths (see PATHS; off = as before them)")
    ap.add_argument("--points", type=int, nargs="+", default=None,
                    help="PCM memory per point at these point counts instead of the tasks")
    ap.add_argument("--knn-in-loader", action="store_true",
                    help="--points: the kNN embedding's neighbours computed before the steps "
                         "(on the CPU, as train.knn_in_loader does in the loader)")
    ap.add_argument("--cuda-graph", nargs="?", const="true", default=None,
                    choices=["true", "false", "auto"],
                    help="train.cuda_graph (bare flag: true; default: the config's)")
    ap.add_argument("--compile", default=None, metavar="SPEC",
                    help="train.compile=SPEC: true or a mapping, e.g. '{dynamic: true}'")
    ap.add_argument("--graph-check", type=int, default=0, metavar="N",
                    help="N steps with --check-a vs --check-b from the same weights (one row; "
                         "the task named in --tasks, else events)")
    ap.add_argument("--check-a", nargs="*", default=["train.cuda_graph=false"],
                    help="--graph-check: overrides of the first run")
    ap.add_argument("--check-b", nargs="*", default=["train.cuda_graph=true"],
                    help="--graph-check: overrides of the second run")
    ap.add_argument("--loop", type=int, default=0, metavar="N",
                    help="also time the trainer's epoch loop (its loader, copy, step, meters) "
                         "over N batches, twice; row keys loop_*")
    ap.add_argument("--op-sources", action="store_true",
                    help="one more row per case: operators of one step by calling line")
    ap.add_argument("--host-top", type=int, default=0, metavar="N",
                    help="also where the host's time goes (row key 'host'): the N costliest "
                         "operators, forward modules and backward nodes (host_breakdown)")
    ap.add_argument("--override", nargs="*", default=[],
                    help="extra config overrides, e.g. model.packed_scan=false")
    ap.add_argument("--out", type=Path, default=None, help="also write the JSON lines here")
    ap.add_argument("--tiny", action="store_true", help="CPU check: tiny models and batches")
    args = parse_with_config(ap, argv)
    if args.tiny:
        args.steps, args.warmup, args.batches, args.graphs = 1, 1, 1, 40
        args.graph_check = min(args.graph_check, 3)
    if args.peptides_cache is None:
        found = REPO / ".cache" / f"peptides_func_{args.graphs}.npz"
        args.peptides_cache = found if found.is_file() else None
    device = "cpu" if args.tiny else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("step_profile: no CUDA device (use --tiny for the CPU check)")
    rows = []

    def emit(row: dict) -> None:
        print(json.dumps(row), flush=True)
        rows.append(row)
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text("".join(json.dumps(r) + "\n" for r in rows))

    if args.points:
        measure_points(args.points, args, emit)
        return
    if args.graph_check:
        with tempfile.TemporaryDirectory() as tmp:
            emit(graph_check(args, Path(tmp), device))
        return
    with tempfile.TemporaryDirectory() as tmp:
        for task in args.tasks:
            sizes = args.batch_sizes or (TINY_BATCHES if args.tiny else TASKS[task][1])
            for batch_size in sizes:
                try:
                    row = measure_task(task, batch_size, args, Path(tmp), device)
                    ops = row.pop("op_sources", None)
                    emit(row)
                    if ops is not None:
                        emit(ops)
                except torch.OutOfMemoryError:
                    emit({"bench": "step_profile", "task": task, "batch_size": batch_size,
                          "error": "out of memory"})
                    torch.cuda.empty_cache()
                except (ImportError, OSError, ValueError, RuntimeError) as err:
                    if args.tiny:
                        raise  # the CPU check must run every case
                    # One case that cannot run (a missing package or file) is reported and
                    # the others still run: the GPU call is one shot.
                    emit({"bench": "step_profile", "task": task, "batch_size": batch_size,
                          "error": f"{type(err).__name__}: {err}"[:500]})


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        main()
