"""Optimiser, parameter groups and learning-rate schedule, built from the config's ``train`` keys.

::

    train:
      lr: 1.0e-3              # peak learning rate (of every group, times its lr_scale)
      weight_decay: 0.05      # on the parameters the task decays (Task.parameter_groups)
      warmup_epochs: 1        # linear warm-up, per step, before every schedule
      min_lr: 0.0             # floor of the decay (cosine, step, multistep)
      optimizer: {name: AdamW}     # any torch.optim class; other keys are its keyword arguments
      schedule: {name: cosine}     # a SCHEDULES name; other keys are its arguments
      param_groups: []        # overrides, e.g. [{params: '^head\\.', lr_scale: 10.0},
                              #                  {params: 'pos_embed', weight_decay: 0.0}]

Parameter groups start from the task's rule (``Task.parameter_groups``: decay on matrices only);
each ``param_groups`` entry takes the trainable parameters whose name (``model.named_parameters``)
matches the regular expression ``params`` (``re.search``; the first matching entry wins) into a
group of their own, with ``lr = train.lr * lr_scale`` (default 1) and any other key as that
group's optimiser setting (``weight_decay``, ``betas``, ``momentum``, ...). An entry that matches
no trainable parameter is an error (a typo would otherwise change nothing silently).

Schedules are per-step multipliers of each group's learning rate, applied by one
``torch.optim.lr_scheduler.LambdaLR`` (so checkpoints hold the same scheduler state whatever the
schedule): a linear warm-up ``(step + 1) / warmup_steps`` over ``train.warmup_epochs``, then

- ``cosine``: cosine decay from 1 to ``min_lr / lr`` at the last step (the default);
- ``constant``: 1;
- ``step``: ``gamma ** (epoch // every_epochs)`` (``every_epochs``, ``gamma`` = 0.1);
- ``multistep``: ``gamma ** (milestones passed)`` (``milestones`` in epochs, ``gamma`` = 0.1);

``step`` and ``multistep`` never go below ``min_lr / lr``. Epoch counts may be fractional; they
become optimizer steps with ``round(epochs * steps_per_epoch)``.
"""

from __future__ import annotations

import bisect
import difflib
import inspect
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch

from geossm.config import to_container
from geossm.registry import Registry, RegistryError

#: Learning-rate schedules by name: ``factory(total_steps, warmup_steps, steps_per_epoch,
#: min_ratio, **options) -> factor(step)``; ``build_scheduler`` applies the warm-up before it.
SCHEDULES = Registry("schedule")

#: Optimisers given ``fused=True`` on CUDA (where their torch version has it) unless the config
#: sets ``fused``: one kernel for all parameters; others take the default ``foreach`` path.
FUSED_ON_CUDA = ("Adam", "AdamW", "SGD")


# ----------------------------------------------------------------------------- schedules

