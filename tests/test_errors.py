"""Every row of ``docs/errors.md``: the errors a user can cause, and what each says.

One parametrized case per row (``ROWS``: id, call, exception, message pattern), plus the inputs
that are accepted rather than refused (empty clouds, empty samples in a batch, graphs without
edges, empty event windows), each checked for the result it documents. Overflow cases use
stride-0 views of 2^31 elements: the checks run on the sizes, nothing that large is allocated.
The last test keeps docs/errors.md and these cases in step.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from geossm import serialization as S
from geossm.config import ConfigError, ConfigKeyError, find_config, load_config
from geossm.engine.checkpoint import CheckpointError, load_checkpoint
from geossm.kernels import causal_conv1d, selective_scan
from geossm.nn import MLP, Mamba
from geossm.packed import pack_collate
from geossm.serialization import events as E

U, A, B = torch.randn(10, 4), -torch.rand(4, 3), torch.randn(10, 3)
CU = torch.tensor([0, 10], dtype=torch.int32)
EVENT_DTYPE = np.dtype([("x", np.int16), ("y", np.int16), ("t", np.int64), ("p", bool)])


def _events(xs):
    ev = np.zeros(len(xs), EVENT_DTYPE)
    ev["x"] = xs
    ev["t"] = np.arange(len(xs))
    return ev


def _huge(*shape, dtype=torch.float32):
    """A tensor of 2^31 elements or more that owns one (stride 0): checks run, nothing is
    allocated, so overflow tests cost nothing."""
    return torch.zeros((), dtype=dtype).expand(*shape)


def _huge_array(*shape):
    return np.broadcast_to(np.zeros((), np.float32), shape)


def _segmentation_model():
    from geossm.tasks.segmentation.models import PointCloudMambaSeg
    return PointCloudMambaSeg(in_channels=3, num_classes=4, dims=[8, 8], depths=[0, 1],
                              strides=[4], d_state=4, expand=1, k=4)


def _segmentation_task():
    """The embedded default's task (``model.num_categories=4``, ``model.num_classes=10``)."""
    from geossm.tasks.segmentation.task import SegmentationTask
    return SegmentationTask(load_config(find_config("default.yaml")))


def _dataset(module, cls, **kwargs):
    mod = pytest.importorskip(module, reason=f"{module} not installed")
    return lambda: getattr(mod, cls)(**kwargs)


