"""Mamba (selective SSM) mixers over packed variable-length sequences.

``Mamba`` is the Mamba-1 block of Gu & Dao (2023) written on the grouped kernels of
``geossm.kernels``: one call runs every segment of a packed ``(T, D)`` tensor, with no padding
and no Python loop over sequences. ``BiMamba`` adds a second, reversed direction (the
bidirectional encoder of Vim, Point Cloud Mamba and Graph Mamba Networks) without flipping or
copying the input: the kernels scan each segment from its end when ``reverse=True``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from geossm.kernels import causal_conv1d, selective_scan
from geossm.kernels._common import FLOAT_DTYPES  # what every kernel backend accepts
from geossm.packed import LAYER, check_cu_seqlens, check_none_for_dense

from .fused import mamba_inner

__all__ = ["Mamba", "BiMamba", "from_mamba_ssm_state_dict", "to_mamba_ssm_state_dict"]


def check_tokens(name: str, x, dim: int) -> None:
    """Raise unless ``x`` is a packed ``(T, dim)`` or dense ``(B, L, dim)`` float tensor.

    Shape checks only (no host sync), so modules stay compilable.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    if x.dim() not in (2, 3) or x.shape[-1] != dim:
        raise ValueError(f"{name} must have shape (T, {dim}) or (B, L, {dim}), "
                         f"got {tuple(x.shape)}")


def check_layer_cu_seqlens(cu_seqlens, x: torch.Tensor) -> None:
    """Raise on ``cu_seqlens`` given with dense input or of the wrong kind (no host sync).

    Its values (leading 0, non-decreasing, last = T) are checked by the kernels.
    """
    if cu_seqlens is None:
        return
    if x.dim() == 3 and isinstance(cu_seqlens, torch.Tensor):
        check_none_for_dense(cu_seqlens)
    check_cu_seqlens(cu_seqlens, LAYER)


def inner_width(d_model: int, expand) -> int:
    """``E = expand * d_model`` for an int ``expand >= 1`` or a fraction whose product with
    ``d_model`` is a positive integer (up to float round-off: no float times 7 is exactly 29,
    so ``29 / 7`` stands for 29 / 7); ``ValueError`` otherwise."""
    if isinstance(expand, bool) or not isinstance(expand, (int, float)) or not expand > 0:
        raise ValueError(f"expand must be a positive int or fraction, got {expand!r}")
    inner = expand * d_model
    whole = round(inner)
    if whole < 1 or abs(inner - whole) > 1e-9 * whole:
        raise ValueError(f"expand * d_model must be a positive integer, got {expand!r} * "
                         f"{d_model}")
    return int(whole)


def _expand_of(inner: int, d_model: int):
    """The ``expand`` of ``inner`` channels over ``d_model``: an int where it divides, else the
    float nearest ``inner / d_model`` from above with ``int(expand * d_model) == inner`` (the
    width ``mamba_ssm.Mamba`` computes; a product just below ``inner`` would truncate)."""
    if inner % d_model == 0:
        return inner // d_model
    expand = inner / d_model
    while int(expand * d_model) < inner:
        expand = math.nextafter(expand, math.inf)
    return expand


