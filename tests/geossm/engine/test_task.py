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


def test_pack_collate_empty_samples():
    """One empty sample is an empty segment; a batch of only empty samples is refused, even
    when another key (boxes) has rows, since the lengths follow ``length_key``."""
    empty = {"coord": np.zeros((0, 3)), "boxes": np.ones((1, 7))}
    full = {"coord": np.ones((2, 3)), "boxes": np.ones((0, 7))}
    b = pack_collate([full, empty, full])
    assert b["cu_seqlens"].tolist() == [0, 2, 2, 4] and b["batch"].tolist() == [0, 0, 2, 2]
    assert b["boxes_cu_seqlens"].tolist() == [0, 0, 1, 1]
    with pytest.raises(ValueError, match=r"every sample of the batch has zero rows of 'coord' "
                                         r"\(2 empty samples\)"):
        pack_collate([empty, empty])
    # boxes-only batches are fine when boxes are the length key and some sample has one
    assert pack_collate([empty, full], length_key="boxes")["cu_seqlens"].tolist() == [0, 1, 1]
    # stacked keys carry no lengths, so a batch with only stacked arrays is never "empty"
    assert pack_collate([{"image": np.zeros((0, 2))}], stack_keys=("image",))["image"].shape \
        == (1, 0, 2)


def test_pack_collate_refuses_int32_overflow_before_concatenating():
    """2^31 rows in total would wrap the int32 cu_seqlens: refused from the lengths alone
    (broadcast views of 2^30 rows: nothing is allocated)."""
    half = np.broadcast_to(np.zeros((), np.float32), (2**30, 3))
    with pytest.raises(ValueError, match=r"pack_collate: 'coord': 2147483648 tokens do not fit "
                                         r"int32 cu_seqlens \(max 2147483647"):
        pack_collate([{"coord": half}, {"coord": half}])
    small = {"coord": np.zeros((1, 3), np.float32)}
    with pytest.raises(ValueError, match=r"'boxes': 2147483649 tokens do not fit"):
        pack_collate([{**small, "boxes": half}, {**small, "boxes": half},
                      {**small, "boxes": half[:1]}])


def test_pack_collate_rows_of_every_sample_are_checked():
    b = pack_collate([{"a": np.zeros((2, 1))}, {"a": [[1.0]]}])  # a list counts its rows
    assert b["cu_seqlens"].tolist() == [0, 2, 3]
    with pytest.raises(ValueError, match=r"sample 1 'a' must be an array with rows like sample "
                                         r"0's, got ndarray \(\)"):
        pack_collate([{"a": np.zeros((2, 1))}, {"a": np.array(1.0)}])  # 0-d: no rows


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


def test_selection_metric_from_the_task_or_the_config():
    class Scored(Task):
        best_metric, best_mode = "miou", "max"

    assert Scored(load_config(None)).selection_metric() == ("miou", "max")
    cfg = load_config(None, ["eval.metric=loss", "eval.mode=min"])
    assert Scored(cfg).selection_metric() == ("loss", "min")


def test_build_loss_defaults_to_the_task_loss():
    class Scored(Task):
        def loss(self, outputs, batch):
            return outputs.sum()

    task = Scored(load_config(None))
    assert task.build_loss(torch.nn.Identity())(torch.ones(3), {}) == 3


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