ROWS = [
    # kernels: shapes, dtypes, devices, segment boundaries
    ("scan-shape", lambda: selective_scan(U, torch.randn(9, 4), A, B, B), ValueError,
     r"delta must have shape like u = \(10, 4\), got \(9, 4\)"),
    ("scan-dtype", lambda: selective_scan(U.long(), U, A, B, B), TypeError,
     r"u must be float32, float16 or bfloat16, got dtype torch.int64"),
    ("scan-not-tensor", lambda: selective_scan(U.tolist(), U, A, B, B), TypeError,
     r"u must be a torch.Tensor, got list"),
    ("scan-device", lambda: selective_scan(U, U, A.to("meta"), B, B), ValueError,
     r"A must be on cpu like the input, got meta"),
    ("scan-A-shape", lambda: selective_scan(U, U, torch.randn(5, 3), B, B), ValueError,
     r"A must have shape \(D, N\) with D=4, got \(5, 3\)"),
    ("scan-cu-start", lambda: selective_scan(U, U, A, B, B, cu_seqlens=CU + 1), ValueError,
     r"cu_seqlens must start with 0, got 1"),
    ("scan-cu-end", lambda: selective_scan(U, U, A, B, B, cu_seqlens=CU.clamp(max=9)),
     ValueError, r"cu_seqlens must end with the number of tokens T=10, got 9"),
    ("scan-cu-dtype", lambda: selective_scan(U, U, A, B, B, cu_seqlens=CU.float()), TypeError,
     r"cu_seqlens must be int32 or int64, got dtype torch.float32"),
    ("scan-backend", lambda: selective_scan(U, U, A, B, B, backend="cuda"), ValueError,
     r"backend must be one of \('torch', 'numba', 'triton'\) or None, got 'cuda'"),
    ("conv-width", lambda: causal_conv1d(U, torch.randn(4, 9)), ValueError,
     r"weight must have shape \(D, W\) with D=4 and 2 <= W <= 8, got \(4, 9\)"),
    ("conv-activation", lambda: causal_conv1d(U, torch.randn(4, 3), activation="relu"),
     ValueError, r"activation must be None or 'silu', got 'relu'"),
    ("conv-cu-end", lambda: causal_conv1d(U, torch.randn(4, 3), cu_seqlens=CU.clamp(max=9)),
     ValueError, r"cu_seqlens must end with the number of tokens T=10, got 9"),
    ("conv-device", lambda: causal_conv1d(U, torch.randn(4, 3).to("meta")), ValueError,
     r"weight must be on cpu like the input, got meta"),
    ("scan-dense-overflow", lambda: selective_scan(*[_huge(2, 2**30, 1)] * 2, torch.zeros(1, 1),
                                                   *[_huge(2, 2**30, 1)] * 2, backend="torch"),
     ValueError, r"T=2147483648 tokens do not fit int32 cu_seqlens"),
    # layers
    ("mamba-width", lambda: Mamba(8)(torch.randn(10, 4), cu_seqlens=CU), ValueError,
     r"x must have shape \(T, 8\) or \(B, L, 8\), got \(10, 4\)"),
    # serialization
    ("serialize-shape", lambda: S.serialize(torch.rand(5, 2), 0.02), ValueError,
     r"coord: expected shape \(N, 3\), got \(5, 2\)"),
    ("serialize-nan", lambda: S.serialize(torch.tensor([[0.0, float("nan"), 0.0]]), 0.02),
     ValueError, r"coord: expected finite coordinates, got NaN or inf"),
    ("serialize-grid", lambda: S.serialize(torch.rand(5, 3), 0.0), ValueError,
     r"grid_size: expected positive finite values, got \[0.0\]"),
    ("serialization-cu-dtype", lambda: S.Serialization.from_order(torch.arange(3),
                                                                  torch.tensor([0, 3])),
     ValueError, r"cu_seqlens: expected dtype torch.int32, got torch.int64"),
    ("cu-seqlens-float", lambda: S.cu_seqlens_to_batch(torch.tensor([0.0, 2.0])), TypeError,
     r"cu_seqlens: expected dtype torch.int32 or torch.int64, got torch.float32"),
    ("insert-tokens-cu-end", lambda: S.insert_tokens(U, CU.clamp(max=9), prefix=torch.zeros(4)),
     ValueError, r"cu_seqlens: expected the last value to be T = 10 \(the rows of x\), got 9"),
    ("batch-overflow", lambda: S.batch_to_cu_seqlens(_huge(2**31, dtype=torch.long)),
     ValueError, r"batch: 2147483648 tokens do not fit int32 cu_seqlens"),
    ("fit-depth-float", lambda: S.fit_depth(torch.rand(4, 3)), ValueError,
     r"grid_coord: expected an integer tensor, got dtype torch.float32"),
    ("windows-overflow", lambda: S.window_groups(_huge(2**31, 4, dtype=torch.long), (4, 4, 4),
                                                 (2, 2, 2), 4),
     ValueError, r"coords: 2147483648 tokens do not fit int32 cu_seqlens"),
    ("graph-tokens-overflow", lambda: S.random_walk_tokens(torch.empty(2, 0, dtype=torch.long),
                                                           2**30, walk_length=1, num_walks=1),
     ValueError, r"random_walk_tokens: 2147483648 tokens do not fit int32 cu_seqlens"),
    ("walks-start-range", lambda: S.random_walks(torch.tensor([0, 1, 1]), torch.tensor([1]),
                                                 torch.tensor([0, 5]), 3),
     ValueError, r"start: expected node ids in \[0, n=2\), got \[0, 5\]"),
    ("walks-start-float", lambda: S.random_walks(torch.tensor([0, 1, 1]), torch.tensor([1]),
                                                 torch.tensor([0.0]), 3),
     ValueError, r"start: expected an integer tensor, got dtype torch.float32"),
    ("graph-node-range", lambda: S.random_walk_tokens(torch.tensor([[0, 7], [7, 0]]), 4,
                                                      walk_length=3, num_walks=2),
     ValueError, r"edge_index: expected node ids in \[0, num_nodes=4\), got \[0, 7\]"),
    ("graph-dtype", lambda: S.random_walk_tokens(torch.tensor([[0.0, 1.0], [1.0, 0.0]]), 4,
                                                 walk_length=3, num_walks=2),
     ValueError, r"edge_index: expected an integer tensor, got dtype torch.float32"),
    ("events-outside-sensor", lambda: E.to_frame(_events([1, 50, 2]), (34, 34, 2),
                                                 time_window=1000),
     ValueError, r"events\['x'\]: expected values in \[0, 34\), got \[1, 50\]"),
    # engine, config, files
    ("collate-empty", lambda: pack_collate([]), ValueError,
     r"pack_collate: expected at least one sample, got an empty list"),
    ("collate-all-empty-samples", lambda: pack_collate([{"coord": np.zeros((0, 3))}] * 3),
     ValueError, r"pack_collate: every sample of the batch has zero rows of 'coord' "
                 r"\(3 empty samples\)"),
    ("collate-overflow", lambda: pack_collate([{"coord": _huge_array(2**30, 3)}] * 2),
     ValueError, r"pack_collate: 'coord': 2147483648 tokens do not fit int32 cu_seqlens"),
    ("config-unknown-key", lambda: load_config(None, ["train.lrr=1"]), ConfigKeyError,
     r"unknown config key 'train.lrr'; did you mean 'train.lr'\?"),
    ("config-type", lambda: load_config(None, ["train.epochs=two"]), ConfigError,
     r"'train.epochs' expects an integer, got 'two'"),
    ("config-python-tag", lambda: load_config(None, ["seed=!!python/name:os.system"]),
     ConfigError, r"refused YAML tag"),
    ("checkpoint-missing", lambda: load_checkpoint("/nonexistent/last.pt"), FileNotFoundError,
     r"checkpoint not found: /nonexistent/last.pt"),
    # predict inputs (``geossm predict`` says "input file <path>" where these say "sample")
    ("predict-category-range", lambda: _segmentation_task().preprocess(
        {"coord": np.zeros((5, 3), np.float32), "category": 7}), ValueError,
     r"sample: category: expected an integer in \[0, 4\) \(model\.num_categories=4\), got 7"),
    ("predict-coord-shape", lambda: _segmentation_task().preprocess({"coord": np.zeros((10, 2))}),
     ValueError, r"sample: coord: expected shape \(N, 3\), got shape \(10, 2\)"),
    # layers and models called directly
    ("mlp-width", lambda: MLP(8)(torch.randn(5, 6)), ValueError,
     r"MLP: x must have 8 features in its last dimension, got shape \(5, 6\)"),
    ("model-all-empty", lambda: _segmentation_model()(
        torch.zeros(0, 3), torch.zeros(0, 3), torch.zeros(3, dtype=torch.int32)), ValueError,
     r"coord has 0 points: every one of the 2 point clouds of the batch is empty"),
]