class Mamba(nn.Module):
    r"""Mamba-1 mixer on packed ``(T, D)`` + ``cu_seqlens`` or dense ``(B, L, D)`` input.

    With ``E = expand * d_model`` inner channels and state size ``N = d_state``::

        x', z   = split(in_proj(x))                                   # (T, E) each
        x'      = silu(causal_conv1d(x', conv_weight, conv_bias))     # per segment, width d_conv
        dt,B,C  = split(x_proj(x'))                                   # (T, R), (T, N), (T, N)
        Δ       = softplus(dt_proj.weight @ dt + dt_proj.bias)        # (T, E)
        A       = -exp(A_log)                                         # (E, N)
        h_t     = exp(Δ_t A) ⊙ h_{t-1} + Δ_t B_t x'_t,   y_t = <C_t, h_t> + D ⊙ x'_t
        out     = out_proj(y ⊙ silu(z))                               # (T, d_model)

    The state ``h`` restarts at zero at every segment start; the convolution never reads
    across a boundary. ``reverse=True`` runs the convolution and the scan from each segment's
    end to its start (equal to flipping every segment, running forward and flipping back).

    Initialisation (Mamba's): ``A = -[1, 2, …, N]`` for every channel, stored as ``A_log``;
    ``D = 1``; ``dt_proj.bias = softplus⁻¹(dt)`` with ``dt`` log-uniform in
    ``[dt_min, dt_max]`` (floored at ``dt_init_floor``), so the initial step sizes span that
    range; ``dt_proj.weight`` uniform in ``±dt_rank^-1/2``. ``A_log`` and ``D`` carry
    ``_no_weight_decay = True``, honoured by the trainer.

    Args:
        d_model: model width ``D``.
        d_state: SSM state size ``N``, default 16.
        d_conv: causal convolution width, 2..8, default 4.
        expand: inner width factor, ``E = expand * d_model``, default 2; a fraction
            (``0.25``: a narrow branch beside a wide model) where ``E`` comes out a positive
            integer.
        dt_rank: rank ``R`` of the step-size projection, default ``"auto"`` =
            ``ceil(d_model / 16)``.
        dt_min, dt_max: range of the initial step sizes, default 1e-3, 0.1.
        dt_init_floor: lower clamp of the initial step sizes, default 1e-4.
        conv_bias: bias in the convolution, default True.
        bias: biases in ``in_proj`` and ``out_proj``, default False.
        backend: kernel backend (``"torch"``, ``"numba"``, ``"triton"``) or None = numba on
            CPU, triton on CUDA.
        fused: while gradients are recorded, run the convolution, projections and scan as one
            autograd function (``geossm.nn.fused.mamba_inner``) that keeps only the block's
            input and the scan's chunk states for the backward and recomputes the rest there:
            same outputs and gradients, a fraction of the activation memory of the block. Not
            used under ``torch.compile`` (which traces the unfused ops) nor without
            gradients (nothing is kept then). The attribute can be switched at any time.
            Default True.

    Shapes::

        x:          (T, D) packed or (B, L, D) dense
        cu_seqlens: (S+1,) int32, leading 0, last T (packed only; None = one segment)
        out:        like x

    Dtypes: ``x`` and the parameters in float32, float16 or bfloat16 (autocast included), with
    every backend (torch, numba, triton): the kernels compute in float32 and take no float64,
    so ``Mamba(...).double()`` is refused with a ``TypeError`` (check gradients in float32
    against the torch backend instead).

    Validating ``cu_seqlens`` costs one host sync per kernel call (skipped under
    ``torch.compile``).
    """

    def __init__(self, d_model: int, d_state: int = 16, d_conv: int = 4, expand: int = 2,
                 dt_rank="auto", dt_min: float = 1e-3, dt_max: float = 0.1,
                 dt_init_floor: float = 1e-4, conv_bias: bool = True, bias: bool = False,
                 backend=None, fused: bool = True):
        super().__init__()
        if not isinstance(fused, bool):
            raise TypeError(f"fused must be a bool, got {fused!r}")
        for name, value in (("d_model", d_model), ("d_state", d_state)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        inner = inner_width(d_model, expand)
        if isinstance(d_conv, bool) or not isinstance(d_conv, int) or not 2 <= d_conv <= 8:
            raise ValueError(f"d_conv must be an int in [2, 8] (kernel limit), got {d_conv!r}")
        if dt_rank == "auto":
            dt_rank = math.ceil(d_model / 16)
        if isinstance(dt_rank, bool) or not isinstance(dt_rank, int) or dt_rank < 1:
            raise ValueError(f"dt_rank must be 'auto' or a positive int, got {dt_rank!r}")
        if not 0 < dt_min <= dt_max:
            raise ValueError(f"dt_min and dt_max must satisfy 0 < dt_min <= dt_max, got "
                             f"dt_min={dt_min}, dt_max={dt_max}")
        if backend not in (None, "torch", "numba", "triton"):
            raise ValueError(f"backend must be None, 'torch', 'numba' or 'triton', "
                             f"got {backend!r}")
        self.d_model, self.d_state, self.d_conv, self.expand = d_model, d_state, d_conv, expand
        self.d_inner = inner
        self.dt_rank = dt_rank
        self.backend = backend
        self.fused = fused

        self.in_proj = nn.Linear(d_model, 2 * inner, bias=bias)
        # Depthwise filters (E, W): weight[:, -1] multiplies the current token.
        self.conv_weight = nn.Parameter(torch.empty(inner, d_conv))
        self.conv_bias = nn.Parameter(torch.empty(inner)) if conv_bias else None
        self.x_proj = nn.Linear(inner, dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(dt_rank, inner, bias=True)
        self.A_log = nn.Parameter(torch.empty(inner, d_state))
        self.D = nn.Parameter(torch.empty(inner))
        self.out_proj = nn.Linear(inner, d_model, bias=bias)
        self.A_log._no_weight_decay = True
        self.D._no_weight_decay = True
        self._dt_range = (dt_min, dt_max, dt_init_floor)
        self.reset_ssm_parameters()

    @torch.no_grad()
    def reset_ssm_parameters(self) -> None:
        """Mamba's initialisation of the convolution, ``dt_proj``, ``A_log`` and ``D``."""
        # Same bound as nn.Conv1d's default for a depthwise filter (fan_in = d_conv).
        bound = 1.0 / math.sqrt(self.d_conv)
        nn.init.uniform_(self.conv_weight, -bound, bound)
        if self.conv_bias is not None:
            nn.init.uniform_(self.conv_bias, -bound, bound)
        std = self.dt_rank ** -0.5
        nn.init.uniform_(self.dt_proj.weight, -std, std)
        dt_min, dt_max, floor = self._dt_range
        dt = torch.exp(torch.rand(self.d_inner) * (math.log(dt_max) - math.log(dt_min))
                       + math.log(dt_min)).clamp(min=floor)
        # softplus(inv_dt) == dt: inv_dt = log(exp(dt) - 1) = dt + log(1 - exp(-dt)).
        self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))
        A = torch.arange(1, self.d_state + 1, dtype=torch.float32).expand(self.d_inner, -1)
        self.A_log.copy_(torch.log(A))
        self.D.fill_(1.0)

    def forward(self, x: torch.Tensor, cu_seqlens: torch.Tensor | None = None,
                reverse: bool = False) -> torch.Tensor:
        """Mix along every segment (see the class docstring); returns a tensor shaped like x."""
        check_tokens("x", x, self.d_model)
        for name, dtype in (("x", x.dtype), ("parameters", self.in_proj.weight.dtype)):
            if dtype not in FLOAT_DTYPES:
                raise TypeError(f"Mamba: {name} must be float32, float16 or bfloat16 with every "
                                f"backend (torch, numba, triton: the kernels compute in float32 "
                                f"and take no float64), got dtype {dtype} with backend="
                                f"{self.backend!r}")
        check_layer_cu_seqlens(cu_seqlens, x)
        if self.fused and torch.is_grad_enabled() and not torch.compiler.is_compiling():
            y = mamba_inner(x, self.in_proj.weight, self.in_proj.bias, self.conv_weight,
                            self.conv_bias, self.x_proj.weight, self.dt_proj.weight,
                            self.dt_proj.bias, self.A_log, self.D, cu_seqlens=cu_seqlens,
                            reverse=reverse, backend=self.backend)
            return self.out_proj(y)
        xz = self.in_proj(x)
        h, z = xz.split(self.d_inner, dim=-1)
        h = causal_conv1d(h, self.conv_weight, self.conv_bias, cu_seqlens=cu_seqlens,
                          activation="silu", reverse=reverse, backend=self.backend)
        dt, B, C = self.x_proj(h).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        # The bias goes into the kernel (delta_bias), applied before the softplus in float32.
        delta = F.linear(dt, self.dt_proj.weight)
        A = -torch.exp(self.A_log.float())
        y = selective_scan(h, delta, A, B, C, D=self.D.float(), z=z,
                           delta_bias=self.dt_proj.bias.float(), delta_softplus=True,
                           cu_seqlens=cu_seqlens, reverse=reverse, backend=self.backend)
        return self.out_proj(y)

    @classmethod
    def from_mamba_ssm(cls, state_dict, prefix: str = "", **kwargs) -> "Mamba":
        """A ``Mamba`` sized from a ``mamba_ssm.Mamba`` state dict, holding its weights.

        ``d_model``, ``d_state``, ``d_conv``, ``expand``, ``dt_rank``, ``conv_bias`` and
        ``bias`` are read from the tensor shapes and keys (``expand = d_inner / d_model``, an
        int where it divides, else a fraction: mamba_ssm's ``d_inner = int(expand *
        d_model)``); ``kwargs`` adds the others
        (``backend``). See ``from_mamba_ssm_state_dict`` for the mapping and its errors.
        """
        state = from_mamba_ssm_state_dict(state_dict, prefix)
        inner, d_model = state["in_proj.weight"].shape
        inner //= 2
        module = cls(d_model, d_state=state["A_log"].shape[1],
                     d_conv=state["conv_weight"].shape[1], expand=_expand_of(inner, d_model),
                     dt_rank=state["dt_proj.weight"].shape[1],
                     conv_bias="conv_bias" in state, bias="in_proj.bias" in state, **kwargs)
        module.load_mamba_ssm_state_dict(state_dict, prefix)
        return module

    def load_mamba_ssm_state_dict(self, state_dict, prefix: str = "") -> None:
        """Load a ``mamba_ssm.Mamba`` state dict (its key names and shapes) into this module.

        Raises ``ValueError`` naming the key, the expected shape (from this module's sizes)
        and the received one when a tensor does not fit, and on missing or unknown keys.
        """
        state = from_mamba_ssm_state_dict(state_dict, prefix)
        own = self.state_dict()
        missing = sorted(set(own) - set(state))
        extra = sorted(set(state) - set(own))
        if missing or extra:
            raise ValueError(
                f"mamba_ssm state dict does not fit {self.extra_repr()}: geossm keys missing "
                f"{missing}, not in this module {extra} (bias / conv_bias differ?)")
        for key, value in state.items():
            if value.shape != own[key].shape:
                raise ValueError(
                    f"mamba_ssm state dict: '{_MAMBA_SSM_NAMES.get(key, key)}' expected shape "
                    f"{_mamba_ssm_shape(key, tuple(own[key].shape))} for {self.extra_repr()}, "
                    f"got {_mamba_ssm_shape(key, tuple(value.shape))}")
        self.load_state_dict(state)

    def mamba_ssm_state_dict(self) -> dict[str, torch.Tensor]:
        """This module's weights under ``mamba_ssm.Mamba``'s key names and shapes."""
        return to_mamba_ssm_state_dict(self.state_dict())

    def extra_repr(self) -> str:
        return (f"d_model={self.d_model}, d_state={self.d_state}, d_conv={self.d_conv}, "
                f"expand={self.expand}, dt_rank={self.dt_rank}, backend={self.backend!r}")


