"""Test-wide setup.

Without a GPU, Triton kernels can only run in its CPU interpreter; the variable must be set
before triton is first imported, so it is set here, at collection start.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
