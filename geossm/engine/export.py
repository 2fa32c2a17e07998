"""Export a trained model: ``geossm export checkpoint=PATH format=safetensors|torch-export``.

- ``safetensors``: the model's state dict as a ``.safetensors`` file (no pickle; readable by
  any safetensors loader), the run's config as JSON in its metadata (``"geossm_config"``).
- ``torch-export``: ``torch.export.export`` of the model on an example batch, saved with
  ``torch.export.save`` as ``.pt2``. The kernels (``geossm::selective_scan``,
  ``geossm::causal_conv1d``) are ``torch.library`` custom ops with fake implementations, so
  they appear as single nodes of the graph. The first dimension of every tensor input is
  exported as dynamic where the model allows it (``Dim.AUTO``: shared sizes share one symbol,
  a dimension the model specialises on stays static); the program is run on the example and
  checked against the eager model before it is written.

Exportable: ``EventMambaCls`` in both modes (``windowed``: frames ``(B, C, H, W)``, dynamic
``B``; ``serialized``: events ``(N, 4)`` and ``cu_seqlens (B+1,)``, dynamic ``N`` and ``B``) and
``PointCloudMambaSeg`` (``coord``, ``feat``, ``cu_seqlens``, ``category``: dynamic ``N`` and
``B``). The steps of their forward that read values on the host (quantising, serializing along
curves of a data-dependent depth, serialized pooling with ``torch.unique``, per-sample kNN, the
numba curve kernels) are custom ops while ``torch.export`` traces
(``geossm.serialization.traceable``, ``geossm.tasks.segmentation.traceable``): one node each,
run eagerly by the program, with symbolic output sizes (the number of pooled cells). Sizes 0 and
1 are specialised by torch.export, so a program traced on two samples needs at least two (add
an empty sample to run one). Models with other data-dependent Python control flow stop
``torch.export`` at the first such line; ``export_program`` raises an ``ExportError`` naming it.
The kernel backend must be one behind the custom ops (``numba``, the CPU default, or
``triton``): the ``torch`` reference scan runs op by op and pads every segment to the longest
(``int(lengths.max())``), which does not trace. ``torch.export.load`` of a program needs its
custom ops registered: import the model's module first (e.g.
``geossm.tasks.segmentation.models``).
"""

from __future__ import annotations

import json
import os
import traceback
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from geossm.config import to_container
from geossm.engine.checkpoint import CheckpointError, load_checkpoint, load_model_state
from geossm.engine.predictor import inference_config
from geossm.engine.task import SplitSamples, Task, build_task

FORMATS = {"safetensors": ".safetensors", "torch-export": ".pt2"}


class ExportError(ValueError):
    """The model cannot be exported in the asked format (the reason is in the message)."""


def model_from_checkpoint(path: str | os.PathLike) -> tuple[torch.nn.Module, Any, Task]:
    """``(model, cfg, task)`` rebuilt from the config a geossm checkpoint stores, with its
    weights loaded (strict) and in eval mode.

    Raises ``FileNotFoundError`` / ``CheckpointError`` (``load_checkpoint``'s), and
    ``CheckpointError`` when the file holds no config (a plain state dict) or its weights do
    not fit the model (``load_model_state``).
    """
    ckpt = load_checkpoint(path)
    if not isinstance(ckpt.get("config"), dict):
        raise CheckpointError(f"checkpoint {path}: holds no config (a plain state dict?); "
                              "export needs a checkpoint written by geossm train")
    cfg = inference_config(OmegaConf.create(ckpt["config"]))  # no training-step options
    task = build_task(cfg)
    model = task.build_model()
    load_model_state(model, ckpt, path)
    return model.eval(), cfg, task


class _Captured(Exception):
    """Carries the keyword arguments a task's ``forward`` passes to the model."""


def _record_inputs(**kwargs: Any) -> None:
    raise _Captured(kwargs)


def model_inputs(task: Task, batch: dict[str, Any]) -> dict[str, Any]:
    """The keyword arguments ``task.forward`` gives the model for ``batch`` (captured by
    calling it with a stand-in model, so every task's own input selection is kept)."""
    try:
        task.forward(_record_inputs, batch)
    except _Captured as captured:
        return captured.args[0]
    raise ExportError(f"{type(task).__name__}.forward did not call the model")


def example_batch(task: Task, cfg: Any, input_path: str | os.PathLike | None = None,
                  batch_size: int = 2) -> dict[str, Any]:
    """A collated batch of ``batch_size`` samples to trace with: ``input_path`` read by the
    task's ``load_input`` (repeated), else the first samples of the training split (generated
    datasets need no data; others need ``data.root``). Two samples by default, so the batch
    dimension can be exported as dynamic (torch.export specialises sizes 0 and 1)."""
    if input_path is not None:
        samples = [task.load_input(input_path)] * batch_size
    else:
        dataset = task.build_dataset(str(cfg.data.split))
        if len(dataset) == 0:
            raise ExportError(f"export: the training split of {type(dataset).__name__} is "
                              "empty; give input=FILE as the example")
        samples = [dataset[i % len(dataset)] for i in range(batch_size)]
    return task.collate(SplitSamples(samples, "predict"))  # collated as a prediction


