"""LRGB peptides: 15,535 peptide molecules from SMILES, read from the original LRGB files.

``PeptidesFunc``: 10 binary functions (multi-label, average precision). ``PeptidesStruct``: 11
3-D structure descriptors (regression, mean absolute error), the same molecules. One reader
(``LRGBPeptides``) serves both; they differ in the csv's target columns.
"""

from __future__ import annotations

import gzip
import os
import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from torch_geometric.data import Data
from torch_geometric.utils import cumsum
from tqdm.auto import tqdm

from geossm._compat import require
from geossm.cache import atomic_write, build_once, files_digest, is_whole_npz
from geossm.registry import DATASETS

from ..transforms import batched_positional_encodings
from .base import GraphDataset, check_split
from .cache import cache_folder


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles dicts/lists of NumPy arrays only; any other global is refused."""

    ALLOWED = {(core, name) for core in ("numpy.core.multiarray", "numpy._core.multiarray")
               for name in ("_reconstruct", "scalar")} | {("numpy", "ndarray"), ("numpy", "dtype")}

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name} (only NumPy "
                                         "arrays are expected in a split file)")
        return super().find_class(module, name)


class LRGBPeptides(GraphDataset):
    """An LRGB peptides set (Dwivedi et al., 2022), from the original files::

        root/<CSV>           raw/<name>.csv.gz: columns smiles and the targets (``_targets``)
        root/<SPLITS_FILE>   {"train", "val", "test": index arrays}

    SMILES become graphs with OGB's ``smiles2graph`` (RDKit): ``x (N, 9)`` integer atom
    features, ``edge_attr (E, 3)`` integer bond features (see ``ATOM_DIMS``/``BOND_DIMS``),
    ``y (1, num_classes)`` float. All graphs are converted once (needs ``pip install ogb
    rdkit``; some 140 s of one core, 15,535 molecules) and written to a compact compressed cache
    (``save_compact``: ~4.4 MB, uint8 features, int16 local edge ids); a run that finds the
    cache reads it and needs neither RDKit nor OGB, so the file can travel to a machine without
    them (and without the csv). The cache keeps the csv's content digest (``SOURCE_DIGEST``): a
    run that finds the csv changed converts again; a cache without the csv beside it, or one
    written before the digest was kept, is read as it is. Encodings (``pe``) are computed for
    the whole split at construction, batched (``batched_positional_encodings``: some 30 s of
    one core for all graphs), so DataLoader workers only slice.

    Args:
        root: folder in the LRGB layout above.
        split: ``"train"``, ``"val"``, ``"test"``, default ``"train"``.
        split_index: must be 0 (one fixed split).
        pe: ``{"laplacian": k, "random_walk": k}``, default None.
        cache_dir: see the module docstring; the compact cache goes to
            ``<cache>/<CACHE_NAME>_<all|max_graphs>.npz`` unless ``cache`` is given.
        cache: path of the compact ``.npz`` cache (read if present, else written after the
            conversion), default None.
        max_graphs: read only the first rows of the csv (tests), default None (all).
        pe_workers: processes computing ``pe``, default None (the CPUs this process may use,
            at most 16).
    """

    family = "peptides"
    #: Name of the set in messages, and the stem of its compact cache.
    TITLE, CACHE_NAME = "", ""
    CSV, SPLITS_FILE = "", ""
    #: ``"multilabel"`` (binary labels, NaN = unlabelled) or ``"regression"``: the loss and
    #: metric ``GraphPropertyTask`` takes.
    target_kind = ""
    #: Storage dtype of the targets in the compact cache (each set names its own).
    TARGET_DTYPE: type | None = None
    #: Vocabulary sizes of OGB's atom and bond features (``ogb.utils.features``).
    ATOM_DIMS = (119, 5, 12, 12, 10, 6, 6, 2, 2)
    BOND_DIMS = (5, 6, 2)
    #: Arrays of the compact cache (``save_compact``).
    COMPACT_KEYS = ("x", "edge_index", "edge_attr", "y", "n_nodes", "n_edges")
    #: Optional key of the compact cache: ``files_digest([csv])`` of the csv it was converted
    #: from (caches of older versions have none).
    SOURCE_DIGEST = "source_digest"
    num_classes = 0

    def __init__(self, root: str | os.PathLike | None = None, split: str = "train",
                 split_index: int = 0, pe: Mapping[str, int] | None = None,
                 cache_dir: str | os.PathLike | None = None,
                 cache: str | os.PathLike | None = None,
                 max_graphs: int | None = None, pe_workers: int | None = None) -> None:
        check_split(split, split_index, 1)
        if root is None:
            raise ValueError(f"root: {type(self).__name__} needs the {self.TITLE} folder, got "
                             "None")
        root = Path(root)
        csv, split_file = root / self.CSV, root / self.SPLITS_FILE
        if not split_file.is_file():
            raise FileNotFoundError(f"dataset file not found: {split_file} (LRGB {self.TITLE} "
                                    "layout)")
        tag = "all" if max_graphs is None else str(int(max_graphs))
        # The folder is keyed on the root alone (files=()): the csv's digest is kept inside the
        # cache, so a machine without the csv finds the same file.
        cached = Path(cache) if cache else \
            cache_folder(root, self.family, cache_dir, ()) / f"{self.CACHE_NAME}_{tag}.npz"
        source = files_digest([csv]) if csv.is_file() else None

        def require_csv() -> None:
            if not csv.is_file():
                raise FileNotFoundError(f"dataset file not found: {csv} (LRGB {self.TITLE} "
                                        f"layout; no compact cache at {cached} either)")

        def build(tmp: Path) -> None:
            require_csv()
            with open(tmp, "wb") as fh:
                self._write_compact(self.convert(csv, max_graphs), fh, source)

        def valid(path: Path) -> bool:
            # Whole, and converted from this csv where both say which csv that was.
            if not is_whole_npz(path, self.COMPACT_KEYS):
                return False
            stored = self.source_digest(path)
            return source is None or stored is None or stored == source

        if not cached.is_file():
            require_csv()  # before anything is written to the cache folder
        # Converted once by one of the processes started together; a file an older version
        # left torn, or one converted from another csv, is converted again.
        build_once(cached, build, valid=valid)
        graphs = self.load_compact(cached)
        with open(split_file, "rb") as fh:
            # The official split file is a pickle of NumPy index arrays: unpickled with only
            # NumPy's array constructors allowed, so a tampered file cannot run code.
            try:
                index = np.asarray(_ArrayUnpickler(fh).load()[split], dtype=np.int64)
            except (pickle.UnpicklingError, EOFError, KeyError, TypeError) as err:
                raise ValueError(f"{split_file}: expected a pickled dict of index arrays with "
                                 f"'{split}' ({err})") from err
        n = len(graphs["n_nodes"])
        if max_graphs is not None:
            n = min(n, int(max_graphs))  # a full cache read for the first max_graphs only
            index = index[index < n]
        elif len(index) and (index.min() < 0 or index.max() >= n):
            # A truncated csv, or a cache converted from a smaller one: never drop graphs.
            raise ValueError(f"{split_file}: split '{split}' names graphs "
                             f"{int(index.min())}..{int(index.max())}, but {cached} holds "
                             f"n={n} graphs (rows of {csv.name}); expected ids in [0, {n}) "
                             "(a truncated csv, or a cache converted from a smaller one?)")
        self.split, self.split_index = split, split_index
        self._store = s = self._select(graphs, index)
        self._node_ptr, self._edge_ptr = cumsum(s["n_nodes"].long()), cumsum(s["n_edges"].long())
        if pe:
            if pe_workers is None:
                pe_workers = min(16, len(os.sched_getaffinity(0)))
            s["pe"] = batched_positional_encodings(
                s["edge_index"], s["n_nodes"], s["n_edges"], **dict(pe), workers=pe_workers)
        self._items: dict[int, Data] = {}
        self.num_features, self.num_edge_features = len(self.ATOM_DIMS), len(self.BOND_DIMS)

    @staticmethod
    def _select(graphs: dict[str, torch.Tensor], index: np.ndarray) -> dict[str, torch.Tensor]:
        """The graphs ``index`` of a concatenated store, as a store of their own."""
        idx = torch.from_numpy(index)

        def rows(ptr: torch.Tensor) -> torch.Tensor:
            # Concatenated arange(ptr[g], ptr[g + 1]) over g in index, without a Python loop.
            start, size = ptr[idx], ptr[idx + 1] - ptr[idx]
            shift = torch.repeat_interleave(start - (size.cumsum(0) - size), size)
            return torch.arange(int(size.sum())) + shift

        nodes = rows(cumsum(graphs["n_nodes"].long()))
        edges = rows(cumsum(graphs["n_edges"].long()))
        return {"x": graphs["x"][nodes], "edge_index": graphs["edge_index"][:, edges],
                "edge_attr": graphs["edge_attr"][edges], "y": graphs["y"][idx],
                "n_nodes": graphs["n_nodes"][idx], "n_edges": graphs["n_edges"][idx]}

    @classmethod
    def _write_compact(cls, graphs: dict[str, torch.Tensor], fh: BinaryIO,
                       source_digest: str | None = None) -> None:
        """``convert``'s output as a compressed ``.npz`` in small dtypes into the open file
        ``fh`` (see ``save_compact``), with ``source_digest`` under ``SOURCE_DIGEST`` if
        given."""
        small = {"x": np.uint8, "edge_index": np.int16, "edge_attr": np.uint8,
                 "y": cls.TARGET_DTYPE, "n_nodes": np.int32, "n_edges": np.int32}
        arrays = {}
        for key, dtype in small.items():
            a = graphs[key].numpy()
            if np.issubdtype(dtype, np.integer):
                info = np.iinfo(dtype)
                if a.size and (a.min() < info.min or a.max() > info.max):
                    raise ValueError(f"save_compact: {key} spans [{a.min()}, {a.max()}], beyond "
                                     f"{np.dtype(dtype).name}")
            arrays[key] = a.astype(dtype)
        if source_digest is not None:
            arrays[cls.SOURCE_DIGEST] = np.array(source_digest)
        np.savez_compressed(fh, **arrays)

    @classmethod
    def save_compact(cls, graphs: dict[str, torch.Tensor], path: str | os.PathLike,
                     source_digest: str | None = None) -> Path:
        """Write ``convert``'s output to a compressed ``.npz`` in small dtypes (atom / bond
        features uint8, targets ``TARGET_DTYPE``, local edge ids int16, counts int32),
        atomically (``geossm.cache.atomic_write``: a reader never sees half a file).
        ``source_digest`` (default None: none kept), e.g. ``files_digest([csv])``, is kept
        under ``SOURCE_DIGEST``: a reader that finds that csv changed converts again.

        Raises ``ValueError`` if a value does not fit its small dtype (a feature over 255, a
        graph over 32,767 nodes).
        """
        path = Path(path)
        with atomic_write(path) as fh:
            cls._write_compact(graphs, fh, source_digest)
        return path

    @classmethod
    def source_digest(cls, path: str | os.PathLike) -> str | None:
        """The csv digest kept in the compact cache ``path``, None for a cache without one
        (written by an older version, or by ``save_compact`` without it) or a torn file."""
        try:
            with np.load(path) as z:
                return str(z[cls.SOURCE_DIGEST]) if cls.SOURCE_DIGEST in z.files else None
        except (OSError, ValueError, EOFError, zipfile.BadZipFile):
            return None

    @classmethod
    def load_compact(cls, path: str | os.PathLike) -> dict[str, torch.Tensor]:
        """Read ``save_compact``'s file back into ``convert``'s layout (``x`` int16,
        ``edge_index`` int32, ``edge_attr`` int8, ``y`` as ``_targets`` gives it, counts
        int32)."""
        keys = cls.COMPACT_KEYS
        y_dtype = torch.from_numpy(np.zeros(0, cls.TARGET_DTYPE)).dtype
        dtypes = (torch.int16, torch.int32, torch.int8, y_dtype, torch.int32, torch.int32)
        with np.load(path) as z:
            missing = [k for k in keys if k not in z.files]
            if missing:
                raise ValueError(f"{path}: not a {cls.TITLE} compact cache (missing {missing})")
            if z["y"].dtype != np.dtype(cls.TARGET_DTYPE):
                raise ValueError(f"{path}: targets stored as {z['y'].dtype}, a {cls.TITLE} "
                                 f"cache has {np.dtype(cls.TARGET_DTYPE).name} (another set's "
                                 "cache?)")
            out = {k: torch.from_numpy(np.ascontiguousarray(z[k])).to(d)
                   for k, d in zip(keys, dtypes)}
        if int(out["n_nodes"].sum()) != out["x"].shape[0] \
                or int(out["n_edges"].sum()) != out["edge_index"].shape[1]:
            raise ValueError(f"{path}: node / edge counts do not match the arrays (truncated?)")
        return out

    @classmethod
    def _targets(cls, rows: list[dict[str, str]], csv: Path) -> torch.Tensor:
        """The targets of every csv row, ``(rows, num_classes)``."""
        raise NotImplementedError

    @classmethod
    def convert(cls, csv: Path, max_graphs: int | None = None) -> dict[str, torch.Tensor]:
        """SMILES of ``csv`` -> concatenated graph tensors (one dict, cheap to save and load).

        Returns ``x (ΣN, 9) int16``, ``edge_index (2, ΣE) int32`` (local ids), ``edge_attr
        (ΣE, 3) int8``, ``y (G, num_classes)`` (``_targets``), ``n_nodes (G,)``, ``n_edges (G,)``
        int32.
        """
        require("rdkit", cls.TITLE)
        require("ogb", cls.TITLE)
        from ogb.utils import smiles2graph
        import csv as csvlib
        with gzip.open(csv, "rt", newline="") as fh:
            rows = list(csvlib.DictReader(fh))
        if rows and "smiles" not in rows[0]:
            raise ValueError(f"{csv}: expected a column 'smiles', got {sorted(rows[0])}")
        # the targets of all rows first: PeptidesStruct standardises them over the whole csv
        y = cls._targets(rows, csv)
        if max_graphs is not None:
            rows, y = rows[:max_graphs], y[:max_graphs]
        xs, eis, eas, nn_, ne = [], [], [], [], []
        for row in tqdm(rows, desc=f"{cls.CACHE_NAME} smiles2graph", leave=False):
            g = smiles2graph(row["smiles"])
            xs.append(torch.from_numpy(g["node_feat"]).to(torch.int16))
            eis.append(torch.from_numpy(g["edge_index"]).to(torch.int32))
            eas.append(torch.from_numpy(g["edge_feat"]).to(torch.int8))
            nn_.append(int(g["num_nodes"]))
            ne.append(g["edge_index"].shape[1])
        return {"x": torch.cat(xs), "edge_index": torch.cat(eis, 1), "edge_attr": torch.cat(eas),
                "y": y, "n_nodes": torch.tensor(nn_, dtype=torch.int32),
                "n_edges": torch.tensor(ne, dtype=torch.int32)}

    def __len__(self) -> int:
        return len(self._store["n_nodes"])

    def __getitem__(self, i: int) -> Data:
        g = range(len(self))[i]  # the store holds this split only, in order
        item = self._items.get(g)
        if item is None:
            s = self._store
            a, b = int(self._node_ptr[g]), int(self._node_ptr[g + 1])
            c, d = int(self._edge_ptr[g]), int(self._edge_ptr[g + 1])
            item = Data(x=s["x"][a:b].long(), edge_index=s["edge_index"][:, c:d].long(),
                        edge_attr=s["edge_attr"][c:d].long(), y=s["y"][g:g + 1].float(),
                        num_nodes=b - a)
            if "pe" in s:
                item.pe = s["pe"][a:b]
            self._items[g] = item
        return item


@DATASETS.register
class PeptidesFunc(LRGBPeptides):
    """LRGB Peptides-func: 10 binary functions per peptide (multi-label, average precision)::

        root/raw/peptide_multi_class_dataset.csv.gz    columns smiles, labels ("[0, 1, ...]")
        root/splits_random_stratified_peptide.pickle   {"train", "val", "test": index arrays}

    ``y (1, 10)`` float in {0, 1}. Arguments: ``LRGBPeptides``.
    """

    TITLE, CACHE_NAME = "Peptides-func", "peptides_func"
    CSV = "raw/peptide_multi_class_dataset.csv.gz"
    SPLITS_FILE = "splits_random_stratified_peptide.pickle"
    target_kind, metric = "multilabel", "ap"
    TARGET_DTYPE = np.uint8
    num_classes = 10

    @classmethod
    def _targets(cls, rows: list[dict[str, str]], csv: Path) -> torch.Tensor:
        """The ``labels`` column ("[0, 1, ...]") as ``(rows, 10) uint8``."""
        if rows and "labels" not in rows[0]:
            raise ValueError(f"{csv}: expected columns 'smiles' and 'labels', got "
                             f"{sorted(rows[0])}")
        labels = [[int(float(v)) for v in row["labels"].strip("[] ").replace(",", " ").split()]
                  for row in rows]
        return torch.tensor(labels, dtype=torch.uint8).reshape(len(rows), -1)


@DATASETS.register
class PeptidesStruct(LRGBPeptides):
    """LRGB Peptides-struct: 11 descriptors of each peptide's 3-D structure (regression, mean
    absolute error), the molecules of Peptides-func::

        root/raw/peptide_structure_dataset.csv.gz               columns smiles, TARGETS, ...
        root/splits_random_stratified_peptide_structure.pickle  {"train", "val", "test": ...}

    ``y (1, 11)`` float32: every target standardised to zero mean and unit standard deviation
    (ddof 1) over all rows of the csv, as LRGB's loader does, so MAEs compare with the published
    ones. Arguments: ``LRGBPeptides``.
    """

    TITLE, CACHE_NAME = "Peptides-struct", "peptides_struct"
    CSV = "raw/peptide_structure_dataset.csv.gz"
    SPLITS_FILE = "splits_random_stratified_peptide_structure.pickle"
    #: The csv's target columns, in LRGB's order.
    TARGETS = ("Inertia_mass_a", "Inertia_mass_b", "Inertia_mass_c", "Inertia_valence_a",
               "Inertia_valence_b", "Inertia_valence_c", "length_a", "length_b", "length_c",
               "Spherocity", "Plane_best_fit")
    target_kind, metric = "regression", "mae"
    TARGET_DTYPE = np.float32
    num_classes = len(TARGETS)

    @classmethod
    def _targets(cls, rows: list[dict[str, str]], csv: Path) -> torch.Tensor:
        """The ``TARGETS`` columns, standardised per column over every row, ``(rows, 11)``
        float32 (computed in float64)."""
        missing = [name for name in cls.TARGETS if rows and name not in rows[0]]
        if missing:
            raise ValueError(f"{csv}: missing target columns {missing} (LRGB Peptides-struct "
                             f"has {list(cls.TARGETS)})")
        try:
            y = torch.tensor([[float(row[name]) for name in cls.TARGETS] for row in rows],
                             dtype=torch.float64).reshape(len(rows), len(cls.TARGETS))
        except ValueError as err:
            raise ValueError(f"{csv}: a target is not a number ({err})") from err
        if len(rows) > 1:
            y = (y - y.mean(0)) / y.std(0)   # torch's std is ddof 1, as pandas'
        return y.float()
