"""Grouped variable-length scan kernels (see ``selective_scan`` and ``causal_conv1d``)."""
