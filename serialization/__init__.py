"""Serializers: irregular data -> packed sequences (``Serialization``).

Layers consume one structure, ``Serialization(order, inverse, cu_seqlens, extras)``, and do
``y = scan(x[order], cu_seqlens)[inverse]``. Constructors here build it for

- points and voxels along space-filling curves (``serialize``, ``serialize_multi``,
  ``encode`` / ``decode`` for ten orders) with PTv3 serialized pooling;
- LiDAR voxels in LION window groups (``window_groups``, ``window_groups_multi``,
  ``window_partition``);
- graphs: random-walk neighbourhood tokens, degree, node-id and depth-first orders
  (``random_walk_tokens``, ``degree_order``, ``index_order``, ``dfs_order``);
- event streams (``geossm.serialization.events``: tonic-compatible slicers, frames, voxel grids,
  time surfaces, ``serialize_events``).
"""

from geossm.packed import batch_to_cu_seqlens, cu_seqlens_to_batch

from .curves import ORDERS, coarsen, decode, encode, fit_depth, sample_depths
from .graph import (NeighbourhoodTokens, degree_order, dfs_order, index_order,
                    random_walk_tokens, random_walks, to_csr)
from .points import (Pooling, grid_coordinates, pool_grid, serialize, serialize_grid,
                     serialize_multi, serialized_pooling)
from .structure import InsertedTokens, Serialization, apply, insert_tokens, undo
from .windows import window_groups, window_groups_multi, window_partition

__all__ = [
    "ORDERS", "encode", "decode", "coarsen", "fit_depth", "sample_depths",
    "Serialization", "batch_to_cu_seqlens", "cu_seqlens_to_batch", "apply", "undo",
    "insert_tokens", "InsertedTokens",
    "serialize", "serialize_multi", "serialize_grid", "grid_coordinates",
    "serialized_pooling", "pool_grid", "Pooling",
    "window_groups", "window_groups_multi", "window_partition",
    "random_walk_tokens", "random_walks", "NeighbourhoodTokens", "degree_order", "index_order",
    "dfs_order", "to_csr",
]
