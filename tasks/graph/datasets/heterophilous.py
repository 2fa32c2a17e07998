"""Heterophilous benchmark graphs of Platonov et al. (2023) (``RomanEmpire``, ``AmazonRatings``,
``Minesweeper``, ``Tolokers``, ``Questions``, ``ChameleonFiltered``, ``SquirrelFiltered``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch_geometric.data import Data

from geossm.registry import DATASETS

from .base import SPLITS, NodeDataset
from .cache import MALFORMED, cache_folder, pyg_dataset

#: Arrays of a heterophilous ``.npz`` (PyG's layout and the filtered sets alike).
KEYS = ("node_features", "node_labels", "edges", "train_masks", "val_masks", "test_masks")


def read_npz(path: Path) -> dict[str, np.ndarray]:
    """The arrays ``KEYS`` of the heterophilous ``.npz`` at ``path``, shapes checked
    (``check_arrays``).

    Raises ``FileNotFoundError`` for a missing file; ``ValueError`` naming it for one that is
    not a whole archive (truncated, another format), lacks a key or holds a misshapen array.
    """
    if not path.is_file():
        raise FileNotFoundError(f"dataset file not found: {path}")
    try:
        with np.load(path) as raw:
            missing = [key for key in KEYS if key not in raw.files]
            arrays = {key: raw[key] for key in KEYS if key in raw.files}
    except MALFORMED as err:
        raise ValueError(f"{path}: not a readable .npz archive ({type(err).__name__}: {err}); "
                         f"expected np.savez's archive of {list(KEYS)}") from err
    if missing:
        raise ValueError(f"{path}: missing arrays {missing} (a heterophilous .npz holds "
                         f"{list(KEYS)})")
    check_arrays(path, arrays)
    return arrays


def check_arrays(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Raise ``ValueError`` naming ``path``, the key, the shape found and the shape expected
    unless ``node_features (N, F)``, ``node_labels (N,)``, ``edges (E, 2)`` with node ids in
    ``[0, N)``, and ``{train,val,test}_masks (S, N)`` with one ``S`` (the fixed splits): a
    transposed mask would otherwise load and fail far away, in the loss."""
    def refuse(key: str, expected: str, transposed: bool = False) -> None:
        hint = " (stored transposed?)" if transposed else ""
        raise ValueError(f"{path}: {key}: expected shape {expected}, got "
                         f"{arrays[key].shape}{hint}")

    if arrays["node_features"].ndim != 2:
        refuse("node_features", "(N, F)")
    n = arrays["node_features"].shape[0]
    if arrays["node_labels"].shape != (n,):
        refuse("node_labels", f"(N,) = ({n},) (one label per row of node_features)")
    edges = arrays["edges"]
    if edges.ndim != 2 or edges.shape[1] != 2:
        refuse("edges", "(E, 2)", transposed=edges.ndim == 2 and edges.shape[0] == 2)
    if edges.size and (edges.min() < 0 or edges.max() >= n):
        raise ValueError(f"{path}: edges: expected node ids in [0, N={n}), got "
                         f"[{edges.min()}, {edges.max()}]")
    train = arrays["train_masks"]
    splits = train.shape[0] if train.ndim == 2 else None
    for split in SPLITS:
        key = f"{split}_masks"
        mask = arrays[key]
        if mask.ndim != 2 or mask.shape[1] != n:
            refuse(key, f"(splits, N) = (splits, {n})",
                   transposed=mask.ndim == 2 and mask.shape[0] == n)
        if mask.shape[0] != splits:
            refuse(key, f"({splits}, {n}) (as many splits as train_masks)")


