"""TU graph classification sets (``MUTAG``, ``PROTEINS``, ``ENZYMES``, ``NCI1``, ``DD``,
``IMDBBinary``, ``COLLAB``) with stratified cross-validation folds; any other set of the TU
collection is read by its own name from its files (``tu_set``)."""

from __future__ import annotations

import copyreg
import os
import re
import threading
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from torch_geometric.data import Data
from tqdm.auto import tqdm

from geossm.engine.logging import get_logger
from geossm.registry import DATASETS

from ..transforms import AddPositionalEncodings
from .base import GraphDataset, check_split
from .cache import cache_folder, pyg_dataset
from .folds import stratified_folds, stratified_holdout

#: Raw folders whose dropped edge attributes were told about (once per process, not per split).
_TOLD_EDGE_ATTR: set[Path] = set()


class TUGraphs(GraphDataset):
    """TU graph classification sets read by PyG's ``TUDataset`` from ``root/<NAME>/raw/``, with
    stratified 10-fold cross-validation.

    Fold ``split_index`` is the test split; ``inner_val`` of the other nine folds (stratified)
    is the validation split and the rest trains. ``inner_val=0`` trains on all nine folds and
    leaves ``val`` empty (run with ``eval.split=null``: no model selection on the test fold).
    Graphs without node features get their degree one-hot (capped at ``max_degree``). Graph
    classification only: the labels of ``<NAME>_graph_labels.txt``, one per graph; a set with
    regression targets (``<NAME>_graph_attributes.txt``) is refused.

    Args:
        root: folder holding ``<NAME>/raw``.
        split: ``"train"``, ``"val"``, ``"test"``, default ``"train"``.
        split_index: test fold, ``0 .. num_folds - 1``, default 0.
        num_folds: default 10.
        inner_val: fraction of the training folds held out for validation, default 0.1: of
            each class, ``inner_val`` of its graphs in those folds, rounded up or down
            (``folds.stratified_holdout``; ``1/k`` holds out one of ``k`` stratified inner
            folds). A value that leaves a class no training graph is refused.
        fold_seed: shuffling of the folds, default 0.
        pe: ``{"laplacian": k, "random_walk": k}``, default None.
        cache_dir: see the module docstring.
        max_degree: one-hot width for featureless graphs, default 64.
        use_node_attr: keep the continuous node attributes (``<NAME>_node_attributes.txt``)
            in front of the node-label one-hot, default True (PyG's ``TUDataset`` drops them by
            default; the published TU baselines use them). A set whose only node features are
            attributes gets the degree one-hot when False.
        use_edge_attr: keep continuous edge attributes (``<NAME>_edge_attributes.txt``) in
            front of the edge-label one-hot, default False (PyG's default; one info line says
            they are dropped).

    ``indices (len(self),)``: the split's graph ids, 0-based (the graph indicator's ids - 1).
    """

    family = "TU"
    name = ""

    def __init__(self, root: str | os.PathLike | None = None, split: str = "train",
                 split_index: int = 0, num_folds: int = 10, inner_val: float = 0.1,
                 fold_seed: int = 0, pe: Mapping[str, int] | None = None,
                 cache_dir: str | os.PathLike | None = None, max_degree: int = 64,
                 use_node_attr: bool = True, use_edge_attr: bool = False) -> None:
        if isinstance(num_folds, bool) or not isinstance(num_folds, int) or num_folds < 2:
            raise ValueError(f"num_folds: expected an int >= 2, got {num_folds!r}")
        check_split(split, split_index, num_folds)
        if not 0.0 <= float(inner_val) < 1.0:
            raise ValueError(f"inner_val: expected a fraction in [0, 1), got {inner_val!r}")
        if root is None:
            raise ValueError(f"root: {type(self).__name__} needs the TU folder, got None")
        root = Path(root)
        from torch_geometric.datasets import TUDataset
        from torch_geometric.utils import degree
        raw = root / self.name / "raw"
        if not raw.is_dir():
            raise FileNotFoundError(f"dataset folder not found: {raw} (TU raw text files)")
        self._check_raw(raw, bool(use_edge_attr))
        files = sorted(p for p in raw.iterdir() if p.is_file())
        folder = cache_folder(root, self.family, cache_dir, files) / self.name
        pyg = pyg_dataset(lambda path: TUDataset(path, self.name, use_node_attr=bool(use_node_attr),
                                                 use_edge_attr=bool(use_edge_attr)),
                          files, root, folder)
        labels = self._graph_labels(pyg, raw)
        fold = stratified_folds(labels, num_folds, fold_seed)
        test = fold == split_index
        rest = np.flatnonzero(~test)
        val = np.zeros(len(labels), dtype=bool)
        if inner_val > 0:
            # Stratified inner hold-out: inner_val of each class of a second shuffle.
            val[rest[stratified_holdout(labels[rest], inner_val, fold_seed + 1)]] = True
        train = ~test & ~val
        starved = np.setdiff1d(labels[rest], labels[train])
        if len(starved):
            raise ValueError(f"inner_val={inner_val}: holds out every training graph of class "
                             f"{starved.tolist()} (fold {split_index}: "
                             f"{[int((labels[rest] == c).sum()) for c in starved]} graph(s) in "
                             "the training folds); expected a smaller inner_val")
        pick = {"train": train, "val": val, "test": test}[split]
        self.indices = np.flatnonzero(pick)
        self.split, self.split_index = split, split_index
        self.num_classes = int(labels.max()) + 1
        self.graphs = []
        for i in tqdm(self.indices.tolist(), desc=f"{self.name} {split}", leave=False,
                      disable=len(pick) < 2000):
            g = pyg[i]
            x = g.x
            if x is None or x.shape[1] == 0:  # no labels (and attributes dropped, if any)
                deg = degree(g.edge_index[0], g.num_nodes).long().clamp(max=max_degree)
                x = torch.nn.functional.one_hot(deg, max_degree + 1)
            d = Data(x=x.float(), edge_index=g.edge_index, y=g.y.view(1).long(),
                     num_nodes=g.num_nodes)
            if g.edge_attr is not None:
                d.edge_attr = g.edge_attr.float()
            if pe:
                d = AddPositionalEncodings(**dict(pe))(d)
            self.graphs.append(d)
        self.num_features = self.graphs[0].num_features if self.graphs else (
            pyg.num_features or max_degree + 1)
        self.num_edge_features = pyg.num_edge_features

    def _check_raw(self, raw: Path, use_edge_attr: bool) -> None:
        """Refuse what the reader does not serve, before PyG processes: regression targets,
        no graph labels; tell (once per process) that edge attributes are dropped."""
        labels = raw / f"{self.name}_graph_labels.txt"
        targets = raw / f"{self.name}_graph_attributes.txt"
        if targets.is_file():
            # PyG reads these float targets instead of the labels: trained as classes they
            # would be truncated to integers.
            raise ValueError(f"{targets}: graph regression targets; geossm's TU reader serves "
                             f"graph classification (class labels in {labels.name}): move "
                             f"{targets.name} out of {raw} to classify by the labels")
        if not labels.is_file():
            raise FileNotFoundError(f"dataset file not found: {labels} (the TU graph labels, "
                                    "one class per graph)")
        edge_attributes = raw / f"{self.name}_edge_attributes.txt"
        if not use_edge_attr and edge_attributes.is_file() and raw not in _TOLD_EDGE_ATTR:
            _TOLD_EDGE_ATTR.add(raw)
            get_logger().info("%s: continuous edge attributes dropped (use_edge_attr is false, "
                              "PyG's default); set data.use_edge_attr=true to keep them",
                              edge_attributes)

    def _graph_labels(self, pyg, raw: Path) -> np.ndarray:
        """The class of every graph, ``(G,)``; ``ValueError`` unless the labels file has one
        line per graph of the graph indicator (PyG would leave the last graphs without a label
        and the folds would drop them)."""
        labels = pyg._data.y.numpy()
        graphs = len(pyg.slices["y"]) - 1  # PyG's count: the largest graph id of the indicator
        if len(labels) != graphs:
            raise ValueError(f"{raw / f'{self.name}_graph_labels.txt'}: {len(labels)} labels "
                             f"for {graphs} graphs (in {self.name}_graph_indicator.txt); "
                             "expected one label per graph (a truncated file?)")
        return labels


