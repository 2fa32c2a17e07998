"""Graph datasets read from their official on-disk layouts, returned as PyG ``Data``.

Two kinds of tasks share one interface (``Dataset(root, split, split_index, ...)``):

- **node tasks** on one graph (transductive): the dataset has one item, the whole graph, with
  ``mask (N,) bool`` marking the nodes of ``split`` (``"train"``, ``"val"``, ``"test"``);
  ``split_index`` picks one of the dataset's fixed splits (heterophilous graphs: 10);
- **graph tasks** (TU, Peptides-func / -struct): one item per graph of ``split``;
  ``split_index`` picks the cross-validation fold (TU) or must be 0 (fixed splits).

Families and their registered names (``data.name`` in a config)::

    Planetoid       Cora, CiteSeer, PubMed           root/<Name>/raw/ind.<name>.{x,tx,allx,...}
    heterophilous   RomanEmpire, AmazonRatings,      root/<name>/raw/<name>.npz  (PyG's layout)
                    Minesweeper, Tolokers, Questions
                    ChameleonFiltered, SquirrelFiltered   root/<name>_filtered.npz
    TU              MUTAG, PROTEINS, ENZYMES, NCI1,  root/<NAME>/raw/<NAME>_A.txt, ...
                    DD, IMDBBinary, COLLAB, and any
                    other set of the collection by
                    its own name (``dataset_class``)
    LRGB            PeptidesFunc                     root/raw/peptide_multi_class_dataset.csv.gz
                                                     + root/splits_random_stratified_peptide.pickle
                    PeptidesStruct                   root/raw/peptide_structure_dataset.csv.gz
                                                     + root/splits_random_stratified_peptide_
                                                       structure.pickle (one name)
    built in        KarateClub                       (no files)

One module per family (``planetoid``, ``heterophilous``, ``tu``, ``peptides``, ``karate``) on the
interfaces of ``base``; ``folds`` deals the TU cross-validation folds.

PyG's dataset classes write ``processed/`` beside ``raw/``; the raw files are therefore copied
into a cache folder and processed there (``cache``: ``cache_dir``, default ``$GEOSSM_CACHE`` or
``~/.cache/geossm``, then ``graphs/<family>/<hash of root>/<name>``), so a read-only data folder
works. That folder is built whole by one process and renamed into place (``geossm.cache``):
processes started together (sweeps, folds, DDP ranks) never read half of it.
Nothing is ever downloaded: a missing file raises ``FileNotFoundError`` naming it.

Positional / structural encodings (``pe={"laplacian": k, "random_walk": k, "degree": true}``)
are computed once per graph by ``geossm.tasks.graph.transforms.AddPositionalEncodings`` and
stored as ``data.pe (N, P)`` (Laplacian columns first).
"""

import os

from geossm.registry import DATASETS, RegistryError

from .base import GraphDataset, NodeDataset
from .heterophilous import (AmazonRatings, ChameleonFiltered, Heterophilous, Minesweeper,
                            Questions, RomanEmpire, SquirrelFiltered, Tolokers)
from .karate import KarateClub
from .peptides import LRGBPeptides, PeptidesFunc, PeptidesStruct
from .planetoid import CiteSeer, Cora, Planetoid, PubMed
from .tu import (COLLAB, DD, ENZYMES, MUTAG, NCI1, PROTEINS, IMDBBinary, TUGraphs,
                 TU_NAME, tu_files_present, tu_set)

__all__ = ["NodeDataset", "GraphDataset", "Planetoid", "Cora", "CiteSeer", "PubMed",
           "Heterophilous", "RomanEmpire", "AmazonRatings", "Minesweeper", "Tolokers",
           "Questions", "ChameleonFiltered", "SquirrelFiltered", "TUGraphs", "MUTAG", "PROTEINS",
           "ENZYMES", "NCI1", "DD", "IMDBBinary", "COLLAB", "LRGBPeptides", "PeptidesFunc",
           "PeptidesStruct", "KarateClub", "dataset_class"]


def dataset_class(name: str, root: str | os.PathLike | None = None) -> type:
    """The dataset class ``data.name`` names: the registered one, else, where
    ``root/<name>/raw/<name>_A.txt`` exists, the TU collection set of that name (``tu_set``).

    Raises ``RegistryError`` for any other name (saying where a TU set's files would be)."""
    try:
        return DATASETS.get(name)
    except RegistryError as err:
        if tu_files_present(root, name):
            return tu_set(name)
        if not TU_NAME.fullmatch(str(name)):
            raise
        where = f"{root if root is not None else 'data.root'}/{name}/raw/{name}_A.txt"
        raise RegistryError(f"{err.args[0]}; if '{name}' is a set of the TU collection, its "
                            f"files belong at {where} (not found)") from None
