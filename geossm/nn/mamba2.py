"""Mamba-2 (SSD) mixers over packed variable-length sequences, and the mixer factory.

``Mamba2`` is the Mamba-2 block of Dao & Gu (2024, "Transformers are SSMs") written on
``geossm.kernels.ssd_scan``: a scalar decay per head, grouped ``B``/``C``, one input projection
for ``z, x, B, C, dt``, a causal convolution over ``x, B, C`` and a gated RMSNorm before the
output projection. ``BiMamba2`` adds a reversed direction as ``BiMamba`` does for Mamba-1.
``build_mixer`` picks Mamba-1 or Mamba-2 by name (the ``model.mixer`` config key).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from geossm.kernels import causal_conv1d, ssd_scan

from .mamba import BiMamba, Bidirectional, Mamba, check_layer_cu_seqlens, check_tokens

__all__ = ["Mamba2", "BiMamba2", "MIXERS", "build_mixer"]

# Mamba-1 backend names (shared by causal_conv1d) -> ssd_scan backend.
_SSD_BACKEND = {None: None, "torch": "chunked", "numba": "chunked", "triton": "triton"}


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


class Mamba2(nn.Module):
    r"""Mamba-2 mixer on packed ``(T, D)`` + ``cu_seqlens`` or dense ``(B, L, D)`` input.

    With ``E = expand * d_model`` inner channels in ``H = E / headdim`` heads, ``G = ngroups``
    groups and state size ``N = d_state``::

        z, xBC, dt = split(in_proj(x))                     # (T, E), (T, E + 2GN), (T, H)
        x', B, C   = split(silu(causal_conv1d(xBC)))       # per segment, width d_conv
        A          = -exp(A_log)                           # (H,)
        y          = ssd_scan(x', dt, A, B, C, D, dt_bias, dt_softplus=True)   # (T, H, P)
        out        = out_proj(rmsnorm_g(y * silu(z)) * norm_weight)      # rmsnorm=True
        out        = out_proj(y * silu(z))                               # rmsnorm=False

    ``rmsnorm_g`` normalises each of the ``G`` groups of ``E / G`` channels (Mamba-2's gated
    RMSNorm, gate before the norm). The state restarts at every segment start; ``reverse=True``
    runs the convolution and the scan from each segment's end to its start.

    Initialisation (Mamba-2's): ``dt_bias = softplus⁻¹(dt)`` with ``dt`` log-uniform in
    ``[dt_min, dt_max]`` (floored at ``dt_init_floor``); ``A = -a`` with ``a`` uniform in
    ``A_init_range`` (stored as ``A_log = log a``); ``D = 1``; the norm weight 1. ``A_log``,
    ``D`` and ``dt_bias`` carry ``_no_weight_decay = True``.

    Args:
        d_model: model width ``D``.
        d_state: state size ``N``, default 64.
        d_conv: causal convolution width, 2..8, default 4.
        expand: inner width factor, ``E = expand * d_model``, default 2.
        headdim: channels per head ``P`` (must divide ``E``), default None = ``gcd(E, 64)``.
        ngroups: groups ``G`` of ``B``/``C`` (must divide ``H``), default 1.
        A_init_range: range of the initial decay rates ``a``, default (1, 16).
        dt_min, dt_max, dt_init_floor: initial step sizes, default 1e-3, 0.1, 1e-4.
        rmsnorm: gated RMSNorm before ``out_proj`` (else gate ``z`` inside the scan), default
            True.
        norm_eps: epsilon of the norm, default 1e-5.
        conv_bias: bias in the convolution, default True.
        bias: biases in ``in_proj`` and ``out_proj``, default False.
        backend: kernel backend, Mamba-1's names: None (triton on CUDA, else the chunked torch
            SSD and numba convolution), ``"torch"``/``"numba"`` (chunked torch SSD; that
            convolution backend) or ``"triton"``.

    Shapes::

        x:          (T, D) packed or (B, L, D) dense
        cu_seqlens: (S+1,) int32, leading 0, last T (packed only; None = one segment)
        out:        like x
    """

    def __init__(self, d_model: int, d_state: int = 64, d_conv: int = 4, expand: int = 2,
                 headdim: int | None = None, ngroups: int = 1,
                 A_init_range: tuple[float, float] = (1.0, 16.0), dt_min: float = 1e-3,
                 dt_max: float = 0.1, dt_init_floor: float = 1e-4, rmsnorm: bool = True,
                 norm_eps: float = 1e-5, conv_bias: bool = True, bias: bool = False,
                 backend=None):
        super().__init__()
        for name, value in (("d_model", d_model), ("d_state", d_state), ("expand", expand),
                            ("ngroups", ngroups)):
            _positive_int(name, value)
        if isinstance(d_conv, bool) or not isinstance(d_conv, int) or not 2 <= d_conv <= 8:
            raise ValueError(f"d_conv must be an int in [2, 8] (kernel limit), got {d_conv!r}")
        inner = expand * d_model
        headdim = math.gcd(inner, 64) if headdim is None else _positive_int("headdim", headdim)
        if inner % headdim:
            raise ValueError(f"headdim must divide expand * d_model = {inner}, got {headdim}")
        heads = inner // headdim
        if heads % ngroups:
            raise ValueError(f"ngroups must divide the number of heads H = {heads}, got "
                             f"{ngroups}")
        if not 0 < dt_min <= dt_max:
            raise ValueError(f"dt_min and dt_max must satisfy 0 < dt_min <= dt_max, got "
                             f"dt_min={dt_min}, dt_max={dt_max}")
        low, high = A_init_range
        if not 0 < low <= high:
            raise ValueError(f"A_init_range must be (low, high) with 0 < low <= high, got "
                             f"{A_init_range!r}")
        if backend not in _SSD_BACKEND:
            raise ValueError(f"backend must be None, 'torch', 'numba' or 'triton', "
                             f"got {backend!r}")
        self.d_model, self.d_state, self.d_conv, self.expand = d_model, d_state, d_conv, expand
        self.d_inner, self.headdim, self.nheads, self.ngroups = inner, headdim, heads, ngroups
        self.rmsnorm, self.norm_eps, self.backend = bool(rmsnorm), norm_eps, backend
        conv_channels = inner + 2 * ngroups * d_state

        self.in_proj = nn.Linear(d_model, inner + conv_channels + heads, bias=bias)
        # Depthwise filters (channels, W): weight[:, -1] multiplies the current token.
        self.conv_weight = nn.Parameter(torch.empty(conv_channels, d_conv))
        self.conv_bias = nn.Parameter(torch.empty(conv_channels)) if conv_bias else None
        self.dt_bias = nn.Parameter(torch.empty(heads))
        self.A_log = nn.Parameter(torch.empty(heads))
        self.D = nn.Parameter(torch.empty(heads))
        self.norm_weight = nn.Parameter(torch.ones(inner)) if self.rmsnorm else None
        self.out_proj = nn.Linear(inner, d_model, bias=bias)
        for param in (self.dt_bias, self.A_log, self.D):
            param._no_weight_decay = True
        self._init_ranges = (dt_min, dt_max, dt_init_floor, low, high)
        self.reset_ssm_parameters()

    @torch.no_grad()
    def reset_ssm_parameters(self) -> None:
        """Mamba-2's initialisation of the convolution, ``dt_bias``, ``A_log``, ``D``, norm."""
        bound = 1.0 / math.sqrt(self.d_conv)  # nn.Conv1d's default for a depthwise filter
        nn.init.uniform_(self.conv_weight, -bound, bound)
        if self.conv_bias is not None:
            nn.init.uniform_(self.conv_bias, -bound, bound)
        dt_min, dt_max, floor, low, high = self._init_ranges
        dt = torch.exp(torch.rand(self.nheads) * (math.log(dt_max) - math.log(dt_min))
                       + math.log(dt_min)).clamp(min=floor)
        # softplus(inv_dt) == dt: inv_dt = log(exp(dt) - 1) = dt + log(1 - exp(-dt)).
        self.dt_bias.copy_(dt + torch.log(-torch.expm1(-dt)))
        self.A_log.copy_(torch.log(torch.empty(self.nheads).uniform_(low, high)))
        self.D.fill_(1.0)
        if self.norm_weight is not None:
            self.norm_weight.fill_(1.0)

    def forward(self, x: torch.Tensor, cu_seqlens: torch.Tensor | None = None,
                reverse: bool = False) -> torch.Tensor:
        """Mix along every segment (see the class docstring); returns a tensor shaped like x."""
        check_tokens("x", x, self.d_model)
        check_layer_cu_seqlens(cu_seqlens, x)
        inner, heads, groups, N = self.d_inner, self.nheads, self.ngroups, self.d_state
        z, xBC, dt = self.in_proj(x).split([inner, inner + 2 * groups * N, heads], dim=-1)
        xBC = causal_conv1d(xBC, self.conv_weight, self.conv_bias, cu_seqlens=cu_seqlens,
                            activation="silu", reverse=reverse, backend=self.backend)
        h, B, C = xBC.split([inner, groups * N, groups * N], dim=-1)
        tokens = x.shape[:-1]
        y = ssd_scan(h.reshape(*tokens, heads, self.headdim), dt, -torch.exp(self.A_log.float()),
                     B.reshape(*tokens, groups, N), C.reshape(*tokens, groups, N),
                     D=self.D.float(), z=None if self.rmsnorm else
                     z.reshape(*tokens, heads, self.headdim),
                     dt_bias=self.dt_bias.float(), dt_softplus=True, cu_seqlens=cu_seqlens,
                     reverse=reverse, backend=_SSD_BACKEND[self.backend])
        y = y.reshape(*tokens, inner)
        if self.rmsnorm:
            y = self._gated_norm(y, z)
        return self.out_proj(y)

    def _gated_norm(self, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """``rmsnorm(y * silu(z))`` over each of the G channel groups, times the weight."""
        gated = y.float() * F.silu(z.float())
        grouped = gated.unflatten(-1, (self.ngroups, -1))
        normed = grouped * torch.rsqrt(grouped.pow(2).mean(-1, keepdim=True) + self.norm_eps)
        return (normed.flatten(-2) * self.norm_weight.float()).to(y.dtype)

    def extra_repr(self) -> str:
        return (f"d_model={self.d_model}, d_state={self.d_state}, d_conv={self.d_conv}, "
                f"expand={self.expand}, headdim={self.headdim}, nheads={self.nheads}, "
                f"ngroups={self.ngroups}, rmsnorm={self.rmsnorm}, backend={self.backend!r}")


class BiMamba2(Bidirectional):
    r"""Bidirectional Mamba-2: a forward and a reversed direction with separate parameters.

    ``out = forward_mamba(x) + backward_mamba(x, reverse=True)``; the reversed direction scans
    each segment from its end to its start (equal to flipping every segment, running forward
    and flipping back).

    Args:
        d_model: model width ``D``.
        **mamba_kwargs: passed to both ``Mamba2`` directions.

    Shapes::

        x:          (T, D) packed or (B, L, D) dense
        cu_seqlens: (S+1,) int32 (packed only; None = one segment)
        out:        like x
    """

    direction_class = Mamba2


#: mixer name -> (unidirectional class, bidirectional class).
MIXERS = {"mamba": (Mamba, BiMamba), "mamba2": (Mamba2, BiMamba2)}


def build_mixer(mixer: str, d_model: int, bidirectional: bool = True, **kwargs) -> nn.Module:
    """``Mamba``/``BiMamba`` (``mixer="mamba"``) or ``Mamba2``/``BiMamba2`` (``"mamba2"``).

    ``kwargs`` go to the class (``d_state``, ``d_conv``, ``expand``, ``backend``, ...).
    Raises ``ValueError`` on an unknown name.
    """
    if mixer not in MIXERS:
        raise ValueError(f"mixer must be one of {sorted(MIXERS)}, got {mixer!r}")
    return MIXERS[mixer][1 if bidirectional else 0](d_model, **kwargs)
