"""Graph datasets read from their official on-disk layouts, returned as PyG ``Data``.

Two kinds of tasks share one interface (``Dataset(root, split, split_index, ...)``):

- **node tasks** on one graph (transductive): the dataset has one item, the whole graph, with
  ``mask (N,) bool`` marking the nodes of ``split`` (``"train"``, ``"val"``, ``"test"``);
  ``split_index`` picks one of the dataset's fixed splits (heterophilous graphs: 10);
- **graph tasks** (TU, Peptides-func): one item per graph of ``split``; ``split_index`` picks the
  cross-validation fold (TU) or must be 0 (fixed splits).

Families and their registered names (``data.name`` in a config)::

    Planetoid       Cora, CiteSeer, PubMed           root/<Name>/raw/ind.<name>.{x,tx,allx,...}
    heterophilous   RomanEmpire, AmazonRatings,      root/<name>/raw/<name>.npz  (PyG's layout)
                    Minesweeper, Tolokers, Questions
                    ChameleonFiltered, SquirrelFiltered   root/<name>_filtered.npz
    TU              MUTAG, PROTEINS, ENZYMES, NCI1,  root/<NAME>/raw/<NAME>_A.txt, ...
                    DD, IMDBBinary, COLLAB
    LRGB            PeptidesFunc                     root/raw/peptide_multi_class_dataset.csv.gz
                                                     + root/splits_random_stratified_peptide.pickle
    built in        KarateClub                       (no files)

PyG's dataset classes write ``processed/`` beside ``raw/``; the raw files are therefore copied
into a cache folder first (``cache_dir``, default ``$GEOSSM_CACHE`` or ``~/.cache/geossm``,
then ``graphs/<family>/<hash of root>``), so a read-only data folder works. Nothing is ever
downloaded: a missing file raises ``FileNotFoundError`` naming it.

Positional / structural encodings (``pe={"laplacian": k, "random_walk": k, "degree": true}``)
are computed once per graph and stored as ``data.pe (N, P)`` (Laplacian columns first).
"""

from __future__ import annotations

import gzip
import hashlib
import os
import pickle
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch_geometric.data import Data
from tqdm.auto import tqdm

from geossm._compat import require
from geossm.registry import DATASETS

__all__ = ["NodeDataset", "GraphDataset", "Planetoid", "Cora", "CiteSeer", "PubMed",
           "Heterophilous", "RomanEmpire", "AmazonRatings", "Minesweeper", "Tolokers",
           "Questions", "ChameleonFiltered", "SquirrelFiltered", "TUGraphs", "MUTAG", "PROTEINS",
           "ENZYMES", "NCI1", "DD", "IMDBBinary", "COLLAB", "PeptidesFunc", "KarateClub",
           "add_positional_encodings", "batched_positional_encodings", "stratified_folds",
           "cache_copy"]

SPLITS = ("train", "val", "test")


def _check_split(split: str, split_index: int, num_splits: int) -> None:
    if split not in SPLITS:
        raise ValueError(f"split: expected one of {SPLITS}, got {split!r}")
    if isinstance(split_index, bool) or not isinstance(split_index, int) \
            or not 0 <= split_index < num_splits:
        raise ValueError(f"split_index: expected an int in [0, {num_splits}), got {split_index!r}")


def _cache_root(root: Path, family: str, cache_dir: str | os.PathLike | None) -> Path:
    base = Path(cache_dir) if cache_dir else Path(
        os.environ.get("GEOSSM_CACHE", Path.home() / ".cache" / "geossm"))
    tag = hashlib.sha1(str(root.resolve()).encode()).hexdigest()[:10]
    return base / "graphs" / family / tag


def cache_copy(files: Sequence[Path], src_root: Path, dst_root: Path) -> None:
    """Copy ``files`` (under ``src_root``) to the same relative paths under ``dst_root``.

    A file already there with the same size and a modification time not older than the source
    is kept, so a second run copies nothing. Raises ``FileNotFoundError`` naming a missing file.
    """
    for f in files:
        if not f.is_file():
            raise FileNotFoundError(f"dataset file not found: {f} (expected the official raw "
                                    f"layout under {src_root})")
        dst = dst_root / f.relative_to(src_root)
        if dst.is_file() and dst.stat().st_size == f.stat().st_size \
                and dst.stat().st_mtime >= f.stat().st_mtime:
            continue
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(f, dst)


