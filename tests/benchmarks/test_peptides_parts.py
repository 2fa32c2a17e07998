import pytest

from tests.benchmarks.conftest import load_benchmark

parts = load_benchmark("peptides_parts")


def _log(path, epoch_times, tests=()):
    """A trainer log: epochs starting at 10:00:00, epoch k lasting epoch_times[k-1] s."""
    lines, t = [], 36000
    for k, dt in enumerate(epoch_times, 1):
        t += dt
        hms = f"{t // 3600:02d}:{t // 60 % 60:02d}:{t % 60:02d}"
        lines += [f"{hms} INFO epoch {k} train: loss=0.3  lr=0.001  time_s={dt - 1}.5",
                  f"{hms} INFO epoch {k} val: loss=0.2  ap=0.{50 + k}"]
    lines += [f"10:59:00 INFO epoch {e} test: weights={w}  loss=0.2  ap={ap}"
              for e, w, ap in tests]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_fit_counts_the_finished_epochs_and_what_fits_at_the_last_pace(tmp_path):
    log = _log(tmp_path / "run.log", [60, 10, 10, 20])  # the last epoch took 20 s
    # 4 done + (400 s - 35 s start-up) / (20 s * 1.08) = 4 + 16
    assert parts.fit_epochs(str(log), 400) == 20
    assert parts.fit_epochs(str(log), 10) == 5  # at least one more epoch
    with pytest.raises(SystemExit, match="fewer than 3 epochs"):
        parts.fit_epochs(str(_log(tmp_path / "short.log", [60, 10])), 400)


def test_report_names_the_best_validation_epoch_and_the_final_tests(tmp_path):
    log = _log(tmp_path / "run.log", [30, 10, 12], tests=[(3, "last", 0.61), (3, "best", 0.62)])
    line = parts.report(str(log))
    assert "epochs=3 median_epoch_s=11.5 epoch_wall_s=11.0 best_val=(3, 0.53)" in line
    assert "test={'last': '0.61', 'best': '0.62'}" in line


def test_epoch_wall_time_leaves_out_the_first_epoch_and_a_resume():
    log = "\n".join(f"{hms} INFO epoch {k} train: time_s=1" for hms, k in [
        ("23:59:50", 1), ("23:59:55", 2), ("00:00:01", 3),  # across midnight
        ("00:05:00", 3), ("00:05:05", 4), ("00:05:09", 5)])  # epoch 3 again after a resume
    # Gaps 5 (epoch 2), 305 (the resumed epoch 3's stamp counts: left out), 5, 4.
    assert parts.epoch_wall_seconds(log) == pytest.approx((5 + 5 + 4) / 3, abs=1e-3)
    assert parts.epoch_wall_seconds("00:00:01 INFO epoch 1 train: time_s=1") is None


def test_report_of_a_peptides_struct_run_takes_the_lowest_validation_mae(tmp_path):
    log = tmp_path / "struct.log"
    log.write_text("\n".join([
        "10:00:00 INFO epoch 1 train: loss=0.5  time_s=10",
        "10:00:10 INFO epoch 1 val: loss=0.31  mae=0.31",
        "10:00:20 INFO epoch 2 train: loss=0.4  time_s=10",
        "10:00:30 INFO epoch 2 val: loss=0.26  mae=0.26",
        "10:00:40 INFO epoch 3 train: loss=0.3  time_s=10",
        "10:00:50 INFO epoch 3 val: loss=0.28  mae=0.28",
        "10:59:00 INFO epoch 2 test: weights=best  loss=0.25  mae=0.25"]) + "\n")
    line = parts.report(str(log))
    assert "epochs=3 " in line and "best_val=(2, 0.26)" in line
    assert "test={'best': '0.25'}" in line
