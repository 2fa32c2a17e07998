import math

import numpy as np
import torch

from geossm.tasks.detection.boxes import limit_period


def test_limit_period_defaults_are_openpcdets():
    # OpenPCDet: limit_period(val, offset=0.5, period=pi) -> [-pi/2, pi/2)
    angles = np.array([-3.0, -1.6, -0.2, 1.6, 3.0, 7.0])
    wrapped = limit_period(angles)
    assert np.all(wrapped >= -math.pi / 2) and np.all(wrapped < math.pi / 2)
    np.testing.assert_allclose(np.cos(2 * wrapped), np.cos(2 * angles), atol=1e-12)
    np.testing.assert_allclose(limit_period(1.6), 1.6 - math.pi)


def test_limit_period_full_turn_keeps_direction():
    angles = np.array([-3.5, -0.2, 3.0, 7.0])
    wrapped = limit_period(angles, period=2 * np.pi)
    assert np.all(wrapped >= -math.pi) and np.all(wrapped < math.pi)
    np.testing.assert_allclose(np.cos(wrapped), np.cos(angles), atol=1e-12)
    np.testing.assert_allclose(np.sin(wrapped), np.sin(angles), atol=1e-12)
    t = limit_period(torch.tensor([3.5], dtype=torch.float64), period=2 * np.pi)
    assert t.item() == limit_period(3.5, period=2 * np.pi)
