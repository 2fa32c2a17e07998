"""The trainer: one loop for single-process and DDP runs, evaluation and prediction.

Run directory (``output_dir``; default ``runs/<config name>/<YYYYmmdd-HHMMSS>``)::

    config.yaml     resolved config of the run
    train.log       console log
    metrics.jsonl   one JSON object per evaluation ({"epoch", "split", ...metrics})
    tb/             TensorBoard event files
    last.pt         checkpoint after the latest epoch (resume from it)
    best.pt         checkpoint of the best validation epoch

Optimisation (``geossm.engine.optim``): the optimiser ``train.optimizer`` (default AdamW) over
the task's parameter groups (``Task.parameter_groups``: decay on matrices only) split by
``train.param_groups``, a per-step schedule ``train.schedule`` (default: linear warm-up over
``train.warmup_epochs``, then a cosine decay to ``train.min_lr``), global gradient-norm
clipping at ``train.grad_clip``, bf16 autocast on CUDA when ``train.amp``. Epochs are counted
from 1; a checkpoint's ``epoch`` is the last finished one.

Out of memory (``torch.OutOfMemoryError``, CUDA): the step's tensors are freed, one warning
names the batch (samples, points), the peak memory and the remedies (lower
``train.batch_size``, ``model.grad_checkpoint=true`` where the model has it), the batch is
skipped and training goes on; ``train.oom_skip_limit`` consecutive failing batches (default 3)
stop the run with ``OutOfMemoryStop``, a one-line error. Under DDP a batch cannot be skipped by
one process alone (the others wait for its gradients), so the first out-of-memory batch stops
the run with that error. Out of memory while evaluating stops with that error too (skipping
would report metrics of part of a split). Each epoch's ``train`` row of ``metrics.jsonl`` reports
``oom_skipped`` and, on CUDA, ``peak_mem_gib`` (``torch.cuda.max_memory_allocated``).

Host overhead (both off by default; results do not change while off): ``train.cuda_graph: true``
(or ``auto``: on for one CUDA process) replays the forward, backward and clipping of every batch
of a recurring layout as one CUDA graph (``geossm.engine.cuda_graph``: static shapes, no host
syncs in the step, one process; the epoch's ``train`` row then reports ``cuda_graph_replayed``,
the replays so far); ``train.compile`` runs the training forward under ``torch.compile`` (true,
or a mapping of its arguments such as ``{mode: reduce-overhead}``, or ``{modules: [RMSNorm]}``
for named sub-module classes only, ``{devices: [cuda]}`` for those device types only; ``auto``:
where the step is replayed as a CUDA graph).
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler
from tqdm.auto import tqdm

from geossm.cache import main_process_first
from geossm.config import save_config, to_container
from geossm.engine import distributed as dist
from geossm.engine.checkpoint import (CheckpointError, get_rng_state, load_checkpoint,
                                      load_model_state, save_checkpoint, seed_everything,
                                      set_rng_state)
from geossm.engine.cuda_graph import GraphedStep, cuda_graph_wanted
from geossm.engine.ema import build_weight_average
from geossm.engine.logging import RunLogger, setup_console
from geossm.engine.metrics import MeanMetric
from geossm.engine.finetune import init_from_checkpoint
from geossm.engine.batch_buffer import BufferCollate
from geossm.engine.seeded_batches import SeededBatchSampler, SeededFetch
from geossm.engine.optim import (build_optimizer, build_scheduler, check_optimization_config,
                                  clip_grad_norm)
from geossm.engine.task import Task, build_task, move_to
from geossm.registry import import_modules


class ShardSampler(Sampler[int]):
    """Indices ``rank, rank + K, ...`` of a dataset, in order and without padding (evaluation:
    every sample is seen exactly once over all ranks, unlike ``DistributedSampler``)."""

    def __init__(self, length: int, rank: int = 0, world_size: int = 1) -> None:
        self.length, self.rank, self.world_size = length, rank, world_size

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.length, self.world_size))

    def __len__(self) -> int:
        return len(range(self.rank, self.length, self.world_size))


class OutOfMemoryStop(MemoryError, ValueError):
    """Training stopped on out-of-memory batches (the message says which and what to change).

    Also a ``ValueError``: the command line reports it as one line, like other errors a
    user's settings cause."""


def _pop_names(options: dict[str, Any], key: str, what: str) -> list[str] | None:
    """``options[key]`` removed from ``train.compile``'s options: None when absent, else a list
    of strings (a bare string is refused: ``in`` would match it by characters)."""
    value = options.pop(key, None)
    if value is not None and (isinstance(value, str)
                              or not all(isinstance(v, str) for v in value)):
        raise ValueError(f"train.compile.{key}: expected a list of {what}, got {value!r}")
    return value


def _gib(num_bytes: float) -> str:
    return f"{num_bytes / 2 ** 30:.2f} GiB"


