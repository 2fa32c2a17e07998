import json

import pytest

from tests.benchmarks.conftest import load_benchmark

family_select = load_benchmark("family_select")


def _write(path, rows):
    """graph_sweep.py-style output: per-run rows, then a summary and a selection line."""
    lines = [json.dumps(r) for r in rows]
    lines += [json.dumps({"variant": "base", "n": 1, "summary": {}}),
              json.dumps({"selected": "base", "by": "best.acc", "value": 0.5})]
    path.write_text("\n".join(lines) + "\n")
    return path


def _row(variant, split, val, test, metric="acc", seed=0):
    return {"variant": variant, "split": split, "seed": seed,
            "best": {"epoch": 5, metric: val, f"test_{metric}": test}, "last": {}}


def _dataset(tmp_path, name, offsets, noise, metric="acc", test_of=None):
    """Ten splits: base at 0.40 + noise[split], every variant at base + its offset(s)."""
    rows = []
    for split in range(10):
        base = 0.40 + noise[split]
        rows.append(_row("base", split, base, 0.5, metric))
        for variant, off in offsets.items():
            off = off[split] if isinstance(off, list) else off
            test = test_of(variant, split) if test_of else 0.5
            rows.append(_row(variant, split, base + off, test, metric))
    return _write(tmp_path / f"{name}.jsonl", rows)


NOISE = [0.01 * ((7 * s) % 5 - 2) for s in range(10)]
ALTERNATING = [0.02 if s % 2 else -0.019 for s in range(10)]


def test_a_paired_gain_on_every_dataset_is_chosen_and_noise_is_not(tmp_path, capsys):
    a = _dataset(tmp_path, "A", {"good": 0.01, "noisy": ALTERNATING}, NOISE)
    b = _dataset(tmp_path, "B", {"good": 0.005, "noisy": ALTERNATING}, NOISE[::-1])
    assert family_select.main([f"A={a}", f"B={b}"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    by_name = {item["variant"]: item for item in lines[:-1]}
    # The splits' own noise cancels in the pairs: 'good' gains exactly, with no spread.
    assert by_name["good"]["gain"] == pytest.approx(0.0075)
    assert by_name["good"]["se"] == pytest.approx(0.0, abs=1e-12)
    assert by_name["good"]["datasets"]["A"]["val_diff"] == pytest.approx(0.01)
    assert by_name["noisy"]["gain"] == pytest.approx(0.0005)
    assert by_name["noisy"]["se"] > by_name["noisy"]["gain"]
    assert lines[-1]["selected"] == "good"


def test_a_gain_on_one_dataset_and_a_loss_on_the_other_keeps_the_reference(tmp_path, capsys):
    a = _dataset(tmp_path, "A", {"mixed": 0.02}, NOISE)
    b = _dataset(tmp_path, "B", {"mixed": -0.03}, NOISE)
    family_select.main([f"A={a}", f"B={b}"])
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["selected"] == "base"


def test_test_metrics_never_change_the_choice(tmp_path, capsys):
    """The same validation rows with opposite test metrics choose the same variant."""
    picks = []
    for sign in (1, -1):
        test = lambda variant, split: 0.5 + sign * (0.3 if variant == "worse_val" else -0.3)
        a = _dataset(tmp_path, f"A{sign}", {"better_val": 0.01, "worse_val": -0.01}, NOISE,
                     test_of=test)
        family_select.main([f"A={a}"])
        picks.append(json.loads(capsys.readouterr().out.splitlines()[-1])["selected"])
    assert picks == ["better_val", "better_val"]


def test_only_the_select_on_datasets_choose(tmp_path, capsys):
    """A dataset outside --select-on is reported but does not vote (its ROC-AUC is found)."""
    a = _dataset(tmp_path, "A", {"v": 0.01}, NOISE)
    tol = _dataset(tmp_path, "T", {"v": -0.05}, NOISE, metric="roc_auc")
    family_select.main([f"A={a}", f"T={tol}", "--select-on", "A"])
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    v = next(item for item in lines if item.get("variant") == "v")
    assert v["datasets"]["T"]["metric"] == "best.roc_auc"
    assert v["datasets"]["T"]["val_diff"] == pytest.approx(-0.05)
    assert lines[-1]["selected"] == "v"
    t_only = _dataset(tmp_path, "T2", {"only_on_t": 0.01}, NOISE)  # no pairs on A: null
    family_select.main([f"A={a}", f"T={t_only}", "--select-on", "A"])
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    only = next(item for item in rows if item.get("variant") == "only_on_t")
    assert only["gain"] is None and only["keys"] == 0
    assert rows[-1]["selected"] == "v"
    family_select.main([f"A={a}", f"T={tol}"])  # both vote: the loss on T outweighs
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["selected"] == "base"


def test_bad_arguments_are_reported(tmp_path):
    a = _dataset(tmp_path, "A", {"v": 0.01}, NOISE)
    with pytest.raises(SystemExit):
        family_select.main([str(a)])
    with pytest.raises(SystemExit):
        family_select.main([f"A={a}", "--select-on", "B"])
    with pytest.raises(SystemExit):  # the sweep's config variant has another name
        family_select.main([f"A={a}", "--reference", "hops_att"])


def test_a_gain_inside_its_standard_error_keeps_the_reference(tmp_path, capsys):
    a = _dataset(tmp_path, "A", {"noisy": ALTERNATING}, NOISE)
    family_select.main([f"A={a}"])
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["selected"] == "base"
    family_select.main([f"A={a}", "--min-se", "0"])  # any positive gain
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["selected"] == "noisy"


def test_a_lower_mae_is_the_gain(tmp_path, capsys):
    """MAE (Peptides-struct): the variant whose validation MAE is lower on every split wins,
    and its gain is reported positive."""
    a = _dataset(tmp_path, "A", {"lower": -0.01, "higher": 0.01}, NOISE, metric="mae")
    family_select.main([f"A={a}", "--metric", "best.mae"])
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    by_name = {item["variant"]: item for item in lines[:-1]}
    assert by_name["lower"]["gain"] == pytest.approx(0.01)
    assert by_name["higher"]["gain"] == pytest.approx(-0.01)
    assert lines[-1]["selected"] == "lower"