def _warmup(step: int, warmup_steps: int) -> float | None:
    """``(step + 1) / warmup_steps`` during the warm-up, else ``None``."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    return None


def cosine_warmup_factor(step: int, total_steps: int, warmup_steps: int,
                         min_ratio: float = 0.0) -> float:
    """LR multiplier at optimizer step ``step`` (0-based): ``(step+1)/warmup`` during warm-up,
    then ``min_ratio + (1 - min_ratio) * (1 + cos(pi * progress)) / 2``."""
    warm = _warmup(step, warmup_steps)
    if warm is not None:
        return warm
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def _epochs_to_steps(epochs: float, steps_per_epoch: int, key: str) -> int:
    if not isinstance(epochs, (int, float)) or isinstance(epochs, bool) or epochs <= 0:
        raise ValueError(f"train.schedule.{key}: expected a positive number of epochs, "
                         f"got {epochs!r}")
    return max(1, int(round(float(epochs) * steps_per_epoch)))


@SCHEDULES.register(name="cosine")
def cosine_schedule(total_steps: int, warmup_steps: int, steps_per_epoch: int,
                    min_ratio: float) -> Callable[[int], float]:
    """Warm-up, then cosine decay to ``min_ratio`` at the last step (``cosine_warmup_factor``)."""
    return lambda step: cosine_warmup_factor(step, total_steps, warmup_steps, min_ratio)


@SCHEDULES.register(name="constant")
def constant_schedule(total_steps: int, warmup_steps: int, steps_per_epoch: int,
                      min_ratio: float) -> Callable[[int], float]:
    """Warm-up, then the peak learning rate to the end."""
    return lambda step: 1.0


@SCHEDULES.register(name="multistep")
def multistep_schedule(total_steps: int, warmup_steps: int, steps_per_epoch: int,
                       min_ratio: float, milestones: Sequence[float],
                       gamma: float = 0.1) -> Callable[[int], float]:
    """Warm-up, then ``max(min_ratio, gamma ** k)`` after the ``k``-th of ``milestones``
    (epochs from the start of training, increasing)."""
    if isinstance(milestones, (str, bytes)) or not isinstance(milestones, Sequence) \
            or not milestones:
        raise ValueError("train.schedule.milestones: expected a non-empty list of epochs, got "
                         f"{milestones!r}")
    bounds = [_epochs_to_steps(m, steps_per_epoch, "milestones") for m in milestones]
    if bounds != sorted(bounds):
        raise ValueError(f"train.schedule.milestones: expected increasing epochs, got "
                         f"{list(milestones)}")
    gamma = float(gamma)

    return lambda step: max(min_ratio, gamma ** bisect.bisect_right(bounds, step))


@SCHEDULES.register(name="step")
def step_schedule(total_steps: int, warmup_steps: int, steps_per_epoch: int, min_ratio: float,
                  every_epochs: float, gamma: float = 0.1) -> Callable[[int], float]:
    """Warm-up, then ``max(min_ratio, gamma ** (epoch // every_epochs))`` (``StepLR``)."""
    every = _epochs_to_steps(every_epochs, steps_per_epoch, "every_epochs")
    gamma = float(gamma)

    return lambda step: max(min_ratio, gamma ** (step // every))


def build_scheduler(optimizer: torch.optim.Optimizer, train: Mapping[str, Any], epochs: int,
                    steps_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
    """The per-step schedule of ``train.schedule`` (default cosine) with ``train.warmup_epochs``
    of linear warm-up and the floor ``train.min_lr``; call ``step()`` after every optimizer step.

    Raises ``RegistryError`` naming the known schedules for an unknown name, ``TypeError`` for
    options the schedule does not take.
    """
    lr = float(train["lr"])
    min_ratio = float(train.get("min_lr") or 0.0) / lr if lr > 0 else 0.0
    total = epochs * steps_per_epoch
    warmup = int(round(float(train["warmup_epochs"]) * steps_per_epoch))
    factor = SCHEDULES.build(_spec(train, "schedule", "cosine"), total_steps=total,
                             warmup_steps=warmup, steps_per_epoch=steps_per_epoch,
                             min_ratio=min_ratio)

    def warmed(step: int) -> float:
        # The warm-up comes first for every schedule (the schedules' factors are what follows).
        warm = _warmup(step, warmup)
        return factor(step) if warm is None else warm

    # A plain function (not a callable object): LambdaLR then stores no state for it, so
    # checkpoints look the same for every schedule.
    return torch.optim.lr_scheduler.LambdaLR(optimizer, warmed)


# ----------------------------------------------------------------------------- optimiser

def _spec(train: Mapping[str, Any], key: str, default: str) -> dict[str, Any]:
    """``train.<key>`` as a plain dict with a ``name`` (``default`` when unset)."""
    spec = to_container(train.get(key)) or {}
    if not isinstance(spec, Mapping):
        raise TypeError(f"train.{key}: expected a mapping {{name: ..., ...}}, got {spec!r}")
    spec = dict(spec)
    spec.setdefault("name", default)
    return spec


def optimizer_names() -> list[str]:
    """The ``torch.optim`` optimiser classes, by name."""
    return sorted(name for name, obj in vars(torch.optim).items()
                  if isinstance(obj, type) and issubclass(obj, torch.optim.Optimizer)
                  and obj is not torch.optim.Optimizer)


def optimizer_class(name: Any) -> type[torch.optim.Optimizer]:
    """``torch.optim.<name>``; ``RegistryError`` listing the known optimisers otherwise."""
    known = optimizer_names()
    if not isinstance(name, str) or name not in known:
        close = difflib.get_close_matches(str(name), known, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise RegistryError(f"train.optimizer.name: unknown optimizer {name!r}{hint}; known "
                            f"optimizers (torch.optim): {', '.join(known)}")
    return getattr(torch.optim, name)


def _check_rules(rules: Any) -> list[dict[str, Any]]:
    """``train.param_groups`` as a list of dicts with a compiled ``params`` pattern."""
    rules = to_container(rules) or []
    if not isinstance(rules, list):
        raise TypeError(f"train.param_groups: expected a list of {{params: REGEX, ...}}, got "
                        f"{rules!r}")
    checked = []
    for i, rule in enumerate(rules):
        where = f"train.param_groups[{i}]"
        if not isinstance(rule, Mapping) or not isinstance(rule.get("params"), str):
            raise TypeError(f"{where}: expected a mapping with params: REGEX (parameter names), "
                            f"got {rule!r}")
        rule = dict(rule)
        try:
            rule["params"] = re.compile(rule["params"])
        except re.error as err:
            raise ValueError(f"{where}.params: not a regular expression "
                             f"({rule['params']!r}: {err})") from err
        if "lr" in rule and "lr_scale" in rule:
            raise ValueError(f"{where}: set lr or lr_scale, not both")
        scale = rule.get("lr_scale", 1.0)
        if not isinstance(scale, (int, float)) or isinstance(scale, bool) or scale < 0:
            raise ValueError(f"{where}.lr_scale: expected a number >= 0, got {scale!r}")
        checked.append(rule)
    return checked


def apply_param_group_rules(model: torch.nn.Module, groups: list[dict[str, Any]], lr: float,
                            rules: Any) -> list[dict[str, Any]]:
    """Split the task's ``groups`` by the ``train.param_groups`` entries (module docstring).

    Parameters no entry matches stay in their group (groups keep their order); the matched
    ones follow, one group per entry and task group. Without entries ``groups`` is returned.
    """
    rules = _check_rules(rules)
    if not rules:
        return groups
    names = {id(p): name for name, p in model.named_parameters()}
    kept: list[dict[str, Any]] = []
    matched: list[list[dict[str, Any]]] = [[] for _ in rules]
    for group in groups:
        rest, taken = [], [[] for _ in rules]
        for p in group["params"]:
            name = names.get(id(p), "")
            index = next((i for i, r in enumerate(rules) if r["params"].search(name)), None)
            (rest if index is None else taken[index]).append(p)
        options = {k: v for k, v in group.items() if k != "params"}
        kept.append({**options, "params": rest})
        for i, rule in enumerate(rules):
            settings = {k: v for k, v in rule.items() if k not in ("params", "lr_scale")}
            settings.setdefault("lr", lr * float(rule.get("lr_scale", 1.0)))
            matched[i].append({**options, **settings, "params": taken[i]})
    for i, rule in enumerate(rules):
        if not any(g["params"] for g in matched[i]):
            sample = ", ".join(list(names.values())[:4])
            raise ValueError(f"train.param_groups[{i}].params: {rule['params'].pattern!r} "
                             f"matches no trainable parameter (names look like {sample}, ...)")
    return [g for g in kept + [g for gs in matched for g in gs] if g["params"]]


def build_optimizer(model: torch.nn.Module, groups: list[dict[str, Any]],
                    train: Mapping[str, Any], device: torch.device) -> torch.optim.Optimizer:
    """``torch.optim.<train.optimizer.name>`` (default ``AdamW``) over the task's ``groups``
    split by ``train.param_groups``, with ``lr = train.lr`` and the other ``train.optimizer``
    keys as keyword arguments (``fused=True`` on CUDA for ``FUSED_ON_CUDA`` unless set).

    Raises ``RegistryError`` for an unknown optimiser, ``TypeError`` for keyword arguments it
    does not take, ``ValueError`` for a bad ``param_groups`` entry.
    """
    spec = _spec(train, "optimizer", "AdamW")
    name = spec.pop("name")
    cls = optimizer_class(name)
    lr = float(train["lr"])
    groups = apply_param_group_rules(model, groups, lr, train.get("param_groups"))
    if (name in FUSED_ON_CUDA and device.type == "cuda"
            and "fused" in inspect.signature(cls).parameters):
        spec.setdefault("fused", True)
    try:
        return cls(groups, lr=lr, **spec)
    except TypeError as err:
        raise TypeError(f"train.optimizer: cannot build {name} with {sorted(spec)}: {err}") from err


@torch.no_grad()
def clip_grad_norm(parameters: Iterable[torch.Tensor], max_norm: float) -> torch.Tensor:
    """``torch.nn.utils.clip_grad_norm_(parameters, max_norm)`` (2-norm), the same values to the
    bit, without its per-tensor ``norm.to(device)`` (one no-op operator call per parameter:
    ~360 a LION step, host time on the GPU). Gradients are scaled in place by
    ``min(max_norm / (total + 1e-6), 1)`` with no host sync.

    Returns:
        The total norm of all gradients, a 0-d tensor (on the first gradient's device).
    """
    params = [p for p in parameters if p.grad is not None]
    grads = [p.grad for p in params]
    if not grads:
        return torch.tensor(0.0)
    if any(g.layout != torch.strided or type(g) is not torch.Tensor for g in grads):
        return torch.nn.utils.clip_grad_norm_(params, max_norm)   # sparse / subclass: torch's
    groups: dict[tuple[torch.device, torch.dtype], list[torch.Tensor]] = {}
    for g in grads:
        groups.setdefault((g.device, g.dtype), []).append(g)
    first = grads[0].device
    norms = []
    for (device, _), group in groups.items():
        norms.extend(torch._foreach_norm(group, 2.0) if device == first else
                     [n.to(first) for n in torch._foreach_norm(group, 2.0)])
    total = torch.linalg.vector_norm(torch.stack(norms), 2.0)
    coef = torch.clamp(float(max_norm) / (total + 1e-6), max=1.0)
    for (device, _), group in groups.items():
        torch._foreach_mul_(group, coef if device == first else coef.to(device))
    return total


def check_optimization_config(train: Mapping[str, Any]) -> None:
    """Fail early (before data is read) on an unknown optimiser or schedule name or a
    malformed ``param_groups`` entry."""
    optimizer_class(_spec(train, "optimizer", "AdamW")["name"])
    SCHEDULES.get(_spec(train, "schedule", "cosine")["name"])
    _check_rules(train.get("param_groups"))


__all__ = ["SCHEDULES", "FUSED_ON_CUDA", "clip_grad_norm", "cosine_warmup_factor",
           "build_scheduler", "build_optimizer", "apply_param_group_rules", "optimizer_class",
           "optimizer_names", "check_optimization_config"]