@DATASETS.register
class MUTAG(TUGraphs):
    """TU ``MUTAG`` (see ``TUGraphs``): 188 nitroaromatic compounds, mutagenic or not (2 classes);
    7 atom labels, 4 bond labels."""

    name = "MUTAG"


@DATASETS.register
class PROTEINS(TUGraphs):
    """TU ``PROTEINS`` (see ``TUGraphs``): 1,113 proteins, enzyme or not, secondary-structure
    elements as nodes; 3 node labels."""

    name = "PROTEINS"


@DATASETS.register
class ENZYMES(TUGraphs):
    """TU ``ENZYMES`` (see ``TUGraphs``): 600 protein tertiary structures in the 6 top-level EC
    classes; 3 node labels."""

    name = "ENZYMES"


@DATASETS.register
class NCI1(TUGraphs):
    """TU ``NCI1`` (see ``TUGraphs``): 4,110 compounds screened against lung cancer cells (2
    classes); 37 atom labels."""

    name = "NCI1"


@DATASETS.register
class DD(TUGraphs):
    """TU ``DD`` (see ``TUGraphs``): 1,178 protein structures (enzyme or not), 284 nodes per graph
    on average, the largest graphs of the TU sets here; 89 node labels."""

    name = "DD"


@DATASETS.register
@DATASETS.register(name="IMDB-BINARY")  # the collection's own spelling
class IMDBBinary(TUGraphs):
    """TU ``IMDB-BINARY`` (see ``TUGraphs``): 1,000 actor ego-networks labelled by genre (action
    or romance); no node features, so nodes get their degree one-hot. Registered under both
    spellings."""

    name = "IMDB-BINARY"


