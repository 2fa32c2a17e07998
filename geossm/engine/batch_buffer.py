"""A batch in one shared-memory buffer between the ``DataLoader``'s workers and the trainer.

A worker hands each tensor of a batch to the main process as its own shared-memory segment; with
PyTorch's default (``file_descriptor``) strategy the main process then opens a socket connection
to the worker and runs an authentication round trip per tensor, ~0.5 ms each on the main process,
serially. A Peptides-func batch of 16 molecules (7 tensors) then costs 7 ms to receive against
1 ms to build, and a Graph Mamba batch with its plan 12 ms: with a replayed CUDA graph the step
waits for its data (``data_wait_s`` of the epoch log). ``BufferCollate`` pickles the batch in the
worker with every dense CPU tensor moved into one ``uint8`` buffer, so one segment crosses the
process boundary; the trainer's ``move_to`` unpacks it (``BatchBuffer.to``) into views of that
buffer and moves them as the batch's own objects would move. The values are bitwise those of the
batch; tensors that shared storage (views of one another) arrive as separate copies.
"""

from __future__ import annotations

import io
import math
import pickle
from collections.abc import Callable, Sequence
from typing import Any

import torch

from .task import move_to

__all__ = ["BatchBuffer", "BufferCollate"]

#: Offsets of the tensors in the buffer are multiples of this (a ``view(dtype)`` of a slice needs
#: its offset aligned to the element size; 64 keeps every dtype and cache line aligned).
ALIGN = 64


def _packable(obj: Any) -> bool:
    """A plain dense CPU tensor without autograd history (subclasses, parameters, quantized and
    sparse tensors keep their own pickling; a sparse tensor's index and value tensors are
    packed)."""
    return (type(obj) is torch.Tensor and obj.layout == torch.strided
            and obj.device.type == "cpu" and not obj.requires_grad and not obj.is_quantized)


class _Packer(pickle.Pickler):
    """Pickles an object with each packable tensor replaced by its index in ``tensors``
    (the same tensor object twice: one entry)."""

    def __init__(self, file: io.BytesIO) -> None:
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self.tensors: list[torch.Tensor] = []
        self._index: dict[int, int] = {}

    def persistent_id(self, obj: Any) -> int | None:
        if not _packable(obj):
            return None
        if id(obj) not in self._index:
            self._index[id(obj)] = len(self.tensors)
            self.tensors.append(obj)
        return self._index[id(obj)]


class _Unpacker(pickle.Unpickler):
    """Restores ``_Packer``'s tensors as views of ``buffer (bytes,) uint8``."""

    def __init__(self, file: io.BytesIO, buffer: torch.Tensor,
                 layout: Sequence[tuple[int, torch.dtype, tuple[int, ...]]]) -> None:
        super().__init__(file)
        self.buffer, self.layout = buffer, layout
        self._views: dict[int, torch.Tensor] = {}

    def persistent_load(self, pid: Any) -> torch.Tensor:
        if pid not in self._views:
            offset, dtype, shape = self.layout[pid]
            nbytes = dtype.itemsize * math.prod(shape)
            self._views[pid] = self.buffer[offset:offset + nbytes].view(dtype).view(shape)
        return self._views[pid]


class BatchBuffer:
    """A collated batch as ``payload`` (its pickle, tensors left out) + ``buffer (bytes,) uint8``
    (every dense CPU tensor, ``ALIGN``-aligned) + ``layout`` ((offset, dtype, shape) per tensor).
    ``unpack()`` gives the batch back; ``to(device)`` is ``move_to(unpack(), device)``."""

    __slots__ = ("payload", "buffer", "layout")

    def __init__(self, batch: Any) -> None:
        file = io.BytesIO()
        packer = _Packer(file)
        packer.dump(batch)
        self.payload = file.getvalue()
        self.layout: list[tuple[int, torch.dtype, tuple[int, ...]]] = []
        offset = 0
        for t in packer.tensors:
            self.layout.append((offset, t.dtype, tuple(t.shape)))
            offset += -(-t.numel() * t.element_size() // ALIGN) * ALIGN
        self.buffer = torch.empty(offset, dtype=torch.uint8)
        for (start, _, _), t in zip(self.layout, packer.tensors):
            # a lazy conjugate / negative view's bytes are the unconjugated values: resolve
            flat = t.resolve_conj().resolve_neg().contiguous().reshape(-1).view(torch.uint8)
            self.buffer[start:start + flat.numel()] = flat

    def unpack(self) -> Any:
        """The batch, its tensors views of ``buffer`` (pinned when the loader pinned it)."""
        return _Unpacker(io.BytesIO(self.payload), self.buffer, self.layout).load()

    def pin_memory(self) -> BatchBuffer:
        """Called by the ``DataLoader``'s pinning thread: one pinned copy of the buffer."""
        self.buffer = self.buffer.pin_memory()
        return self

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Any:
        """The unpacked batch on ``device`` (``move_to``: each object moves as it would)."""
        return move_to(self.unpack(), torch.device(device), non_blocking)


class BufferCollate:
    """``collate`` whose batches cross the worker boundary packed (``BatchBuffer``)."""

    def __init__(self, collate: Callable[[Sequence[Any]], Any]) -> None:
        self.collate = collate

    def __call__(self, samples: Sequence[Any]) -> BatchBuffer:
        return BatchBuffer(self.collate(samples))
