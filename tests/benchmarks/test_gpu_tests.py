"""``benchmarks/gpu_tests.sh``: one pytest process per file, a line per file, totals, exit code.

Run here on two tiny test files the test writes (one passing, one failing) instead of the
CUDA suite, so the check takes seconds on the CPU."""

import os
import subprocess
import sys

from .conftest import BENCHMARKS

SCRIPT = BENCHMARKS / "gpu_tests.sh"


def _run(tmp_path, files: list, cap: int = 120,
         retry_cap: int | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, FILES=" ".join(str(f) for f in files), CAP=str(cap),
               LOGS=str(tmp_path / "logs"), PY=sys.executable)
    env.pop("RETRY_CAP", None)
    if retry_cap is not None:
        env["RETRY_CAP"] = str(retry_cap)
    return subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, env=env,
                          cwd=BENCHMARKS.parent, timeout=300)


def _write(path, body: str):
    path.write_text(body)
    return path


def test_every_file_gets_its_line_and_a_failure_fails_the_run(tmp_path):
    good = _write(tmp_path / "test_good.py", "def test_a():\n    pass\n\n"
                                            "def test_b():\n    pass\n")
    bad = _write(tmp_path / "test_bad.py", "def test_c():\n    assert 1 == 2\n")
    run = _run(tmp_path, [good, bad])
    assert run.returncode == 1, run.stdout + run.stderr
    lines = run.stdout.splitlines()
    assert "2 passed" in next(line for line in lines if "test_good" in line)
    assert "1 failed" in next(line for line in lines if "test_bad" in line)
    assert lines[-1].startswith("total: 2 passed, 1 failed, 0 skipped, 0 errors")
    assert (tmp_path / "logs").is_dir()


def test_a_passing_suite_exits_zero_and_a_missing_file_is_refused(tmp_path):
    good = _write(tmp_path / "test_good.py", "import pytest\n\ndef test_a():\n    pass\n\n"
                                            "def test_b():\n    pytest.skip('no GPU here')\n")
    run = _run(tmp_path, [good])
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.splitlines()[-1].startswith("total: 1 passed, 0 failed, 1 skipped")
    missing = _run(tmp_path, [tmp_path / "test_missing.py"])
    assert missing.returncode == 2 and "missing test file" in missing.stderr


def test_a_file_past_its_cap_is_reported_and_fails_the_run(tmp_path):
    """A lone file has nothing beside it to blame: no second run."""
    slow = _write(tmp_path / "test_slow.py", "import time\n\ndef test_slow():\n"
                                            "    time.sleep(30)\n")
    run = _run(tmp_path, [slow], cap=3)
    assert run.returncode == 1
    assert "TIMED OUT after 3 s" in run.stdout
    assert "alone (" not in run.stdout and "run again alone" not in run.stdout


def test_a_file_past_its_cap_beside_the_others_is_run_again_alone(tmp_path):
    """The first run of the file sleeps past the cap (as a kernel file whose compilations share
    the cores with the others' can), the second sleeps past the cap too but not past RETRY_CAP,
    which caps it: the run passes, and the line says both. Caps of several seconds: pytest itself
    takes seconds to start on a loaded 2-core machine."""
    marker = tmp_path / "ran_once"
    flaky = _write(tmp_path / "test_flaky.py",
                   "import pathlib, time\n\ndef test_flaky():\n"
                   f"    marker = pathlib.Path({str(marker)!r})\n"
                   "    if not marker.exists():\n"
                   "        marker.touch()\n"
                   "        time.sleep(60)\n"
                   "    else:\n"
                   "        time.sleep(14)\n")
    good = _write(tmp_path / "test_good.py", "def test_a():\n    pass\n")
    run = _run(tmp_path, [flaky, good], cap=10, retry_cap=60)
    assert run.returncode == 0, run.stdout + run.stderr
    line = next(line for line in run.stdout.splitlines() if "test_flaky" in line
                and "alone (" in line)
    assert "timed out after 10 s beside the others" in line and "1 passed" in line
    assert run.stdout.splitlines()[-1].startswith("total: 2 passed, 0 failed")


def test_a_file_past_its_cap_alone_too_fails_the_run_and_retry_cap_0_skips_it(tmp_path):
    slow = _write(tmp_path / "test_slow.py", "import time\n\ndef test_slow():\n"
                                            "    time.sleep(60)\n")
    good = _write(tmp_path / "test_good.py", "def test_a():\n    pass\n")
    run = _run(tmp_path, [slow, good], cap=8, retry_cap=9)
    assert run.returncode == 1
    assert "alone (timed out after 8 s beside the others): TIMED OUT after 9 s" in run.stdout
    no_retry = _run(tmp_path, [slow, good], cap=8, retry_cap=0)
    assert no_retry.returncode == 1
    assert "TIMED OUT after 8 s" in no_retry.stdout and "alone (" not in no_retry.stdout
    assert "run again alone" not in no_retry.stdout
