"""Optional heavy dependencies, checked once.

A missing optional package fails only when a feature that needs it is used, with the install
hint. Nothing here imports the package eagerly: ``has_*`` probes with ``importlib.util.find_spec``
and ``require_*`` imports on first use and caches the module.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
from types import ModuleType

INSTALL_HINTS = {
    "triton": "pip install triton  (GPU kernels; CPU runs use numba or TRITON_INTERPRET=1)",
    "open3d": "pip install open3d  (and on Debian: apt-get install -y libusb-1.0-0 "
              "mesa-vulkan-drivers libvulkan1 for offscreen rendering)",
    "spconv": "pip install 'geossm-lib[spconv]'  (spconv-cu120 on Python <= 3.11, "
              "spconv-cu121 on 3.12-3.13; both run on CUDA 12 and, with the native "
              "algorithm, on the CPU; geossm's torch sparse convolution needs neither)",
    "PIL": "pip install pillow  (legends drawn into rendered PNGs)",
    "numba": "pip install numba",
    "torch_geometric": "pip install torch-geometric",
    "tonic": "pip install tonic",
    "aedat": "pip install aedat",
    "h5py": "pip install h5py",
    "rdkit": "pip install rdkit",
    "safetensors": "pip install safetensors  (or the extra: pip install 'geossm-lib[export]')",
}


class MissingDependencyError(ImportError):
    """Raised when an optional dependency is needed but not installed."""


@functools.lru_cache(maxsize=None)
def has(name: str) -> bool:
    """Whether the optional package ``name`` can be imported (no import is done)."""
    return importlib.util.find_spec(name) is not None


@functools.lru_cache(maxsize=None)
def require(name: str, feature: str = "") -> ModuleType:
    """Import the optional package ``name`` or raise ``MissingDependencyError`` with a hint."""
    try:
        return importlib.import_module(name)
    except ImportError as err:
        hint = INSTALL_HINTS.get(name, f"pip install {name}")
        what = f" (needed for {feature})" if feature else ""
        raise MissingDependencyError(
            f"optional dependency '{name}' is not available{what}: {err}. Install it with: {hint}"
        ) from err


def has_triton() -> bool:
    """Whether Triton is importable (it is not on most CPU-only installs)."""
    return has("triton")


def has_numba() -> bool:
    return has("numba")


def triton_interpret() -> bool:
    """Whether Triton kernels run in the CPU interpreter (``TRITON_INTERPRET=1``)."""
    import os

    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
