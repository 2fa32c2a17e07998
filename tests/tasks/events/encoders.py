"""Encoders written from the format specifications, used to round-trip the readers.

Each takes a structured event array (x, y, t, p; t sorted) and writes a file the way the
format's specification describes it; none of them shares code with ``geossm.tasks.events.io``.
"""

import struct

import numpy as np

DT = np.dtype([("x", np.int16), ("y", np.int16), ("t", np.int64), ("p", bool)])


def random_events(n, seed=0, width=640, height=480, t0=0, span=200_000, bursts=False):
    rng = np.random.default_rng(seed)
    ev = np.zeros(n, DT)
    ev["t"] = np.sort(rng.integers(t0, t0 + span, n))
    ev["x"] = rng.integers(0, width, n)
    ev["y"] = rng.integers(0, height, n)
    ev["p"] = rng.integers(0, 2, n).astype(bool)
    if bursts:
        # Rows of adjacent pixels firing at once: what EVT 3.0 packs into vector words.
        k = n // 4
        ev["t"][:k] = ev["t"][k]
        ev["y"][:k] = np.arange(k) // 40 % height
        ev["p"][:k] = True
        ev["x"][:k] = 100 + np.arange(k) % 40
        ev = ev[np.lexsort((ev["x"], ev["y"], ev["t"]))]
    return ev


def evt2(ev, width=640, height=480, header=True):
    """EVT 2.0: TIME_HIGH (0x8, t >> 6 in 28 bits) when it changes, CD_ON/CD_OFF words."""
    words = []
    high = None
    for x, y, t, p in zip(ev["x"], ev["y"], ev["t"], ev["p"]):
        th = (int(t) >> 6) & 0x0FFFFFFF
        if th != high:
            words.append((0x8 << 28) | th)
            high = th
        words.append((int(p) << 28) | ((int(t) & 0x3F) << 22) | (int(x) << 11) | int(y))
    head = (f"% evt 2.0\n% format EVT2;height={height};width={width}\n% end\n".encode()
            if header else b"")
    return head + np.asarray(words, "<u4").tobytes()


def evt3(ev, width=1280, height=720):
    """EVT 3.0: TIME_HIGH / TIME_LOW when they change, ADDR_Y when the row changes, runs of
    adjacent same-polarity columns at one time as VECT_BASE_X + VECT_12 / VECT_8 masks, other
    events as ADDR_X."""
    words = []
    high = low = row = None
    i, n = 0, len(ev)
    while i < n:
        t, y = int(ev["t"][i]), int(ev["y"][i])
        th, tl = (t >> 12) & 0xFFF, t & 0xFFF
        if th != high:
            words.append((0x8 << 12) | th)
            high, low = th, None
        if tl != low:
            words.append((0x6 << 12) | tl)
            low = tl
        if y != row:
            words.append((0x0 << 12) | y)
            row = y
        j = i
        while (j + 1 < n and ev["t"][j + 1] == t and ev["y"][j + 1] == y
               and ev["p"][j + 1] == ev["p"][i] and ev["x"][j + 1] == ev["x"][j] + 1):
            j += 1
        p = int(ev["p"][i])
        if j - i + 1 >= 8:
            x0 = int(ev["x"][i])
            words.append((0x3 << 12) | (p << 11) | x0)
            remaining = j - i + 1
            while remaining > 0:
                if remaining >= 12:
                    words.append((0x4 << 12) | 0xFFF)
                    remaining -= 12
                else:
                    # VECT_8 covers 8 columns; a partial mask marks only the first ones.
                    take = min(remaining, 8)
                    words.append((0x5 << 12) | ((1 << take) - 1))
                    remaining -= take
            i = j + 1
        else:
            words.append((0x2 << 12) | (p << 11) | int(ev["x"][i]))
            i += 1
    head = f"% evt 3.0\n% format EVT3;height={height};width={width}\n% end\n".encode()
    return head + np.asarray(words, "<u2").tobytes()


def dat(ev, width=304, height=240, version=2):
    head = (f"% Data file containing CD events.\n% Version {version}\n% Width {width}\n"
            f"% Height {height}\n").encode()
    if version < 2:
        data = ev["x"].astype(np.uint32) | (ev["y"].astype(np.uint32) << 9) | \
            (ev["p"].astype(np.uint32) << 17)
    else:
        data = ev["x"].astype(np.uint32) | (ev["y"].astype(np.uint32) << 14) | \
            (ev["p"].astype(np.uint32) << 28)
    rec = np.stack([ev["t"].astype(np.uint32), data], 1).astype("<u4")
    return head + bytes([0x0C, 8]) + rec.tobytes()


def es_dvs(ev, width=346, height=260):
    """Event Stream 2.0 DVS: 0xFF per 127 µs of overflow, byte0 = delta << 1 | polarity."""
    out = bytearray(b"Event Stream" + bytes([2, 0, 0, 1]) + struct.pack("<HH", width, height))
    prev = 0
    for x, y, t, p in zip(ev["x"], ev["y"], ev["t"], ev["p"]):
        delta = int(t) - prev
        prev = int(t)
        while delta >= 127:
            out.append(0xFF)
            delta -= 127
        out += bytes([(delta << 1) | int(p)]) + struct.pack("<HH", int(x), int(y))
    return bytes(out)


def es_atis(ev, width=304, height=240, tc_every=3):
    """Event Stream 2.0 ATIS: overflow bytes 0b111111xx (+63 xx), byte0 = delta << 2 |
    polarity << 1 | is_tc; every ``tc_every``-th event also gets a threshold crossing."""
    out = bytearray(b"Event Stream" + bytes([2, 0, 0, 2]) + struct.pack("<HH", width, height))
    prev = 0
    for i, (x, y, t, p) in enumerate(zip(ev["x"], ev["y"], ev["t"], ev["p"])):
        delta = int(t) - prev
        prev = int(t)
        while delta >= 63:
            k = min(3, delta // 63)
            out.append(0xFC | k)
            delta -= 63 * k
        out += bytes([(delta << 2) | (int(p) << 1)]) + struct.pack("<HH", int(x), int(y))
        if tc_every and i % tc_every == 0:
            out += bytes([(0 << 2) | 1]) + struct.pack("<HH", int(x), int(y))
    return bytes(out)


def aedat3(ev, per_packet=100, overflow=0):
    """AEDAT 3.1 polarity packets (type 1, 8-byte events) after a '#' text header."""
    out = bytearray(b"#!AER-DAT3.1\r\n#Format: RAW\r\n#Source 1: DVS128\r\n"
                    b"#!END-HEADER\r\n")
    for i in range(0, len(ev), per_packet):
        part = ev[i:i + per_packet]
        data = (1 | (part["p"].astype(np.uint32) << 1) | (part["y"].astype(np.uint32) << 2)
                | (part["x"].astype(np.uint32) << 17))
        rec = np.zeros(len(part), np.dtype([("d", "<u4"), ("t", "<i4")]))
        rec["d"], rec["t"] = data, part["t"] & 0x7FFFFFFF
        out += struct.pack("<hhiiiiii", 1, 1, 8, 4, overflow, len(part), len(part), len(part))
        out += rec.tobytes()
    return bytes(out)
