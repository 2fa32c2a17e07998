"""torch.export of geossm models through ``geossm.engine.export`` (the CLI is tested in
tests/geossm/test_cli.py)."""

import pytest
import torch

from geossm.engine.export import ExportError, dynamic_dims, export_program
from geossm.packed import cu_seqlens_from_lengths
from geossm.tasks.events.models import EventMambaCls
from geossm.tasks.segmentation.models import PointCloudMambaSeg


@pytest.mark.parametrize("backend", [None, "numba"])  # None: numba on CPU
def test_event_model_exports_with_a_dynamic_batch(tmp_path, backend):
    init, inputs = EventMambaCls.example()
    torch.manual_seed(0)
    model = EventMambaCls(**init, backend=backend).eval()
    program = export_program(model, inputs)
    assert dynamic_dims(program) == {"frames": [0]}
    torch.export.save(program, str(tmp_path / "m.pt2"))
    loaded = torch.export.load(str(tmp_path / "m.pt2")).module()
    for batch in (inputs["frames"], torch.rand(5, *inputs["frames"].shape[1:])):
        with torch.no_grad():
            torch.testing.assert_close(loaded(frames=batch), model(frames=batch),
                                       rtol=1e-5, atol=1e-6)


def test_torch_reference_backend_does_not_trace():
    """The torch reference scan runs op by op outside the custom op and pads every segment to
    the longest (``int(lengths.max())``): data-dependent, so export needs a kernel backend."""
    init, inputs = EventMambaCls.example()
    model = EventMambaCls(**init, backend="torch").eval()
    with pytest.raises(ExportError, match=r"\(at kernels/selective_scan_torch.py:\d+: longest = "):
        export_program(model, inputs)


class _DataDependent(torch.nn.Module):
    """A forward whose Python control flow reads a value (cannot be traced)."""

    def forward(self, x):
        if int(x.argmax()) > 2:
            return x * 2
        return x


def test_model_with_data_dependent_forward_names_the_line():
    with pytest.raises(ExportError, match=r"torch.export cannot trace _DataDependent: .*"
                                          r"\(at tests/geossm/engine/test_export.py:\d+: if int\("
                                          r"x.argmax\(\)\) > 2:\); its forward has "
                                          r"data-dependent control flow"):
        export_program(_DataDependent(), {"x": torch.arange(5.0)})


def _saved_and_loaded(program, tmp_path):
    torch.export.save(program, str(tmp_path / "m.pt2"))
    return torch.export.load(str(tmp_path / "m.pt2")).module()


def test_segmentation_model_exports_and_matches_eager_on_other_point_counts(tmp_path):
    """Quantising, serializing, pooling and kNN run as custom ops (serialization.traceable,
    tasks/segmentation/traceable.py): the program takes any number of points and samples."""
    init, inputs = PointCloudMambaSeg.example()
    init.update(dims=(8, 16, 16), depths=(1, 1, 1), strides=(2, 2), dec_depths=(1, 1))
    torch.manual_seed(0)
    model = PointCloudMambaSeg(**init).eval()
    program = export_program(model, inputs)
    assert dynamic_dims(program) == {"coord": [0], "feat": [0], "cu_seqlens": [0],
                                     "category": [0]}
    targets = {n.target for n in program.graph.nodes if n.op == "call_function"}
    assert {torch.ops.geossm.grid_pooling.default, torch.ops.geossm.serialize_grid.default,
            torch.ops.geossm.selective_scan.default} <= targets
    loaded = _saved_and_loaded(program, tmp_path)
    g = torch.Generator().manual_seed(5)
    for lengths in ((64, 300), (17, 90, 5, 41)):  # traced on (150, 40, 97)
        n = sum(lengths)
        coord = torch.rand(n, 3, generator=g) * torch.tensor([2.0, 1.0, 0.5])
        other = {"coord": coord, "feat": torch.randn(n, 4, generator=g),
                 "cu_seqlens": cu_seqlens_from_lengths(lengths),
                 "category": torch.arange(len(lengths)) % 2}
        with torch.no_grad():
            want = model(**other)
            assert want.shape == (n, init["num_classes"])
            torch.testing.assert_close(loaded(**other), want, rtol=1e-5, atol=1e-6)


def _events(lengths, seed):
    g = torch.Generator().manual_seed(seed)
    n = sum(lengths)
    events = torch.stack([torch.randint(0, 8, (n,), generator=g),
                          torch.randint(0, 8, (n,), generator=g),
                          torch.randint(0, 200_000, (n,), generator=g),
                          torch.randint(0, 2, (n,), generator=g)], 1)
    return {"events": events, "cu_seqlens": cu_seqlens_from_lengths(lengths)}


def test_serialized_event_model_exports_and_matches_eager_on_other_event_counts(tmp_path):
    torch.manual_seed(0)
    model = EventMambaCls(num_classes=3, mode="serialized", dim=16, depth=3,
                          sensor_size=(8, 8, 2)).eval()
    program = export_program(model, _events((30, 50), 0))
    assert dynamic_dims(program) == {"events": [0], "cu_seqlens": [0]}
    targets = {n.target for n in program.graph.nodes if n.op == "call_function"}
    assert torch.ops.geossm.serialize_events.default in targets
    loaded = _saved_and_loaded(program, tmp_path)
    # B >= 2 (torch.export specialises sizes 0 and 1): one recording goes with an empty one
    for lengths, seed in (((70, 11, 40), 1), ((5, 0), 2), ((120, 1, 33, 60), 3)):
        other = _events(lengths, seed)
        with torch.no_grad():
            want = model(**other)
            assert want.shape == (len(lengths), 3)
            torch.testing.assert_close(loaded(**other), want, rtol=1e-5, atol=1e-6)
