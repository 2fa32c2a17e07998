"""``python -m geossm.tasks.segmentation OUT.npz``: writes a sample and says what it wrote."""

import json
import runpy
import sys

import numpy as np
import pytest


def test_python_m_prints_what_it_wrote(tmp_path, capsys, monkeypatch):
    out = tmp_path / "shape.npz"
    monkeypatch.setattr(sys, "argv", ["segmentation", str(out), "--split", "val", "--index", "1",
                                      "--points", "300"])
    with pytest.raises(SystemExit, match="0"):
        runpy.run_module("geossm.tasks.segmentation", run_name="__main__")
    line = json.loads(capsys.readouterr().out)
    with np.load(out) as z:
        assert line == {"output": str(out), "points": 300, "category": line["category"],
                        "split": "val", "index": 1}
        assert len(z["coord"]) == 300
        assert line["category"] == ("table", "lamp", "mug", "rocket")[int(z["category"])]
