"""geossm: selective state-space models (Mamba) for irregular 3D and event data.

``import geossm`` runs no kernel and needs no GPU; sub-packages are imported on use:

- ``geossm.packed``: the packed-sequence contract (``cu_seqlens``) and ``pack_collate``;
- ``geossm.kernels``: grouped, variable-length ``selective_scan`` and ``causal_conv1d``;
- ``geossm.serialization``: irregular data -> packed sequences (``Serialization``);
- ``geossm.nn``, ``geossm.engine``: layers, trainer, configs;
- ``geossm.tasks``: segmentation, detection, graph and event tasks.
"""

__version__ = "0.1.0"
