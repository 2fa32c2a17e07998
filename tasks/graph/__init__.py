"""Graph learning with Graph Mamba Networks on PyTorch Geometric.

- ``datasets``: Planetoid (``Cora``, ``CiteSeer``, ``PubMed``), heterophilous graphs
  (``RomanEmpire``, ``AmazonRatings``, ``Minesweeper``, ``Tolokers``, ``Questions``,
  ``ChameleonFiltered``, ``SquirrelFiltered``), TU sets (``MUTAG``, ``PROTEINS``, ...) with
  10-fold cross-validation, LRGB ``PeptidesFunc`` / ``PeptidesStruct``, ``KarateClub``;
- ``transforms``: positional / structural encodings as PyG transforms
  (``AddPositionalEncodings``: Laplacian eigenvectors, RWSE, degree);
- ``baselines``: ``GNNPlus`` and ``GCNPlus`` / ``GINPlus`` / ``GatedGCNPlus`` / ``SAGEPlus``
  (classic GNNs with residual, normalisation, dropout, FFN, edge features, PE: the yardstick);
- ``models``: ``GraphMambaNetwork`` (random-walk neighbourhood tokens + BiMamba, optional
  degree-order BiMamba, MPNN and PE/SE) and ``GraphMamba`` (degree order, GatedGCN);
- ``plan``: ``GraphPlanner`` / ``GraphPlan`` (a batch's tokens, orders and adjacencies, built
  in the data loader so the training step has no host sync);
- ``metrics``: accuracy, ROC-AUC, multi-label AP, MAE, mean ± std over splits;
- ``losses``: ``WithInputL2`` (coupled L2 on the input projection, ``loss.input_l2``);
- ``task``: ``NodeClassificationTask``, ``GraphClassificationTask``, ``GraphPropertyTask``
  (multi-label or regression targets per graph, as the dataset declares);
- ``crossval``: train every split / fold / seed of a config and summarise
  (``python -m geossm.tasks.graph.crossval CONFIG --splits 0-9``).

Configs: ``configs/graph/*.yaml``.
"""

from . import baselines, datasets, metrics, models, plan, task, transforms
from .datasets import (COLLAB, DD, ENZYMES, MUTAG, NCI1, PROTEINS, AmazonRatings,
                       ChameleonFiltered, CiteSeer, Cora, IMDBBinary, KarateClub, Minesweeper,
                       PeptidesFunc, PeptidesStruct, PubMed, Questions, RomanEmpire,
                       SquirrelFiltered, Tolokers)
from .baselines import GatedGCNPlus, GCNPlus, GINPlus, GNNPlus, SAGEPlus
from .models import GraphMamba, GraphMambaNetwork
from .task import (GraphClassificationTask, GraphPropertyTask, MultiLabelGraphTask,
                   NodeClassificationTask)

__all__ = ["baselines", "datasets", "metrics", "models", "plan", "task", "transforms",
           "Cora", "CiteSeer", "PubMed", "RomanEmpire", "AmazonRatings", "Minesweeper",
           "Tolokers", "Questions", "ChameleonFiltered", "SquirrelFiltered", "MUTAG", "PROTEINS",
           "ENZYMES", "NCI1", "DD", "IMDBBinary", "COLLAB", "PeptidesFunc", "PeptidesStruct",
           "KarateClub",
           "GraphMambaNetwork", "GraphMamba", "GNNPlus", "GCNPlus", "GINPlus", "GatedGCNPlus",
           "SAGEPlus", "NodeClassificationTask",
           "GraphClassificationTask", "GraphPropertyTask", "MultiLabelGraphTask"]
