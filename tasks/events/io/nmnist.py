"""N-MNIST / N-Caltech101 ``.bin`` recordings: 5 bytes per event, no header."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from .base import Reader, make_events


class NMNISTReader(Reader):
    """N-MNIST / N-Caltech101 binary (5 bytes per event); the file states no geometry.

    As in the dataset authors' reader, a record with ``y == 240`` is a timestamp-overflow
    marker, not an event: it adds 2^13 µs to every later timestamp.
    """

    def chunks(self, n: int) -> Iterator[np.ndarray]:
        overflows = 0
        for _, buf in self._records(0, 5, n, "N-MNIST event"):
            b = np.frombuffer(buf, dtype=np.uint8).reshape(-1, 5).astype(np.int64)
            t = ((b[:, 2] & 0x7F) << 16) | (b[:, 3] << 8) | b[:, 4]
            marker = b[:, 1] == 240
            t = t + ((overflows + np.cumsum(marker)) << 13)
            overflows += int(marker.sum())
            keep = ~marker
            yield make_events(b[keep, 0], b[keep, 1], t[keep], b[keep, 2] >> 7)
