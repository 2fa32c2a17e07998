"""Numerics at the edges: extreme step sizes and state matrices, bf16, one 1M-token segment,
overflow of int32 ``cu_seqlens`` and of 63-bit curve codes, and bitwise-deterministic CPU runs.

Where the recurrence is finite in exact arithmetic every backend must return finite outputs and
gradients; where a count does not fit its integer type the call must be refused, never wrapped.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from geossm import serialization as S
from geossm.kernels import causal_conv1d, selective_scan
from geossm.kernels.selective_scan_torch import selective_scan_ref

from .conftest import device_under_test, fast_backends

BACKENDS = ["torch", *fast_backends()]
REPO = Path(__file__).resolve().parents[2]
TOY_DIR = REPO / "tests" / "geossm"


DEVICE = device_under_test()


def leaf(t: torch.Tensor, dtype=torch.float32) -> torch.Tensor:
    """A leaf on the device under test (CUDA on the GPU run, where triton needs it)."""
    return t.to(device=DEVICE, dtype=dtype).requires_grad_()


def extreme_inputs(delta_value: float, A_value: float, dtype=torch.float32, T: int = 70,
                   channels: int = 4, state: int = 3, seed: int = 0):
    """Constant ``delta`` and ``A`` (the values under test), random everything else, with a
    gate large enough that silu's ``exp(-z)`` overflows float32 (z = -100 -> exp(100))."""
    gen = torch.Generator().manual_seed(seed)
    return dict(
        u=leaf(torch.randn(T, channels, generator=gen), dtype),
        delta=leaf(torch.full((T, channels), delta_value), dtype),
        A=leaf(torch.full((channels, state), A_value)),
        B=leaf(torch.randn(T, state, generator=gen), dtype),
        C=leaf(torch.randn(T, state, generator=gen), dtype),
        D=leaf(torch.randn(channels, generator=gen)),
        z=leaf(torch.randn(T, channels, generator=gen) * 100, dtype),
        delta_bias=leaf(torch.zeros(channels)),
    )


def assert_all_finite(backend, inputs, out, final):
    assert torch.isfinite(out.float()).all(), f"{backend}: non-finite output"
    assert torch.isfinite(final).all(), f"{backend}: non-finite final state"
    (out.float().sum() + final.sum()).backward()
    for name, value in inputs.items():
        assert value.grad is not None, f"{backend}: no gradient for {name}"
        assert torch.isfinite(value.grad).all(), f"{backend}: non-finite d{name}"


# A with delta=±50 before softplus: dt = 50 (exp(dt*A) underflows to 0 for strongly negative A)
# or dt = softplus(-50) ~ 2e-22 (decay 1, drive ~ 0). Every combination is finite in exact math.
A_VALUES = {"zero": 0.0, "tiny": -1e-30, "small": -1e-6, "unit": -1.0, "large": -1e4,
            "huge": -1e30}


def _extreme_cases():
    # The Triton interpreter on CPU is slow: it gets the corners, the others the full grid.
    for backend in BACKENDS:
        for dtype, dname in ((torch.float32, "fp32"), (torch.bfloat16, "bf16")):
            for A_name in A_VALUES:
                if backend == "triton" and (dname == "bf16" or A_name not in ("zero", "huge")):
                    continue
                for delta_value in (50.0, -50.0):
                    yield pytest.param(backend, delta_value, A_name, dtype,
                                       id=f"{backend}-delta{delta_value:+g}-A_{A_name}-{dname}")


