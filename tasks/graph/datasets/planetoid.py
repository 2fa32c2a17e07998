"""Planetoid citation graphs (``Cora``, ``CiteSeer``, ``PubMed``) with the public split."""

from __future__ import annotations

from torch_geometric.data import Data

from geossm.registry import DATASETS

from .base import SPLITS, NodeDataset
from .cache import cache_folder, pyg_dataset


class Planetoid(NodeDataset):
    """Planetoid citation graphs with the public split (20 labels per class, 500 val, 1000
    test), read by PyG's ``Planetoid`` from ``root/<Name>/raw/ind.<name>.*``."""

    family = "Planetoid"
    FILES = ("x", "tx", "allx", "y", "ty", "ally", "graph", "test.index")

    def load(self):
        from torch_geometric.datasets import Planetoid as PygPlanetoid
        root = self._require_root()
        raw = root / self.name / "raw"
        files = [raw / f"ind.{self.name.lower()}.{f}" for f in self.FILES]
        folder = cache_folder(root, self.family, self.cache_dir, files) / self.name
        data = pyg_dataset(lambda path: PygPlanetoid(path, self.name), files, root, folder)[0]
        masks = {s: getattr(data, f"{s}_mask").view(-1, 1) for s in SPLITS}
        return Data(x=data.x, edge_index=data.edge_index, y=data.y), masks


@DATASETS.register
class Cora(Planetoid):
    """2,708 machine-learning papers linked by citations, 7 topics, 1,433 binary word
    features."""

    name = "Cora"


@DATASETS.register
class CiteSeer(Planetoid):
    """3,327 computer-science papers linked by citations, 6 topics, 3,703 binary word
    features."""

    name = "CiteSeer"


@DATASETS.register
class PubMed(Planetoid):
    """19,717 diabetes papers of PubMed, 3 classes of diabetes, 500 TF-IDF word features; the
    largest of the three."""

    name = "PubMed"
