"""Every row of ``docs/errors.md``: the errors a user can cause, and what each says.

One parametrized case per row (``ROWS``: id, call, exception, message pattern), plus the inputs
that are accepted rather than refused (empty clouds, empty samples in a batch, graphs without
edges, empty event windows), each checked for the result it documents.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from geossm import serialization as S
from geossm.config import ConfigError, ConfigKeyError, load_config
from geossm.engine.checkpoint import CheckpointError, load_checkpoint
from geossm.engine.task import pack_collate
from geossm.kernels import causal_conv1d, selective_scan
from geossm.nn import Mamba
from geossm.serialization import events as E

U, A, B = torch.randn(10, 4), -torch.rand(4, 3), torch.randn(10, 3)
CU = torch.tensor([0, 10], dtype=torch.int32)
EVENT_DTYPE = np.dtype([("x", np.int16), ("y", np.int16), ("t", np.int64), ("p", bool)])


def _events(xs):
    ev = np.zeros(len(xs), EVENT_DTYPE)
    ev["x"] = xs
    ev["t"] = np.arange(len(xs))
    return ev


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
    ("config-unknown-key", lambda: load_config(None, ["train.lrr=1"]), ConfigKeyError,
     r"unknown config key 'train.lrr'; did you mean 'train.lr'\?"),
    ("config-type", lambda: load_config(None, ["train.epochs=two"]), ConfigError,
     r"'train.epochs' expects an integer, got 'two'"),
    ("config-python-tag", lambda: load_config(None, ["seed=!!python/name:os.system"]),
     ConfigError, r"refused YAML tag"),
    ("checkpoint-missing", lambda: load_checkpoint("/nonexistent/last.pt"), FileNotFoundError,
     r"checkpoint not found: /nonexistent/last.pt"),
]

DATASET_ROWS = [
    ("shapenetpart-missing", "geossm.tasks.segmentation.datasets", "ShapeNetPart",
     r"ShapeNetPart root: expected a folder at /nonexistent/sn"),
    ("semantickitti-missing", "geossm.tasks.segmentation.datasets", "SemanticKITTI",
     r"SemanticKITTI root: expected a folder at /nonexistent/sn"),
    ("kitti-missing", "geossm.tasks.detection.datasets", "KittiDataset",
     r"KITTI folder not found: /nonexistent/sn/training/velodyne"),
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


def test_empty_event_window_gives_zero_frames():
    empty = _events([])
    frames = E.to_frame(empty, (34, 34, 2), time_window=1000)
    assert frames.shape[1:] == (2, 34, 34) and not frames.any()
    vox = E.to_voxel_grid(empty, (34, 34, 2), n_time_bins=5)
    assert vox.shape[0] == 5 and not vox.any()
