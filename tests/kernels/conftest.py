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


def short_lengths(count: int = 500, seed: int = 0) -> list[int]:
    """``count`` segment lengths in 0..6 (many empty and one-token segments)."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 7, (count,), generator=gen).tolist()


def projection_gradients(out, final, inputs: dict, grad_names, seed: int = 1) -> dict:
    """The gradients of a random projection of ``out`` and ``final`` (weights from ``seed``)
    with respect to every input in ``grad_names`` that is not None.

    With zero tokens autograd reports the unused per-token inputs as None; they get zeros.
    """
    device = device_under_test()
    gen = torch.Generator().manual_seed(seed)
    w_out = torch.randn(out.shape, generator=gen).to(device)
    w_final = torch.randn(final.shape, generator=gen).to(device)
    loss = (out.double() * w_out).sum() + (final.double() * w_final).sum()
    names = [n for n in grad_names if inputs[n] is not None]
    grads = torch.autograd.grad(loss, [inputs[n] for n in names], allow_unused=True)
    grads = [torch.zeros_like(inputs[n]) if g is None else g for n, g in zip(names, grads)]
    return dict(zip(names, grads))


def rel_err(got, want):
    """``|got - want| / |want|`` (Frobenius); ``got`` must be finite."""
    got, want = got.detach().double(), want.detach().double()
    assert torch.isfinite(got).all(), "non-finite values (unwritten output?)"
    return float((got - want).norm() / want.norm().clamp_min(1e-12))


def assert_close(got, want, tol, final_name: str = "final_state"):
    """``got`` and ``want`` = ``(out, final, grads)`` agree to relative error ``tol``."""
    out, final, grads = got
    ref_out, ref_final, ref_grads = want
    assert out.shape == ref_out.shape
    assert rel_err(out, ref_out) <= tol, f"out: {rel_err(out, ref_out)}"
    assert rel_err(final, ref_final) <= tol, f"{final_name}: {rel_err(final, ref_final)}"
    for name, ref in ref_grads.items():
        grad = grads[name]
        assert grad is not None and grad.shape == ref.shape, name
        assert rel_err(grad, ref) <= tol, f"d{name}: {rel_err(grad, ref)}"


def scan_in_two_parts(part, length: int, cut: int, reverse: bool):
    """Tokens ``[0, length)`` scanned as two parts split at ``cut``, the first part (in scan
    order) handing its final state to the second; the outputs joined back in token order.

    ``part(tokens: slice, state) -> (out, final_state)`` scans the tokens of one part.
    """
    first, second = (slice(0, cut), slice(cut, length)) if not reverse else \
        (slice(cut, length), slice(0, cut))
    out_first, state = part(first, None)
    out_second, _ = part(second, state)
    return torch.cat([out_first, out_second] if not reverse else [out_second, out_first])
