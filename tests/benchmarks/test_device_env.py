"""``benchmarks/device_env.sh``: the refusals that keep a caller's shell alive and say what to do.

The download (PyPI) and the install (a GPU machine's /tmp/site) are not run here; the checks
are the modes' guards, in a bash that goes on after sourcing the script."""

import subprocess

from .conftest import BENCHMARKS

SCRIPT = BENCHMARKS / "device_env.sh"
ROOT = BENCHMARKS.parent


def _bash(command: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", command], capture_output=True, text=True, cwd=cwd,
                          timeout=60)


def test_running_it_without_download_says_to_source_it():
    run = _bash(f"bash {SCRIPT} .whl", ROOT)
    assert run.returncode == 2 and "source it" in run.stderr


def test_sourcing_refusals_leave_the_callers_shell_running(tmp_path):
    empty = tmp_path / "no_wheels"
    empty.mkdir()
    run = _bash(f"source {SCRIPT} {empty}; echo rc=$?; source {SCRIPT}; echo rc=$?; "
                f"source {SCRIPT} download {empty}; echo rc=$?; "
                "declare -F | grep -c _geossm_device_env; echo alive", ROOT)
    assert run.stdout.split() == ["rc=1", "rc=1", "rc=2", "0", "alive"], run.stdout + run.stderr
    assert "no wheels in" in run.stderr and "bash benchmarks/device_env.sh download" in run.stderr


def test_outside_the_repository_root_it_stops(tmp_path):
    run = _bash(f"source {SCRIPT} .whl; echo rc=$?", tmp_path)
    assert run.stdout.strip() == "rc=2" and "repository root" in run.stderr
