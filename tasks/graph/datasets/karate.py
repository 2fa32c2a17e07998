"""Zachary's karate club, built into PyG (no files)."""

from __future__ import annotations

from torch_geometric.data import Data

from geossm.registry import DATASETS

from .base import NodeDataset


@DATASETS.register
class KarateClub(NodeDataset):
    """Zachary's karate club (34 nodes, 4 communities), built into PyG; one split: the 4
    labelled nodes of PyG's ``train_mask`` train, the rest are both val and test."""

    family = "builtin"
    name = "KarateClub"

    def load(self):
        from torch_geometric.datasets import KarateClub as PygKarate
        data = PygKarate()[0]
        train = data.train_mask.view(-1, 1)
        return (Data(x=data.x, edge_index=data.edge_index, y=data.y),
                {"train": train, "val": ~train, "test": ~train})
