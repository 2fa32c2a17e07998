import math

import pytest
import torch

from geossm.engine.metrics import ConfusionMatrix, ListMetric, MeanMetric, MetricCollection


def test_confusion_matrix_values():
    cm = ConfusionMatrix(3, ignore_index=-1, class_names=["a", "b", "c"], per_class=True)
    target = torch.tensor([0, 0, 1, 1, 2, -1])
    pred = torch.tensor([0, 1, 1, 1, 0, 2])
    cm.update({"logits": torch.nn.functional.one_hot(pred.clamp_min(0), 3).float()},
              {"label": target})
    out = cm.compute()
    assert out["acc"] == pytest.approx(3 / 5)
    assert out["macc"] == pytest.approx((1 / 2 + 1 + 0) / 3)
    # IoU: class 0: tp 1 / (2 + 2 - 1); class 1: 2 / (2 + 3 - 2); class 2: 0 / 1
    assert out["iou/a"] == pytest.approx(1 / 3) and out["iou/b"] == pytest.approx(2 / 3)
    assert out["iou/c"] == 0.0
    assert out["miou"] == pytest.approx((1 / 3 + 2 / 3 + 0) / 3)


def test_confusion_matrix_accumulates_and_resets():
    cm = ConfusionMatrix(2)
    cm.add(torch.tensor([0, 1]), torch.tensor([0, 1]))
    cm.add(torch.tensor([1]), torch.tensor([0]))
    assert cm.compute()["acc"] == pytest.approx(2 / 3)
    cm.reduce()  # single process: no-op
    assert int(cm.cm.sum()) == 3
    cm.reset()
    assert int(cm.cm.sum()) == 0 and math.isnan(cm.compute()["acc"])


def test_confusion_matrix_bad_input():
    with pytest.raises(ValueError, match="num_classes must be an int >= 1"):
        ConfusionMatrix(0)
    cm = ConfusionMatrix(2)
    with pytest.raises(ValueError, match=r"targets must lie in \[0, 2\)"):
        cm.add(torch.tensor([0]), torch.tensor([5]))
    with pytest.raises(ValueError, match="differ in shape"):
        cm.add(torch.tensor([0, 1]), torch.tensor([0]))


def test_mean_and_collection():
    m = MeanMetric("loss")
    m.add(torch.tensor(2.0), 3)
    m.add(4.0, 1)
    coll = MetricCollection(m, ConfusionMatrix(2, prefix="seg_"))
    coll.metrics[1].add(torch.tensor([1]), torch.tensor([1]))
    out = coll.compute()
    assert out["loss"] == pytest.approx(2.5) and out["seg_acc"] == 1.0
    with pytest.raises(ValueError, match="two metrics report 'loss'"):
        MetricCollection(MeanMetric("loss"), MeanMetric("loss")).compute()


class _Pairs(ListMetric):
    list_states = ("xs", "ys")

    def update(self, outputs, batch):
        self.xs.append(outputs)
        self.ys.append(batch)

    def compute(self):
        return {"n": float(len(self.xs))}


def test_list_metric_keeps_reduces_and_resets_its_lists():
    m = _Pairs()
    assert m.xs == [] and m.ys == []
    m.update(1, "a")
    m.update(2, "b")
    assert m.to("cpu") is m
    m.reduce()  # one process: the gather keeps the items in order
    assert (m.xs, m.ys) == ([1, 2], ["a", "b"])
    assert m.compute() == {"n": 2.0}
    m.reset()
    assert m.xs == [] and m.ys == [] and m.compute() == {"n": 0.0}