def export_safetensors(model: torch.nn.Module, path: str | os.PathLike,
                       config: Any = None) -> Path:
    """Write ``model.state_dict()`` to ``path`` with safetensors (tensors made contiguous;
    tied tensors are written once per name), the config as JSON metadata."""
    from geossm._compat import require
    require("safetensors", "format=safetensors")
    from safetensors.torch import save_file
    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    metadata = {"format": "pt"}
    if config is not None:
        metadata["geossm_config"] = json.dumps(to_container(config))
    path = Path(path)
    save_file(state, str(path), metadata=metadata)
    return path


def _first_user_frame(err: BaseException) -> str:
    """``file:line`` and source of the last traceback frame inside geossm (where export
    stopped), or ``""``."""
    root = str(Path(__file__).resolve().parents[2])
    frames = [f for f in traceback.extract_tb(err.__traceback__)
              if f.filename.startswith(root) and "/geossm/engine/export.py" not in f.filename]
    if not frames:
        return ""
    f = frames[-1]
    return f"{os.path.relpath(f.filename, root)}:{f.lineno}: {(f.line or '').strip()}"


def export_program(model: torch.nn.Module, inputs: dict[str, Any],
                   dynamic: bool = True) -> torch.export.ExportedProgram:
    """``torch.export.export(model, (), inputs)``; with ``dynamic`` the first dimension of
    every tensor input is ``Dim.AUTO``. The model runs once eagerly (no grad) before tracing,
    so caches it fills on first use (e.g. the patch-grid serializations of ``EventMambaCls``,
    computed by numba from constants) hold real tensors, traced as constants. Raises
    ``ExportError`` naming the model and the line of geossm where tracing stopped
    (data-dependent control flow)."""
    with torch.no_grad():
        model(**inputs)
    shapes = None
    if dynamic:
        shapes = {k: ({0: torch.export.Dim.AUTO} if isinstance(v, torch.Tensor) and v.dim() > 0
                      else None) for k, v in inputs.items()}
    try:
        return torch.export.export(model, (), inputs, dynamic_shapes=shapes)
    except Exception as err:  # noqa: BLE001 - torch.export raises many kinds
        where = _first_user_frame(err)
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ExportError(
            f"torch.export cannot trace {type(model).__name__}: {first[:300]}"
            + (f" (at {where})" if where else "")
            + "; its forward has data-dependent control flow (see geossm.engine.export)") from err


def dynamic_dims(program: torch.export.ExportedProgram) -> dict[str, list[int]]:
    """``{input name: [dimensions exported as symbolic]}`` of ``program``'s user inputs."""
    out: dict[str, list[int]] = {}
    specs = program.graph_signature.input_specs
    placeholders = {n.name: n for n in program.graph.nodes if n.op == "placeholder"}
    for spec in specs:
        if spec.kind != torch.export.graph_signature.InputKind.USER_INPUT:
            continue
        node = placeholders.get(spec.arg.name)
        value = node.meta.get("val") if node is not None else None
        if isinstance(value, torch.Tensor):
            out[spec.arg.name] = [i for i, s in enumerate(value.shape)
                                  if not isinstance(s, int)]
    return out


def _max_difference(a: Any, b: Any) -> float:
    """Largest absolute difference between two outputs (tensors, or dicts / tuples of them)."""
    if isinstance(a, torch.Tensor):
        return float((a.float() - b.float()).abs().max()) if a.numel() else 0.0
    if isinstance(a, dict):
        return max((_max_difference(a[k], b[k]) for k in a), default=0.0)
    if isinstance(a, (list, tuple)):
        return max((_max_difference(x, y) for x, y in zip(a, b)), default=0.0)
    return 0.0


def export_checkpoint(checkpoint: str | os.PathLike, format: str,
                      output: str | os.PathLike | None = None,
                      input_path: str | os.PathLike | None = None) -> dict[str, Any]:
    """Export the model of ``checkpoint`` (see the module docstring).

    Args:
        checkpoint: a geossm checkpoint (``best.pt``, ``last.pt``; it stores the config).
        format: ``"safetensors"`` or ``"torch-export"``.
        output: the file to write, default the checkpoint's path with ``.safetensors`` /
            ``.pt2``.
        input_path: torch-export: an input file for the example batch (the task's
            ``load_input`` formats), default the first samples of the training split.

    Returns:
        ``{"output", "format"}``; for torch-export also ``"dynamic"`` (symbolic dimensions per
        input) and ``"max_abs_diff"`` (exported program vs eager on the example).

    Raises:
        ValueError: an unknown ``format``. ``ExportError``: the model cannot be traced.
    """
    if format not in FORMATS:
        raise ValueError(f"format: expected one of {sorted(FORMATS)}, got {format!r}")
    out = Path(output) if output else Path(checkpoint).with_suffix(FORMATS[format])
    model, cfg, task = model_from_checkpoint(checkpoint)
    if format == "safetensors":
        return {"output": str(export_safetensors(model, out, cfg)), "format": format}
    inputs = model_inputs(task, example_batch(task, cfg, input_path))
    with torch.no_grad():
        program = export_program(model, inputs)
        eager = model(**inputs)
        exported = program.module()(**inputs)
    torch.export.save(program, str(out))
    return {"output": str(out), "format": format, "dynamic": dynamic_dims(program),
            "max_abs_diff": _max_difference(eager, exported)}
