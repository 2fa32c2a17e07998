import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from geossm.cli import main
from toy_task import write_toy_config

HERE = Path(__file__).resolve().parent


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def json_line(out):
    lines = [ln for ln in out.splitlines() if ln.startswith("{")]
    assert len(lines) == 1, out
    return json.loads(lines[0])


def test_train_eval_predict_viz(tmp_path, capsys):
    cfg = write_toy_config(tmp_path / "toy.yaml", eval={"test_split": "test"})
    run = tmp_path / "run"
    code, out, err = run_cli(capsys, "train", cfg, f"output_dir={run}", "train.epochs=1")
    assert code == 0, err
    summary = json_line(out)
    assert summary["run_dir"] == str(run)
    assert set(summary) == {"run_dir", "best", "last"} and "test_miou" in summary["best"]

    code, out, err = run_cli(capsys, "eval", cfg, f"checkpoint={run / 'best.pt'}")
    assert code == 0, err
    metrics = json_line(out)["metrics"]
    assert set(metrics) == {"val", "test"}
    assert metrics["val"]["miou"] == pytest.approx(summary["best"]["miou"])
    # a GPU run's config (its step replayed as a CUDA graph) evaluates on this CPU alike
    code, out, err = run_cli(capsys, "eval", cfg, f"checkpoint={run / 'best.pt'}",
                             "train.cuda_graph=true")
    assert code == 0, err
    assert json_line(out)["metrics"] == metrics

    rng = np.random.default_rng(1)
    coord = rng.uniform(-1, 1, (40, 3)).astype(np.float32)
    np.savez(tmp_path / "scan.npz", coord=coord, label=np.digitize(coord[:, 0], [-0.3, 0.3]))
    out_npz = tmp_path / "pred" / "scan_out.npz"
    code, out, err = run_cli(capsys, "predict", cfg, f"checkpoint={run / 'best.pt'}",
                             f"input={tmp_path / 'scan.npz'}", f"output={out_npz}")
    assert code == 0, err
    assert json_line(out)["outputs"] == [str(out_npz), str(out_npz.with_suffix(".ply"))]

    pytest.importorskip("open3d", reason="open3d not installed: viz rendering not tested here")
    png = tmp_path / "scan.png"
    code, out, err = run_cli(capsys, "viz", out_npz.with_suffix(".ply"), f"output={png}",
                             "width=160", "height=120")
    assert code == 0, err
    assert json_line(out)["png"] == str(png) and png.stat().st_size > 0


@pytest.mark.parametrize("argv, message", [
    (["train", "{cfg}", "train.lrr=1"], "unknown config key 'train.lrr'"),
    (["train", "{tmp}/missing.yaml"], "config '.*missing.yaml' not found"),
    (["train", "{cfg}", "data.root={tmp}/nodata", "output_dir={tmp}/r"],
     "ToyPoints: expected .npz files in .*nodata/train"),
    (["train", "{cfg}", "model.name=NoModel", "output_dir={tmp}/r"], "unknown model 'NoModel'"),
    (["train", "{cfg}", "train.epochs=two"], "'train.epochs' expects an integer"),
    (["eval", "{cfg}"], "eval needs checkpoint=PATH"),
    (["eval", "{cfg}", "checkpoint={tmp}/none.pt"], "checkpoint not found"),
    (["eval", "train.lr=1"], "a CONFIG .* is required"),
    (["predict", "{cfg}", "checkpoint={tmp}/none.pt"], "predict needs input=FILE"),
    (["viz", "{tmp}/none.ply"], "input file not found"),
    (["viz", "{cfg}", "colour=red"], "unknown option 'colour'"),
    (["configs", "{tmp}/none"], "configs folder not found"),
])
def test_user_errors_are_one_line(tmp_path, capsys, argv, message):
    cfg = write_toy_config(tmp_path / "toy.yaml")
    argv = [a.format(cfg=cfg, tmp=tmp_path) for a in argv]
    code, out, err = run_cli(capsys, *argv)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"geossm {argv[0]}: error: ")
    import re
    assert re.search(message, lines[0]), lines[0]


def test_configs_lists_descriptions(tmp_path, capsys):
    (tmp_path / "a.yaml").write_text("description: first config\n")
    (tmp_path / "b.yaml").write_text("# second config\nseed: 1\n")
    code, out, _ = run_cli(capsys, "configs", tmp_path)
    assert code == 0
    assert out.splitlines() == ["a  first config", "b  second config"]
    code, out, _ = run_cli(capsys, "configs")
    assert code == 0
    assert any(line.split()[0] == "default" for line in out.splitlines() if line.strip())


