"""Grouped variable-length scan kernels.

- ``selective_scan``: the Mamba-1 selective scan over packed segments (``cu_seqlens``).
- ``ssd_scan``: the Mamba-2 state-space-duality scan (scalar decay per head) over packed segments.
- ``causal_conv1d``: depthwise causal convolution that never reads across segment boundaries.

Backends: ``"torch"`` (reference), ``"numba"`` (CPU), ``"triton"`` (GPU). Importing this package
compiles and launches nothing.
"""

from .causal_conv1d import causal_conv1d
from .selective_scan import selective_scan
from .ssd_scan import ssd_scan

__all__ = ["selective_scan", "ssd_scan", "causal_conv1d", "available_backends"]


def available_backends(device: str = "cpu") -> list[str]:
    """Backends that can run on ``device`` in this environment (``"torch"`` always can)."""
    from geossm import _compat

    names = ["torch"]
    if device == "cpu" and _compat.has_numba():
        names.append("numba")
    if _compat.has_triton() and (device.startswith("cuda") or _compat.triton_interpret()):
        names.append("triton")
    return names
