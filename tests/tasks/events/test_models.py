import pytest
import torch

from geossm.tasks.events.models import EventMambaCls, segment_mean


def test_windowed_forward_backward():
    torch.manual_seed(0)
    m = EventMambaCls(num_classes=4, in_channels=2, sensor_size=(10, 9, 2), dim=16, depth=2,
                      patch_size=4, stem_channels=4)
    x = torch.rand(3, 2, 9, 10, requires_grad=True)
    out = m(frames=x)
    assert out.shape == (3, 4)
    out.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    # Samples do not mix: changing one sample leaves the others' logits unchanged.
    m.eval()
    y = x.detach().clone()
    y[1] += 1
    a, b = m(frames=x.detach()), m(frames=y)
    torch.testing.assert_close(a[[0, 2]], b[[0, 2]])


def test_stem_depth_stacks_convolutions():
    m = EventMambaCls(in_channels=2, sensor_size=(8, 8, 2), dim=8, depth=1, stem_channels=4,
                      stem_depth=3)
    convs = [layer for layer in m.embed if isinstance(layer, torch.nn.Conv2d)]
    # three 3x3 stem convolutions, then the patch embedding
    assert [c.kernel_size for c in convs] == [(3, 3)] * 3 + [(4, 4)]
    assert m(frames=torch.rand(2, 2, 8, 8)).shape == (2, 10)
    with pytest.raises(ValueError, match="stem_depth: expected a positive int, got 0"):
        EventMambaCls(stem_depth=0)


def test_serialized_forward_backward():
    torch.manual_seed(0)
    m = EventMambaCls(num_classes=3, mode="serialized", sensor_size=(16, 16, 2), dim=16, depth=2)
    n = [5, 1, 9]
    ev = torch.cat([torch.stack([torch.randint(0, 16, (k,)), torch.randint(0, 16, (k,)),
                                 torch.sort(torch.randint(0, 5000, (k,))).values,
                                 torch.randint(0, 2, (k,))], 1) for k in n])
    cu = torch.tensor([0, 5, 6, 15], dtype=torch.int32)
    out = m(events=ev, cu_seqlens=cu)
    assert out.shape == (3, 3)
    out.sum().backward()
    assert all(p.grad is not None for p in m.head.parameters())


def test_mode_errors():
    with pytest.raises(ValueError, match="mode: expected one of .* got 'frames'"):
        EventMambaCls(mode="frames")
    m = EventMambaCls(sensor_size=(8, 8, 2), in_channels=2, dim=8, depth=1, stem_channels=0)
    with pytest.raises(ValueError, match=r"mode='windowed'\): expected frames \(B, C, H, W\), "
                                         r"got None"):
        m(events=torch.zeros(3, 4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"expected H <= 8 and W <= 8 .* got \(9, 8\)"):
        m(frames=torch.rand(1, 2, 9, 8))
    s = EventMambaCls(mode="serialized", sensor_size=(8, 8, 2), dim=8, depth=1)
    with pytest.raises(ValueError, match=r"mode='serialized'\): expected events \(N, 4\)"):
        s(frames=torch.rand(1, 2, 8, 8))


def test_segment_mean():
    x = torch.arange(10.0).view(5, 2)
    cu = torch.tensor([0, 2, 2, 5], dtype=torch.int32)
    out = segment_mean(x, cu)
    torch.testing.assert_close(out, torch.tensor([[1.0, 2.0], [0.0, 0.0], [6.0, 7.0]]))


def test_windowed_patch_serializations_are_cached_per_batch_size():
    """The same ``cu_seqlens`` tensors every step (their value check, a host sync, runs once;
    a CUDA graph of the step needs that), the same logits as uncached serializations."""
    from geossm.tasks.events import models as event_models
    torch.manual_seed(0)
    m = EventMambaCls(num_classes=4, in_channels=2, sensor_size=(8, 8, 2), dim=16, depth=2,
                      patch_size=4, stem_channels=4).eval()
    first = m._patch_serializations(3, torch.device("cpu"))
    assert m._patch_serializations(3, torch.device("cpu")) is first
    assert m._patch_serializations(2, torch.device("cpu"))[0].cu_seqlens.numel() == 2 + 1  # a segment per frame
    fresh = [s.repeat(3) for s in m._grid_cache["cpu"]]
    for a, b in zip(first, fresh):
        assert torch.equal(a.order, b.order) and torch.equal(a.cu_seqlens, b.cu_seqlens)
    x = torch.rand(3, 2, 8, 8)
    cached = m(frames=x)
    m._repeat_cache.clear()
    torch.testing.assert_close(m(frames=x), cached, rtol=0, atol=0)
    for size in range(1, event_models.REPEAT_CACHE_SIZE + 3):
        m._patch_serializations(size, torch.device("cpu"))
    assert len(m._repeat_cache) == event_models.REPEAT_CACHE_SIZE


def test_serialized_logits_of_a_recording_do_not_depend_on_its_batch():
    """A recording's logits alone equal its logits beside a longer recording (per-recording
    time origin and curve depth in the serialization)."""
    torch.manual_seed(0)
    m = EventMambaCls(num_classes=3, mode="serialized", sensor_size=(16, 16, 2), dim=16,
                      depth=2, orders=("hilbert", "hilbert-trans")).eval()

    def recording(k, span):
        return torch.stack([torch.randint(0, 16, (k,)), torch.randint(0, 16, (k,)),
                            torch.sort(torch.randint(0, span, (k,))).values,
                            torch.randint(0, 2, (k,))], 1)
    short, long = recording(40, 3_000), recording(60, 25_000)  # depths 4 and 5
    with torch.no_grad():
        alone = m(events=short, cu_seqlens=torch.tensor([0, 40], dtype=torch.int32))
        packed = m(events=torch.cat([short, long]),
                   cu_seqlens=torch.tensor([0, 40, 100], dtype=torch.int32))
    torch.testing.assert_close(packed[:1], alone, rtol=1e-5, atol=1e-6)
