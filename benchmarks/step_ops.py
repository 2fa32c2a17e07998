"""Operator and host-sync count of one training step, on the CPU (no GPU needed).

The GPU step of a model that launches many small kernels is bound by the host: every aten
operator costs ~10 µs of dispatch, and every operator whose output size depends on the data
(``nonzero``, ``unique``, a boolean index, ``.item()``, ...) makes the host wait for the device.
Both numbers are properties of the code, not of the device, so they are counted here on the
CPU, on the same batches as ``step_profile.py`` (the task's config, dataset and ``collate`` on
the real samples of ``../shared/data``, one ``Trainer._train_step``):

- ``aten_ops``: operator calls per step seen by ``torch.profiler`` (nested calls included, as
  ``step_profile.py`` counts them on the GPU);
- ``dispatched_ops``: operators reaching the kernels (``TorchDispatchMode``: forward, backward
  and optimizer; roughly one kernel launch each on the GPU);
- ``syncs``: dispatched operators and tensor reads that need the data on the host, by kind
  (``syncs_by_kind``: see ``SYNC_KINDS``);
- ``model_aten_ops`` / ``model_dispatched_ops`` and ``optimizer_aten_ops`` /
  ``optimizer_dispatched_ops`` (with ``--split``): the same counts of one more step split into
  the forward, loss, backward and gradient clipping (``Trainer._backward_step``) and the
  optimizer step with the schedule (fused AdamW: one operator on CUDA; on the CPU the
  profiler also counts what the fused kernel runs inside);
- ``step_ms``: median CPU wall time of ``--steps`` steps after ``--warmup``;
- ``collate_ms``: median wall time of the task's ``collate`` for one batch (a loader worker's
  work per batch, e.g. the graph task's token plan), after one warm-up call;
- ``sync_stacks`` (with ``--sync-stacks``): every sync site with its project callers,
  ``"kind file:line < caller:line < ..."`` innermost first (``top_sync_sites`` names only the
  innermost frame, which for a shared helper says nothing about who called it).

    python benchmarks/step_ops.py [--tasks detection] [--batch-sizes 1 8] [--steps 3]
        [--threads 1] [--out ops.jsonl] [--top 15] [--sync-stacks] [--split]
    python benchmarks/step_ops.py --tiny        # tiny models: the check a test runs
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode, _disable_current_modes

sys.path.insert(0, str(Path(__file__).resolve().parent))
import step_profile  # noqa: E402  (build_trainer, make_batches, data_overrides, TASKS)

aten = torch.ops.aten
#: kind -> dispatched operators whose output size (or value on the host) depends on the data
SYNC_KINDS = {
    "scalar": (aten._local_scalar_dense.default, aten.is_nonzero.default, aten.equal.default),
    "nonzero": (aten.nonzero.default, aten.argwhere.default),
    "masked_select": (aten.masked_select.default,),
    "unique": (aten._unique.default, aten._unique2.default, aten.unique_dim.default,
               aten.unique_consecutive.default),
    "bincount": (aten.bincount.default,),
}
#: repeat_interleave with a tensor of repeats: a sync unless ``output_size`` is given
REPEAT = (aten.repeat_interleave.Tensor, aten.repeat_interleave.self_Tensor)
#: indexing operators: a sync when one index is a boolean mask
INDEXING = (aten.index.Tensor, aten.index_put.default, aten.index_put_.default,
            aten._index_put_impl_.default)
#: Python-level tensor reads that copy to the host (``.item()`` is ``_local_scalar_dense``)
HOST_READS = ("tolist", "numpy", "cpu")
#: factories that copy host data to ``device=``: on the GPU a copy the host waits for
HOST_COPIES = ("tensor", "as_tensor")


def _sync_kind(func, args, kwargs) -> str | None:
    for kind, ops in SYNC_KINDS.items():
        if func in ops:
            return kind
    if func in REPEAT:
        return None if kwargs.get("output_size") is not None else "repeat_interleave"
    if func in INDEXING:
        indices = args[1] if len(args) > 1 else kwargs.get("indices", ())
        if any(isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8)
               for i in indices):
            return "bool_index"
    return None


class OpCounter(TorchDispatchMode):
    """Counts dispatched operators (``ops[name]``) and host-sync points (``syncs[kind]``).

    ``HOST_READS`` (``Tensor.tolist``, ``.numpy``, ``.cpu``) and ``HOST_COPIES`` with a
    ``device`` (``torch.tensor(..., device=d)``: on the GPU a blocking copy) are counted too
    while the mode is active (they do not reach the dispatcher for CPU tensors), except inside a dispatched
    operator (the CPU implementation of a custom op reading its inputs is not a device sync).

    Tensors that live on the host on every device (``host_tensors``, the results of ``.cpu()``
    and what operators compute from only such tensors) are followed: reading them is no sync.

    Args:
        host_tensors: tensors that live on the host on every device (the optimizer's step
            counters).
        stack_depth: project frames recorded per sync in ``sync_stacks`` (innermost first),
            default 0: none (only ``sync_sites``, the innermost one).
    """

    def __init__(self, host_tensors=(), stack_depth: int = 0):
        super().__init__()
        self.ops: collections.Counter = collections.Counter()
        self.syncs: collections.Counter = collections.Counter()
        self.sync_sites: collections.Counter = collections.Counter()
        self.sync_stacks: collections.Counter = collections.Counter()
        self.stack_depth = int(stack_depth)
        self._patched: list = []
        self._host: dict[int, torch.Tensor] = {}   # id -> tensor (kept alive: ids stay unique)
        for t in host_tensors:
            self._mark_host(t)
        self._depth = 0

    def _mark_host(self, value) -> None:
        for t in torch.utils._pytree.tree_leaves(value):
            if isinstance(t, torch.Tensor):
                self._host[id(t)] = t

    def _on_host(self, args, kwargs) -> bool:
        tensors = [t for t in torch.utils._pytree.tree_leaves((args, kwargs))
                   if isinstance(t, torch.Tensor)]
        return bool(tensors) and all(id(t) in self._host for t in tensors)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        self.ops[str(func.overloadpacket.__name__)] += 1
        on_host = self._on_host(args, kwargs)
        kind = _sync_kind(func, args, kwargs)
        if kind and not on_host:
            self._record(kind)
        self._depth += 1
        try:
            out = func(*args, **kwargs)
        finally:
            self._depth -= 1
        if on_host:
            self._mark_host(out)
        return out

    def _record(self, kind: str) -> None:
        self.syncs[kind] += 1
        # where in the geossm/tasks code the sync happens: the innermost project frame (and,
        # for sync_stacks, its project callers)
        sites = []
        frame = sys._getframe(2)
        while frame is not None and len(sites) < max(self.stack_depth, 1):
            name = frame.f_code.co_filename
            if "step_ops.py" not in name and step_profile.is_project_file(name):
                sites.append(f"{Path(name).name}:{frame.f_lineno}")
            frame = frame.f_back
        if sites:
            self.sync_sites[f"{kind} {sites[0]}"] += 1
            if self.stack_depth:
                self.sync_stacks[f"{kind} {' < '.join(sites)}"] += 1

    def __enter__(self):
        for name in HOST_READS:
            original = getattr(torch.Tensor, name)

            def counted(t, *a, _original=original, _name=name, **kw):
                if not self._depth and id(t) not in self._host:
                    self._record(_name)
                out = _original(t, *a, **kw)
                if _name == "cpu":
                    # a CPU tensor's .cpu() is itself; on the GPU it is a new host tensor
                    if out is t:
                        with _disable_current_modes():   # not an operator of the step
                            out = out.clone()
                    self._mark_host(out)
                return out

            setattr(torch.Tensor, name, counted)
            self._patched.append((torch.Tensor, name, original))
        for name in HOST_COPIES:
            original = getattr(torch, name)

            def copied(*a, _original=original, **kw):
                if not self._depth and kw.get("device") is not None:
                    self._record("to_device")
                return _original(*a, **kw)

            setattr(torch, name, copied)
            self._patched.append((torch, name, original))
        return super().__enter__()

    def __exit__(self, *exc):
        for owner, name, original in self._patched:
            setattr(owner, name, original)
        self._patched.clear()
        return super().__exit__(*exc)


def profiler_aten_ops(step, batch) -> int:
    """``aten::`` events of one step under ``torch.profiler`` (nested calls included)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step(batch)
    return sum(ev.name.startswith("aten::") for ev in prof.events())


