"""Tasks built on geossm: segmentation, detection, graph learning, events."""
