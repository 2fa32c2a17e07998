import numpy as np
import pytest
import torch

from geossm.config import load_config
from geossm.engine import Task, move_to


def test_move_to_nested():
    out = move_to({"a": [torch.zeros(1), (torch.ones(1), "s")], "b": 3}, torch.device("cpu"))
    assert out["b"] == 3 and out["a"][1][1] == "s"


class _Recorder:
    """An object that moves itself: records the keywords its ``to`` was called with."""

    def __init__(self):
        self.calls = []

    def to(self, device, non_blocking=False):
        self.calls.append(non_blocking)
        return self


class _PlainMover:
    def to(self, device):          # no non_blocking keyword: must still be called
        return "moved"


def test_move_to_passes_non_blocking_to_objects_that_take_it():
    recorder = _Recorder()
    move_to({"plan": recorder}, torch.device("cpu"), non_blocking=True)
    move_to([recorder], torch.device("cpu"))
    assert recorder.calls == [True, False]
    assert move_to(_PlainMover(), torch.device("cpu"), non_blocking=True) == "moved"


def test_move_to_moves_a_pyg_batch_without_waiting():
    pyg = pytest.importorskip("torch_geometric.data", reason="torch_geometric not installed")
    batch = pyg.Batch.from_data_list([pyg.Data(x=torch.ones(2, 3)), pyg.Data(x=torch.zeros(1, 3))])
    from geossm.engine.task import _takes_non_blocking

    assert _takes_non_blocking(type(batch))       # so the trainer's copy does not wait
    moved = move_to(batch, torch.device("cpu"), non_blocking=True)
    assert torch.equal(moved.x, batch.x) and moved.num_graphs == 2


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


def test_default_prediction_step_is_forward_and_evaluation_has_a_loss():
    class Doubling(Task):
        input_keys = ("x",)

    task = Doubling(None)
    batch = {"x": torch.ones(3)}
    double = torch.nn.Linear(1, 1, bias=False)
    torch.nn.init.constant_(double.weight, 2.0)
    model = lambda x: double(x[:, None])[:, 0]  # noqa: E731
    assert torch.equal(task.predict_step(model, batch), torch.full((3,), 2.0))
    assert task.evaluation_loss
