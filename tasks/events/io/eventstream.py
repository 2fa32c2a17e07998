"""Event Stream 2.x recordings (neuromorphic-paris ``.es``): byte-coded time deltas and DVS /
ATIS events, decoded by a sequential state machine compiled with numba."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from .base import Reader, make_events


def _es_decode(buf, kind, t, final):
    """Sequential Event Stream state machine over ``buf`` (uint8) from time ``t``.

    Returns ``(x, y, t, p, n, t_end, consumed, error)``: ``n`` decoded events, the bytes
    consumed (an event cut by the buffer's end is left for the next call unless ``final``),
    and ``error`` = index of the first byte of an incomplete event when ``final``, else -1.
    ``kind`` 1 = DVS (7-bit time delta, overflow 0xFF adds 127, reset 0xFE), 2 = ATIS (6-bit
    delta, ``0b111111xx``: reset if ``xx == 0`` else ``xx * 63``; threshold crossings skipped).
    """
    m = buf.shape[0]
    xs = np.empty(m // 5 + 1, np.int64)
    ys = np.empty(m // 5 + 1, np.int64)
    ts = np.empty(m // 5 + 1, np.int64)
    ps = np.empty(m // 5 + 1, np.int64)
    n = 0
    i = 0
    while i < m:
        b = buf[i]
        if kind == 1:
            if b == 0xFF:
                t += 127
                i += 1
                continue
            if b == 0xFE:
                i += 1
                continue
        else:
            if b >= 0xFC:
                t += 63 * (b & 0x3)
                i += 1
                continue
        if i + 5 > m:
            if final:
                return xs[:n], ys[:n], ts[:n], ps[:n], n, t, i, i
            return xs[:n], ys[:n], ts[:n], ps[:n], n, t, i, -1
        if kind == 1:
            t += b >> 1
            pol = b & 1
            keep = True
        else:
            t += b >> 2
            pol = (b >> 1) & 1
            keep = (b & 1) == 0
        if keep:
            xs[n] = buf[i + 1] | (np.int64(buf[i + 2]) << 8)
            ys[n] = buf[i + 3] | (np.int64(buf[i + 4]) << 8)
            ts[n] = t
            ps[n] = pol
            n += 1
        i += 5
    return xs[:n], ys[:n], ts[:n], ps[:n], n, t, m, -1


_es_decode_jit = None


def _es_kernel():
    global _es_decode_jit
    if _es_decode_jit is None:
        import numba
        # cache=False: the repository may be read-only (CI); compiling takes about a second.
        _es_decode_jit = numba.njit(_es_decode)
    return _es_decode_jit


class EventStreamReader(Reader):
    """Event Stream 2.x (DVS and ATIS streams; generic, display and colour streams carry no
    polarity events and are refused)."""

    def __init__(self, path: Path):
        super().__init__(path)
        with open(path, "rb") as f:
            head = f.read(20)
        if not head.startswith(b"Event Stream"):
            raise self.error(0, f"not an Event Stream file (magic {head[:12]!r})")
        if len(head) < 16:
            raise self.error(len(head), "truncated Event Stream header")
        major = head[12]
        if major != 2:
            raise self.error(12, f"unsupported Event Stream version {major}.{head[13]}.{head[14]} "
                                 "(expected 2.x)")
        self.kind = head[15]
        if self.kind not in (1, 2):
            raise self.error(15, f"Event Stream type {self.kind} has no DVS/ATIS events "
                                 "(expected 1 = DVS or 2 = ATIS)")
        if len(head) < 20:
            raise self.error(len(head), "truncated Event Stream header (no width / height)")
        w = head[16] | head[17] << 8
        h = head[18] | head[19] << 8
        self.sensor_size = (w, h, 2)
        self.start = 20

    def chunks(self, n: int) -> Iterator[np.ndarray]:
        decode = _es_kernel()
        t = 0
        carry = b""
        with open(self.path, "rb") as f:
            f.seek(self.start)
            offset = self.start  # file offset of carry[0]
            while True:
                data = f.read(5 * n)
                final = not data
                buf = np.frombuffer(carry + data, dtype=np.uint8)
                if final and not len(buf):
                    return
                x, y, ts, p, _, t, used, err = decode(buf, self.kind, t, final)
                if err >= 0:
                    raise self.error(offset + err, f"truncated Event Stream event "
                                                   f"({len(buf) - err} of 5 bytes)")
                if len(ts):
                    yield make_events(x, y, ts, p)
                carry = bytes(buf[used:])
                offset += used
                if final:
                    return
