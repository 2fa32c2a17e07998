import numpy as np
import pytest
import torch

from geossm.config import load_config
from geossm.engine import Task, move_to, pack_collate


def test_pack_collate_concatenates_without_padding():
    samples = [
        {"coord": np.zeros((3, 3), np.float32), "label": np.arange(3), "boxes": np.ones((1, 7)),
         "image": np.zeros((2, 2)), "scale": 1.5, "name": "a"},
        {"coord": np.ones((5, 3), np.float32), "label": np.arange(5), "boxes": np.ones((4, 7)),
         "image": np.ones((2, 2)), "scale": 2.0, "name": "b"},
    ]
    b = pack_collate(samples, stack_keys=("image",))
    assert b["coord"].shape == (8, 3) and b["label"].shape == (8,)
    assert b["cu_seqlens"].dtype == torch.int32 and b["cu_seqlens"].tolist() == [0, 3, 8]
    assert b["batch"].tolist() == [0] * 3 + [1] * 5
    assert b["boxes"].shape == (5, 7) and b["boxes_cu_seqlens"].tolist() == [0, 1, 5]
    assert "label_cu_seqlens" not in b
    assert b["image"].shape == (2, 2, 2)
    assert b["scale"].tolist() == [1.5, 2.0] and b["name"] == ["a", "b"]


def test_pack_collate_errors():
    with pytest.raises(ValueError, match="at least one sample"):
        pack_collate([])
    with pytest.raises(ValueError, match="sample 1 has keys"):
        pack_collate([{"a": np.zeros(2)}, {"b": np.zeros(2)}])
    with pytest.raises(ValueError, match="may not carry the key 'batch'"):
        pack_collate([{"batch": np.zeros(2)}])
    with pytest.raises(ValueError, match="length_key 'x' is not a concatenated key"):
        pack_collate([{"a": np.zeros(2)}], length_key="x")


def test_move_to_nested():
    out = move_to({"a": [torch.zeros(1), (torch.ones(1), "s")], "b": 3}, torch.device("cpu"))
    assert out["b"] == 3 and out["a"][1][1] == "s"


def test_base_task_requires_names_and_hooks():
    task = Task(load_config(None))
    with pytest.raises(ValueError, match="'data.name' is not set"):
        task.build_dataset("train")
    with pytest.raises(ValueError, match="'model.name' is not set"):
        task.build_model()
    with pytest.raises(NotImplementedError, match="set input_keys or override forward"):
        task.forward(torch.nn.Identity(), {})
    with pytest.raises(NotImplementedError, match="must implement loss"):
        task.loss(None, {})


def test_load_input_formats(tmp_path):
    task = Task(load_config(None))
    np.savez(tmp_path / "a.npz", coord=np.zeros((2, 3)))
    assert task.load_input(tmp_path / "a.npz")["coord"].shape == (2, 3)
    np.save(tmp_path / "b.npy", np.zeros((4, 3)))
    assert task.load_input(tmp_path / "b.npy")["coord"].shape == (4, 3)
    (tmp_path / "c.txt").write_text("x")
    with pytest.raises(ValueError, match="expected .npz, .npy or .ply"):
        task.load_input(tmp_path / "c.txt")
    with pytest.raises(FileNotFoundError, match="input file not found"):
        task.load_input(tmp_path / "missing.npz")