@pytest.mark.parametrize("backend, delta_value, A_name, dtype", list(_extreme_cases()))
def test_extreme_delta_and_A_stay_finite(backend, delta_value, A_name, dtype):
    inputs = extreme_inputs(delta_value, A_VALUES[A_name], dtype)
    out, final = selective_scan(**inputs, delta_softplus=True, return_final_state=True,
                                backend=backend)
    assert out.dtype == dtype
    assert_all_finite(backend, inputs, out, final)


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != "torch"])
def test_extreme_values_match_reference(backend):
    """Finite is not enough: at the extremes the fast backends still agree with float64."""
    for delta_value, A_value in ((50.0, -1e4), (-50.0, -1e-6), (50.0, 0.0), (-50.0, -1.0)):
        inputs = extreme_inputs(delta_value, A_value)
        out = selective_scan(**inputs, delta_softplus=True, backend=backend)
        exact_inputs = {k: v.detach().double() for k, v in inputs.items()}
        for name in ("B", "C"):  # the reference takes canonical (T, G, N)
            exact_inputs[name] = exact_inputs[name].unsqueeze(1)
        exact, _ = selective_scan_ref(
            **exact_inputs, delta_softplus=True,
            cu_seqlens=torch.tensor([0, out.shape[0]], dtype=torch.int32, device=DEVICE))
        torch.testing.assert_close(out.double(), exact, rtol=1e-4, atol=1e-3,
                                   msg=f"delta={delta_value}, A={A_value}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_large_positive_delta_without_softplus(backend):
    """Without softplus a step of +50 with A in [-1e4, 0] is finite too (decays in [0, 1])."""
    inputs = extreme_inputs(50.0, -1e4)
    inputs["A"] = leaf(torch.tensor([[0.0, -1e-6, -1e4]]).expand(4, 3).clone())
    out, final = selective_scan(**inputs, delta_softplus=False, return_final_state=True,
                                backend=backend)
    assert_all_finite(backend, inputs, out, final)


@pytest.mark.parametrize("backend", BACKENDS)
def test_causal_conv1d_large_inputs_stay_finite(backend):
    """silu of |pre-activation| ~ 1e4 (exp overflows float32) stays finite, fwd and bwd."""
    gen = torch.Generator().manual_seed(0)
    x = leaf(torch.randn(130, 4, generator=gen) * 1e3)
    w = leaf(torch.randn(4, 4, generator=gen))
    for dtype in (torch.float32, torch.bfloat16):
        xd = x.detach().to(dtype).requires_grad_()
        out = causal_conv1d(xd, w, activation="silu",
                            cu_seqlens=torch.tensor([0, 7, 130], dtype=torch.int32,
                                                    device=DEVICE),
                            backend=backend)
        out.float().sum().backward()
        assert torch.isfinite(out.float()).all() and torch.isfinite(xd.grad.float()).all()
        assert torch.isfinite(w.grad).all()
        w.grad = None


def test_one_segment_of_a_million_tokens():
    """One 1M-token segment on the numba CPU backend: finite, and the state reaches the
    closed-form steady state ``dt*B*u / (1 - exp(dt*A))`` (float32 error does not drift)."""
    pytest.importorskip("numba", reason="numba not installed: CPU kernel not tested")
    T, channels, state = 1_000_000, 2, 2
    dt, a = 0.01, -1.0
    u = torch.ones(T, channels, requires_grad=True)
    delta = torch.full((T, channels), dt, requires_grad=True)
    A = torch.full((channels, state), a, requires_grad=True)
    B = torch.ones(T, state, requires_grad=True)
    C = torch.ones(T, state, requires_grad=True)
    out, final = selective_scan(u, delta, A, B, C, return_final_state=True, backend="numba")
    steady = dt / (1.0 - torch.exp(torch.tensor(dt * a, dtype=torch.float64)).item())
    torch.testing.assert_close(final, torch.full_like(final, steady), rtol=1e-4, atol=0)
    torch.testing.assert_close(out[-1], torch.full((channels,), state * steady), rtol=1e-4,
                               atol=0)
    out.sum().backward()
    for name, value in (("u", u), ("delta", delta), ("A", A), ("B", B), ("C", C)):
        assert torch.isfinite(value.grad).all(), f"non-finite d{name}"
    # d out_T / d u_T = dt*sum_n C*B = state*dt, plus the later tokens' dependence: every
    # token's gradient is bounded by the geometric series sum_k exp(k*dt*A) * dt * state.
    bound = state * dt / (1.0 - torch.exp(torch.tensor(dt * a)).item())
    assert float(u.grad.abs().max()) <= bound * (1 + 1e-3)

    # random inputs of the same length, reversed: still finite
    gen = torch.Generator().manual_seed(0)
    out = selective_scan(torch.randn(T, channels, generator=gen),
                         torch.randn(T, channels, generator=gen) * 20,
                         -torch.rand(channels, state, generator=gen) * 100,
                         torch.randn(T, state, generator=gen),
                         torch.randn(T, state, generator=gen), delta_softplus=True,
                         reverse=True, backend="numba")
    assert torch.isfinite(out).all()


# ----------------------------------------------------------------------- overflow is refused

def _expanded(*shape):
    """A huge tensor that owns one element (stride 0): validation runs, no memory is used."""
    return torch.zeros(1).expand(*shape)


@pytest.mark.parametrize("op", ["selective_scan", "causal_conv1d"])
def test_int32_cu_seqlens_overflow_is_refused(op):
    T = 2**31  # one more token than int32 cu_seqlens can count
    cu = torch.tensor([0, 2**30, T], dtype=torch.int64)
    with pytest.raises(ValueError, match=r"T=2147483648 tokens do not fit int32 cu_seqlens"):
        if op == "selective_scan":
            selective_scan(_expanded(T, 1), _expanded(T, 1), torch.zeros(1, 1),
                           _expanded(T, 1), _expanded(T, 1), cu_seqlens=cu, backend="torch")
        else:
            causal_conv1d(_expanded(T, 1), torch.zeros(1, 2), cu_seqlens=cu, backend="torch")


@pytest.mark.parametrize("op", ["selective_scan", "causal_conv1d"])
def test_dense_input_of_2_31_tokens_is_refused(op):
    """Dense (B, L, D) input builds its own int32 boundaries B*L: refused, not wrapped."""
    shape = (2, 2**30, 1)  # B*L = 2^31
    with pytest.raises(ValueError, match=r"T=2147483648 tokens do not fit int32 cu_seqlens"):
        if op == "selective_scan":
            selective_scan(_expanded(*shape), _expanded(*shape), torch.zeros(1, 1),
                           _expanded(2, 2**30, 1), _expanded(2, 2**30, 1), backend="torch")
        else:
            causal_conv1d(_expanded(*shape), torch.zeros(1, 2), backend="torch")


def test_int64_cu_seqlens_beyond_int32_is_not_wrapped():
    """int64 boundaries past 2^31 that would wrap into a valid-looking int32 array."""
    u = torch.zeros(4, 1)
    cu = torch.tensor([0, 2**32, 4], dtype=torch.int64)  # wraps to [0, 0, 4] as int32
    with pytest.raises(ValueError, match=r"cu_seqlens must be non-decreasing"):
        selective_scan(u, u, torch.zeros(1, 1), u, u, cu_seqlens=cu, backend="torch")


def test_63_bit_codes_are_refused_not_wrapped():
    grid = torch.tensor([[2**21 - 1, 0, 5]])
    assert int(S.encode(grid, "z", depth=21)) > 0  # 63 bits: fits
    with pytest.raises(ValueError, match=r"3\*21 \+ 1 = 64 bits, expected at most 63"):
        S.encode(grid.repeat(2, 1), "hilbert", batch=torch.tensor([0, 1]), depth=21)
    with pytest.raises(ValueError, match=r"3\*22 \+ 0 = 66 bits"):
        S.encode(torch.tensor([[2**22 - 1, 0, 0]]), "z")
    with pytest.raises(ValueError, match=r"expected coordinates < 2\^depth"):
        S.encode(torch.tensor([[2**10, 0, 0]]), "z", depth=10)
    with pytest.raises(ValueError, match=r"depth: expected an int in \[1, 21\]"):
        S.decode(torch.tensor([1]), "z", 22)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_grid_coordinates_beyond_int64_are_refused(dtype):
    """A cloud spanning 1e30 with 1 cm cells has 1e32 cells per axis: more than int64 holds.
    Casting would wrap to a negative cell index; it must be refused, naming the extent."""
    coord = torch.tensor([[0.0, 0.0, 0.0], [1e30, 1.0, 1.0]], dtype=dtype)
    with pytest.raises(ValueError, match=r"coord: the extent .* grid_size .* cells"):
        S.grid_coordinates(coord, 0.01)
    with pytest.raises(ValueError, match=r"coord: the extent"):
        S.serialize(coord, 0.01)
    # a large but representable extent reaches the 63-bit check of encode instead
    with pytest.raises(ValueError, match=r"expected at most 63"):
        S.serialize(torch.tensor([[0.0, 0.0, 0.0], [1e12, 1.0, 1.0]], dtype=dtype), 0.01)


# ------------------------------------------------------------------- deterministic CPU runs

def _train_subprocess(tmp_path: Path, name: str) -> Path:
    sys.path.insert(0, str(TOY_DIR))
    from toy_task import write_toy_config
    cfg = write_toy_config(tmp_path / "toy.yaml", deterministic=True,
                           train={"epochs": 2, "num_workers": 0})
    run = tmp_path / name
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(TOY_DIR), str(REPO), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-m", "geossm", "train", str(cfg),
                           f"output_dir={run}"], env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return run


def _digest(path: Path) -> str:
    from geossm.engine import load_checkpoint
    ckpt = load_checkpoint(path)
    h = hashlib.sha256()
    for key in sorted(ckpt["model"]):
        h.update(key.encode())
        h.update(ckpt["model"][key].contiguous().numpy().tobytes())
    return h.hexdigest()


def test_deterministic_runs_are_bitwise_identical(tmp_path):
    """``deterministic=true``: two separate CPU processes train the same bits and log the same
    metrics (the toy task augments and drops out with the seeded global RNG)."""
    first = _train_subprocess(tmp_path, "a")
    second = _train_subprocess(tmp_path, "b")
    assert _digest(first / "last.pt") == _digest(second / "last.pt")

    def rows(run):
        import json
        # wall-clock measurements (time_s, data_wait_s, samples_per_s) differ between runs by nature
        return [{k: v for k, v in json.loads(line).items()
                 if not (k.endswith("_s") or k.endswith("per_s"))}
                for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows(first) == rows(second) and len(rows(first)) >= 4
