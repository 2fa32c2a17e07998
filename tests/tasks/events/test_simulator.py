import numpy as np

from geossm.tasks.events import tracking as tr
from geossm.tasks.events.simulator import simulate


def test_simulator_is_deterministic_and_boxes_hold_events():
    a = simulate(3, num_frames=6, dt_us=2000)
    b = simulate(3, num_frames=6, dt_us=2000)
    np.testing.assert_array_equal(a.events, b.events)
    np.testing.assert_array_equal(a.boxes, b.boxes)
    assert a.boxes.shape == (6, 4) and a.times.tolist() == [10_000 * (i + 1) for i in range(6)]
    assert np.all(np.diff(a.events["t"]) >= 0)
    assert not np.array_equal(simulate(4, num_frames=6, dt_us=2000).boxes, a.boxes)
    # The target (brighter texture, moving) fires more densely than the background.
    frames = tr.event_frames(a.events, a.times, a.sensor_size, 10_000).sum(1)
    x, y, w, h = a.boxes[3].round().astype(int)
    inside = frames[3, y:y + h, x:x + w].mean()
    assert inside > 2 * frames[3].mean()
