"""Layers over packed sequences: Mamba mixers, serialized blocks, point prompts.

- ``Mamba``, ``BiMamba``: selective-SSM mixers on packed ``(T, D)`` + ``cu_seqlens`` or dense
  ``(B, L, D)`` input (grouped kernels, no padding);
- ``Mamba2``, ``BiMamba2``: Mamba-2 (SSD) mixers, same interface; ``build_mixer`` picks one by
  name (``"mamba"`` / ``"mamba2"``);
- ``SerializedBlock``: pre-norm residual (Bi)Mamba block over a ``Serialization``;
- ``RMSNorm``, ``DropPath`` (per segment), ``MLP``;
- ``PointPrompts``, ``CoordinateEncoding``: Point Cloud Mamba's order prompts and coordinate
  encoding.

Importing this package compiles and launches no kernel.
"""

from .layers import MLP, DropPath, RMSNorm
from .mamba import BiMamba, Mamba
from .mamba2 import BiMamba2, Mamba2, build_mixer
from .prompts import CoordinateEncoding, PointPrompts, PromptedSequence
from .serialized import SerializedBlock

__all__ = ["Mamba", "BiMamba", "Mamba2", "BiMamba2", "build_mixer", "SerializedBlock", "RMSNorm",
           "DropPath", "MLP",
           "PointPrompts", "PromptedSequence", "CoordinateEncoding"]
