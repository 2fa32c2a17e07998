"""The PyG cache folder of a graph dataset (raw files copied, ``processed/`` written by PyG) is
built once by one of many processes, whole, and rebuilt after a builder was killed mid-write;
checked on a small TU set the tests write in the collection's layout (``MUTAG``'s file names)."""

import os
from pathlib import Path

import pytest
import torch

from geossm.cache import COMPLETE_MARKER
from geossm.tasks.graph.datasets import MUTAG
from geossm.tasks.graph.datasets.cache import cache_folder, pyg_dataset
from tests.cache_workers import builds, kill_mid_write, run_together

# The workers (tests/cache_workers.py): each loads fold WORKER of the TU set at $TU_ROOT (cache:
# $GEOSSM_CACHE), counting PyG's processing; the builder of the kill test stalls in the middle
# of writing processed/data.pt.
SETUP = r'''
import torch
from torch_geometric.datasets import TUDataset
from torch_geometric.io import fs
from geossm.tasks.graph.datasets import MUTAG

count_builds(TUDataset, "process")
if STALL:
    stall_writes(fs, "torch_save", save=torch.save, target_arg=1)
'''
LOAD_FOLD = r'''
ds = MUTAG(os.environ["TU_ROOT"], split="test", split_index=int(WORKER) % 10)
print(digest(*[t for g in ds.graphs for t in (g.x, g.edge_index, g.y)]))
'''


def write_tu(root: Path, name: str = "MUTAG", graphs: int = 20) -> Path:
    """``graphs`` rings of 3-6 nodes in the TU text layout (``<name>_A.txt`` 1-based edge
    pairs, graph indicator, graph and node labels) under ``root/<name>/raw``; returns ``root``."""
    raw = root / name / "raw"
    raw.mkdir(parents=True)
    edges, indicator, node_labels, labels, first = [], [], [], [], 1
    for g in range(graphs):
        n = 3 + g % 4
        for i in range(n):
            a, b = first + i, first + (i + 1) % n
            edges += [f"{a}, {b}", f"{b}, {a}"]
            node_labels.append(str((g + i) % 3))
        indicator += [str(g + 1)] * n
        labels.append(str(g % 2))
        first += n
    for suffix, lines in (("A", edges), ("graph_indicator", indicator),
                          ("node_labels", node_labels), ("graph_labels", labels)):
        (raw / f"{name}_{suffix}.txt").write_text("\n".join(lines) + "\n")
    return root


def tu_folder(root: Path, cache: Path, name: str = "MUTAG") -> Path:
    """The cache folder ``MUTAG(root, cache_dir=cache)`` processes in (its raw files hashed)."""
    raw = root / name / "raw"
    return cache_folder(root, "TU", cache, sorted(p for p in raw.iterdir() if p.is_file()))