def _batch_description(batch: Any, num_samples: int) -> str:
    """``"8 samples, 377,412 points"`` (points from ``cu_seqlens``, else the first tensor)."""
    rows = None
    if isinstance(batch, Mapping):
        if isinstance(batch.get("cu_seqlens"), torch.Tensor) and batch["cu_seqlens"].numel():
            rows = int(batch["cu_seqlens"][-1])
        else:
            rows = next((int(v.shape[0]) for v in batch.values()
                         if isinstance(v, torch.Tensor) and v.dim() > 0), None)
    text = f"{num_samples} sample{'s' if num_samples != 1 else ''}"
    return text if rows is None else f"{text}, {rows:,} points"


#: Evaluation loaders kept with ``train.persistent_workers``: validation and test.
EVAL_LOADERS_KEPT = 2


def _seed_worker(worker_id: int) -> None:
    # torch seeds each worker from the loader's base seed; NumPy and random would otherwise
    # start from the same forked state in every worker (identical "random" augmentations).
    import random
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def resolve_run_dir(cfg: DictConfig, config_name: str = "run") -> Path:
    """The run directory: ``output_dir`` if set; else with ``resume=true`` the newest
    ``runs/<config_name>/*`` holding ``last.pt``; with ``resume=PATH`` the checkpoint's folder;
    else a new ``runs/<config_name>/<timestamp>``."""
    if cfg.output_dir:
        return Path(str(cfg.output_dir))
    resume = cfg.resume
    if isinstance(resume, str) and resume:
        return Path(resume).parent
    base = Path("runs") / config_name
    if resume is True:
        runs = sorted(p.parent for p in base.glob("*/last.pt"))
        if not runs:
            raise FileNotFoundError(
                f"resume=true: no run with last.pt under {base}/ (set output_dir=RUN_DIR or "
                "resume=PATH/TO/last.pt)")
        return runs[-1]
    return base / time.strftime("%Y%m%d-%H%M%S")


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict, path: Path) -> None:
    """``optimizer.load_state_dict(state)``, with an error that says what to do when the
    checkpoint's parameter layout is not the model's (e.g. a LION run saved before the two
    directions' weights were stored as one parameter per pair: the weights load, the optimizer
    state cannot)."""
    try:
        optimizer.load_state_dict(state)
    except ValueError as err:
        raise CheckpointError(
            f"resume: the optimizer state in {path} does not fit this model's parameters "
            f"({err}); it was saved with another parameter layout. Start a new run from its "
            f"weights with model.init_from={path} (the optimizer state starts afresh)") from err


