"""Heterophilous benchmark graphs of Platonov et al. (2023) (``RomanEmpire``, ``AmazonRatings``,
``Minesweeper``, ``Tolokers``, ``Questions``, ``ChameleonFiltered``, ``SquirrelFiltered``)."""

from __future__ import annotations

import numpy as np
import torch
from torch_geometric.data import Data

from geossm.registry import DATASETS

from .base import SPLITS, NodeDataset
from .cache import cache_folder, pyg_dataset


class Heterophilous(NodeDataset):
    """Heterophilous benchmark graphs of Platonov et al. (2023), 10 fixed splits, edges made
    undirected. The five of PyG's ``HeterophilousGraphDataset`` are read by it from
    ``root/<name>/raw/<name>.npz``; the filtered Chameleon / Squirrel from
    ``root/<name>_filtered.npz`` (same keys: ``node_features``, ``node_labels``, ``edges``,
    ``{train,val,test}_masks``)."""

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
            path = root / f"{self.name}.npz"
            if not path.is_file():
                raise FileNotFoundError(f"dataset file not found: {path}")
            with np.load(path) as raw:
                x = torch.from_numpy(raw["node_features"])
                y = torch.from_numpy(raw["node_labels"])
                edges = torch.from_numpy(raw["edges"]).t().long()
                masks = {s: torch.from_numpy(raw[f"{s}_masks"]).t().bool() for s in SPLITS}
            edge_index = to_undirected(edges, num_nodes=x.shape[0])
            return Data(x=x, edge_index=edge_index, y=y), masks
        from torch_geometric.datasets import HeterophilousGraphDataset
        folder = cache_folder(root, self.family, self.cache_dir) / self.name
        data = pyg_dataset(lambda path: HeterophilousGraphDataset(path, self.name),
                           [root / self.name / "raw" / f"{self.name}.npz"], root, folder)[0]
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
