import pytest
import torch

from geossm.tasks.events import tracking as tr


def test_tracker_model_and_track_loop():
    torch.manual_seed(0)
    init, inputs = tr.MambaEVTTracker.example()
    m = tr.MambaEVTTracker(**init)
    out = m(**inputs)
    assert out["logits"].shape == (2, 16) and out["size"].shape == (2, 16, 2)
    frames = torch.rand(2, 5, 2, 40, 40)
    boxes = torch.tensor([[10.0, 12.0, 8.0, 6.0], [20.0, 5.0, 6.0, 9.0]])
    tracks = tr.track(m, frames, boxes, interval=2)
    assert tracks.shape == (2, 5, 4) and torch.equal(tracks[:, 0], boxes)
    assert torch.isfinite(tracks).all()
    with pytest.raises(ValueError, match=r"search: expected \(B, C, 32, 32\), got"):
        m(inputs["template"], torch.rand(2, 2, 16, 16))
    with pytest.raises(ValueError, match="search_size: expected a multiple of patch_size=8"):
        tr.MambaEVTTracker(search_size=60)