def add_positional_encodings(data: Data, laplacian: int = 0, random_walk: int = 0,
                             degree: bool = False) -> Data:
    """Add ``data.pe (N, laplacian + random_walk + degree)``: Laplacian eigenvectors, then
    RWSE, then ``log(1 + degree)``.

    Laplacian PE: the ``laplacian`` eigenvectors of the symmetric normalised Laplacian after the
    trivial one (PyG's ``AddLaplacianEigenvectorPE``); a graph with ``N <= laplacian + 1`` nodes
    gets its ``N - 1`` non-trivial eigenvectors (dense solver) padded with zeros. RWSE: the
    return probabilities ``(P^t)_vv, t = 1..random_walk`` (PyG's ``AddRandomWalkPE``).
    Eigenvector signs are arbitrary; models flip them at random while training. RWSE costs
    sparse matrix powers that fill in on large dense graphs (Tolokers: use ``degree``).
    """
    from torch_geometric.transforms import AddLaplacianEigenvectorPE, AddRandomWalkPE
    _check_pe_sizes(laplacian, random_walk)
    parts = []
    n = data.num_nodes
    if laplacian:
        if n > laplacian + 1:
            out = AddLaplacianEigenvectorPE(laplacian, attr_name="_lap", is_undirected=True)(
                Data(edge_index=data.edge_index, num_nodes=n))
            parts.append(out._lap.float())
        else:
            parts.append(_dense_laplacian_pe(data.edge_index, n, laplacian))
    if random_walk:
        out = AddRandomWalkPE(random_walk, attr_name="_rw")(
            Data(edge_index=data.edge_index, num_nodes=n))
        parts.append(out._rw.float())
    if degree:
        deg = torch.bincount(data.edge_index[0], minlength=n).float()
        parts.append(torch.log1p(deg).view(-1, 1))
    if parts:
        data.pe = torch.cat(parts, 1)
    return data


def _check_pe_sizes(laplacian: object, random_walk: object) -> None:
    """Raise ``ValueError`` unless both PE widths are ints >= 0."""
    for name, v in (("laplacian", laplacian), ("random_walk", random_walk)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ValueError(f"pe.{name}: expected an int >= 0, got {v!r}")


def _dense_laplacian_pe(edge_index: torch.Tensor, n: int, k: int) -> torch.Tensor:
    """Laplacian PE ``(n, k)`` of one small graph: a chunk of one for ``_dense_chunk_pe``."""
    if n < 2:
        return torch.zeros(n, k)
    return _dense_chunk_pe(([edge_index], [n], k, 0, False))[0]


def _offsets(counts: torch.Tensor) -> torch.Tensor:
    """Per-item counts ``(G,)`` -> start offsets ``(G+1,)`` long with a leading 0."""
    return torch.cat([torch.zeros(1, dtype=torch.long), counts.long().cumsum(0)])


def batched_positional_encodings(edge_index: torch.Tensor, num_nodes: torch.Tensor,
                                 num_edges: torch.Tensor, laplacian: int = 0,
                                 random_walk: int = 0, degree: bool = False,
                                 chunk_nodes: int = 1 << 20, workers: int = 1) -> torch.Tensor:
    """``add_positional_encodings`` for many small graphs at once (dense, padded, batched).

    Graphs are sorted by size and cut into chunks of similar sizes; each chunk becomes a padded
    ``(B, n, n)`` adjacency, its Laplacian eigenvectors come from one batched ``eigh`` and its
    RWSE from the same eigendecomposition, several times faster than PyG's per-graph
    transforms on molecules (24 ms -> ~2 ms per 150-atom peptide on one core). Padding rows get
    a Laplacian diagonal of 4 (above the spectrum's bound 2) so their eigenvectors sort last and
    never mix with a real graph's; the trivial eigenvector (column 0) is dropped as in PyG.

    Shapes: ``edge_index (2, ΣE)`` local node ids per graph, graphs concatenated; ``num_nodes
    (G,)``, ``num_edges (G,)`` -> ``pe (ΣN, laplacian + random_walk + degree)`` float32.
    ``chunk_nodes`` bounds ``B * n * n`` of a chunk (default 2^20, 8 MB in float64);
    ``workers > 1`` spreads the chunks over that many forked processes (default 1).
    """
    _check_pe_sizes(laplacian, random_walk)
    node_ptr, edge_ptr = _offsets(num_nodes), _offsets(num_edges)
    width = laplacian + random_walk + int(bool(degree))
    out = torch.zeros(int(node_ptr[-1]), width)
    sizes = num_nodes.tolist()
    order = torch.argsort(num_nodes, stable=True).tolist()
    chunks, start = [], 0
    while start < len(order):
        # Grow the chunk while its padded size stays within chunk_nodes (sorted: n only grows).
        stop = start + 1
        while stop < len(order) and (stop - start + 1) * sizes[order[stop]] ** 2 <= chunk_nodes:
            stop += 1
        chunks.append(order[start:stop])
        start = stop
    jobs = [([edge_index[:, int(edge_ptr[g]):int(edge_ptr[g + 1])].clone() for g in c],
             [sizes[g] for g in c], laplacian, random_walk, degree) for c in chunks]
    if workers > 1 and len(chunks) > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"),
                                 initializer=torch.set_num_threads, initargs=(1,)) as pool:
            results = list(pool.map(_dense_chunk_pe, jobs, chunksize=4))
    else:
        results = [_dense_chunk_pe(j) for j in jobs]
    for graphs, rows in zip(chunks, results):
        for i, g in enumerate(graphs):
            out[int(node_ptr[g]):int(node_ptr[g + 1])] = rows[i, :sizes[g]]
    return out


