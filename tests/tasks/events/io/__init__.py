"""Helpers shared by the event-reader tests."""

import numpy as np


def canon(ev):
    """Events in a canonical order (t, y, x, p), as plain int64 columns."""
    cols = [np.asarray(ev[k]).astype(np.int64) for k in ("x", "y", "t", "p")]
    order = np.lexsort((cols[3], cols[0], cols[1], cols[2]))
    return np.stack([c[order] for c in cols], 1)


def write(tmp_path, name, data):
    path = tmp_path / name
    path.write_bytes(data)
    return path