def test_default_config_from_cwd(tmp_path, capsys, monkeypatch):
    (tmp_path / "configs").mkdir()
    write_toy_config(tmp_path / "configs" / "default.yaml", train={"epochs": 1})
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(capsys, "train")
    assert code == 0, err
    run_dir = Path(json_line(out)["run_dir"])
    assert run_dir.parent == Path("runs") / "default" and (tmp_path / run_dir / "last.pt").is_file()


@pytest.mark.parametrize("module", ["geossm", "geossm.cli"])
def test_python_m_geossm_error_has_no_traceback(tmp_path, module):
    """``python -m geossm`` and ``python -m geossm.cli`` both run the command (the second used to
    exit 0 without doing anything)."""
    cfg = write_toy_config(tmp_path / "toy.yaml")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-m", module, "train", str(cfg), "trian.epochs=3"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        "geossm train: error: override 'trian.epochs=3': unknown config key 'trian.epochs'; "
        "did you mean 'train.epochs'? (use +trian.epochs=... to add a new key)")


def test_configs_prints_whole_first_sentences_and_marks_configs_without_data(tmp_path, capsys):
    (tmp_path / "long.yaml").write_text(
        "# Part segmentation of generated shapes, e.g. tables and lamps, on a\n"
        "# 2-core CPU (about 0.5 minutes). Second sentence.\n"
        "data: {name: SyntheticParts}\n")
    (tmp_path / "real.yaml").write_text("description: a real dataset\ndata: {name: ShapeNetPart}\n")
    code, out, _ = run_cli(capsys, "configs", tmp_path)
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == ("long  Part segmentation of generated shapes, e.g. tables and lamps, on a "
                        "2-core CPU (about 0.5 minutes).  (runs without data)")
    assert lines[1] == "real  a real dataset"
    assert lines[3].startswith("(runs without data): the data is generated")
    code, out, _ = run_cli(capsys, "configs")
    rows = {line.split()[0]: line for line in out.splitlines() if line.strip()}
    assert rows["default"].endswith("on a 2-core CPU).  (runs without data)")  # not cut
    assert rows["graph/synthetic_gmn"].endswith("(runs without data)")
    assert not rows["graph/cora_gmn"].endswith("(runs without data)")