def _dense_chunk_pe(job) -> torch.Tensor:
    """PE of one chunk of graphs padded to its largest: ``(B, n, P)`` float32.

    ``job = (edge indices, node counts, laplacian, random_walk, degree)`` (one picklable
    argument for a process pool); see ``batched_positional_encodings``.
    """
    edges, counts, laplacian, random_walk, degree = job
    b, n = len(counts), max(counts)
    counts = torch.tensor(counts)
    adj = torch.zeros(b, n, n, dtype=torch.float64)
    for i, e in enumerate(edges):
        adj[i, e[0].long(), e[1].long()] = 1.0
    deg = adj.sum(2)  # (B, n)
    real = torch.arange(n)[None, :] < counts[:, None]  # (B, n)
    parts = []
    if laplacian or random_walk:
        dinv = torch.where(deg > 0, deg.rsqrt(), torch.zeros_like(deg))
        lap = -dinv[:, :, None] * adj * dinv[:, None, :]
        diag = torch.where(real, torch.ones_like(deg), torch.full_like(deg, 4.0))
        mu, vec = torch.linalg.eigh(lap + torch.diag_embed(diag))  # (B, n), (B, n, n)
    if laplacian:
        # Columns past a small graph's own N - 1 non-trivial eigenvectors belong to padding
        # rows: zero on the real rows already; pad to k columns when n - 1 < k.
        lap_pe = torch.zeros(b, n, laplacian, dtype=torch.float64)
        k = min(laplacian, n - 1)
        lap_pe[:, :, :k] = vec[:, :, 1:k + 1]
        parts.append(lap_pe * real[:, :, None])
    if random_walk:
        # (D^-1 A)^t is similar to S^t with S = D^-1/2 A D^-1/2 = I - L = U diag(1 - mu) U^T,
        # so its diagonal is sum_j U_ij^2 (1 - mu_j)^t: one eigh serves both encodings.
        # Padding eigenvectors are zero on real rows, so their (1 - 4)^t never leaks in.
        lam = (1.0 - mu)[:, None, :]  # (B, 1, n)
        weight = vec.square()  # (B, n, n)
        rw, power = [], torch.ones_like(lam)
        for _ in range(random_walk):
            power = power * lam
            rw.append((weight * power).sum(2))
        parts.append(torch.stack(rw, 2) * real[:, :, None])
    if degree:
        parts.append(torch.log1p(deg)[:, :, None])
    return torch.cat(parts, 2).float()


