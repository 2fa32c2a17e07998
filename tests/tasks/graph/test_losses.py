from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from geossm.config import load_config
from geossm.tasks.graph.losses import WithInputL2
from torch_geometric.data import Batch, Data

from geossm.tasks.graph.task import (GraphClassificationTask, MultiLabelGraphTask,
                                     NodeClassificationTask)

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
                                         r"GraphClassificationTask \(known: label_smoothing\)"):
        GraphClassificationTask(cfg).build_loss(Net())
    cfg = load_config(CONFIGS / "cora_gmn.yaml", ["+input_l2=0.1"])
    with pytest.raises(ValueError, match="input_l2: the key moved to loss.input_l2"):
        NodeClassificationTask(cfg).build_loss(Net())


def smoothed_cross_entropy(logits, target, eps):
    """By hand: the mean over rows of -sum_c q_c log p_c, q = (1 - eps) one_hot + eps / C."""
    log_p = torch.log_softmax(logits, dim=1)
    q = F.one_hot(target, logits.shape[1]).float() * (1 - eps) + eps / logits.shape[1]
    return -(q * log_p).sum(1).mean()


def test_label_smoothing_reaches_the_node_and_graph_losses():
    gen = torch.Generator().manual_seed(0)
    logits, y = torch.randn(6, 3, generator=gen), torch.tensor([0, 2, 1, 1, 0, 2])
    mask = torch.tensor([True, True, False, True, False, True])
    nodes = Data(y=y, mask=mask, num_nodes=6)
    node_task = NodeClassificationTask(
        load_config(CONFIGS / "cora_gmn.yaml", ["+loss.label_smoothing=0.2"]))
    assert node_task.label_smoothing == pytest.approx(0.2)
    expected = smoothed_cross_entropy(logits[mask], y[mask], 0.2)
    torch.testing.assert_close(node_task.loss(logits, nodes), expected)
    plain = NodeClassificationTask(load_config(CONFIGS / "cora_gmn.yaml"))
    torch.testing.assert_close(plain.loss(logits, nodes), F.cross_entropy(logits[mask], y[mask]))
    assert not torch.allclose(plain.loss(logits, nodes), expected)

    graphs = Batch.from_data_list([Data(y=y[i:i + 1], num_nodes=1) for i in range(6)])
    graph_task = GraphClassificationTask(
        load_config(CONFIGS / "mutag_gmn.yaml", ["+loss.label_smoothing=0.3"]))
    torch.testing.assert_close(graph_task.loss(logits, graphs),
                               smoothed_cross_entropy(logits, y, 0.3))


@pytest.mark.parametrize("value", ["1.0", "-0.1", "true", "high"])
def test_bad_label_smoothing_fails_before_training(value):
    task = NodeClassificationTask(
        load_config(CONFIGS / "cora_gmn.yaml", [f"+loss.label_smoothing={value}"]))
    with pytest.raises(ValueError, match="loss.label_smoothing: expected a number in \\[0, 1\\)"):
        task.build_loss(Net())
    graph_task = GraphClassificationTask(
        load_config(CONFIGS / "mutag_gmn.yaml", [f"+loss.label_smoothing={value}"]))
    with pytest.raises(ValueError, match="loss.label_smoothing"):
        graph_task.build_loss(Net())


def test_multilabel_task_rejects_label_smoothing():
    cfg = load_config(CONFIGS / "peptides_func_gcnplus.yaml", ["+loss.label_smoothing=0.1"])
    with pytest.raises(ValueError, match=r"loss: unknown keys \['label_smoothing'\]"):
        MultiLabelGraphTask(cfg).build_loss(Net())
