"""Files from elsewhere are data, never code: checkpoints, configs, predict inputs and dataset
list files that would run code if unpickled / evaluated are refused from the command line with
one clear line, and the code does not run (a marker file it would create stays absent)."""

from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from geossm.cli import main
from tests.shared_data import shared_path
from toy_task import write_toy_config



class _Evil:
    """Unpickling this runs ``touch <marker>``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def one_error_line(err: str, command: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"geossm {command}: error: "), lines[0]
    return lines[0]


@pytest.fixture
def trained(tmp_path, capsys):
    """A toy config and a real checkpoint of it (1 epoch)."""
    cfg = write_toy_config(tmp_path / "toy.yaml", train={"epochs": 1})
    run = tmp_path / "run"
    code, _, err = run_cli(capsys, "train", cfg, f"output_dir={run}")
    assert code == 0, err
    return cfg, run / "last.pt"


def evil_checkpoint(tmp_path: Path, good: Path, marker: Path) -> Path:
    """A real checkpoint with one extra entry whose unpickling runs a command."""
    state = torch.load(good, weights_only=True)
    state["payload"] = _Evil(marker)
    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        torch.save(state, f)
    return path


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("command", ["eval", "predict"])
def test_cli_refuses_code_in_checkpoints(tmp_path, capsys, trained, command):
    cfg, good = trained
    marker = tmp_path / "pwned"
    scan = tmp_path / "scan.npy"
    np.save(scan, np.random.default_rng(0).uniform(-1, 1, (30, 3)).astype(np.float32))
    evil = evil_checkpoint(tmp_path, good, marker)
    plain = tmp_path / "evil.pkl"
    plain.write_bytes(pickle.dumps({"model": _Evil(marker)}))
    for path in (evil, plain):
        argv = [command, cfg, f"checkpoint={path}"] + ([f"input={scan}"] if command == "predict"
                                                       else [])
        code, out, err = run_cli(capsys, *argv)
        assert code == 2 and out == ""
        line = one_error_line(err, command)
        assert f"refusing to load checkpoint {path}" in line or f"cannot read checkpoint {path}" \
            in line, line
        assert not marker.exists(), "the pickle's code ran"
    # the good checkpoint still works through the same path
    argv = [command, cfg, f"checkpoint={good}"] + ([f"input={scan}"] if command == "predict"
                                                   else [])
    code, _, err = run_cli(capsys, *argv)
    assert code == 0, err


def test_cli_resume_refuses_code_in_last_pt(tmp_path, capsys, trained):
    cfg, good = trained
    marker = tmp_path / "pwned"
    run = good.parent
    shutil.copy(evil_checkpoint(tmp_path, good, marker), run / "last.pt")
    code, _, err = run_cli(capsys, "train", cfg, f"output_dir={run}", "resume=true",
                           "train.epochs=2")
    assert code == 2
    assert "refusing to load checkpoint" in one_error_line(err, "train")
    assert not marker.exists()


@pytest.mark.parametrize("suffix", [".npy", ".npz"])
def test_cli_predict_refuses_pickled_inputs(tmp_path, capsys, trained, suffix):
    """An object array in a predict input would unpickle; inputs load with allow_pickle=False."""
    cfg, good = trained
    marker = tmp_path / "pwned"
    payload = np.empty(1, dtype=object)
    payload[0] = _Evil(marker)
    scan = tmp_path / f"scan{suffix}"
    if suffix == ".npy":
        np.save(scan, payload, allow_pickle=True)
    else:
        np.savez(scan, coord=payload)
    code, _, err = run_cli(capsys, "predict", cfg, f"checkpoint={good}", f"input={scan}")
    assert code == 2
    assert "allow_pickle=False" in one_error_line(err, "predict")
    assert not marker.exists()


def test_cli_refuses_python_tags_in_configs(tmp_path, capsys):
    marker = tmp_path / "pwned"
    cfg = write_toy_config(tmp_path / "toy.yaml")
    evil = tmp_path / "evil.yaml"
    evil.write_text(cfg.read_text() + f"seed: !!python/object/apply:os.system ['touch {marker}']\n")
    code, _, err = run_cli(capsys, "train", evil, f"output_dir={tmp_path / 'r'}")
    assert code == 2
    assert "refused YAML tag" in one_error_line(err, "train")
    # a base file pulled in by _base_ is read as safely as the file named on the command line
    child = tmp_path / "child.yaml"
    child.write_text("_base_: evil.yaml\n")
    code, _, err = run_cli(capsys, "eval", child, "checkpoint=x.pt")
    assert code == 2 and "refused YAML tag" in one_error_line(err, "eval")
    # and so is an override
    code, _, err = run_cli(capsys, "train", cfg, f"seed=!!python/object/apply:os.system "
                           f"['touch {marker}']")
    assert code == 2 and "refused YAML tag" in one_error_line(err, "train")
    assert not marker.exists()
    assert not (tmp_path / "r").exists(), "a refused config must not start a run"


# --------------------------------------------------------------------- dataset list files

def _shapenet_root(tmp_path: Path) -> Path:
    root = tmp_path / "shapenet"
    (root / "02954340").mkdir(parents=True)
    (root / "train_test_split").mkdir()
    (root / "synsetoffset2category.txt").write_text("Cap\t02954340\n")
    rng = np.random.default_rng(0)
    table = np.concatenate([rng.uniform(-1, 1, (20, 6)), np.full((20, 1), 6)], 1)
    np.savetxt(root / "02954340" / "a.txt", table)
    return root


def test_shapenetpart_split_list_is_read_as_data(tmp_path):
    """Entries are names: an expression is not evaluated, and '..' cannot leave the root (only
    the last two components ``<synset>/<shape>`` of an entry are used)."""
    datasets = pytest.importorskip("geossm.tasks.segmentation.datasets",
                                   reason="segmentation task not installed")
    root = _shapenet_root(tmp_path)
    (tmp_path / "outside.txt").write_text("1 2 3 4 5 6 6\n")
    marker = tmp_path / "pwned"
    lst = root / "train_test_split" / "shuffled_train_file_list.json"
    lst.write_text(json.dumps(["shape_data/02954340/a",
                               f"__import__('os').system('touch {marker}')",
                               "shape_data/02954340/../../../outside",
                               "02954340/../outside"]))
    ds = datasets.ShapeNetPart(root=root, split="train", num_points=None)
    assert [p for p, _ in ds.items] == [root / "02954340" / "a.txt"]
    assert not marker.exists()
    lst.write_text(json.dumps(["shape_data/02954340/a", "../../02954340/missing"]))
    with pytest.raises(FileNotFoundError, match=r"ShapeNetPart shape: expected a file at "
                                                r".*shapenet/02954340/missing\.txt"):
        datasets.ShapeNetPart(root=root, split="train", num_points=None)
    lst.write_text(json.dumps(["a-name-without-synset"]))
    with pytest.raises(ValueError, match=r"expected entries '<synset>/<shape>', got "
                                         r"'a-name-without-synset'"):
        datasets.ShapeNetPart(root=root, split="train", num_points=None)
    lst.write_text(f"[__import__('os').system('touch {marker}')]")
    with pytest.raises(ValueError, match=r"expected a JSON list of shape paths"):
        datasets.ShapeNetPart(root=root, split="train", num_points=None)
    assert not marker.exists()


def test_modelnet40_list_is_read_as_data(tmp_path):
    datasets = pytest.importorskip("geossm.tasks.segmentation.datasets",
                                   reason="segmentation task not installed")
    marker = tmp_path / "pwned"
    root = tmp_path / "modelnet"
    root.mkdir()
    (root / "modelnet40_shape_names.txt").write_text("airplane\n")
    (root / "modelnet40_train.txt").write_text(
        f"__import__('os').system('touch {marker}')_0001\n")
    with pytest.raises(ValueError, match=r"has class '__import__\('os'\)"):
        datasets.ModelNet40(root=root, split="train")
    (root / "modelnet40_train.txt").write_text("airplane/../../../../etc/passwd_0001\n")
    with pytest.raises(ValueError, match=r"not listed in"):
        datasets.ModelNet40(root=root, split="train")
    assert not marker.exists()


def test_peptides_split_pickle_is_not_unpickled_blindly(tmp_path):
    """The LRGB split file is a pickle: only NumPy arrays may come out of it."""
    datasets = pytest.importorskip("geossm.tasks.graph.datasets",
                                   reason="graph task not installed")
    pytest.importorskip("rdkit", reason="RDKit not installed: Peptides-func graphs not built")
    source = shared_path("graphs", "peptides-functional")
    root = tmp_path / "peptides"
    shutil.copytree(source, root)
    real = datasets.PeptidesFunc(root=root, split="val", max_graphs=4,
                                 cache_dir=tmp_path / "cache")  # the official file still loads
    assert len(real) <= 4
    marker = tmp_path / "pwned"
    with open(root / datasets.PeptidesFunc.SPLITS_FILE, "wb") as fh:
        pickle.dump({"train": _Evil(marker), "val": [], "test": []}, fh)
    with pytest.raises(ValueError, match=r"splits_random_stratified_peptide.pickle: .*refusing "
                                         r"to unpickle (posix|os)\.system"):
        datasets.PeptidesFunc(root=root, split="train", max_graphs=4,
                              cache_dir=tmp_path / "cache")
    assert not marker.exists(), "unpickling the split file ran its code"
