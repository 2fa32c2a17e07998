import numpy as np
import pytest

from geossm.tasks.events import tracking as tr


def test_metrics_by_hand():
    gt = np.array([[0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 10]], float)
    pred = np.array([[0, 0, 10, 10], [5, 0, 10, 10], [30, 30, 10, 10], [0, 0, 20, 10]], float)
    np.testing.assert_allclose(tr.iou_xywh(pred, gt), [1.0, 50 / 150, 0.0, 0.5])
    curve = tr.success_curve(pred, gt)
    assert curve[0] == 0.75 and curve[-1] == 0.0  # IoU > 0: three frames; IoU > 1: none
    # thresholds 0, .05, ..., 1: counts of IoU > thr among (1, 1/3, 0, 0.5)
    expect = [np.mean(np.array([1, 1 / 3, 0, 0.5]) > t) for t in np.linspace(0, 1, 21)]
    assert tr.success_auc(pred, gt) == pytest.approx(np.mean(expect))
    # centre errors 0, 5, 42.43, 5 px
    assert tr.precision(pred, gt, 20) == 0.75 and tr.precision(pred, gt, 4.9) == 0.25
    # normalised by the ground-truth size (10 px): 0, .5, 4.24, .5
    assert tr.normalized_precision(pred, gt, 0.2) == 0.25
    assert tr.normalized_precision(pred, gt, 0.5) == 0.75