DATASET_ROWS = [
    ("shapenetpart-missing", "geossm.tasks.segmentation.datasets", "ShapeNetPart",
     r"ShapeNetPart root: expected a folder at /nonexistent/sn"),
    ("semantickitti-missing", "geossm.tasks.segmentation.datasets", "SemanticKITTI",
     r"SemanticKITTI root: expected a folder at /nonexistent/sn"),
    ("kitti-missing", "geossm.tasks.detection.datasets", "KittiDataset",
     r"KITTI folder not found: /nonexistent/sn/training/velodyne"),
    ("s3dis-missing", "geossm.tasks.segmentation.datasets", "S3DIS",
     r"S3DIS root: expected a folder at /nonexistent/sn"),
    ("modelnet40-missing", "geossm.tasks.segmentation.datasets", "ModelNet40",
     r"ModelNet40 root: expected a folder at /nonexistent/sn"),
    ("nmnist-missing", "geossm.tasks.events.datasets", "NMNIST",
     r"NMNIST: data.root not found: /nonexistent/sn"),
    ("dvsgesture-missing", "geossm.tasks.events.datasets", "DVSGesture",
     r"DVSGesture: data.root not found: /nonexistent/sn"),
    ("eventvot-missing", "geossm.tasks.events.tracking", "EventVOT",
     r"EventVOT: none of \['/nonexistent/sn/test'"),
    ("fe108-missing", "geossm.tasks.events.tracking", "FE108",
     r"FE108: none of \['/nonexistent/sn/test'\] exists"),
    ("cora-missing", "geossm.tasks.graph.datasets", "Cora",
     r"dataset root not found: /nonexistent/sn"),
    ("mutag-missing", "geossm.tasks.graph.datasets", "MUTAG",
     r"dataset folder not found: /nonexistent/sn/MUTAG/raw"),
    ("peptides-missing", "geossm.tasks.graph.datasets", "PeptidesFunc",
     r"dataset file not found: /nonexistent/sn/splits_random_stratified_peptide.pickle"),
]


