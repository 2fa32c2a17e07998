"""``benchmarks/mm_host.py``: on a machine without CUDA it says why it measures nothing."""

import pytest
import torch

from tests.benchmarks.conftest import load_benchmark


def test_without_cuda_the_skip_prints_its_reason(capsys):
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present: the script measures instead of skipping")
    mm_host = load_benchmark("mm_host")
    assert mm_host.main() == 0
    captured = capsys.readouterr()
    assert captured.out == "" and "skipped, needs a CUDA device" in captured.err
