"""The two dataset interfaces of the graph tasks: ``NodeDataset`` (one graph, node masks per
split) and ``GraphDataset`` (one item per graph of a split)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import torch
from torch_geometric.data import Data

from geossm.engine.task import SplitSamples

from ..transforms import AddPositionalEncodings, normalize_rows


SPLITS = ("train", "val", "test")


def split_samples(dataset, indices) -> SplitSamples:
    """``[dataset[i] for i in indices]`` marked with ``dataset.split`` (the DataLoader calls a
    dataset's ``__getitems__`` for a whole batch)."""
    return SplitSamples([dataset[i] for i in indices], getattr(dataset, "split", None))


def check_split(split: str, split_index: int, num_splits: int) -> None:
    """Raise ``ValueError`` unless ``split`` is one of ``SPLITS`` and ``split_index`` an int in
    ``[0, num_splits)``."""
    if split not in SPLITS:
        raise ValueError(f"split: expected one of {SPLITS}, got {split!r}")
    if isinstance(split_index, bool) or not isinstance(split_index, int) \
            or not 0 <= split_index < num_splits:
        raise ValueError(f"split_index: expected an int in [0, {num_splits}), got {split_index!r}")


class NodeDataset(torch.utils.data.Dataset):
    """One graph, one item; ``mask`` selects the nodes of ``split`` (transductive).

    Item: ``Data(x (N, F) float, edge_index (2, E) long, y (N,) long, mask (N,) bool
    [, pe (N, P)])``, edges in both directions. Subclasses implement ``load() -> (data, masks)``
    with ``masks = {split: (N, S) bool}``.

    Args:
        root: the family's folder (see the module docstring).
        split: ``"train"``, ``"val"`` or ``"test"``, default ``"train"``.
        split_index: which fixed split, default 0.
        normalize_features: divide every feature row by its sum (Planetoid practice), default
            False.
        pe: ``{"laplacian": k, "random_walk": k}`` encodings, default None.
        cache_dir: where the raw files are copied for PyG's processing, default None (see the
            module docstring).
    """

    family = ""
    name = ""
    task_level = "node"
    #: No edge features (``edge_attr`` is absent); read by ``model.edge_dim: auto``.
    num_edge_features = 0
    #: The metric results are published in for this dataset (``eval.metric: null``).
    metric = "acc"

    def __init__(self, root: str | os.PathLike | None = None, split: str = "train",
                 split_index: int = 0, normalize_features: bool = False,
                 pe: Mapping[str, int] | None = None,
                 cache_dir: str | os.PathLike | None = None) -> None:
        self.root = Path(root) if root is not None else None
        self.cache_dir = cache_dir
        data, masks = self.load()
        num_splits = self._check_loaded(data, masks)
        check_split(split, split_index, num_splits)
        self.split, self.split_index, self.num_splits = split, split_index, num_splits
        data.x = data.x.float()
        if normalize_features:
            data.x = normalize_rows(data.x)
        data.y = data.y.long()
        if pe:
            data = AddPositionalEncodings(**dict(pe))(data)
        data.mask = masks[split][:, split_index].bool()
        self.data = data
        self.num_features = data.x.shape[1]
        self.num_classes = int(data.y.max()) + 1

    def _require_root(self) -> Path:
        if self.root is None:
            raise ValueError(f"root: {type(self).__name__} needs the dataset folder, got None")
        if not self.root.is_dir():
            raise FileNotFoundError(f"dataset root not found: {self.root}")
        return self.root

    def load(self) -> tuple[Data, dict[str, torch.Tensor]]:
        raise NotImplementedError

    def _check_loaded(self, data: Data, masks: Mapping[str, torch.Tensor]) -> int:
        """The number of fixed splits ``S``, once ``load``'s ``x (N, F)``, ``y (N,)`` and masks
        ``{split: (N, S)}`` (one ``S`` for all of ``SPLITS``) are checked: arrays shaped
        otherwise would fail far away, in the loss. Raises ``ValueError`` naming the class."""
        name = type(self).__name__
        if data.x is None or data.x.dim() != 2:
            raise ValueError(f"{name}: x: expected shape (N, F), got "
                             f"{None if data.x is None else tuple(data.x.shape)}")
        n = data.x.shape[0]
        if data.y is None or tuple(data.y.shape) != (n,):
            raise ValueError(f"{name}: y: expected shape (N,) = ({n},), got "
                             f"{None if data.y is None else tuple(data.y.shape)}")
        shapes = {s: tuple(masks[s].shape) if s in masks else None for s in SPLITS}
        splits = {shape[1] for shape in shapes.values()
                  if shape is not None and len(shape) == 2 and shape[0] == n}
        if len(splits) != 1 or any(shape is None or len(shape) != 2 or shape[0] != n
                                   for shape in shapes.values()):
            raise ValueError(f"{name}: masks: expected shape (N, S) = ({n}, S) with one S for "
                             f"{', '.join(SPLITS)}, got {shapes}")
        return splits.pop()

    def __len__(self) -> int:
        return 1

    def __getitem__(self, i: int) -> Data:
        if i != 0:
            raise IndexError(f"{type(self).__name__} holds one graph, got index {i}")
        return self.data

    def __getitems__(self, indices) -> SplitSamples:
        return split_samples(self, indices)


class GraphDataset(torch.utils.data.Dataset):
    """Many graphs, one item per graph of ``split``.

    Item: ``Data(x (N_i, F), edge_index (2, E_i), edge_attr (E_i, F_e) or None, y (1,) long or
    (1, C) float [, pe (N_i, P)])``. Subclasses implement ``load() -> (graphs, split ids)``.
    """

    task_level = "graph"
    #: The metric results are published in (``eval.metric: null``).
    metric = "acc"

    def __len__(self) -> int:
        return len(self.graphs)

    def __getitem__(self, i: int) -> Data:
        return self.graphs[i]

    def __getitems__(self, indices) -> SplitSamples:
        return split_samples(self, indices)