@pytest.mark.parametrize("call, error, message",
                         [pytest.param(c, e, m, id=i) for i, c, e, m in ROWS])
def test_user_error(call, error, message):
    with pytest.raises(error, match=message):
        call()


@pytest.mark.parametrize("module, cls, message",
                         [pytest.param(mod, c, m, id=i) for i, mod, c, m in DATASET_ROWS])
def test_missing_dataset_folder(module, cls, message):
    with pytest.raises(FileNotFoundError, match=message):
        _dataset(module, cls, root="/nonexistent/sn")()


def test_unsafe_checkpoint_row(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"model": {}, "x": torch.nn.Linear(1, 1)}, path)  # a module: a pickled class
    with pytest.raises(CheckpointError, match=r"refusing to load checkpoint .*weights_only=True"):
        load_checkpoint(path)


def test_corrupt_checkpoint_row(tmp_path):
    path = tmp_path / "x.pt"
    path.write_bytes(np.random.default_rng(0).bytes(100))  # not "could run code": just corrupt
    with pytest.raises(CheckpointError, match=r"cannot read checkpoint .*x\.pt: not a valid "
                                              r"checkpoint \(truncated or corrupt; expected a "
                                              r"file written by torch.save\)"):
        load_checkpoint(path)


EMPTY_BATCHES = [
    ("segmentation", "geossm.tasks.segmentation.task", "SegmentationTask", "coord",
     {"coord": np.zeros((0, 3), np.float32), "feat": np.zeros((0, 3), np.float32),
      "label": np.zeros(0, np.int64)}),
    ("events-raw", "geossm.tasks.events.task", "EventClassificationTask", "events",
     {"events": np.zeros((0, 4), np.int64), "label": 3}),
    ("detection", "geossm.tasks.detection.task", "DetectionTask", "points",
     {"points": np.zeros((0, 4), np.float32), "gt_boxes": np.zeros((0, 7), np.float32),
      "gt_labels": np.zeros(0, np.int64)}),
]


@pytest.mark.parametrize("module, cls, key, sample",
                         [pytest.param(mod, c, k, s, id=i) for i, mod, c, k, s in EMPTY_BATCHES])
def test_task_collate_refuses_a_batch_of_only_empty_samples(module, cls, key, sample):
    """Every task's collate goes through pack_collate: the same refusal, naming the key."""
    task = getattr(pytest.importorskip(module, reason=f"{module} not importable"), cls)(None)
    with pytest.raises(ValueError, match=rf"every sample of the batch has zero rows of '{key}'"):
        task.collate([sample, sample])
    full = {k: (np.ones((2, *v.shape[1:]), v.dtype) if isinstance(v, np.ndarray) else v)
            for k, v in sample.items()}
    batch = task.collate([sample, full])  # one empty sample among others: an empty segment
    assert batch["cu_seqlens"].tolist() == [0, 0, 2]


# ------------------------------------------------------------- accepted, with a defined result

def test_empty_point_cloud_serializes_to_nothing():
    ser = S.serialize(torch.empty(0, 3), 0.02)
    assert ser.num_tokens == 0 and ser.cu_seqlens.tolist() == [0, 0]


