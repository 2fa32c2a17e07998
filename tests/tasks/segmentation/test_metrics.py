import pytest
import torch

from geossm.tasks.segmentation.metrics import (ClassificationMetric, PartSegMetric,
                                               SegmentationMetric, masked_prediction, part_mask)


def test_segmentation_metric_by_hand():
    m = SegmentationMetric(3, class_names=["a", "b", "c"])
    target = torch.tensor([0, 0, 1, 1, 2, -1])
    pred = torch.tensor([0, 1, 1, 1, 0, 2])
    m.add(pred, target)
    m.add(torch.nn.functional.one_hot(torch.tensor([2]), 3).float(), torch.tensor([2]))
    r = m.compute()
    # cm: a: [1,1,0]; b: [0,2,0]; c: [1,0,1]
    assert r["oa"] == pytest.approx(4 / 6)
    assert r["macc"] == pytest.approx((1 / 2 + 1 + 1 / 2) / 3)
    ious = [1 / 3, 2 / 3, 1 / 2]
    assert r["miou"] == pytest.approx(sum(ious) / 3)
    assert r["iou/a"] == pytest.approx(1 / 3) and r["iou/c"] == pytest.approx(1 / 2)


def test_absent_classes_are_not_averaged():
    m = SegmentationMetric(4)
    m.add(torch.tensor([0, 1]), torch.tensor([0, 1]))
    r = m.compute()
    assert r["miou"] == 1.0 and "iou/3" not in r and r["iou/1"] == 1.0


def test_classification_metric():
    m = ClassificationMetric(3)
    m.update(torch.tensor([[2.0, 0, 0], [0, 2.0, 0], [0, 2.0, 0], [0, 0, 1.0]]),
             {"label": torch.tensor([0, 1, 2, 2])})
    r = m.compute()
    assert r == pytest.approx({"oa": 0.75, "macc": (1 + 1 + 0.5) / 3})


def test_partseg_instance_and_class_miou():
    parts = [(0, 1), (2, 3, 4)]
    m = PartSegMetric(parts, ["A", "B"])
    # Shape 0 (A): perfect. Shape 1 (B): part 2 half right, part 3 right, part 4 absent in both.
    target = torch.tensor([0, 1, 2, 2, 3])
    pred = torch.tensor([0, 1, 2, 3, 3])
    m.add(pred, target, torch.tensor([0, 1]), torch.tensor([0, 0, 1, 1, 1]))
    shape_b = (1 / 2 + 1 / 2 + 1) / 3
    r = m.compute()
    assert r["ins_miou"] == pytest.approx((1 + shape_b) / 2)
    assert r["cls_miou"] == pytest.approx((1 + shape_b) / 2)
    m.add(pred[:2], target[:2], torch.tensor([0]), torch.tensor([0, 0]))
    r = m.compute()
    assert r["ins_miou"] == pytest.approx((2 + shape_b) / 3)
    assert r["cls_miou"] == pytest.approx((1 + shape_b) / 2)
    assert r["miou/B"] == pytest.approx(shape_b)


def test_masked_prediction_stays_in_category():
    mask = part_mask([(0, 1), (2, 3)], 4)
    logits = torch.tensor([[0.0, 1, 5, 0], [0, 0, 1, 5]])
    pred = masked_prediction(logits, torch.tensor([0, 1]), torch.tensor([0, 1]), mask)
    assert pred.tolist() == [1, 3]
    with pytest.raises(ValueError, match="part 7 of category 0 is outside"):
        part_mask([(7,)], 4)


def test_states_sum_like_ranks():
    """Two 'ranks' summed equal one process (what reduce() does with all_reduce)."""
    a, b, whole = (SegmentationMetric(3) for _ in range(3))
    t, p = torch.randint(0, 3, (50,)), torch.randint(0, 3, (50,))
    a.add(p[:20], t[:20]), b.add(p[20:], t[20:]), whole.add(p, t)
    a.cm += b.cm
    assert a.compute() == whole.compute()
