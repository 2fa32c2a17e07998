"""Distributed data parallel helpers (``torchrun --nproc_per_node=K``).

``torchrun`` sets ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT``;
``setup`` reads them and starts the process group (NCCL on GPU, gloo on CPU). Without them
everything here is a no-op for a single process, so the same code path serves both.
"""

from __future__ import annotations

import datetime
import os
from typing import Any

import torch
import torch.distributed as dist


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_initialized() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_initialized() else 1


def is_main() -> bool:
    """Whether this process writes files and logs (rank 0)."""
    return get_rank() == 0


def launched_distributed() -> bool:
    """Whether the environment describes a multi-process launch (torchrun with K > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def resolve_device(spec: str | None) -> torch.device:
    """``auto`` -> ``cuda:LOCAL_RANK`` if CUDA is available, else ``cpu``; else the named device.

    Raises ``ValueError`` if CUDA is asked for but not available.
    """
    spec = "auto" if spec in (None, "") else str(spec)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"device: '{spec}' was asked for but CUDA is not available "
                             "(use device=cpu or device=auto)")
        if spec == "cuda":
            spec = f"cuda:{local_rank}"
    try:
        return torch.device(spec)
    except RuntimeError as err:
        raise ValueError(f"device: expected auto, cpu, cuda or cuda:N, got {spec!r}") from err


def setup(device: torch.device, timeout_s: float = 600.0) -> None:
    """Start the process group if launched by torchrun with more than one process.

    Uses NCCL for CUDA devices and gloo otherwise; sets the current CUDA device first.
    """
    if not launched_distributed() or is_initialized():
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout_s),
                            device_id=device if device.type == "cuda" else None)


def cleanup() -> None:
    if is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if is_initialized():
        dist.barrier()


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """``obj`` of rank ``src`` on every rank (picklable Python objects)."""
    if not is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_object(obj: Any) -> list[Any]:
    """``[obj of rank 0, obj of rank 1, ...]`` on every rank."""
    if not is_initialized():
        return [obj]
    out: list[Any] = [None] * get_world_size()
    dist.all_gather_object(out, obj)
    return out


def all_gather_lists(*lists: list) -> tuple[list, ...]:
    """Each list concatenated over ranks in rank order (rank 0's items first), on every rank.

    For metric states that do not add up across batches (scores ranked over a whole split,
    per-frame detections): one ``all_gather_object`` carries all the lists. In one process the
    result holds the same items as ``lists``.
    """
    parts = all_gather_object(lists)
    return tuple([item for part in parts for item in part[i]] for i in range(len(lists)))


def all_reduce_sum_(tensor: torch.Tensor) -> torch.Tensor:
    """In-place sum over ranks (no-op in a single process). Host sync on NCCL only at use.

    gloo reduces CPU tensors and NCCL CUDA tensors; the tensor is moved if needed and the result
    copied back, so metric states may live on either device.
    """
    if not is_initialized():
        return tensor
    backend = dist.get_backend()
    if backend == "nccl" and tensor.device.type != "cuda":
        work = tensor.to(torch.device("cuda", torch.cuda.current_device()))
    elif backend == "gloo" and tensor.device.type != "cpu":
        work = tensor.cpu()
    else:
        work = tensor
    dist.all_reduce(work, op=dist.ReduceOp.SUM)
    if work is not tensor:
        tensor.copy_(work)
    return tensor