def test_zero_point_sample_inside_a_batch_is_an_empty_segment():
    batch = pack_collate([{"coord": np.ones((2, 3))}, {"coord": np.zeros((0, 3))},
                          {"coord": np.ones((3, 3))}])
    assert batch["cu_seqlens"].tolist() == [0, 2, 2, 5]
    ser = S.serialize(torch.rand(5, 3), 0.02, batch=torch.tensor([0, 0, 2, 2, 2]))
    assert ser.cu_seqlens.tolist() == [0, 2, 2, 5]
    x = torch.randn(5, 8)
    out = Mamba(8)(x, cu_seqlens=torch.tensor([0, 2, 2, 5], dtype=torch.int32))
    assert out.shape == (5, 8) and torch.isfinite(out).all()


def test_graph_without_edges_or_with_isolated_nodes():
    none = S.random_walk_tokens(torch.empty(2, 0, dtype=torch.long), 5, walk_length=3,
                                num_walks=2)
    isolated = S.random_walk_tokens(torch.tensor([[0, 1], [1, 0]]), 4, walk_length=3,
                                    num_walks=2)
    for tok, n in ((none, 5), (isolated, 4)):
        assert tok.cu_seqlens.numel() == n + 1  # one token sequence per node, isolated too
        assert int(tok.cu_seqlens[-1]) == tok.center.numel()
    # an isolated node's tokens hold only itself (its walks cannot leave it)
    members = isolated.index[isolated.center[isolated.token] == 3]
    assert members.numel() > 0 and set(members.tolist()) == {3}
    order = S.degree_order(torch.empty(2, 0, dtype=torch.long), 5)
    assert sorted(order.order.tolist()) == list(range(5))


def test_one_event_window_of_a_packed_event_dtype():
    """A 1-event window of the 13-byte (x, y, t, p) records: torch could not view its fields."""
    one = _events([5])
    assert EVENT_DTYPE.itemsize == 13
    assert E.as_tensors(one)["x"].tolist() == [5]
    ser = E.serialize_events(one, (34, 34, 2), 1.0)
    assert ser.cu_seqlens.tolist() == [0, 1] and ser.extras["grid_coord"].tolist() == [[5, 0, 0]]


def test_empty_event_window_gives_zero_frames():
    empty = _events([])
    frames = E.to_frame(empty, (34, 34, 2), time_window=1000)
    assert frames.shape[1:] == (2, 34, 34) and not frames.any()
    vox = E.to_voxel_grid(empty, (34, 34, 2), n_time_bins=5)
    assert vox.shape[0] == 5 and not vox.any()


# ----------------------------------------------------------- the table and the tests agree

DOCS = Path(__file__).resolve().parents[1] / "docs" / "errors.md"


def _table_test_cells() -> list[str]:
    """The last cell of every table row of docs/errors.md (the tests backing that row)."""
    rows = [ln for ln in DOCS.read_text().splitlines() if ln.startswith("| ")]
    return [ln.rstrip(" |").rsplit("|", 1)[1] for ln in rows
            if not ln.startswith(("| what you did", "| input"))]


def test_every_docs_row_names_an_existing_test_and_every_case_is_documented():
    cells = _table_test_cells()
    assert len(cells) >= 40
    known = ({i for i, *_ in ROWS} | {i for i, *_ in DATASET_ROWS}
             | {name for name in globals() if name.startswith("test_")})
    test_files = {p.name for p in Path(__file__).parent.rglob("test_*.py")}
    for cell in cells:
        names = re.findall(r"`([^`]+)`", cell)
        files = re.findall(r"([\w/]+\.py)", re.sub(r"`[^`]+`", "", cell))
        assert names or files, f"docs/errors.md row without a test: {cell!r}"
        assert set(names) <= known, f"{cell!r} names unknown tests {set(names) - known}"
        for f in files:
            assert Path(f).name in test_files, f"{cell!r}: no test file {f}"
    documented = set(re.findall(r"`([^`]+)`", " ".join(cells)))
    undocumented = {i for i, *_ in ROWS} - documented
    assert not undocumented, f"ROWS cases without a row in docs/errors.md: {undocumented}"
    assert "test_missing_dataset_folder" in documented  # the DATASET_ROWS cases