def stratified_folds(labels: np.ndarray, num_folds: int = 10, seed: int = 0) -> np.ndarray:
    """Fold id of every sample: each class is shuffled and dealt round-robin into the folds.

    Shapes: ``labels (G,)`` int -> ``(G,)`` int64 in ``[0, num_folds)``.
    """
    labels = np.asarray(labels).reshape(len(labels), -1)[:, 0]
    rng = np.random.default_rng(seed)
    fold = np.empty(len(labels), dtype=np.int64)
    offset = 0
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        idx = idx[rng.permutation(len(idx))]
        # Continue the deal where the last class stopped, so fold sizes differ by at most one.
        fold[idx] = (np.arange(len(idx)) + offset) % num_folds
        offset += len(idx)
    return fold


# ---------------------------------------------------------------------------- node tasks
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
        num_splits = next(iter(masks.values())).shape[1]
        _check_split(split, split_index, num_splits)
        self.split, self.split_index, self.num_splits = split, split_index, num_splits
        data.x = data.x.float()
        if normalize_features:
            data.x = data.x / data.x.sum(1, keepdim=True).clamp_min(1e-12)
        data.y = data.y.long()
        if pe:
            data = add_positional_encodings(data, **dict(pe))
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

    def __len__(self) -> int:
        return 1

    def __getitem__(self, i: int) -> Data:
        if i != 0:
            raise IndexError(f"{type(self).__name__} holds one graph, got index {i}")
        return self.data


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
        cache = _cache_root(root, self.family, self.cache_dir)
        cache_copy(files, root, cache)
        data = PygPlanetoid(str(cache), self.name)[0]
        masks = {s: getattr(data, f"{s}_mask").view(-1, 1) for s in SPLITS}
        return Data(x=data.x, edge_index=data.edge_index, y=data.y), masks


@DATASETS.register
class Cora(Planetoid):
    name = "Cora"


@DATASETS.register
class CiteSeer(Planetoid):
    name = "CiteSeer"


@DATASETS.register
class PubMed(Planetoid):
    name = "PubMed"


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
        cache = _cache_root(root, self.family, self.cache_dir)
        cache_copy([root / self.name / "raw" / f"{self.name}.npz"], root, cache)
        data = HeterophilousGraphDataset(str(cache), self.name)[0]
        masks = {s: getattr(data, f"{s}_mask").bool() for s in SPLITS}
        return Data(x=data.x, edge_index=data.edge_index, y=data.y), masks


def _heterophilous(cls_name: str, name: str, alias: str | None = None) -> type:
    cls = type(cls_name, (Heterophilous,), {"name": name, "__module__": __name__,
                                            "__doc__": f"``{name}`` of the heterophilous "
                                                       "benchmark (see ``Heterophilous``)."})
    if alias:  # the paper's and PyG's spelling works as data.name too
        DATASETS.register(cls, name=alias)
    return DATASETS.register(cls)


RomanEmpire = _heterophilous("RomanEmpire", "roman_empire", "Roman-empire")
AmazonRatings = _heterophilous("AmazonRatings", "amazon_ratings", "Amazon-ratings")
Minesweeper = _heterophilous("Minesweeper", "minesweeper")
Tolokers = _heterophilous("Tolokers", "tolokers")
Questions = _heterophilous("Questions", "questions")
ChameleonFiltered = _heterophilous("ChameleonFiltered", "chameleon_filtered")
SquirrelFiltered = _heterophilous("SquirrelFiltered", "squirrel_filtered")


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


# --------------------------------------------------------------------------- graph tasks
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


