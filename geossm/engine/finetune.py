"""Fine-tuning: start a model from another run's weights (``model.init_from=CKPT``).

The weights are loaded non-strictly: every tensor whose name and shape match is copied, the
rest keep their fresh initialisation. A different head size (``num_classes``) is the normal
case: the head's tensors are skipped as shape-mismatched and reported, the backbone is
loaded. The report is one table (``WeightMatch.table()``) listing the missing, unexpected and
shape-mismatched keys, logged by the trainer.

The file is read with ``geossm.engine.checkpoint.load_checkpoint`` (``weights_only=True``): a
geossm checkpoint or a plain state dict; a ``module.`` prefix (DDP) is removed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch

from geossm.engine.checkpoint import CheckpointError, load_checkpoint


@dataclass
class WeightMatch:
    """What ``init_from_checkpoint`` copied and what it left.

    Attributes:
        loaded: model keys copied from the checkpoint.
        missing: model keys the checkpoint does not have (kept as initialised).
        unexpected: checkpoint keys the model does not have (ignored).
        mismatched: ``{key: (checkpoint shape, model shape)}`` for keys present in both with
            different shapes (kept as initialised).
    """

    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = field(default_factory=dict)

    def table(self) -> str:
        """One table of every key not loaded: ``status | key | checkpoint shape | model
        shape``, headed by the counts (``loaded 12, missing 0, ...``)."""
        rows = [("shape mismatch", k, _shape(a), _shape(b)) for k, (a, b) in
                self.mismatched.items()]
        rows += [("missing", k, "-", "") for k in self.missing]
        rows += [("unexpected", k, "", "-") for k in self.unexpected]
        head = (f"loaded {len(self.loaded)}, shape mismatch {len(self.mismatched)}, missing "
                f"{len(self.missing)}, unexpected {len(self.unexpected)}")
        if not rows:
            return head + " (every key matched)"
        rows.insert(0, ("status", "key", "checkpoint", "model"))
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        lines = [" | ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
        lines.insert(1, "-+-".join("-" * w for w in widths))
        return "\n".join([head, *lines])


def _shape(shape: tuple[int, ...]) -> str:
    return "(" + ", ".join(map(str, shape)) + ")"


def init_from_checkpoint(model: torch.nn.Module, path: str | os.PathLike) -> WeightMatch:
    """Copy the weights of checkpoint ``path`` into ``model`` where name and shape match.

    Args:
        model: the freshly built model (its parameters and buffers are overwritten in place,
            so an optimiser or DDP wrapper built around it keeps working).
        path: a geossm checkpoint (``last.pt``, ``best.pt``) or a file holding a plain state
            dict, read with ``weights_only=True``.

    Returns:
        ``WeightMatch``: loaded, missing, unexpected and shape-mismatched keys.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        CheckpointError: not a readable checkpoint (the messages of ``load_checkpoint``), or
            no key of it matches the model (almost surely the wrong file).
    """
    ckpt = load_checkpoint(path, map_location="cpu")
    source = {str(k).removeprefix("module."): v for k, v in ckpt["model"].items()}
    own = model.state_dict()
    match = WeightMatch()
    usable = {}
    for key, value in source.items():
        if key not in own:
            match.unexpected.append(key)
        elif tuple(value.shape) != tuple(own[key].shape):
            match.mismatched[key] = (tuple(value.shape), tuple(own[key].shape))
        else:
            usable[key] = value
    match.missing = [k for k in own if k not in source]
    if own and not usable:
        raise CheckpointError(
            f"model.init_from: no weight of checkpoint {path} fits model "
            f"{type(model).__name__} ({len(match.mismatched)} shape mismatches, "
            f"{len(match.unexpected)} unknown keys, e.g. {sorted(source)[:3]})")
    model.load_state_dict(usable, strict=False)
    match.loaded = list(usable)
    return match
