"""torch.export of geossm models through ``geossm.engine.export`` (the CLI is tested in
tests/geossm/test_cli.py)."""

import pytest
import torch

from geossm.engine.export import ExportError, dynamic_dims, export_program
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


def test_model_with_data_dependent_forward_names_the_line():
    init, inputs = PointCloudMambaSeg.example()
    model = PointCloudMambaSeg(**init).eval()
    with pytest.raises(ExportError, match=r"torch.export cannot trace PointCloudMambaSeg: .*"
                                          r"\(at tasks/segmentation/models.py:\d+: .*\); its "
                                          r"forward has data-dependent control flow"):
        export_program(model, inputs)
