"""``geossm.load`` / ``geossm.Predictor``: a checkpoint alone rebuilds the model and predicts in
memory, the same as ``geossm predict`` (which runs the same ``Predictor``) on files and folders."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

import geossm
from geossm.cli import main
from geossm.config import find_config, load_config, to_container
from geossm.engine.checkpoint import save_checkpoint
from geossm.engine.predictor import Predictor
from toy_task import write_toy_config


def _json_line(out: str) -> dict:
    lines = [ln for ln in out.splitlines() if ln.startswith("{")]
    assert len(lines) == 1, out
    return json.loads(lines[0])


@pytest.fixture(scope="module")
def toy_checkpoint(tmp_path_factory):
    """``best.pt`` of the toy task after one epoch (its config stored inside)."""
    tmp = tmp_path_factory.mktemp("toy")
    cfg = write_toy_config(tmp / "toy.yaml")
    assert main(["train", str(cfg), f"output_dir={tmp / 'run'}", "train.epochs=1"]) == 0
    return tmp / "run" / "best.pt"


def _scan(seed: int, n: int = 30) -> dict[str, np.ndarray]:
    coord = np.random.default_rng(seed).uniform(-1, 1, (n, 3)).astype(np.float32)
    return {"coord": coord, "label": np.digitize(coord[:, 0], [-0.3, 0.3])}


def test_load_rebuilds_the_model_from_the_checkpoint_alone(toy_checkpoint):
    model, cfg = geossm.load(toy_checkpoint, device="cpu")
    assert cfg.task == "ToySegTask" and type(model).__name__ == "ToyPointNet"
    assert not model.training and next(model.parameters()).device.type == "cpu"
    stored = torch.load(toy_checkpoint, weights_only=True)["model"]
    for key, value in model.state_dict().items():
        assert torch.equal(value, stored[key]), key
    _, changed = geossm.load(toy_checkpoint, device="cpu", overrides=["eval.batch_size=3"])
    assert changed.eval.batch_size == 3


def test_a_bare_state_dict_loads_with_the_config_it_was_trained_with(toy_checkpoint, tmp_path):
    """A checkpoint without its run config (a bare state dict) loads through ``config=``, in
    ``geossm.load`` and ``geossm.predictor``; without it the error says how."""
    bare = tmp_path / "bare.pt"
    torch.save({"model": torch.load(toy_checkpoint, weights_only=True)["model"]}, bare)
    config = write_toy_config(tmp_path / "toy.yaml")
    with pytest.raises(ValueError, match=r"holds no run config.*in Python config=PATH or name"):
        geossm.load(bare, device="cpu")
    model, cfg = geossm.load(bare, device="cpu", config=config)
    assert cfg.task == "ToySegTask" and type(model).__name__ == "ToyPointNet"
    scan = _scan(3)
    expected = geossm.predictor(toy_checkpoint, device="cpu")(**scan)
    got = geossm.predictor(bare, device="cpu", config=config)(**scan)
    np.testing.assert_array_equal(got["pred"], expected["pred"])


def test_tensor_inputs_predict_as_their_arrays_do_bfloat16_included(toy_checkpoint):
    predictor = geossm.predictor(toy_checkpoint, device="cpu")
    coord = torch.from_numpy(_scan(4)["coord"]).bfloat16()
    expected = predictor(coord=coord.float().numpy())
    got = predictor(coord=coord)
    np.testing.assert_array_equal(got["pred"], expected["pred"])


def test_python_predictor_equals_cli_predict_without_config(toy_checkpoint, tmp_path, capsys):
    scan = _scan(1)
    np.savez(tmp_path / "scan.npz", **scan)
    code = main(["predict", f"checkpoint={toy_checkpoint}", f"input={tmp_path / 'scan.npz'}"])
    out, err = capsys.readouterr()
    assert code == 0, err
    written = _json_line(out)["outputs"]
    assert written == [str(tmp_path / "scan.pred.npz"), str(tmp_path / "scan.pred.ply")]
    predictor = geossm.predictor(toy_checkpoint, device="cpu")
    assert isinstance(predictor, geossm.Predictor)
    result = predictor(coord=scan["coord"], label=scan["label"])
    assert set(result) == {"logits", "pred", "probs"} and result["pred"].shape == (30,)
    np.testing.assert_allclose(result["probs"].sum(1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(result["probs"].argmax(1), result["pred"])
    with np.load(written[0]) as z:
        np.testing.assert_array_equal(z["pred"], result["pred"])
        np.testing.assert_allclose(z["logits"], result["logits"], rtol=0, atol=0)
    assert predictor.cfg.task == "ToySegTask"
    np.testing.assert_array_equal(predictor(scan)["pred"], result["pred"])  # a mapping too


def test_folder_predict_writes_every_supported_file_without_a_progress_bar_in_logs(
        toy_checkpoint, tmp_path, capsys):
    folder = tmp_path / "scans"
    folder.mkdir()
    for i in range(3):
        np.savez(folder / f"s{i}.npz", **_scan(i))
    (folder / "notes.txt").write_text("not an input")
    np.savez(folder / "old.pred.npz", pred=np.zeros(3))  # an earlier prediction: skipped
    out_dir = tmp_path / "preds"
    code = main(["predict", f"checkpoint={toy_checkpoint}", f"input={folder}",
                 f"output={out_dir}"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "predict:" not in err and "%|" not in err  # tqdm stays off when not on a terminal
    written = _json_line(out)["outputs"]
    assert written == [str(out_dir / f"s{i}.pred.{ext}") for i in range(3) for ext in ("npz", "ply")]
    predictor = Predictor.from_checkpoint(toy_checkpoint, device="cpu")
    with np.load(out_dir / "s2.pred.npz") as z:
        np.testing.assert_array_equal(z["pred"], predictor(_scan(2))["pred"])
    # beside the inputs when output= is not given
    code = main(["predict", f"checkpoint={toy_checkpoint}", f"input={folder}"])
    assert code == 0 and (folder / "s0.pred.npz").is_file()
    assert _json_line(capsys.readouterr().out)["outputs"][0] == str(folder / "s0.pred.npz")


def test_predict_errors_are_one_line(toy_checkpoint, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    bare = tmp_path / "bare.pt"
    torch.save(torch.load(toy_checkpoint, weights_only=True)["model"], bare)
    cases = [
        ([f"checkpoint={toy_checkpoint}", f"input={tmp_path / 'empty'}"],
         rf"^input folder {tmp_path / 'empty'}: expected files ending in \.npy, \.npz, \.ply, "
         "found none$"),
        ([f"checkpoint={bare}", f"input={tmp_path / 'empty'}"],
         rf"^checkpoint {bare}: holds no run config \(a bare state dict\?\); give the CONFIG"),
        ([f"input={tmp_path / 'empty'}"], r"^predict needs checkpoint=PATH$"),
        ([f"checkpoint={toy_checkpoint}", f"input={tmp_path / 'none.npz'}"],
         r"^input file not found: "),
    ]
    for argv, message in cases:
        assert main(["predict", *argv]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("geossm predict: error: ") and "\n" not in err, err
        assert __import__("re").search(message, err.removeprefix("geossm predict: error: ")), err
    with pytest.raises(ValueError, match=r"holds no run config"):
        geossm.load(bare)


def test_import_geossm_stays_light():
    """``import geossm`` imports neither torch nor the predictor; ``geossm.load`` does."""
    code = ("import sys, geossm; assert 'torch' not in sys.modules, 'torch'; "
            "assert callable(geossm.load) and callable(geossm.predictor); "
            "assert 'torch' not in sys.modules; geossm.Predictor; "
            "assert 'geossm.engine.predictor' in sys.modules")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr


def _saved(tmp_path, name: str, overrides=(), **state) -> tuple:
    """A checkpoint of a freshly built model of config ``name`` (no training), and its task."""
    from geossm.registry import TASKS
    cfg = load_config(find_config(name), list(overrides))
    task = TASKS.get(str(cfg.task))(cfg)
    torch.manual_seed(0)
    model = task.build_model().eval()
    path = save_checkpoint({"model": model.state_dict(), "config": to_container(cfg), **state},
                           tmp_path / f"{name.replace('/', '_')}.pt")
    return path, model, task


def test_segmentation_predictor_on_arrays_matches_the_task_steps(tmp_path):
    """The embedded default (part segmentation, categories): ``predictor(coord=, category=)``
    equals preprocess -> collate -> predict_step -> postprocess done by hand."""
    path, model, task = _saved(tmp_path, "default.yaml")
    rng = np.random.default_rng(0)
    sample = {"coord": rng.uniform(-1, 1, (200, 3)).astype(np.float32), "category": 1}
    result = Predictor.from_checkpoint(path, device="cpu")(**sample)
    batch = task.collate([task.preprocess(sample)])
    with torch.no_grad():
        expected = task.postprocess(task.predict_step(model, batch), batch)
    assert result["pred"].shape == (len(batch["coord"]),)
    np.testing.assert_array_equal(result["pred"], expected["pred"])
    # probabilities over the parts of the shape's category only, and pred is their arg-max
    parts = task.dataset_class().CATEGORY_PARTS[1]
    others = np.setdiff1d(np.arange(result["probs"].shape[1]), parts)
    assert (result["probs"][:, others] == 0).all()
    np.testing.assert_allclose(result["probs"].sum(1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(result["probs"].argmax(1), result["pred"])
    with pytest.raises(ValueError, match=r"^sample: category: expected an integer in \[0, 4\)"):
        Predictor.from_checkpoint(path, device="cpu")(coord=sample["coord"], category=9)


def test_detection_tracking_and_event_predictors_take_arrays(tmp_path):
    """Detection takes ``points=``, tracking ``frames=`` and ``boxes=``, event recognition a
    structured recording ``events=``; each equals the task's own steps on the same sample."""
    cases = [("detection/synthetic_lion", lambda rng: {
        "points": np.c_[rng.uniform([0, -20, -2], [40, 20, 0], (300, 3)),
                        rng.uniform(0, 1, (300, 1))].astype(np.float32)}),
             ("events/tracking_synthetic", lambda rng: {
                 "frames": rng.random((4, 2, 96, 96)).astype(np.float32),
                 "boxes": np.array([[30.0, 30.0, 16.0, 16.0]])}),
             ("events/nmnist_mamba", lambda rng: {"events": _recording(rng)})]
    small = {"events/tracking_synthetic": ["model.dim=16", "model.depth=1"]}
    rng = np.random.default_rng(0)
    for name, make in cases:
        path, model, task = _saved(tmp_path, name, small.get(name, ()))
        sample = make(rng)
        result = Predictor.from_checkpoint(path, device="cpu")(**sample)
        batch = task.collate([task.preprocess(sample)])
        with torch.no_grad():
            expected = task.postprocess(task.predict_step(model, batch), batch)
        assert set(result) == set(expected), name
        for key in expected:
            np.testing.assert_array_equal(result[key], expected[key], err_msg=f"{name} {key}")
    assert result["pred"].shape == (1,) and result["logits"].shape == (1, 10)
    np.testing.assert_allclose(result["probs"].sum(), 1.0, rtol=1e-5)


