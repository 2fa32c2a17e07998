"""``SyntheticGraphs``: a graph-classification set generated on the fly (no download).

Each graph is drawn from one of four families of similar size, told apart by their global
structure, the kind of thing random-walk tokens see and one round of message passing does not::

    label  family    structure (n nodes, 8 <= n <= 24 by default)
    0      cycle     one ring of n nodes
    1      tree      a random recursive tree (node i hangs off a random earlier node)
    2      ladder    two rails of n/2 nodes joined by rungs (a 2 x n/2 grid)
    3      barbell   two cliques of 3-5 nodes joined by a path

``noise_edges`` random extra edges per graph (default 1) keep degrees from telling the families
apart exactly; node ids are shuffled, so their order carries nothing. Node features are the
degree one-hot (``max_degree``, as TU sets without node labels get it). A graph is fully
determined by ``(seed, split, index)`` (NumPy generator seeded by those three), its label is
``index % 4``, so splits never share a graph and classes are balanced.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from torch_geometric.data import Data

from geossm.registry import DATASETS

from .datasets import GraphDataset
from .transforms import AddPositionalEncodings

__all__ = ["SyntheticGraphs", "FAMILIES", "make_graph", "write_tu_folder"]

#: Graph families in label order.
FAMILIES = ("cycle", "tree", "ladder", "barbell")
_SPLIT_IDS = {"train": 0, "val": 1, "test": 2}


def _cycle(rng: np.random.Generator, n: int) -> list[tuple[int, int]]:
    return [(i, (i + 1) % n) for i in range(n)]


def _tree(rng: np.random.Generator, n: int) -> list[tuple[int, int]]:
    return [(int(rng.integers(0, i)), i) for i in range(1, n)]


def _ladder(rng: np.random.Generator, n: int) -> list[tuple[int, int]]:
    m = n // 2  # rails 0..m-1 and m..2m-1 (an odd n leaves one node on a stub)
    edges = [(i, i + 1) for i in range(m - 1)] + [(m + i, m + i + 1) for i in range(m - 1)]
    edges += [(i, m + i) for i in range(m)]
    if n % 2:
        edges.append((2 * m - 1, 2 * m))
    return edges


def _barbell(rng: np.random.Generator, n: int) -> list[tuple[int, int]]:
    k = int(rng.integers(3, 6))
    k = min(k, (n - 1) // 2)  # leave at least one path node
    left, right = range(k), range(n - k, n)
    edges = [(a, b) for part in (left, right) for a in part for b in part if a < b]
    chain = [k - 1, *range(k, n - k), n - k]  # clique, path nodes, clique
    edges += list(zip(chain[:-1], chain[1:]))
    return edges


_BUILDERS = (_cycle, _tree, _ladder, _barbell)


def make_graph(rng: np.random.Generator, label: int, min_nodes: int = 8, max_nodes: int = 24,
               noise_edges: int = 1) -> tuple[np.ndarray, int]:
    """One graph of family ``label`` (see ``FAMILIES``): ``(edge_index (2, E) int64, n)``.

    Edges are undirected (both directions listed), without self-loops or duplicates; node ids
    are a random permutation. ``n`` is uniform in ``[min_nodes, max_nodes]``.
    """
    n = int(rng.integers(min_nodes, max_nodes + 1))
    pairs = set(tuple(sorted(e)) for e in _BUILDERS[label](rng, n))
    for _ in range(noise_edges):
        a, b = (int(v) for v in rng.choice(n, 2, replace=False))
        pairs.add((min(a, b), max(a, b)))
    perm = rng.permutation(n)
    edges = perm[np.array(sorted(pairs), dtype=np.int64)]  # (E, 2) relabelled
    return np.concatenate([edges, edges[:, ::-1]]).T.copy(), n


@DATASETS.register
class SyntheticGraphs(GraphDataset):
    """Graph classification on generated graphs (see the module docstring): no files, so
    ``root`` must be null.

    Item: ``Data(x (N, max_degree + 1) float, edge_index (2, E) long, y (1,) long,
    [pe (N, P)])``.

    Args:
        root: must be None (accepted so configs share the ``data.root`` key).
        split: ``"train"``, ``"val"`` or ``"test"``, default ``"train"``.
        split_index: must be 0 (one fixed split).
        num_graphs: graphs in ``train``, default 400.
        num_eval_graphs: graphs in ``val`` and in ``test``, default 100.
        min_nodes, max_nodes: nodes per graph, uniform in ``[min, max]``, default 8 and 24.
        noise_edges: random extra edges per graph, default 1.
        max_degree: degree one-hot width - 1 (higher degrees are capped), default 8.
        pe: ``{"laplacian": k, "random_walk": k, "degree": bool}``, default None.
        seed: base seed, default 0.
    """

    name = "SyntheticGraphs"
    num_classes = len(FAMILIES)
    num_edge_features = 0

    def __init__(self, root: str | None = None, split: str = "train", split_index: int = 0,
                 num_graphs: int = 400, num_eval_graphs: int = 100, min_nodes: int = 8,
                 max_nodes: int = 24, noise_edges: int = 1, max_degree: int = 8,
                 pe: Mapping[str, int] | None = None, seed: int = 0) -> None:
        if root is not None:
            raise ValueError(f"SyntheticGraphs: root must be null (the graphs are generated), "
                             f"got {root!r}")
        if split not in _SPLIT_IDS:
            raise ValueError(f"split: expected one of {tuple(_SPLIT_IDS)}, got {split!r}")
        if split_index != 0:
            raise ValueError(f"split_index: SyntheticGraphs has one fixed split (0), got "
                             f"{split_index!r}")
        count = num_graphs if split == "train" else num_eval_graphs
        for key, value, low in (("num_graphs", count, 1), ("min_nodes", min_nodes, 7),
                                ("noise_edges", noise_edges, 0), ("max_degree", max_degree, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{key}: expected an int >= {low}, got {value!r}")
        if not isinstance(max_nodes, int) or max_nodes < min_nodes:
            raise ValueError(f"max_nodes: expected an int >= min_nodes={min_nodes}, got "
                             f"{max_nodes!r}")
        self.split, self.split_index = split, split_index
        self.num_features = max_degree + 1
        self.graphs = []
        for index in range(count):
            label = index % len(FAMILIES)
            rng = np.random.default_rng([seed, _SPLIT_IDS[split], index])
            edges, n = make_graph(rng, label, min_nodes, max_nodes, noise_edges)
            edge_index = torch.from_numpy(edges)
            degree = torch.bincount(edge_index[0], minlength=n).clamp(max=max_degree)
            data = Data(x=torch.nn.functional.one_hot(degree, max_degree + 1).float(),
                        edge_index=edge_index, y=torch.tensor([label]), num_nodes=n)
            if pe:
                data = AddPositionalEncodings(**dict(pe))(data)
            self.graphs.append(data)


def write_tu_folder(root: str | os.PathLike, name: str = "ENZYMES", num_classes: int = 6,
                    num_graphs: int = 180, attr_dim: int = 18, min_nodes: int = 24,
                    max_nodes: int = 48, seed: int = 0) -> Path:
    """Write a multi-class graph set in the TU collection's text format (``<root>/<name>/raw``)
    whose class signal lies in continuous node attributes: the stress case of a TU reader and a
    graph-level config (ENZYMES-like: 6 classes, 18 attributes, a few node labels).

    Graph ``i`` has label ``i % num_classes`` and the structure of family ``label % 4``
    (``make_graph``: two classes share each family, so structure alone cannot separate them);
    node labels (3 values) are uniform noise; node attribute ``j`` is ``(0.5 centre[label, j]
    + N(0, 1)) * scale[j]`` with column scales from 0.1 to 100 (raw, unnormalised measurements).
    Returns the ``raw`` folder. Deterministic in ``seed``.
    """
    if num_classes < 2 or attr_dim < 1 or num_graphs < num_classes:
        raise ValueError(f"write_tu_folder: expected num_classes >= 2, attr_dim >= 1 and "
                         f"num_graphs >= num_classes, got {num_classes}, {attr_dim}, "
                         f"{num_graphs}")
    rng = np.random.default_rng(seed)
    raw = Path(root) / name / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    centres = rng.normal(0.0, 1.0, (num_classes, attr_dim))
    scales = 10.0 ** rng.uniform(-1.0, 2.0, attr_dim)
    edges, indicator, labels, attributes = [], [], [], []
    offset = 0
    for index in range(num_graphs):
        label = index % num_classes
        edge_index, n = make_graph(rng, label % len(FAMILIES), min_nodes, max_nodes)
        edges.append(edge_index.T + offset + 1)  # the files number nodes from 1
        indicator.append(np.full(n, index + 1))
        labels.append(label + 1)
        attributes.append((0.5 * centres[label] + rng.normal(0.0, 1.0, (n, attr_dim))) * scales)
        offset += n
    files = {"A": np.concatenate(edges), "graph_indicator": np.concatenate(indicator),
             "graph_labels": np.array(labels), "node_labels": rng.integers(0, 3, offset),
             "node_attributes": np.concatenate(attributes)}
    for key, values in files.items():
        fmt = "%.5f" if values.dtype.kind == "f" else "%d"
        np.savetxt(raw / f"{name}_{key}.txt", values, fmt=fmt, delimiter=", ")
    return raw