@DATASETS.register
class COLLAB(TUGraphs):
    """TU ``COLLAB`` (see ``TUGraphs``): 5,000 collaboration ego-networks of 3 physics fields; no
    node features (degree one-hot)."""

    name = "COLLAB"


#: A TU collection name: letters, digits, ``_``, ``-`` and ``(``, ``)`` (e.g. ``PTC_MR``,
#: ``IMDB-MULTI``, ``COIL-DEL``); the files are ``<NAME>/raw/<NAME>_A.txt`` and so on.
TU_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_()\-]*")


def tu_files_present(root: str | os.PathLike | None, name: str) -> bool:
    """Whether ``root/<name>/raw/<name>_A.txt`` (a TU set's adjacency file) exists."""
    return (root is not None and bool(TU_NAME.fullmatch(str(name)))
            and (Path(root) / name / "raw" / f"{name}_A.txt").is_file())


_TU_SET_LOCK = threading.Lock()


class _TUSetType(type):
    """Metaclass of the classes ``tu_set`` makes: they pickle as ``tu_set(name)``, so a process
    that has not made them (a DataLoader worker started by spawn) makes them again."""


def _reduce_tu_set_class(cls: _TUSetType) -> tuple | str:
    """``tu_set(name)`` for the class ``tu_set`` made; a subclass of it pickles by reference."""
    if DATASETS.loaded().get(cls.name) is cls:
        return tu_set, (cls.name,)
    return cls.__qualname__


copyreg.pickle(_TUSetType, _reduce_tu_set_class)


def tu_set(name: str) -> type[TUGraphs]:
    """The ``TUGraphs`` class of the TU collection set ``name``: the registered one where it
    has its own (``MUTAG``, ...), else one made for it and registered in ``DATASETS`` under the
    name. The collection has some 130 sets (``BZR``, ``COX2``, ``PTC_MR``, ``IMDB-MULTI``,
    ``REDDIT-BINARY``, ...), all in one layout, so a config of the TU family reads any of them
    by ``data.name`` alone."""
    if not TU_NAME.fullmatch(str(name)):
        raise ValueError(f"TU set name {name!r}: expected letters, digits, '_', '-', '(' or ')'")
    DATASETS.names()  # every task's classes registered first: a taken name is never made
    with _TU_SET_LOCK:  # two first calls at once must not make two classes
        if name in DATASETS:
            known = DATASETS.get(name)
            if not (isinstance(known, type) and issubclass(known, TUGraphs)):
                raise ValueError(f"TU set name {name!r}: taken by {known.__qualname__}, not a "
                                 "TU set")
            return known
        cls = _TUSetType(name, (TUGraphs,), {
            "name": name, "__module__": __name__, "__qualname__": name,
            "__doc__": f"TU ``{name}`` (see ``TUGraphs``), read from ``<root>/{name}/raw``."})
        return DATASETS.register(cls, name=name)
