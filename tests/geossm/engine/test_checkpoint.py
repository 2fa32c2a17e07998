import os
import pickle
import random
import re

import numpy as np
import pytest
import torch

from geossm.engine.checkpoint import (CheckpointError, get_rng_state, load_checkpoint,
                                      save_checkpoint, set_rng_state)


def test_roundtrip_with_weights_only(tmp_path):
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters())
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    path = save_checkpoint({"model": model.state_dict(), "optimizer": opt.state_dict(),
                            "epoch": 3, "rng": [get_rng_state()],
                            "best": {"metric": "miou", "value": 0.5, "epoch": 2}},
                           tmp_path / "ck" / "last.pt")
    raw = torch.load(path, weights_only=True)  # plain types only: loads without our helper
    assert raw["format"] == "geossm-checkpoint"
    ck = load_checkpoint(path)
    assert ck["epoch"] == 3 and ck["best"]["value"] == 0.5
    torch.testing.assert_close(ck["model"]["weight"], model.weight)
    assert list(tmp_path.joinpath("ck").iterdir()) == [path]  # no temporary file left


def test_atomic_replace_keeps_old_file_on_failure(tmp_path, monkeypatch):
    path = save_checkpoint({"epoch": 1, "model": {}}, tmp_path / "last.pt")

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint({"epoch": 2, "model": {}}, path)
    assert load_checkpoint(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_rng_state_roundtrip():
    state = get_rng_state()
    expected = (random.random(), np.random.rand(), torch.rand(1).item(), np.random.randn())
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    set_rng_state(state)
    assert (random.random(), np.random.rand(), torch.rand(1).item(), np.random.randn()) == expected


class _Evil:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_malicious_pickle_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    evil = _Evil()
    evil.marker = marker
    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        torch.save({"model": {}, "payload": evil}, f)
    with pytest.raises(CheckpointError, match="refusing to load checkpoint .*weights_only=True"):
        load_checkpoint(path)
    assert not marker.exists()
    plain = tmp_path / "evil.pkl"
    plain.write_bytes(pickle.dumps(evil))
    with pytest.raises(CheckpointError, match="refusing to load|cannot read"):
        load_checkpoint(plain)
    assert not marker.exists()


def test_missing_and_foreign_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "nope.pt")
    torch.save({"weight": torch.ones(2)}, tmp_path / "sd.pt")
    assert set(load_checkpoint(tmp_path / "sd.pt")["model"]) == {"weight"}  # bare state_dict
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match="expected a dict"):
        load_checkpoint(tmp_path / "list.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.pt"):
        load_checkpoint(tmp_path / "junk.pt")


CORRUPT = r"cannot read checkpoint .*{name}: not a valid checkpoint \(truncated or corrupt; "


def test_random_bytes_truncated_and_empty_files_are_corrupt_not_unsafe(tmp_path):
    good = save_checkpoint({"epoch": 1, "model": {"w": torch.ones(3)}}, tmp_path / "good.pt")
    files = {"random.pt": np.random.default_rng(0).bytes(100),
             "cut.pt": good.read_bytes()[:good.stat().st_size // 2],
             "empty.pt": b"",
             "text.pt": b"hello, this is not a checkpoint\n"}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(CheckpointError, match=CORRUPT.format(name=re.escape(name))) as info:
            load_checkpoint(tmp_path / name)
        assert "could run code" not in str(info.value)
    with pytest.raises(CheckpointError, match=r"empty\.pt: .*: the file is empty"):
        load_checkpoint(tmp_path / "empty.pt")
    # Random bytes that happen to start like a pickle opcode are still only corrupt.
    for seed in range(200):
        (tmp_path / "r.pt").write_bytes(np.random.default_rng(seed).bytes(100))
        with pytest.raises(CheckpointError, match=CORRUPT.format(name="r.pt")):
            load_checkpoint(tmp_path / "r.pt")


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_only_a_whole_pickle_with_forbidden_globals_is_refused_as_unsafe(tmp_path):
    evil = _Evil()
    evil.marker = tmp_path / "pwned"
    # Protocol 4/5: torch's weights-only unpickler stops at an opcode before the global; the
    # opcode scan still finds os.system (posix.system / nt.system) and names it.
    plain = tmp_path / "evil.pkl"
    plain.write_bytes(pickle.dumps({"model": evil}, protocol=4))
    with pytest.raises(CheckpointError, match=r"refusing to load checkpoint .*evil\.pkl: it holds "
                                              r"Python objects .*could run code.*; it names "
                                              r"(posix|nt)\.system"):
        load_checkpoint(plain)
    # A plain pickle of plain data is no checkpoint either, but nothing in it could run code.
    (tmp_path / "data.pkl").write_bytes(pickle.dumps({"model": {"a": 1}}, protocol=4))
    with pytest.raises(CheckpointError, match=CORRUPT.format(name=r"data\.pkl")):
        load_checkpoint(tmp_path / "data.pkl")
    # A torch.save archive naming a class: refused, with torch's words for the global.
    torch.save({"model": {}, "x": torch.nn.Linear(1, 1)}, tmp_path / "module.pt")
    with pytest.raises(CheckpointError, match=r"refusing to load checkpoint .*module\.pt: .*"
                                              r"torch\.nn\.modules\.linear\.Linear"):
        load_checkpoint(tmp_path / "module.pt")
    assert not evil.marker.exists()


def test_pickle_scan_resolves_memoized_module_names():
    """A protocol-4 pickle names a repeated module through the memo (BINGET): the scan counts
    every MEMOIZE, so the second global reads collections.Counter, not a shifted string."""
    import collections
    import io

    from geossm.engine.checkpoint import _pickle_globals
    data = pickle.dumps({"a": collections.OrderedDict(), "b": collections.Counter()}, protocol=4)
    assert _pickle_globals(io.BytesIO(data)) == ["collections.OrderedDict", "collections.Counter"]