def test_help_has_examples_and_predict_help_documents_output_once(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "examples:\n  geossm train " in out and "geossm predict default checkpoint=" in out
    with pytest.raises(SystemExit):
        main(["predict", "--help"])
    out = capsys.readouterr().out
    usage = "usage: geossm predict CONFIG checkpoint=PATH input=FILE [output=FILE] [key=value ...]"
    assert out.startswith(usage + "\n") and out.count("CONFIG checkpoint=PATH input=FILE") == 1
    assert "output=FILE  the prediction's .npz" in out


def test_viz_errors_say_viz_once(tmp_path, capsys):
    code, _, err = run_cli(capsys, "viz", tmp_path / "none.ply")
    assert code == 2
    assert err == f"geossm viz: error: input file not found: {tmp_path / 'none.ply'}\n"
    code, _, err = run_cli(capsys, "viz", tmp_path / "none.ply", "width=big")
    assert err == "geossm viz: error: width expects a number, got 'big'\n"


# ----------------------------------------------------------------------------- export

def _event_checkpoint(tmp_path):
    """A small windowed N-MNIST EventMambaCls checkpoint (random weights; no data needed) and
    an input file of ready frames ``(6, 34, 34)``."""
    import torch

    from geossm.config import find_config, load_config, to_container
    from geossm.engine import save_checkpoint
    from geossm.registry import TASKS
    cfg = load_config(find_config("events/nmnist_mamba"),
                      ["model.dim=16", "model.depth=1", "model.stem_channels=8", "device=cpu"])
    torch.manual_seed(0)
    model = TASKS.get(str(cfg.task))(cfg).build_model()
    for module in model.modules():  # non-trivial BatchNorm statistics, so eval mode matters
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    path = save_checkpoint({"model": model.state_dict(), "config": to_container(cfg)},
                           tmp_path / "events.pt")
    frames = np.random.default_rng(0).poisson(0.3, (6, 34, 34)).astype(np.float32)
    np.savez(tmp_path / "frames.npz", frames=frames)
    return path, tmp_path / "frames.npz", model.eval(), frames


def test_export_event_model_torch_export_matches_eager(tmp_path, capsys):
    import torch
    ckpt, frames_file, model, frames = _event_checkpoint(tmp_path)
    code, out, err = run_cli(capsys, "export", f"checkpoint={ckpt}", "format=torch-export",
                             f"input={frames_file}")
    assert code == 0, err
    result = json_line(out)
    assert result["output"] == str(tmp_path / "events.pt2") and result["format"] == "torch-export"
    assert result["dynamic"] == {"frames": [0]}  # the batch dimension
    assert result["max_abs_diff"] < 1e-5
    program = torch.export.load(result["output"])
    targets = {n.target for n in program.graph.nodes if n.op == "call_function"}
    assert torch.ops.geossm.selective_scan.default in targets  # the custom op, one node
    # A batch size other than the traced one (2), against eager.
    batch = torch.from_numpy(np.stack([frames, frames * 0.5, frames + 1.0]))
    with torch.no_grad():
        torch.testing.assert_close(program.module()(frames=batch), model(frames=batch),
                                   rtol=1e-5, atol=1e-5)


def test_export_safetensors_holds_the_state_dict(tmp_path, capsys):
    pytest.importorskip("safetensors", reason="safetensors not installed (extra: export)")
    from safetensors import safe_open
    ckpt, _, model, _ = _event_checkpoint(tmp_path)
    out = tmp_path / "weights.safetensors"
    code, stdout, err = run_cli(capsys, "export", f"checkpoint={ckpt}", "format=safetensors",
                                f"output={out}")
    assert code == 0, err
    assert json_line(stdout) == {"output": str(out), "format": "safetensors"}
    with safe_open(str(out), framework="pt") as f:
        assert set(f.keys()) == set(model.state_dict())
        for key, value in model.state_dict().items():
            assert (f.get_tensor(key) == value).all(), key
        assert json.loads(f.metadata()["geossm_config"])["model"]["name"] == "EventMambaCls"


def test_export_segmentation_model_torch_export_matches_eager(tmp_path, capsys):
    """The default PointCloudMambaSeg (serializes, pools and runs kNN inside its forward,
    through custom ops while tracing): the program takes clouds of other sizes."""
    import torch

    from geossm.config import find_config, load_config, to_container
    from geossm.engine import save_checkpoint
    from geossm.packed import cu_seqlens_from_lengths
    from geossm.registry import TASKS
    cfg = load_config(find_config("default.yaml"), ["data.num_samples=2"])
    torch.manual_seed(0)
    model = TASKS.get(str(cfg.task))(cfg).build_model().eval()
    ckpt = save_checkpoint({"model": model.state_dict(), "config": to_container(cfg)},
                           tmp_path / "seg.pt")
    code, out, err = run_cli(capsys, "export", f"checkpoint={ckpt}", "format=torch-export")
    assert code == 0, err
    result = json_line(out)
    assert result["output"] == str(tmp_path / "seg.pt2") and result["max_abs_diff"] < 1e-5
    assert result["dynamic"]["coord"] == [0] and result["dynamic"]["cu_seqlens"] == [0]
    program = torch.export.load(result["output"]).module()
    g = torch.Generator().manual_seed(1)
    lengths = (333, 120, 57)
    coord = torch.rand(sum(lengths), 3, generator=g) * 2 - 1
    feat = torch.cat([coord, torch.rand(sum(lengths), model.encoder.in_channels - 3,
                                        generator=g)], 1)
    inputs = {"coord": coord, "feat": feat, "cu_seqlens": cu_seqlens_from_lengths(lengths),
              "category": torch.tensor([3, 0, 2])}  # the default model has 4 categories
    with torch.no_grad():
        torch.testing.assert_close(program(**inputs), model(**inputs), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("argv, message", [
    (["export", "format=safetensors"], "export needs checkpoint="),
    (["export", "checkpoint={tmp}/none.pt", "format=onnx"], "format: expected one of"),
    (["export", "checkpoint={tmp}/none.pt", "format=safetensors"], "checkpoint not found"),
    (["export", "checkpoint={tmp}/x.pt", "colour=red"], "unknown option 'colour'"),
])
def test_export_errors_are_one_line(tmp_path, capsys, argv, message):
    import re
    argv = [a.format(tmp=tmp_path) for a in argv]
    code, out, err = run_cli(capsys, *argv)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("geossm export: error: ")
    assert re.search(message, lines[0]), lines[0]
