"""geossm: selective state-space models (Mamba) for irregular 3D and event data.

``import geossm`` runs no kernel and needs no GPU; sub-packages are imported on use:

- ``geossm.packed``: the packed-sequence contract (``cu_seqlens``) and ``pack_collate``;
- ``geossm.kernels``: grouped, variable-length ``selective_scan`` and ``causal_conv1d``;
- ``geossm.serialization``: irregular data -> packed sequences (``Serialization``);
- ``geossm.nn``, ``geossm.engine``: layers, trainer, configs;
- ``geossm.tasks``: segmentation, detection, graph and event tasks.

Predicting from a checkpoint (``geossm.engine.predictor``, imported on first use)::

    model, cfg = geossm.load("best.pt")            # the model in eval mode and its run config
    predictor = geossm.predictor("best.pt")        # a geossm.Predictor
    out = predictor(coord=xyz)                     # dict of numpy arrays (the task's outputs)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from geossm.engine.predictor import Predictor

__all__ = ["load", "predictor", "Predictor", "__version__"]


def load(checkpoint: Any, *, device: Any = None, config: Any = None,
         overrides: Any = ()) -> tuple[Any, Any]:
    """``model, cfg = geossm.load("best.pt")``: the checkpoint's model (its stored config
    rebuilds it, or ``config``, a path or name, for a bare state dict) in eval mode on
    ``device`` (default: CUDA if available, else CPU) and the run config; ``overrides`` are
    ``key=value`` strings. See ``geossm.engine.predictor.load``."""
    from geossm.engine.predictor import load as load_checkpoint_model
    return load_checkpoint_model(checkpoint, device=device, config=config, overrides=overrides)


def predictor(checkpoint: Any, *, device: Any = "auto", config: Any = None,
              overrides: Any = ()) -> Predictor:
    """``geossm.Predictor.from_checkpoint(checkpoint, device=..., config=..., overrides=...)``:
    call it on arrays (``predictor(coord=xyz)``) or a PyG ``Data``; returns the task's numpy
    outputs."""
    from geossm.engine.predictor import Predictor
    return Predictor.from_checkpoint(checkpoint, device=device, config=config,
                                     overrides=overrides)


def __getattr__(name: str) -> Any:
    if name == "Predictor":  # imported on use: ``import geossm`` stays free of torch
        from geossm.engine.predictor import Predictor
        return Predictor
    raise AttributeError(f"module 'geossm' has no attribute {name!r}")