class TUGraphs(GraphDataset):
    """TU graph classification sets read by PyG's ``TUDataset`` from ``root/<NAME>/raw/``, with
    stratified 10-fold cross-validation.

    Fold ``split_index`` is the test split; ``inner_val`` of the other nine folds (stratified)
    is the validation split and the rest trains. ``inner_val=0`` trains on all nine folds and
    leaves ``val`` empty (run with ``eval.split=null``: no model selection on the test fold).
    Graphs without node features get their degree one-hot (capped at ``max_degree``).

    Args:
        root: folder holding ``<NAME>/raw``.
        split: ``"train"``, ``"val"``, ``"test"``, default ``"train"``.
        split_index: test fold, ``0 .. num_folds - 1``, default 0.
        num_folds: default 10.
        inner_val: fraction of the training folds held out for validation, default 0.1.
        fold_seed: shuffling of the folds, default 0.
        pe: ``{"laplacian": k, "random_walk": k}``, default None.
        cache_dir: see the module docstring.
        max_degree: one-hot width for featureless graphs, default 64.
    """

    family = "TU"
    name = ""

    def __init__(self, root: str | os.PathLike | None = None, split: str = "train",
                 split_index: int = 0, num_folds: int = 10, inner_val: float = 0.1,
                 fold_seed: int = 0, pe: Mapping[str, int] | None = None,
                 cache_dir: str | os.PathLike | None = None, max_degree: int = 64) -> None:
        if isinstance(num_folds, bool) or not isinstance(num_folds, int) or num_folds < 2:
            raise ValueError(f"num_folds: expected an int >= 2, got {num_folds!r}")
        _check_split(split, split_index, num_folds)
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
        cache = _cache_root(root, self.family, cache_dir)
        cache_copy(sorted(p for p in raw.iterdir() if p.is_file()), root, cache)
        pyg = TUDataset(str(cache), self.name)
        labels = pyg._data.y.numpy()
        fold = stratified_folds(labels, num_folds, fold_seed)
        test = fold == split_index
        rest = np.flatnonzero(~test)
        val = np.zeros(len(labels), dtype=bool)
        if inner_val > 0:
            # Stratified inner hold-out: the first inner_val of each class of a second shuffle.
            inner = stratified_folds(labels[rest], int(round(1 / inner_val)), fold_seed + 1)
            val[rest[inner == 0]] = True
        train = ~test & ~val
        pick = {"train": train, "val": val, "test": test}[split]
        self.split, self.split_index = split, split_index
        self.num_classes = int(labels.max()) + 1
        self.graphs = []
        for i in tqdm(np.flatnonzero(pick).tolist(), desc=f"{self.name} {split}", leave=False,
                      disable=len(pick) < 2000):
            g = pyg[i]
            x = g.x
            if x is None:
                deg = degree(g.edge_index[0], g.num_nodes).long().clamp(max=max_degree)
                x = torch.nn.functional.one_hot(deg, max_degree + 1)
            d = Data(x=x.float(), edge_index=g.edge_index, y=g.y.view(1).long(),
                     num_nodes=g.num_nodes)
            if g.edge_attr is not None:
                d.edge_attr = g.edge_attr.float()
            if pe:
                d = add_positional_encodings(d, **dict(pe))
            self.graphs.append(d)
        self.num_features = pyg.num_features or max_degree + 1
        self.num_edge_features = pyg.num_edge_features


def _tu(cls_name: str, name: str) -> type:
    cls = type(cls_name, (TUGraphs,), {"name": name, "__module__": __name__,
                                       "__doc__": f"TU ``{name}`` (see ``TUGraphs``)."})
    if name != cls_name:  # the collection's own spelling (IMDB-BINARY) works as data.name too
        DATASETS.register(cls, name=name)
    return DATASETS.register(cls)