class Heterophilous(NodeDataset):
    """Heterophilous benchmark graphs of Platonov et al. (2023), 10 fixed splits, edges made
    undirected. The five of PyG's ``HeterophilousGraphDataset`` are read by it from
    ``root/<name>/raw/<name>.npz``; the filtered Chameleon / Squirrel from
    ``root/<name>_filtered.npz`` (same keys: ``node_features (N, F)``, ``node_labels (N,)``,
    ``edges (E, 2)``, ``{train,val,test}_masks (10, N)``; checked, see ``check_arrays``)."""

    family = "heterophilous"

    @property
    def metric(self) -> str:
        """ROC-AUC for the binary graphs (Minesweeper, Tolokers, Questions), accuracy for the
        multi-class ones, as Platonov et al. (2023) report them."""
        return "roc_auc" if self.num_classes == 2 else "acc"

    def load(self):
        from torch_geometric.utils import to_undirected
        root = self._require_root()
        if self.name.endswith("_filtered"):
            raw = read_npz(root / f"{self.name}.npz")
            x = torch.from_numpy(raw["node_features"])
            y = torch.from_numpy(raw["node_labels"])
            edges = torch.from_numpy(raw["edges"]).t().long()
            masks = {s: torch.from_numpy(raw[f"{s}_masks"]).t().bool() for s in SPLITS}
            edge_index = to_undirected(edges, num_nodes=x.shape[0])
            return Data(x=x, edge_index=edge_index, y=y), masks
        from torch_geometric.datasets import HeterophilousGraphDataset
        path = root / self.name / "raw" / f"{self.name}.npz"
        folder = cache_folder(root, self.family, self.cache_dir, [path]) / self.name
        # PyG transposes the masks and edges without looking: checked before it processes.
        data = pyg_dataset(lambda p: HeterophilousGraphDataset(p, self.name), [path], root,
                           folder, check=lambda: read_npz(path))[0]
        masks = {s: getattr(data, f"{s}_mask").bool() for s in SPLITS}
        return Data(x=data.x, edge_index=data.edge_index, y=data.y), masks


@DATASETS.register
@DATASETS.register(name="Roman-empire")  # the paper's and PyG's spelling
class RomanEmpire(Heterophilous):
    """``roman_empire`` of the heterophilous benchmark (see ``Heterophilous``): 22,662 words of
    the English Wikipedia article on the Roman Empire, linked when adjacent or syntactically
    dependent, 18 syntactic roles; accuracy. Also registered as ``Roman-empire``."""

    name = "roman_empire"


@DATASETS.register
@DATASETS.register(name="Amazon-ratings")  # the paper's and PyG's spelling
class AmazonRatings(Heterophilous):
    """``amazon_ratings`` of the heterophilous benchmark (see ``Heterophilous``): 24,492
    products co-purchased together, 5 rating classes; accuracy. Also ``Amazon-ratings``."""

    name = "amazon_ratings"


@DATASETS.register
class Minesweeper(Heterophilous):
    """``minesweeper`` of the heterophilous benchmark (see ``Heterophilous``): a 100 x 100 grid,
    mine or not (2 classes); ROC-AUC."""

    name = "minesweeper"


@DATASETS.register
class Tolokers(Heterophilous):
    """``tolokers`` of the heterophilous benchmark (see ``Heterophilous``): 11,758 crowd workers
    who shared a task, banned or not; ROC-AUC."""

    name = "tolokers"


@DATASETS.register
class Questions(Heterophilous):
    """``questions`` of the heterophilous benchmark (see ``Heterophilous``): 48,921 users of a
    question-answering site linked when they answered each other, active or not; ROC-AUC."""

    name = "questions"


@DATASETS.register
class ChameleonFiltered(Heterophilous):
    """``chameleon_filtered`` (see ``Heterophilous``): Wikipedia's chameleon graph without its
    duplicated nodes, 890 pages, 5 traffic classes; accuracy."""

    name = "chameleon_filtered"


@DATASETS.register
class SquirrelFiltered(Heterophilous):
    """``squirrel_filtered`` (see ``Heterophilous``): the squirrel graph without duplicates, 2,223
    pages, 5 traffic classes; accuracy."""

    name = "squirrel_filtered"