def split_counts(trainer, optimizer, scheduler, clip: float, batch) -> dict:
    """Profiler and dispatched operators of one step, split into the model's part (forward,
    loss, backward, clipping) and the optimizer's (step and schedule): ``model_aten_ops``,
    ``model_dispatched_ops``, ``optimizer_aten_ops``, ``optimizer_dispatched_ops``."""
    from torch.profiler import ProfilerActivity, profile

    def phases():
        yield "model", lambda: trainer._backward_step(batch, optimizer, clip)
        yield "optimizer", lambda: (optimizer.step(), scheduler.step())

    row = {}
    for name, run in phases():   # dispatched operators: one step under the counter
        counter = OpCounter()
        with counter:
            run()
        row[f"{name}_dispatched_ops"] = sum(counter.ops.values())
    for name, run in phases():   # profiler events: another step (the counter adds its own)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            run()
        row[f"{name}_aten_ops"] = sum(ev.name.startswith("aten::") for ev in prof.events())
    return {k: row[k] for k in ("model_aten_ops", "model_dispatched_ops",
                                "optimizer_aten_ops", "optimizer_dispatched_ops")}


def collate_ms(trainer, batch_size: int, count: int) -> float:
    """Median wall time (ms) of ``task.collate`` on ``count`` random batches of training
    samples, after one untimed call (lazy compilation, caches)."""
    import numpy as np

    dataset = trainer.task.build_dataset(str(trainer.cfg.data.split))
    g = np.random.default_rng(1)
    times = []
    for i in range(count + 1):
        idx = g.choice(len(dataset), size=batch_size, replace=batch_size > len(dataset))
        samples = [dataset[int(j)] for j in idx]
        t0 = time.perf_counter()
        trainer.task.collate(samples)
        if i:
            times.append(time.perf_counter() - t0)
    return round(1e3 * statistics.median(times), 1)


