"""Kernel-test fixtures: every ``torch.empty`` is filled with NaN so unwritten output shows."""

import os

import pytest
import torch

from geossm.kernels import available_backends

_EMPTY = torch.empty
_EMPTY_LIKE = torch.empty_like
_NEW_EMPTY = torch.Tensor.new_empty


def _poisoned(tensor):
    if tensor.is_floating_point() and tensor.numel() > 0:
        tensor.fill_(float("nan"))
    return tensor


@pytest.fixture(autouse=True)
def nan_filled_empty(monkeypatch):
    """Patch ``torch.empty``/``empty_like``/``Tensor.new_empty`` to return NaN-filled tensors."""
    monkeypatch.setattr(torch, "empty", lambda *a, **k: _poisoned(_EMPTY(*a, **k)))
    monkeypatch.setattr(torch, "empty_like", lambda *a, **k: _poisoned(_EMPTY_LIKE(*a, **k)))
    monkeypatch.setattr(torch.Tensor, "new_empty",
                        lambda self, *a, **k: _poisoned(_NEW_EMPTY(self, *a, **k)))
    yield


def device_under_test() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def fast_backends() -> list[str]:
    """Kernel backends (all but the torch reference) that can run on this machine.

    ``GEOSSM_TEST_BACKENDS=numba,triton`` narrows the list (e.g. to skip the slow Triton
    interpreter while iterating); CI leaves it unset and tests every available backend.
    """
    names = [name for name in available_backends(device_under_test()) if name != "torch"]
    wanted = os.environ.get("GEOSSM_TEST_BACKENDS")
    if wanted:
        names = [name for name in names if name in wanted.split(",")]
    return names


def interpreted(backend: str) -> bool:
    """Whether ``backend`` runs in Triton's CPU interpreter here (slow: one case costs seconds)."""
    return backend == "triton" and device_under_test() == "cpu"


def skip_in_interpreter(backend: str, heavy: bool = True) -> None:
    """Skip a heavy case under Triton's CPU interpreter, saying why.

    CI has no GPU, so the Triton kernels run in the interpreter on a few small cases (mixed
    lengths 0-63 with every feature, both directions, half inputs, state chaining); the long
    and many-segment cases run on the GPU test run (benchmarks/NOTES_scan_gpu.md).
    """
    if heavy and interpreted(backend):
        pytest.skip("Triton CPU interpreter: long case left to the GPU test run "
                    "(TRITON_INTERPRET=1 costs seconds per case)")