def _recording(rng: np.random.Generator, n: int = 500) -> np.ndarray:
    """A random N-MNIST-sized recording (34 x 34 sensor) in EVENT_DTYPE."""
    from geossm.tasks.events.io import EVENT_DTYPE
    events = np.zeros(n, EVENT_DTYPE)
    events["x"], events["y"] = rng.integers(0, 34, n), rng.integers(0, 34, n)
    events["t"], events["p"] = np.sort(rng.integers(0, 100_000, n)), rng.integers(0, 2, n)
    return events


def test_config_less_predict_ignores_the_training_machines_device(toy_checkpoint, tmp_path,
                                                                   capsys):
    """A checkpoint trained with ``device: cuda:7`` predicts here (``auto``) unless CONFIG or
    ``device=`` asks for a device."""
    state = torch.load(toy_checkpoint, weights_only=True)
    state["config"]["device"] = "cuda:7"
    moved = save_checkpoint({k: v for k, v in state.items() if k not in ("format", "version")},
                            tmp_path / "gpu.pt")
    np.savez(tmp_path / "scan.npz", **_scan(3))
    assert main(["predict", f"checkpoint={moved}", f"input={tmp_path / 'scan.npz'}"]) == 0
    assert (tmp_path / "scan.pred.npz").is_file()
    capsys.readouterr()
    if not torch.cuda.is_available() or torch.cuda.device_count() < 8:
        assert main(["predict", f"checkpoint={moved}", f"input={tmp_path / 'scan.npz'}",
                     "device=cuda:7"]) == 2
        assert "device" in capsys.readouterr().err
