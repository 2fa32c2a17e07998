"""``benchmarks/device_env.sh``: the refusals that keep a caller's shell alive and say what to do.

The download (PyPI) and the install (a GPU machine's /tmp/site) are not run here; the checks
are the modes' guards, in a bash that goes on after sourcing the script."""

import shlex
import subprocess

from .conftest import BENCHMARKS

SCRIPT = shlex.quote(str(BENCHMARKS / "device_env.sh"))
ROOT = BENCHMARKS.parent
# names the script must not leave in a sourcing shell (functions and variables)
LEFT_BEHIND = "(declare -F; compgen -v) | grep -c _geossm_"


def _bash(command: str, cwd, env=None) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", command], capture_output=True, text=True, cwd=cwd,
                          timeout=60, env=env)


def test_running_it_without_download_says_to_source_it():
    run = _bash(f"bash {SCRIPT} .whl", ROOT)
    assert run.returncode == 2 and "source it" in run.stderr


def test_sourcing_refusals_leave_the_callers_shell_running(tmp_path):
    empty = tmp_path / "no_wheels"
    empty.mkdir()
    empty = shlex.quote(str(empty))
    run = _bash(f"source {SCRIPT} {empty}; echo rc=$?; source {SCRIPT}; echo rc=$?; "
                f"source {SCRIPT} download {empty}; echo rc=$?; "
                f"{LEFT_BEHIND}; echo alive", ROOT)
    assert run.stdout.split() == ["rc=1", "rc=1", "rc=2", "0", "alive"], run.stdout + run.stderr
    assert "no wheels in" in run.stderr and "bash benchmarks/device_env.sh download" in run.stderr


def test_outside_the_repository_root_it_stops(tmp_path):
    run = _bash(f"source {SCRIPT} .whl; echo rc=$?", tmp_path)
    assert run.stdout.strip() == "rc=2" and "repository root" in run.stderr


def _stub_python(tmp_path, status: int) -> dict:
    """An environment whose ``python3`` only writes its arguments to ``tmp_path/calls`` and
    exits with ``status`` (so that nothing is installed here)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    stub = bin_dir / "python3"
    stub.write_text(f'#!/bin/sh\necho "$*" >> {tmp_path / "calls"}\nexit {status}\n')
    stub.chmod(0o755)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp_path)}
    return env


def test_sourcing_installs_the_wheels_puts_them_on_the_path_and_returns_the_status(tmp_path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / "omegaconf-2.3.0-py3-none-any.whl").write_text("")
    folder = shlex.quote(str(wheels))
    run = _bash(f"source {SCRIPT} {folder}; echo rc=$?; echo path=$PYTHONPATH; {LEFT_BEHIND}",
                ROOT, _stub_python(tmp_path, 0))
    assert run.stdout.split()[-3:] == ["rc=0", "path=/tmp/site", "0"], run.stdout + run.stderr
    calls = (tmp_path / "calls").read_text().splitlines()
    assert calls[0].startswith("-m pip install") and "--target /tmp/site" in calls[0]
    assert calls[0].endswith("omegaconf-2.3.0-py3-none-any.whl")
    assert calls[1].startswith("-m pip install") and calls[1].endswith("-e .")
    assert calls[2].startswith("-c import geossm")
    failing = tmp_path / "failing"
    failing.mkdir()
    run = _bash(f"source {SCRIPT} {folder}; echo rc=$?; {LEFT_BEHIND}", ROOT,
                _stub_python(failing, 1))
    assert run.stdout.split()[-2:] == ["rc=1", "0"], run.stdout + run.stderr
    assert len((failing / "calls").read_text().splitlines()) == 1  # stopped at the wheels