def fold_digest(root: Path, fold: int, cache_dir: Path) -> str:
    import hashlib
    h = hashlib.sha256()
    ds = MUTAG(root, split="test", split_index=fold, cache_dir=cache_dir)
    for t in (t for g in ds.graphs for t in (g.x, g.edge_index, g.y)):
        h.update(f"{t.numpy().dtype}{tuple(t.shape)}".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def test_eight_processes_on_a_fresh_cache_process_the_dataset_once(tmp_path):
    root = write_tu(tmp_path / "TU")
    cache = tmp_path / "cache"
    out = run_together(SETUP, LOAD_FOLD, tmp_path / "work",
                       env={"GEOSSM_CACHE": str(cache), "TU_ROOT": str(root)})
    assert builds(tmp_path / "work") == 1  # PyG processed the set in one process only
    # Every worker read whole data: its fold equals a load from a cache of its own.
    assert out == [fold_digest(root, i, tmp_path / "ref") for i in range(8)]
    tag = tu_folder(root, cache)
    assert sorted(p.name for p in tag.iterdir()) == [".MUTAG.lock", "MUTAG"]  # no temporaries
    assert (tag / "MUTAG" / COMPLETE_MARKER).is_file()


def test_a_builder_killed_mid_write_leaves_no_folder_and_the_next_run_rebuilds(tmp_path,
                                                                              monkeypatch):
    from torch_geometric.datasets import TUDataset
    root = write_tu(tmp_path / "TU")
    cache = tmp_path / "cache"
    kill_mid_write(SETUP, LOAD_FOLD, tmp_path / "work",
                   env={"GEOSSM_CACHE": str(cache), "TU_ROOT": str(root)})
    tag = tu_folder(root, cache)
    assert not (tag / "MUTAG").exists()  # nothing a reader could take for the dataset
    torn = list(tag.glob(".MUTAG.*.tmp/MUTAG/processed/data.pt"))
    assert len(torn) == 1 and torn[0].stat().st_size > 0  # the half-written file
    processed = []
    real = TUDataset.process
    monkeypatch.setattr(TUDataset, "process", lambda self: (processed.append(1), real(self)))
    monkeypatch.setenv("GEOSSM_CACHE", str(cache))
    assert fold_digest(root, 0, None) == fold_digest(root, 0, tmp_path / "ref")
    assert len(processed) == 2  # rebuilt here (and once for the reference)
    assert sorted(p.name for p in tag.iterdir()) == [".MUTAG.lock", "MUTAG"]


def test_a_folder_an_older_version_processed_in_place_is_rebuilt_then_only_read(tmp_path,
                                                                               monkeypatch):
    from torch_geometric.datasets import TUDataset
    root = write_tu(tmp_path / "TU")
    # The older layout: raw/ and processed/ straight under <tag>/MUTAG, without a marker; here
    # with the torn data.pt of a process killed while writing it.
    old = tu_folder(root, tmp_path / "cache") / "MUTAG"
    (old / "processed").mkdir(parents=True)
    (old / "processed" / "data.pt").write_bytes(b"PK\x03\x04 torn")
    ds = MUTAG(root, cache_dir=tmp_path / "cache")
    assert len(ds) > 0 and (old / COMPLETE_MARKER).is_file() and not (old / "processed").exists()

    def no_processing(self):
        raise AssertionError("a finished folder must be read, not processed again")

    monkeypatch.setattr(TUDataset, "process", no_processing)
    again = MUTAG(root, cache_dir=tmp_path / "cache")
    assert all(torch.equal(a.x, b.x) and torch.equal(a.edge_index, b.edge_index)
               for a, b in zip(ds.graphs, again.graphs))


def test_pyg_dataset_names_a_missing_raw_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"dataset file not found: .*b\.txt \(expected "
                                                r"the official raw layout under"):
        pyg_dataset(lambda path: None, [tmp_path / "src" / "b.txt"], tmp_path / "src",
                    tmp_path / "cache" / "B")
    assert not (tmp_path / "cache").exists()  # nothing written for a missing file


def test_raw_files_replaced_or_added_in_place_are_processed_again(tmp_path, monkeypatch):
    from torch_geometric.datasets import TUDataset
    root = write_tu(tmp_path / "TU")
    raw = root / "MUTAG" / "raw"
    cache = tmp_path / "cache"
    before = MUTAG(root, split="test", cache_dir=cache)
    # The set replaced in place: every node label v becomes (v + 1) % 3, so the one-hot
    # columns roll by one (the graphs and folds stay).
    labels = [int(v) for v in (raw / "MUTAG_node_labels.txt").read_text().split()]
    (raw / "MUTAG_node_labels.txt").write_text("".join(f"{(v + 1) % 3}\n" for v in labels))
    after = MUTAG(root, split="test", cache_dir=cache)
    assert len(after) == len(before) and all(torch.equal(a.x, b.x.roll(1, dims=1))
                                             for a, b in zip(after.graphs, before.graphs))
    # A node_attributes file added later: read (two more features), not ignored.
    nodes = len((raw / "MUTAG_node_labels.txt").read_text().split())
    (raw / "MUTAG_node_attributes.txt").write_text("0.5, 1.5\n" * nodes)
    assert MUTAG(root, split="test", cache_dir=cache).num_features == before.num_features + 2
    # A copy of the same files with other mtimes (another machine) maps to the same folder.
    folder = tu_folder(root, cache)
    for f in raw.iterdir():
        os.utime(f, ns=(10**9, 10**9))
    assert tu_folder(root, cache) == folder

    def no_processing(self):
        raise AssertionError("unchanged raw files must be read from the cache")

    monkeypatch.setattr(TUDataset, "process", no_processing)
    assert len(MUTAG(root, split="test", cache_dir=cache)) == len(before)


def test_a_malformed_raw_file_is_named_and_the_parser_error_chained(tmp_path):
    root = write_tu(tmp_path / "TU")
    edges = root / "MUTAG" / "raw" / "MUTAG_A.txt"
    lines = edges.read_text().splitlines()
    edges.write_text("\n".join(lines[:3] + ["4, x"] + lines[4:]) + "\n")
    with pytest.raises(ValueError, match=r"TU/MUTAG/raw: cannot process the raw files "
                                         r"\(ValueError: invalid literal .*expected the "
                                         r"official raw layout") as err:
        MUTAG(root, cache_dir=tmp_path / "cache")
    assert isinstance(err.value.__cause__, ValueError)
    # Errors that do not come from parsing the files propagate as they are.

    def broken(path):
        raise ImportError("no module named torch_sparse")

    with pytest.raises(ImportError, match="torch_sparse"):
        pyg_dataset(broken, [edges], root, tmp_path / "cache" / "B")