class Bidirectional(nn.Module):
    """Two directions of ``direction_class`` with separate parameters, summed.

    Subclasses set ``direction_class`` (a mixer taking ``(x, cu_seqlens, reverse=...)``);
    the parameters live under ``forward_mamba.*`` and ``backward_mamba.*``.
    """

    direction_class: type[nn.Module]

    def __init__(self, d_model: int, **mamba_kwargs):
        super().__init__()
        self.forward_mamba = self.direction_class(d_model, **mamba_kwargs)
        self.backward_mamba = self.direction_class(d_model, **mamba_kwargs)
        self.d_model = d_model

    def forward(self, x: torch.Tensor, cu_seqlens: torch.Tensor | None = None) -> torch.Tensor:
        return (self.forward_mamba(x, cu_seqlens)
                + self.backward_mamba(x, cu_seqlens, reverse=True))


class BiMamba(Bidirectional):
    r"""Bidirectional Mamba: a forward and a reversed direction with separate parameters.

    ``out = forward_mamba(x) + backward_mamba(x, reverse=True)``, where the reversed direction
    scans each segment from its end to its start inside the kernels (no flip, no copy);
    mathematically ``backward_mamba(x, reverse=True) = flip(backward_mamba(flip(x)))`` with
    ``flip`` reversing every segment.

    Args:
        d_model: model width ``D``.
        **mamba_kwargs: passed to both ``Mamba`` directions (``d_state``, ``d_conv``,
            ``expand``, ``dt_rank``, ``dt_min``, ``dt_max``, ``dt_init_floor``, ``conv_bias``,
            ``bias``, ``backend``, ``fused``).

    Shapes::

        x:          (T, D) packed or (B, L, D) dense
        cu_seqlens: (S+1,) int32 (packed only; None = one segment)
        out:        like x
    """

    direction_class = Mamba


