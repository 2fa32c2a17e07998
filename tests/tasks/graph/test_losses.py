from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from geossm.config import load_config
from geossm.tasks.graph.losses import WithInputL2
from geossm.tasks.graph.task import GraphClassificationTask, NodeClassificationTask

CONFIGS = Path(__file__).resolve().parents[3] / "configs" / "graph"


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.input_encoder = torch.nn.Linear(3, 4)
        self.head = torch.nn.Linear(4, 2)

    def forward(self, x):
        return self.head(self.input_encoder(x))


def test_input_l2_is_added_while_training_only_with_its_gradient():
    torch.manual_seed(0)
    net, x, y = Net(), torch.randn(5, 3), torch.tensor([0, 1, 1, 0, 1])
    loss = WithInputL2(lambda out, target: F.cross_entropy(out, target), net.input_encoder, 0.01)
    value = loss(net(x), y)
    w = net.input_encoder.weight
    expected = F.cross_entropy(net(x), y) + 0.5 * 0.01 * w.pow(2).sum()
    assert torch.equal(value, expected)
    (grad,) = torch.autograd.grad(value, w)
    (expected_grad,) = torch.autograd.grad(expected, w)
    assert torch.equal(grad, expected_grad)
    net.eval()
    assert torch.equal(loss(net(x), y), F.cross_entropy(net(x), y))
    with pytest.raises(ValueError, match="input_l2 must be > 0"):
        WithInputL2(F.cross_entropy, net.input_encoder, 0.0)
    with pytest.raises(TypeError, match="encoder must have a weight tensor, got ReLU"):
        WithInputL2(F.cross_entropy, torch.nn.ReLU(), 0.1)


def test_node_task_builds_its_loss_from_the_loss_keys():
    cfg = load_config(CONFIGS / "cora_gmn.yaml")
    assert cfg.loss.input_l2 == pytest.approx(5e-3)
    net = Net()
    task = NodeClassificationTask(cfg)
    built = task.build_loss(net)
    assert isinstance(built, WithInputL2) and built.encoder is net.input_encoder
    assert built.input_l2 == pytest.approx(5e-3)
    off = NodeClassificationTask(load_config(CONFIGS / "cora_gmn.yaml", ["loss.input_l2=0"]))
    assert off.build_loss(net) == off.loss
    bad = NodeClassificationTask(load_config(CONFIGS / "cora_gmn.yaml", ["loss.input_l2=-1"]))
    with pytest.raises(ValueError, match="loss.input_l2: expected a number >= 0, got -1"):
        bad.build_loss(net)


def test_loss_keys_are_checked():
    cfg = load_config(CONFIGS / "mutag_gmn.yaml", ["+loss.input_l2=0.1"])
    with pytest.raises(ValueError, match=r"loss: unknown keys \['input_l2'\] for "
                                         r"GraphClassificationTask \(known: none\)"):
        GraphClassificationTask(cfg).build_loss(Net())
    cfg = load_config(CONFIGS / "cora_gmn.yaml", ["+input_l2=0.1"])
    with pytest.raises(ValueError, match="input_l2: the key moved to loss.input_l2"):
        NodeClassificationTask(cfg).build_loss(Net())