def measure(task: str, batch_size: int, args, tmp: Path) -> dict:
    overrides = step_profile.data_overrides(task, tmp, args.graphs, None)
    if args.tiny:
        overrides += step_profile.TASKS[task][2]
    # the fused optimizer, as on CUDA (build_optimizer's default there): one operator, not
    # one per parameter and moment
    overrides += ["+train.optimizer.fused=true", *args.override]
    torch.manual_seed(0)
    trainer, optimizer, scheduler = step_profile.build_trainer(task, overrides, "cpu",
                                                               args.config)
    try:
        trainer.model.train()
        clip = float(trainer.cfg.train.grad_clip or 0.0)
        batches = step_profile.make_batches(trainer, batch_size, args.batches)

        def step(batch) -> None:
            trainer._train_step(batch, optimizer, scheduler, clip)

        for i in range(args.warmup):
            step(batches[i % len(batches)])
        times = []
        for i in range(args.steps):
            t0 = time.perf_counter()
            step(batches[i % len(batches)])
            times.append(time.perf_counter() - t0)
        # the optimizer's step counters stay on the host on the GPU too
        steps = [s["step"] for s in optimizer.state.values()
                 if isinstance(s.get("step"), torch.Tensor)]
        counter = OpCounter(host_tensors=steps, stack_depth=args.sync_stacks)
        with counter:
            step(batches[0])
        row = {"bench": "step_ops", "task": task,
               "config": step_profile.task_config(task, args.config),
               "batch_size": batch_size, "tiny": bool(args.tiny),
               "items_per_batch": step_profile._items(batches[0]),
               "step_ms": round(1e3 * statistics.median(times), 1),
               "collate_ms": collate_ms(trainer, batch_size, args.batches),
               "aten_ops": profiler_aten_ops(step, batches[0]),
               "dispatched_ops": sum(counter.ops.values()),
               "syncs": sum(counter.syncs.values()),
               "syncs_by_kind": dict(counter.syncs.most_common()),
               "top_ops": dict(counter.ops.most_common(args.top)),
               "top_sync_sites": dict(counter.sync_sites.most_common(args.top)),
               "threads": torch.get_num_threads()}
        if args.split:
            row.update(split_counts(trainer, optimizer, scheduler, clip, batches[0]))
        if args.sync_stacks:
            row["sync_stacks"] = dict(counter.sync_stacks.most_common())
        return row
    finally:
        trainer.close()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", nargs="+", default=["detection"], choices=list(step_profile.TASKS))
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=None,
                    help="default: the task's two batch sizes of step_profile.py")
    ap.add_argument("--steps", type=int, default=3, help="timed steps (median)")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--batches", type=int, default=2, help="distinct batches cycled over")
    ap.add_argument("--graphs", type=int, default=200, help="Peptides-func molecules converted")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--top", type=int, default=15, help="most frequent ops / sync sites shown")
    ap.add_argument("--sync-stacks", type=int, nargs="?", const=6, default=0, metavar="DEPTH",
                    help="also print every sync with its project callers (DEPTH frames, "
                         "default 6)")
    ap.add_argument("--split", action="store_true",
                    help="also count the model's part (forward, loss, backward, clipping) and "
                         "the optimizer's of one more step")
    ap.add_argument("--override", nargs="*", default=[], help="extra config overrides")
    ap.add_argument("--out", type=Path, default=None, help="also write the JSON lines here")
    ap.add_argument("--tiny", action="store_true", help="tiny models (the test's check)")
    args = step_profile.parse_with_config(ap, argv)
    if args.tiny:
        args.steps, args.warmup, args.batches, args.graphs = 1, 1, 1, 40
    torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for task in args.tasks:
            sizes = args.batch_sizes or (step_profile.TINY_BATCHES if args.tiny
                                         else step_profile.TASKS[task][1])
            for batch_size in sizes:
                row = measure(task, batch_size, args, Path(tmp))
                print(json.dumps(row), flush=True)
                rows.append(row)
                if args.out:
                    args.out.parent.mkdir(parents=True, exist_ok=True)
                    args.out.write_text("".join(json.dumps(r) + "\n" for r in rows))


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        main()