# ------------------------------------------------------------- mamba_ssm interoperability

#: geossm key -> mamba_ssm key where they differ (the depthwise convolution: mamba_ssm keeps
#: an ``nn.Conv1d(E, E, W, groups=E)`` with weight ``(E, 1, W)``; geossm the filters ``(E, W)``;
#: both put the current token's tap last, so the values are the same).
_MAMBA_SSM_NAMES = {"conv_weight": "conv1d.weight", "conv_bias": "conv1d.bias"}
_REQUIRED = ("in_proj.weight", "conv1d.weight", "x_proj.weight", "dt_proj.weight",
             "dt_proj.bias", "A_log", "D", "out_proj.weight")
_OPTIONAL = ("conv1d.bias", "in_proj.bias", "out_proj.bias")
_GEOSSM_NAMES = {v: k for k, v in _MAMBA_SSM_NAMES.items()}  # mamba_ssm key -> geossm key
_GEOSSM_REQUIRED = [_GEOSSM_NAMES.get(k, k) for k in _REQUIRED]
_GEOSSM_OPTIONAL = [_GEOSSM_NAMES.get(k, k) for k in _OPTIONAL]


def _mamba_ssm_shape(geossm_key: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The shape mamba_ssm stores for a geossm tensor of ``shape``."""
    return (shape[0], 1, shape[1]) if geossm_key == "conv_weight" else shape


def from_mamba_ssm_state_dict(state_dict, prefix: str = "") -> dict[str, torch.Tensor]:
    """Map a ``mamba_ssm.Mamba`` state dict to ``geossm.nn.Mamba``'s keys and shapes.

    ``conv1d.weight (E, 1, W)`` becomes ``conv_weight (E, W)``, ``conv1d.bias (E,)``
    ``conv_bias``; ``in_proj`` ``(2E, D)``, ``x_proj`` ``(R + 2N, E)``, ``dt_proj``
    ``(E, R)`` + bias ``(E,)``, ``A_log (E, N)``, ``D (E,)``, ``out_proj`` ``(D, E)`` keep
    their names and layouts (same split order: x then z; dt, B, C). Tensors are not copied.

    Args:
        state_dict: the mixer's state dict (``mamba_ssm.Mamba(...).state_dict()``) or a whole
            model's with ``prefix``.
        prefix: the mixer's key prefix in ``state_dict`` (e.g. ``"layers.0.mixer."``); keys
            without it are ignored. Default ``""``.

    Returns:
        ``{geossm key: tensor}``, loadable with ``Mamba.load_state_dict``.

    Raises:
        ValueError: a required key is missing, a key is not one of mamba_ssm's ``Mamba``, or
            ``conv1d.weight`` is not ``(E, 1, W)``.
    """
    own = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
    missing = [k for k in _REQUIRED if k not in own]
    unknown = sorted(k for k in own if k not in _REQUIRED + _OPTIONAL)
    if missing or unknown:
        raise ValueError(
            f"mamba_ssm state dict (prefix {prefix!r}): expected the keys of mamba_ssm's Mamba "
            f"{list(_REQUIRED)} (+ {list(_OPTIONAL)} if present); missing {missing}, "
            f"unknown {unknown}")
    conv = own["conv1d.weight"]
    if conv.dim() != 3 or conv.shape[1] != 1:
        raise ValueError(f"mamba_ssm state dict: 'conv1d.weight' expected shape (E, 1, W) "
                         f"(a depthwise Conv1d), got {tuple(conv.shape)}")
    state = {_GEOSSM_NAMES.get(k, k): v for k, v in own.items()}
    state["conv_weight"] = conv[:, 0, :]
    return state


def to_mamba_ssm_state_dict(state_dict, prefix: str = "") -> dict[str, torch.Tensor]:
    """Map a ``geossm.nn.Mamba`` state dict to ``mamba_ssm.Mamba``'s keys and shapes (the
    inverse of ``from_mamba_ssm_state_dict``: ``conv_weight (E, W)`` → ``conv1d.weight
    (E, 1, W)``); ``prefix`` is put before every key. Raises ``ValueError`` on a missing or
    unknown key or a ``conv_weight`` that is not ``(E, W)``."""
    missing = [k for k in _GEOSSM_REQUIRED if k not in state_dict]
    unknown = sorted(k for k in state_dict if k not in _GEOSSM_REQUIRED + _GEOSSM_OPTIONAL)
    if missing or unknown:
        raise ValueError(f"geossm Mamba state dict: expected the keys {_GEOSSM_REQUIRED} "
                         f"(+ {_GEOSSM_OPTIONAL} if present); missing {missing}, "
                         f"unknown {unknown}")
    conv = state_dict["conv_weight"]
    if conv.dim() != 2:
        raise ValueError(f"geossm Mamba state dict: 'conv_weight' expected shape (E, W), got "
                         f"{tuple(conv.shape)}")
    out = {prefix + _MAMBA_SSM_NAMES.get(k, k): v for k, v in state_dict.items()}
    out[prefix + "conv1d.weight"] = conv[:, None, :]
    return out