class Trainer:
    """Builds the task and model from a config and trains, evaluates or predicts.

    Args:
        cfg: a config from ``geossm.config.load_config``.
        task: a task instance (default: ``TASKS[cfg.task](cfg)``).
        config_name: names the default run directory ``runs/<config_name>/<timestamp>``.

    Under ``torchrun`` the process group starts here (see ``geossm.engine.distributed``).
    """

    def __init__(self, cfg: DictConfig, task: Task | None = None, config_name: str = "run") -> None:
        import_modules(list(cfg.imports or []))
        self.cfg = cfg
        self.device = dist.resolve_device(cfg.device)
        dist.setup(self.device)
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        self.is_main = self.rank == 0
        self.log = setup_console(rank=self.rank)
        if cfg.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True)
            torch.backends.cudnn.benchmark = False
        seed_everything(int(cfg.seed))
        check_optimization_config(cfg.train)
        if task is None:
            task = build_task(cfg)
        self.task = task
        # Same seed on every rank above: identical initial weights; distinct streams below so
        # ranks do not draw identical augmentations / dropout masks.
        self.model = task.build_model().to(self.device)
        self.loss_fn = task.build_loss(self.model)
        #: ``train.ema``: the moving average of the weights that evaluation, checkpoints'
        #: ``model`` entry and predict use (``geossm.engine.ema``); None when off.
        self.ema = build_weight_average(self.model, cfg.train.get("ema"))
        seed_everything(int(cfg.seed) + self.rank)
        self.ddp_model: torch.nn.Module = self.model
        if self.world_size > 1:
            # Gradients as views of the all-reduce buckets: no copy in or out of the buckets.
            self.ddp_model = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=bool(cfg.train.find_unused_parameters),
                gradient_as_bucket_view=True)
        #: Called as ``callback(trainer, step, num_samples)`` after every optimizer step (on
        #: every rank; e.g. benchmarks timing steps). Keep them cheap: no host sync.
        self.step_callbacks: list = []
        self.config_name = config_name
        self.run_dir: Path | None = None
        self.amp = bool(cfg.train.amp) and self.device.type == "cuda"
        self.progress = bool(cfg.train.progress) and self.is_main
        self.best_metric, self.best_mode = task.selection_metric()
        if self.best_mode not in ("max", "min"):
            raise ValueError(f"eval.mode must be 'max' or 'min', got {self.best_mode!r}")
        #: ``train.cuda_graph``: the forward, backward and clipping replayed as a CUDA graph.
        self.graphed_step: GraphedStep | None = self._graphed_step(cfg.train.get("cuda_graph"))
        #: ``train.persistent_workers`` with ``train.num_workers`` > 0: loader workers live for
        #: the run, and each evaluated dataset keeps its loader (``_eval_loader``).
        self.persistent_workers = (bool(cfg.train.get("persistent_workers"))
                                   and int(cfg.train.num_workers) > 0)
        self._eval_loaders: dict[int, tuple[Dataset, DataLoader]] = {}
        self.ddp_model = self._compiled(self.ddp_model, cfg.train.get("compile"))

    @property
    def evaluated_model(self) -> torch.nn.Module:
        """The weights that are validated, tested, saved as ``model`` and used by predict:
        the ``train.ema`` average when on, else the trained model."""
        return self.ema.module if self.ema is not None else self.model

    # ----------------------------------------------------------------- plumbing
    def _compiled(self, module: torch.nn.Module, spec: Any) -> torch.nn.Module:
        """``module`` under ``torch.compile`` for ``train.compile``: null / false = off (the
        default), true = ``torch.compile``'s defaults, a mapping = its keyword arguments
        (``mode: reduce-overhead``, ``dynamic``, ``backend``, ``fullgraph``), ``auto`` = true
        where the step is replayed as a CUDA graph (``train.cuda_graph`` on for this run: its
        shapes are static, so one compilation serves every batch) and off elsewhere (CPU,
        DDP: batches of many sizes would recompile). The whole model
        runs compiled in the training forward only; evaluation, checkpoints and the optimizer
        see ``self.model``. With ``modules: [ClassName, ...]`` only the sub-modules of those
        classes are compiled, in place (``nn.Module.compile``; evaluation runs them compiled
        too): the dense parts of a model whose other parts (data-dependent sizes, custom
        kernels) cannot be traced. ``devices: [cuda]`` compiles only on those device types
        (e.g. ``{dynamic: true, devices: [cuda]}``: a config's GPU runs compiled while its CPU
        runs, tests and checks stay eager)."""
        if spec == "auto":
            spec = self.graphed_step is not None
        if spec is None or spec is False:
            return module
        if spec is True:
            options: dict[str, Any] = {}
        elif isinstance(spec, Mapping):
            options = dict(to_container(spec)) if isinstance(spec, DictConfig) else dict(spec)
            known = {"mode", "dynamic", "backend", "fullgraph", "options", "modules", "devices"}
            unknown = set(options) - known
            if unknown:
                raise ValueError(f"train.compile: unknown keys {sorted(unknown)} (known: "
                                 f"{', '.join(sorted(known))})")
        else:
            raise ValueError(f"train.compile: expected null, true/false, auto or a mapping "
                             f"of torch.compile arguments, got {spec!r}")
        devices = _pop_names(options, "devices", "device types such as [cuda]")
        names = _pop_names(options, "modules", "class names")
        if devices is not None and self.device.type not in devices:
            return module
        if names is None:
            return torch.compile(module, **options)
        present = {type(m).__name__ for m in module.modules()}
        missing = sorted(set(names) - present)
        if missing:
            raise ValueError(f"train.compile.modules: {missing} not in the model (its classes: "
                             f"{', '.join(sorted(present))})")
        for sub in module.modules():
            if type(sub).__name__ in names:
                sub.compile(**options)
        return module

    def _graphed_step(self, enabled: Any) -> GraphedStep | None:
        """The ``GraphedStep`` of ``train.cuda_graph``: false (the default), true (CUDA and one
        process only: a DDP backward all-reduces through hooks the graph cannot hold) or
        ``auto`` (on where true would be allowed, off on CPU and under DDP: for configs whose
        step has static shapes and no host syncs)."""
        if not cuda_graph_wanted(enabled, self.device, self.world_size > 1):
            return None
        if self.device.type != "cuda":
            raise ValueError(f"train.cuda_graph=true needs a CUDA device, got device "
                             f"{self.device} (set train.cuda_graph=false)")
        if self.world_size > 1:
            raise ValueError("train.cuda_graph=true runs in one process only, got "
                             f"{self.world_size} (torchrun); set train.cuda_graph=false")
        params = [p for p in self.model.parameters() if p.requires_grad]
        return GraphedStep(params, device=self.device)

    def autocast(self) -> contextlib.AbstractContextManager:
        if not self.amp:
            return contextlib.nullcontext()
        # A captured step must not keep autocast's cache of casted weights across the capture
        # (PyTorch's advice for CUDA graphs); without a graph the cache stays on.
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16,
                              cache_enabled=self.graphed_step is None)

    def _loader(self, dataset: Dataset, train: bool) -> DataLoader:
        cfg = self.cfg
        bs = int(cfg.train.batch_size if train or not cfg.eval.batch_size else cfg.eval.batch_size)
        if bs < 1:
            raise ValueError(f"batch_size must be >= 1, got {bs}")
        if train:
            sampler: Sampler = DistributedSampler(dataset, num_replicas=self.world_size,
                                                  rank=self.rank, shuffle=True,
                                                  seed=int(cfg.seed), drop_last=False)
        else:
            sampler = ShardSampler(len(dataset), self.rank, self.world_size)
        nw = int(cfg.train.num_workers)
        # Their batches come packed into one buffer (receiving each tensor separately costs the
        # main process ~0.5 ms per tensor; ``batch_buffer``); ``move_to`` unpacks them.
        collate = BufferCollate(self.task.collate) if nw > 0 else self.task.collate
        common = dict(collate_fn=collate, num_workers=nw,
                      pin_memory=self.device.type == "cuda", generator=torch.Generator())
        if self.persistent_workers:
            # Workers live across epochs; every batch seeds them from (seed, rank, epoch, batch)
            # (``seeded_batches``), so a resumed run draws what an uninterrupted one does.
            batches = SeededBatchSampler(sampler, bs, key=(int(cfg.seed), self.rank))
            return DataLoader(SeededFetch(dataset), batch_sampler=batches,
                              persistent_workers=True, **common)
        # Workers are started every epoch and draw their seeds from the loader's own generator,
        # re-seeded every epoch (see _set_epoch): the random stream of epoch e is then a function
        # of (seed, rank, e) alone, so a resumed run augments exactly as an uninterrupted one.
        return DataLoader(dataset, batch_size=bs, sampler=sampler,
                          worker_init_fn=_seed_worker if nw > 0 else None,
                          persistent_workers=False, **common)

    def _eval_loader(self, dataset: Dataset) -> DataLoader:
        """The evaluation loader of ``dataset``. With persistent workers the loaders of the
        last ``EVAL_LOADERS_KEPT`` datasets are kept (a run's validation and test sets), so
        their workers start once per run, not once per validation; an older one is dropped
        with its workers."""
        if not self.persistent_workers:
            return self._loader(dataset, train=False)
        kept = self._eval_loaders.pop(id(dataset), None)
        if kept is None or kept[0] is not dataset:
            kept = (dataset, self._loader(dataset, train=False))
        self._eval_loaders[id(dataset)] = kept  # the most recent last
        while len(self._eval_loaders) > EVAL_LOADERS_KEPT:
            self._eval_loaders.pop(next(iter(self._eval_loaders)))
        return kept[1]

    def _build_dataset(self, split: str) -> Dataset:
        """``task.build_dataset(split)``, on rank 0 first: the other ranks wait at a barrier and
        then read the caches it wrote (``geossm.cache.main_process_first``; every rank calls
        this for the same splits, in the same order). No barrier without a process group."""
        with main_process_first():
            return self.task.build_dataset(split)

    def _set_epoch(self, loader: DataLoader, epoch: int) -> None:
        if isinstance(loader.batch_sampler, SeededBatchSampler):
            loader.batch_sampler.set_epoch(epoch)  # the batches' seeds and the sampler's order
            return
        loader.sampler.set_epoch(epoch)  # type: ignore[attr-defined]
        loader.generator.manual_seed(  # type: ignore[union-attr]
            (int(self.cfg.seed) * 1_000_003 + self.rank * 10_007 + epoch) % 2**63)

    def _split_loss(self, out: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if isinstance(out, Mapping):
            if "loss" not in out:
                raise ValueError(f"{type(self.task).__name__}.loss returned a dict without "
                                 f"'loss' (keys {sorted(out)})")
            return out["loss"], {k: v for k, v in out.items() if k != "loss"}
        return out, {}

    def load_weights(self, path: str | os.PathLike) -> dict[str, Any]:
        """Load a checkpoint's ``model`` weights (``weights_only``) into the evaluated model
        (``evaluated_model``); returns the checkpoint."""
        ckpt = load_checkpoint(path, map_location="cpu")
        load_model_state(self.evaluated_model, ckpt, path)
        return ckpt

    def _init_from(self, resume_path: Path | None) -> str | None:
        """Load ``model.init_from`` into the fresh model (before the optimiser is built) and
        return the text to log once the run's log file is open. When resuming, the resumed
        checkpoint wins and ``init_from`` is not read (it was applied when the run started)."""
        init_from = self.cfg.model.get("init_from")
        if not init_from:
            return None
        if resume_path is not None:
            return f"model.init_from={init_from} ignored: resuming from {resume_path}"
        match = init_from_checkpoint(self.model, str(init_from))
        return f"model.init_from={init_from}: {match.table()}"

    # --------------------------------------------------------------- evaluation
    @torch.no_grad()
    def evaluate(self, split: str, dataset: Dataset | None = None,
                 desc: str | None = None) -> dict[str, float]:
        """Metrics of the current weights on ``split`` (mean ``loss`` unless the task's
        ``evaluation_loss`` is False, + the task's metrics), reduced over ranks; every rank gets
        the same dict."""
        dataset = dataset if dataset is not None else self._build_dataset(split)
        loader = self._eval_loader(dataset)
        model = self.evaluated_model
        model.eval()
        metrics = self.task.build_metrics().to(self.device)
        loss_meter = MeanMetric("loss").to(self.device)
        scored = self.task.evaluation_loss  # False: predict_step's outputs take no loss (tracking)
        for index, batch in enumerate(tqdm(loader, desc=desc or f"eval {split}", leave=False,
                                           disable=not self.progress, dynamic_ncols=True)):
            batch = move_to(batch, self.device, non_blocking=True)
            try:
                with self.autocast():
                    outputs = self.task.predict_step(model, batch)
                    if scored:
                        loss, _ = self._split_loss(self.loss_fn(outputs, batch))
                failed = False
            except torch.OutOfMemoryError:
                failed = True  # raised below, once the traceback (and its tensors) is gone
            if failed:
                # Skipping would report metrics of part of the split as if of all of it.
                n = self.task.num_samples(batch)
                raise OutOfMemoryStop(
                    f"out of memory evaluating split '{split}', batch {index} "
                    f"({_batch_description(batch, n)} on {self.device}{self._peak_text()}); "
                    "lower eval.batch_size (null = train.batch_size)")
            if scored:
                loss_meter.add(loss.float(), self.task.num_samples(batch))
            metrics.update(outputs, batch)
        loss_meter.reduce()
        metrics.reduce()
        return {**(loss_meter.compute() if scored else {}), **metrics.compute()}

    def evaluate_checkpoint(self, checkpoint: str | os.PathLike) -> dict[str, dict[str, float]]:
        """``{split: metrics}`` of ``checkpoint`` on ``eval.split`` and ``eval.test_split``."""
        self.load_weights(checkpoint)
        splits = [s for s in (self.cfg.eval.split, self.cfg.eval.test_split) if s]
        if not splits:
            raise ValueError("eval: set eval.split and/or eval.test_split")
        return {str(s): self.evaluate(str(s)) for s in splits}

    # -------------------------------------------------------------------- train
    def _train_step(self, batch: Any, optimizer: torch.optim.Optimizer, scheduler: Any,
                    clip: float) -> tuple[torch.Tensor, dict[str, torch.Tensor], Any]:
        """Forward, backward, clipping and the optimizer step of one batch (on the device).

        Returns the detached loss, the loss's extra terms and the gradient norm (or None).
        Every activation of the step lives in this frame, so it is freed when it returns or
        raises (the out-of-memory recovery relies on that). With ``train.cuda_graph`` the
        forward, backward and clipping are replayed as a CUDA graph (``GraphedStep``); the
        optimizer step and the schedule run after it either way."""
        def backward(b: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor], Any]:
            return self._backward_step(b, optimizer, clip)

        if self.graphed_step is not None:
            result = self.graphed_step(batch, backward)
        else:
            result = backward(batch)
        optimizer.step()
        scheduler.step()
        return result

    def _backward_step(self, batch: Any, optimizer: torch.optim.Optimizer,
                       clip: float) -> tuple[torch.Tensor, dict[str, torch.Tensor], Any]:
        """Forward, loss, backward and gradient clipping of one batch (no optimizer step)."""
        with self.autocast():
            outputs = self.task.forward(self.ddp_model, batch)
            loss, extras = self._split_loss(self.loss_fn(outputs, batch))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = None
        if clip > 0:
            grad_norm = clip_grad_norm(self.model.parameters(), clip)
        return loss.detach(), {k: v.detach() for k, v in extras.items()}, grad_norm

    def _peak_text(self) -> str:
        """``"; peak 71.20 GiB allocated of 79.19 GiB"`` on CUDA (after emptying the cache of
        a failed step's blocks), else ``""``."""
        if self.device.type != "cuda":
            return ""
        total = torch.cuda.get_device_properties(self.device).total_memory
        peak = torch.cuda.max_memory_allocated(self.device)
        torch.cuda.empty_cache()
        return f"; peak {_gib(peak)} allocated of {_gib(total)}"

    def _skip_oom_batch(self, batch: Any, n: int, epoch: int, index: int, consecutive: int,
                        optimizer: torch.optim.Optimizer) -> None:
        """Free what a failed step left (gradients, cached blocks), log one line; raise
        ``OutOfMemoryStop`` under DDP or after ``train.oom_skip_limit`` consecutive failures."""
        optimizer.zero_grad(set_to_none=True)
        what = (f"out of memory at epoch {epoch}, batch {index} ({_batch_description(batch, n)} "
                f"on {self.device}{self._peak_text()})")
        remedy = ("lower train.batch_size (now "
                  f"{int(self.cfg.train.batch_size)}) or set model.grad_checkpoint=true "
                  "(activation checkpointing, where the model has it)")
        if self.world_size > 1:
            raise OutOfMemoryStop(f"{what} on rank {self.rank}: a DDP run cannot skip a batch "
                                  f"on one process; {remedy}")
        limit = int(self.cfg.train.get("oom_skip_limit", 3) or 0)
        if consecutive >= max(1, limit):
            raise OutOfMemoryStop(f"{what}: {consecutive} consecutive batches did not fit "
                                  f"(train.oom_skip_limit={limit}); {remedy}")
        self.log.warning("%s: batch skipped (%d in a row, the run stops at %d); %s", what,
                         consecutive, limit, remedy)

    def _train_epoch(self, loader: DataLoader, epoch: int, step0: int,
                     optimizer: torch.optim.Optimizer, scheduler: Any,
                     logger: RunLogger) -> dict[str, float]:
        cfg = self.cfg
        self.model.train()
        loss_meter = MeanMetric("loss").to(self.device)
        clip = float(cfg.train.grad_clip or 0.0)
        log_every = max(1, int(cfg.train.log_every))
        cuda = self.device.type == "cuda"
        if cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
        t0 = time.perf_counter()
        seen = skipped = consecutive_oom = 0
        bar = tqdm(loader, desc=f"epoch {epoch}", leave=False, disable=not self.progress,
                   dynamic_ncols=True)
        step = step0
        data_wait = 0.0
        batches = iter(bar)
        for index in itertools.count():
            # Host time spent waiting for the loader: near 0 unless data is the bottleneck.
            t_data = time.perf_counter()
            batch = next(batches, None)
            data_wait += time.perf_counter() - t_data
            if batch is None:
                break
            batch = move_to(batch, self.device, non_blocking=True)
            n = self.task.num_samples(batch)
            try:
                loss, extras, grad_norm = self._train_step(batch, optimizer, scheduler, clip)
                failed = False
            except torch.OutOfMemoryError:
                failed = True  # recovered below, once the traceback (and its tensors) is gone
            if failed:
                consecutive_oom += 1
                skipped += 1
                self._skip_oom_batch(batch, n, epoch, index, consecutive_oom, optimizer)
                continue
            consecutive_oom = 0
            if self.ema is not None:
                self.ema.update_parameters(self.model)
            step += 1
            seen += n
            loss_meter.add(loss.float(), n)
            for callback in self.step_callbacks:
                callback(self, step, n)
            if step % log_every == 0:
                # One host sync per log_every steps (loss.item()), not per step.
                value = float(loss)
                if not math.isfinite(value):
                    raise FloatingPointError(f"non-finite training loss {value} at epoch {epoch}, "
                                             f"step {step} (lower train.lr or check the data)")
                rate = seen * self.world_size / max(1e-9, time.perf_counter() - t0)
                bar.set_postfix(loss=f"{value:.4f}", samples_per_s=f"{rate:.1f}")
                scalars = {"loss": value, "lr": optimizer.param_groups[0]["lr"]}
                scalars.update({k: float(v) for k, v in extras.items()})
                if grad_norm is not None:
                    scalars["grad_norm"] = float(grad_norm)
                logger.scalars("train", scalars, step)
        bar.close()
        loss_meter.reduce()
        elapsed = time.perf_counter() - t0
        total = float(loss_meter.weight)
        stats = {**loss_meter.compute(), "lr": optimizer.param_groups[0]["lr"],
                 "samples_per_s": total / max(elapsed, 1e-9), "time_s": elapsed,
                 "data_wait_s": data_wait, "oom_skipped": skipped}
        if cuda:
            stats["peak_mem_gib"] = round(torch.cuda.max_memory_allocated(self.device) / 2 ** 30, 3)
        if self.graphed_step is not None:
            stats["cuda_graph_replayed"] = self.graphed_step.stats["replayed"]
        return stats

    def _check_resumed_selection(self, best: Mapping[str, Any], resume_path) -> None:
        """A resumed run must select ``best.pt`` as its checkpoint did: the kept best value is
        only comparable under the same metric and direction."""
        kept = (best.get("metric"), best.get("mode"))
        if None not in kept and kept != (self.best_metric, self.best_mode):
            raise ValueError(f"resume: {resume_path} selected best.pt by {kept[0]} ({kept[1]}), "
                             f"this run by {self.best_metric} ({self.best_mode}); set "
                             f"eval.metric={kept[0]} eval.mode={kept[1]}, or start a new run")

    def _better(self, value: float, best: float | None) -> bool:
        if value is None or not math.isfinite(value):
            return False
        if best is None:
            return True
        return value > best if self.best_mode == "max" else value < best

    def fit(self, until_epoch: int | None = None) -> dict[str, Any]:
        """Train ``train.epochs`` epochs (resuming if ``resume``), validating every
        ``eval.every`` epochs, then test ``eval.test_split`` with best and last weights.

        Args:
            until_epoch: stop after this epoch as if interrupted (no test); a later run with
                ``resume=true`` continues exactly (time-boxed jobs).

        Returns:
            ``{"run_dir": str, "best": {"epoch", **val metrics, **test_*}, "last": {...}}``;
            ``best`` is the best validation epoch (the last epoch if there is no validation).
        """
        cfg = self.cfg
        run_dir = resolve_run_dir(cfg, self.config_name) if self.is_main else None
        self.run_dir = run_dir = Path(dist.broadcast_object(str(run_dir) if run_dir else None))
        resume_path: Path | None = None
        if cfg.resume:
            resume_path = Path(cfg.resume) if isinstance(cfg.resume, str) else run_dir / "last.pt"
            if not resume_path.is_file():
                raise FileNotFoundError(f"resume: checkpoint not found: {resume_path}")
        epochs = int(cfg.train.epochs)
        if epochs < 1:
            raise ValueError(f"train.epochs must be >= 1, got {epochs}")

        train_set = self._build_dataset(str(cfg.data.split))
        val_split = str(cfg.eval.split) if cfg.eval.split else None
        val_set = self._build_dataset(val_split) if val_split else None
        loader = self._loader(train_set, train=True)
        steps = len(loader)
        if steps == 0:
            raise ValueError(f"training split '{cfg.data.split}' of {type(train_set).__name__} "
                             "is empty")
        init_report = self._init_from(resume_path)
        groups = self.task.parameter_groups(self.model, float(cfg.train.weight_decay))
        optimizer = build_optimizer(self.model, groups, cfg.train, self.device)
        scheduler = build_scheduler(optimizer, cfg.train, epochs, steps)

        start_epoch = 0
        best: dict[str, Any] = {"metric": self.best_metric, "mode": self.best_mode,
                                "value": None, "epoch": None, "metrics": {}}
        last: dict[str, Any] = {}
        if resume_path is not None:
            ckpt = self.load_weights(resume_path)
            for key in ("optimizer", "scheduler", "epoch"):
                if key not in ckpt:
                    raise CheckpointError(f"resume: {resume_path} has no '{key}' (weights only?)")
            load_optimizer_state(optimizer, ckpt["optimizer"], resume_path)
            scheduler.load_state_dict(ckpt["scheduler"])
            self._resume_trained_weights(ckpt, resume_path)
            start_epoch = int(ckpt["epoch"])
            best = dict(ckpt.get("best") or best)
            self._check_resumed_selection(best, resume_path)
            last = dict(ckpt.get("last_metrics") or {})
            rng = ckpt.get("rng") or []
            if len(rng) == self.world_size:
                set_rng_state(rng[self.rank])
            else:
                seed_everything(int(cfg.seed) + self.rank + 1000 * start_epoch)
            self.log.info("resumed from %s at epoch %d", resume_path, start_epoch)

        logger = RunLogger(run_dir, enabled=self.is_main,
                           resume_epoch=start_epoch if resume_path is not None else None)
        if self.is_main:  # first in train.log: each start or resume of a run begins with it
            self.log.info("run %s: %s, %d parameters, %d train samples, %d process(es) on %s",
                          run_dir, type(self.model).__name__,
                          sum(p.numel() for p in self.model.parameters()), len(train_set),
                          self.world_size, self.device)
        if init_report:
            self.log.info("%s", init_report)
        try:
            if self.is_main:
                save_config(cfg, run_dir / "config.yaml")
                if resume_path is None and (run_dir / "last.pt").exists():
                    self.log.warning("%s already holds a run; starting afresh over it", run_dir)
            stop = min(epochs, until_epoch) if until_epoch else epochs
            bar = tqdm(range(start_epoch + 1, stop + 1), initial=start_epoch, total=epochs,
                       desc="epochs", disable=not self.progress, dynamic_ncols=True)
            for epoch in bar:
                self._set_epoch(loader, epoch)
                train_stats = self._train_epoch(loader, epoch, (epoch - 1) * steps,
                                                optimizer, scheduler, logger)
                logger.evaluation(epoch, "train", train_stats, epoch * steps)
                row: dict[str, Any] = {"epoch": epoch, "train_loss": train_stats["loss"]}
                improved = False
                if val_set is not None and (epoch % max(1, int(cfg.eval.every)) == 0
                                            or epoch == epochs):
                    metrics = self.evaluate(val_split, val_set)
                    logger.evaluation(epoch, val_split, metrics, epoch * steps)
                    if self.best_metric not in metrics:
                        raise ValueError(f"best metric '{self.best_metric}' is not reported; "
                                         f"metrics are {sorted(metrics)} (set eval.metric)")
                    row.update(metrics)
                    improved = self._better(metrics[self.best_metric], best["value"])
                    bar.set_postfix({self.best_metric: f"{metrics[self.best_metric]:.4g}"})
                elif val_set is None:
                    improved = True  # no validation: best is the latest epoch
                    row["loss"] = train_stats["loss"]
                last = row
                if improved:
                    best.update(value=row.get(self.best_metric), epoch=epoch, metrics=dict(row))
                self._save(run_dir, epoch, optimizer, scheduler, best, last, improved)
            bar.close()
            finished = stop >= epochs
            best_row = dict(best["metrics"]) if best["metrics"] else dict(last)
            last_row = dict(last)
            if finished and cfg.eval.test_split:
                test_split = str(cfg.eval.test_split)
                test_set = self._build_dataset(test_split)
                final_epoch = int(last_row.get("epoch", epochs))
                test_last = self.evaluate(test_split, test_set, desc="test (last)")
                logger.evaluation(final_epoch, test_split, {"weights": "last", **test_last},
                                  final_epoch * steps)
                last_row.update({f"test_{k}": v for k, v in test_last.items()})
                if best["epoch"] is not None and best["epoch"] != final_epoch:
                    dist.barrier()  # best.pt is written by rank 0
                    self.load_weights(run_dir / "best.pt")
                    test_best = self.evaluate(test_split, test_set, desc="test (best)")
                    logger.evaluation(int(best["epoch"]), test_split,
                                      {"weights": "best", **test_best}, final_epoch * steps)
                else:
                    test_best = test_last
                best_row.update({f"test_{k}": v for k, v in test_best.items()})
        finally:
            logger.close()
        dist.barrier()
        return {"run_dir": str(run_dir), "best": best_row, "last": last_row}

    def _resume_trained_weights(self, ckpt: dict[str, Any], path: Path) -> None:
        """With ``train.ema`` the checkpoint's ``model`` (already loaded) is the average and
        ``train_model`` the trained weights; resuming needs both, and the same setting."""
        if self.ema is None:
            if "train_model" in ckpt:
                raise CheckpointError(f"resume: {path} was trained with train.ema (its 'model' is "
                                      "the average); resume with the same train.ema")
            return
        if "train_model" not in ckpt:
            raise CheckpointError(f"resume: {path} was trained without train.ema; resume "
                                  "without it (train.ema=null)")
        load_model_state(self.model, {"model": ckpt["train_model"]}, path)
        self.ema.n_averaged.fill_(int(ckpt["ema_updates"]))

    def _save(self, run_dir: Path, epoch: int, optimizer: torch.optim.Optimizer, scheduler: Any,
              best: dict[str, Any], last: dict[str, Any], improved: bool) -> None:
        # Every rank's RNG state, so a resumed DDP run continues each rank's stream.
        rng = dist.all_gather_object(get_rng_state())
        if not self.is_main:
            return
        state = {
            "model": self.evaluated_model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "epoch": epoch,
            "rng": rng,
            "best": best,
            "last_metrics": last,
            "config": to_container(self.cfg),
        }
        if self.ema is not None:  # the trained weights, for resuming (``model`` is the average)
            state["train_model"] = self.model.state_dict()
            state["ema_updates"] = int(self.ema.n_averaged)
        save_checkpoint(state, run_dir / "last.pt")
        if improved:
            save_checkpoint(state, run_dir / "best.pt")

    # ------------------------------------------------------------------ predict
    @torch.no_grad()
    def predict(self, input_path: str | os.PathLike, output_path: str | os.PathLike | None = None,
                checkpoint: str | os.PathLike | None = None) -> list[Path]:
        """Run the model on one input file, or on every file of a folder the task reads; writes
        the task's outputs (``.npz`` + ``.ply``; ``geossm.engine.predictor.Predictor``).

        ``output_path`` defaults to ``<input without suffix>.pred.npz`` (for a folder: a folder,
        default the input folder). Returns written paths.
        """
        from geossm.engine.predictor import Predictor
        if checkpoint is not None:
            self.load_weights(checkpoint)
        predictor = Predictor(self.evaluated_model, self.task, self.device, amp=self.amp)
        return predictor.predict_path(input_path, output_path, progress=None if self.progress else False)

    def close(self) -> None:
        """Stop the kept evaluation loaders' workers and end the process group (if this
        process started one)."""
        self._eval_loaders.clear()
        dist.cleanup()