MUTAG = _tu("MUTAG", "MUTAG")
PROTEINS = _tu("PROTEINS", "PROTEINS")
ENZYMES = _tu("ENZYMES", "ENZYMES")
NCI1 = _tu("NCI1", "NCI1")
DD = _tu("DD", "DD")
IMDBBinary = _tu("IMDBBinary", "IMDB-BINARY")
COLLAB = _tu("COLLAB", "COLLAB")


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles dicts/lists of NumPy arrays only; any other global is refused."""

    ALLOWED = {(core, name) for core in ("numpy.core.multiarray", "numpy._core.multiarray")
               for name in ("_reconstruct", "scalar")} | {("numpy", "ndarray"), ("numpy", "dtype")}

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name} (only NumPy "
                                         "arrays are expected in a split file)")
        return super().find_class(module, name)


@DATASETS.register
class PeptidesFunc(GraphDataset):
    """LRGB Peptides-func (Dwivedi et al., 2022): 15,535 peptides, 10 binary labels (average
    precision), from the original files::

        root/raw/peptide_multi_class_dataset.csv.gz    columns smiles, labels ("[0, 1, ...]")
        root/splits_random_stratified_peptide.pickle   {"train", "val", "test": index arrays}

    SMILES become graphs with OGB's ``smiles2graph`` (RDKit): ``x (N, 9)`` integer atom
    features, ``edge_attr (E, 3)`` integer bond features (see ``ATOM_DIMS``/``BOND_DIMS``),
    ``y (1, 10)`` float. All graphs are converted once (needs ``pip install ogb rdkit``; some
    140 s of one core, 15,535 molecules) and written to a compact compressed cache
    (``save_compact``: 4.4 MB, uint8 features, int16 local edge ids); a run that finds the cache
    reads it and needs neither RDKit nor OGB, so the file can travel to a machine without them.
    Encodings (``pe``) are computed for the whole split at construction, batched
    (``batched_positional_encodings``: some 30 s of one core for all graphs), so DataLoader
    workers only slice.

    Args:
        root: folder in the LRGB layout above.
        split: ``"train"``, ``"val"``, ``"test"``, default ``"train"``.
        split_index: must be 0 (one fixed split).
        pe: ``{"laplacian": k, "random_walk": k}``, default None.
        cache_dir: see the module docstring; the compact cache goes to
            ``<cache>/peptides_func_<all|max_graphs>.npz`` unless ``cache`` is given.
        cache: path of the compact ``.npz`` cache (read if present, else written after the
            conversion), default None.
        max_graphs: read only the first rows of the csv (tests), default None (all).
        pe_workers: processes computing ``pe``, default None (the CPUs this process may use,
            at most 16).
    """

    family = "peptides"
    CSV = "raw/peptide_multi_class_dataset.csv.gz"
    SPLITS_FILE = "splits_random_stratified_peptide.pickle"
    #: Vocabulary sizes of OGB's atom and bond features (``ogb.utils.features``).
    ATOM_DIMS = (119, 5, 12, 12, 10, 6, 6, 2, 2)
    BOND_DIMS = (5, 6, 2)
    num_classes = 10

    def __init__(self, root: str | os.PathLike | None = None, split: str = "train",
                 split_index: int = 0, pe: Mapping[str, int] | None = None,
                 cache_dir: str | os.PathLike | None = None,
                 cache: str | os.PathLike | None = None,
                 max_graphs: int | None = None, pe_workers: int | None = None) -> None:
        _check_split(split, split_index, 1)
        if root is None:
            raise ValueError("root: PeptidesFunc needs the peptides-functional folder, got None")
        root = Path(root)
        csv, split_file = root / self.CSV, root / self.SPLITS_FILE
        if not split_file.is_file():
            raise FileNotFoundError(f"dataset file not found: {split_file} (LRGB Peptides-func "
                                    "layout)")
        tag = "all" if max_graphs is None else str(int(max_graphs))
        cached = Path(cache) if cache else \
            _cache_root(root, self.family, cache_dir) / f"peptides_func_{tag}.npz"
        if cached.is_file():
            graphs = self.load_compact(cached)
        else:
            if not csv.is_file():
                raise FileNotFoundError(f"dataset file not found: {csv} (LRGB Peptides-func "
                                        f"layout; no compact cache at {cached} either)")
            graphs = self.convert(csv, max_graphs)
            self.save_compact(graphs, cached)
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
        self.split, self.split_index = split, split_index
        self._store = s = self._select(graphs, index)
        self._node_ptr, self._edge_ptr = _offsets(s["n_nodes"]), _offsets(s["n_edges"])
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

        nodes, edges = rows(_offsets(graphs["n_nodes"])), rows(_offsets(graphs["n_edges"]))
        return {"x": graphs["x"][nodes], "edge_index": graphs["edge_index"][:, edges],
                "edge_attr": graphs["edge_attr"][edges], "y": graphs["y"][idx],
                "n_nodes": graphs["n_nodes"][idx], "n_edges": graphs["n_edges"][idx]}

    @staticmethod
    def save_compact(graphs: dict[str, torch.Tensor], path: str | os.PathLike) -> Path:
        """Write ``convert``'s output to a compressed ``.npz`` in small dtypes (atom / bond
        features and labels uint8, local edge ids int16, counts int32), atomically.

        Raises ``ValueError`` if a value does not fit its small dtype (a feature over 255, a
        graph over 32,767 nodes).
        """
        path = Path(path)
        small = {"x": np.uint8, "edge_index": np.int16, "edge_attr": np.uint8, "y": np.uint8,
                 "n_nodes": np.int32, "n_edges": np.int32}
        arrays = {}
        for key, dtype in small.items():
            a = graphs[key].numpy()
            info = np.iinfo(dtype)
            if a.size and (a.min() < info.min or a.max() > info.max):
                raise ValueError(f"save_compact: {key} spans [{a.min()}, {a.max()}], beyond "
                                 f"{np.dtype(dtype).name}")
            arrays[key] = a.astype(dtype)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez_compressed(tmp, **arrays)
        os.replace(tmp, path)  # atomic: a parallel reader never sees half a file
        return path

    @staticmethod
    def load_compact(path: str | os.PathLike) -> dict[str, torch.Tensor]:
        """Read ``save_compact``'s file back into ``convert``'s layout (``x`` int16,
        ``edge_index`` int32, ``edge_attr`` int8, ``y`` uint8, counts int32)."""
        keys = ("x", "edge_index", "edge_attr", "y", "n_nodes", "n_edges")
        dtypes = (torch.int16, torch.int32, torch.int8, torch.uint8, torch.int32, torch.int32)
        with np.load(path) as z:
            missing = [k for k in keys if k not in z.files]
            if missing:
                raise ValueError(f"{path}: not a Peptides-func compact cache (missing {missing})")
            out = {k: torch.from_numpy(z[k].astype(np.int64)).to(d) for k, d in zip(keys, dtypes)}
        if int(out["n_nodes"].sum()) != out["x"].shape[0] \
                or int(out["n_edges"].sum()) != out["edge_index"].shape[1]:
            raise ValueError(f"{path}: node / edge counts do not match the arrays (truncated?)")
        return out

    @staticmethod
    def convert(csv: Path, max_graphs: int | None = None) -> dict[str, torch.Tensor]:
        """SMILES of ``csv`` -> concatenated graph tensors (one dict, cheap to save and load).

        Returns ``x (ΣN, 9) int16``, ``edge_index (2, ΣE) int32`` (local ids), ``edge_attr
        (ΣE, 3) int8``, ``y (G, 10) uint8``, ``n_nodes (G,)``, ``n_edges (G,)`` int32.
        """
        require("rdkit", "Peptides-func")
        require("ogb", "Peptides-func")
        from ogb.utils import smiles2graph
        import csv as csvlib
        with gzip.open(csv, "rt", newline="") as fh:
            rows = list(csvlib.DictReader(fh))
        if rows and not {"smiles", "labels"} <= set(rows[0]):
            raise ValueError(f"{csv}: expected columns 'smiles' and 'labels', got "
                             f"{sorted(rows[0])}")
        if max_graphs is not None:
            rows = rows[:max_graphs]
        xs, eis, eas, ys, nn_, ne = [], [], [], [], [], []
        for row in tqdm(rows, desc="peptides smiles2graph", leave=False):
            g = smiles2graph(row["smiles"])
            xs.append(torch.from_numpy(g["node_feat"]).to(torch.int16))
            eis.append(torch.from_numpy(g["edge_index"]).to(torch.int32))
            eas.append(torch.from_numpy(g["edge_feat"]).to(torch.int8))
            nn_.append(int(g["num_nodes"]))
            ne.append(g["edge_index"].shape[1])
            labels = [int(float(v)) for v in row["labels"].strip("[] ").replace(",", " ").split()]
            ys.append(torch.tensor(labels, dtype=torch.uint8))
        return {"x": torch.cat(xs), "edge_index": torch.cat(eis, 1), "edge_attr": torch.cat(eas),
                "y": torch.stack(ys), "n_nodes": torch.tensor(nn_, dtype=torch.int32),
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
