"""iniVation recordings: AEDAT 4.0 (flatbuffer packets, LZ4 / Zstd) and AEDAT 3.1 (DVS128
Gesture: polarity packets after a ``#`` text header)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from .base import EVENT_DTYPE, Reader, make_events, text_header


def _fb_table(buf: bytes, pos: int) -> tuple[int, list[int]]:
    """Flatbuffer table at ``pos``: (pos, field offsets relative to it, 0 = absent)."""
    import struct
    vt = pos - struct.unpack_from("<i", buf, pos)[0]
    vsize = struct.unpack_from("<H", buf, vt)[0]
    return pos, list(struct.unpack_from(f"<{(vsize - 4) // 2}H", buf, vt + 4))


def _sensor_size(attrs: dict[str, str]) -> tuple[int, int, int]:
    """``(sizeX, sizeY, 2)`` from an AEDAT 4.0 stream's attributes.

    Raises ValueError when they are not positive integers (a damaged header)."""
    width, height = attrs["sizeX"].strip(), attrs["sizeY"].strip()
    if not (width.isdigit() and height.isdigit()) or int(width) == 0 or int(height) == 0:
        raise ValueError(f"sensor size sizeX={attrs['sizeX']!r}, sizeY={attrs['sizeY']!r} is "
                         "not two positive integers")
    return int(width), int(height), 2


class AEDAT4Reader(Reader):
    """iniVation AEDAT 4.0: IOHeader flatbuffer, then ``(int32 stream id, int32 size)`` packets
    of size-prefixed flatbuffers, LZ4- or Zstd-framed as the header says. Only streams whose
    ``typeIdentifier`` is ``EVTS`` are decoded (frames, IMU and triggers are skipped)."""

    MAGIC = b"#!AER-DAT4.0\r\n"

    def __init__(self, path: Path):
        import struct
        super().__init__(path)
        with open(path, "rb") as f:
            head = f.read(len(self.MAGIC) + 4)
            if not head.startswith(self.MAGIC):
                raise self.error(0, f"not an AEDAT 4.0 file (expected magic {self.MAGIC!r}, got "
                                    f"{head[:len(self.MAGIC)]!r})")
            if len(head) < len(self.MAGIC) + 4:
                raise self.error(len(head), "truncated AEDAT 4.0 header")
            hsize = struct.unpack_from("<i", head, len(self.MAGIC))[0]
            # A corrupt size may be negative (f.read raises) or huge (f.read allocates it).
            hdr = f.read(min(hsize, self.size - len(head))) if hsize > 0 else b""
        if hsize <= 0 or len(hdr) < hsize:
            raise self.error(len(self.MAGIC) + 4 + len(hdr),
                             f"truncated AEDAT 4.0 IOHeader (expected {hsize} bytes)")
        try:
            root = struct.unpack_from("<I", hdr, 0)[0]
            pos, fields = _fb_table(hdr, root)
            get = lambda i: fields[i] if i < len(fields) else 0  # noqa: E731
            self.compression = struct.unpack_from("<i", hdr, pos + get(0))[0] if get(0) else 0
            self.table_pos = struct.unpack_from("<q", hdr, pos + get(1))[0] if get(1) else -1
            info = ""
            if get(2):
                spos = pos + get(2) + struct.unpack_from("<I", hdr, pos + get(2))[0]
                slen = struct.unpack_from("<I", hdr, spos)[0]
                info = hdr[spos + 4: spos + 4 + slen].decode("utf-8", "replace")
        except struct.error as err:
            raise self.error(len(self.MAGIC) + 4, f"malformed AEDAT 4.0 IOHeader ({err})") from err
        if self.compression not in (0, 1, 2, 3, 4):
            raise self.error(len(self.MAGIC) + 4,
                             f"unknown AEDAT 4.0 compression type {self.compression}")
        self.start = len(self.MAGIC) + 4 + hsize
        try:
            self.event_streams, self.sensor_size = self._streams(info)
        except ValueError as err:
            raise self.error(len(self.MAGIC) + 4, f"malformed AEDAT 4.0 header: {err}") from err

    @staticmethod
    def _streams(info: str) -> tuple[set[int], tuple[int, int, int] | None]:
        import xml.etree.ElementTree as ET
        streams, size = set(), None
        try:
            root = ET.fromstring(info)
        except ET.ParseError:
            return streams, size
        for out in root.iter("node"):
            if out.get("name") != "outInfo":
                continue
            for stream in out.findall("node"):
                attrs = {a.get("key"): (a.text or "") for a in stream.iter("attr")}
                if attrs.get("typeIdentifier") == "EVTS" and stream.get("name", "").isdigit():
                    streams.add(int(stream.get("name")))
                    if "sizeX" in attrs and "sizeY" in attrs and size is None:
                        size = _sensor_size(attrs)
        return streams, size

    def _decompress(self, data: bytes, offset: int) -> bytes:
        try:
            if self.compression in (1, 2):
                import importlib

                from geossm._compat import require
                require("lz4", "AEDAT 4.0 LZ4 packets")
                return importlib.import_module("lz4.frame").decompress(data)
            if self.compression in (3, 4):
                from geossm._compat import require
                zstd = require("zstandard", "AEDAT 4.0 Zstd packets")
                return zstd.ZstdDecompressor().decompressobj().decompress(data)
        except ImportError:
            raise
        except Exception as err:  # lz4 / zstd raise their own error types
            raise self.error(offset, f"cannot decompress AEDAT 4.0 packet ({err})") from err
        return data

    def chunks(self, n: int) -> Iterator[np.ndarray]:
        import struct
        end = self.table_pos if self.table_pos and self.table_pos > 0 else self.size
        pending: list[np.ndarray] = []
        count = 0
        with open(self.path, "rb") as f:
            f.seek(self.start)
            offset = self.start
            while offset < end:
                head = f.read(8)
                if len(head) < 8:
                    raise self.error(offset, "truncated AEDAT 4.0 packet header "
                                             f"({len(head)} of 8 bytes)")
                sid, size = struct.unpack("<ii", head)
                data = f.read(min(size, self.size - offset - 8)) if size >= 0 else b""
                if size < 0 or len(data) < size:
                    raise self.error(offset, f"truncated AEDAT 4.0 packet: stream {sid} declares "
                                             f"{size} bytes, {len(data)} remain")
                if not self.event_streams or sid in self.event_streams:
                    ev = self._events(self._decompress(data, offset + 8), offset + 8)
                    if ev is not None:
                        pending.append(ev)
                        count += len(ev)
                        if count >= n:
                            merged = np.concatenate(pending)
                            for i in range(0, len(merged) - len(merged) % n, n):
                                yield merged[i:i + n]
                            rest = merged[len(merged) - len(merged) % n:]
                            pending, count = ([rest], len(rest)) if len(rest) else ([], 0)
                offset += 8 + size
        if pending:
            yield np.concatenate(pending)

    def _events(self, buf: bytes, offset: int) -> np.ndarray | None:
        import struct
        try:
            # Size-prefixed flatbuffer: uint32 size, uint32 root offset, 4-byte identifier.
            if buf[8:12] != b"EVTS":
                return None
            body = buf[4:]
            pos, fields = _fb_table(body, struct.unpack_from("<I", body, 0)[0])
            if not fields or not fields[0]:
                return np.empty(0, EVENT_DTYPE)
            vpos = pos + fields[0] + struct.unpack_from("<I", body, pos + fields[0])[0]
            count = struct.unpack_from("<I", body, vpos)[0]
            if vpos + 4 + 16 * count > len(body):
                raise struct.error(f"event vector of {count} events overruns the packet")
            rec = np.frombuffer(body, dtype=np.dtype([("t", "<i8"), ("x", "<i2"), ("y", "<i2"),
                                                      ("on", "u1"), ("pad", "V3")]),
                                count=count, offset=vpos + 4)
        except struct.error as err:
            raise self.error(offset, f"malformed AEDAT 4.0 event packet ({err})") from err
        if self.sensor_size is not None and count:
            w, h, _ = self.sensor_size
            if (rec["x"].min() < 0 or rec["x"].max() >= w or rec["y"].min() < 0
                    or rec["y"].max() >= h):
                # LZ4 frames carry no checksum here: a corrupt packet shows as stray pixels.
                raise self.error(offset, f"malformed AEDAT 4.0 event packet: coordinates "
                                         f"outside the {w}x{h} sensor")
        return make_events(rec["x"], rec["y"], rec["t"], rec["on"])


class AEDAT3Reader(Reader):
    """iniVation AEDAT 3.1 (DVS128 Gesture): ``#`` text header, then packets of a 28-byte
    header (``int16 type, int16 source, int32 size, int32 ts offset, int32 ts overflow, int32
    capacity, int32 number, int32 valid``) and ``number * size`` bytes. Polarity packets
    (type 1) give 8-byte events; only valid events are kept; t = overflow << 31 | ts."""

    def __init__(self, path: Path):
        super().__init__(path)
        header, self.start = text_header(path, b"#")
        self.sensor_size = None
        for line in header:
            m = re.search(r"(dvs128|davis\s*240|davis\s*346)", line.lower())
            if m:
                self.sensor_size = {"dvs128": (128, 128, 2), "davis240": (240, 180, 2),
                                    "davis346": (346, 260, 2)}[m.group(1).replace(" ", "")]

    def chunks(self, n: int) -> Iterator[np.ndarray]:
        import struct
        pending, count = [], 0
        with open(self.path, "rb") as f:
            f.seek(self.start)
            offset = self.start
            while offset < self.size:
                head = f.read(28)
                if len(head) < 28:
                    raise self.error(offset, f"truncated AEDAT 3.1 packet header ({len(head)} "
                                             "of 28 bytes)")
                etype, _, esize, _, overflow, _, number, _ = struct.unpack("<hhiiiiii", head)
                if esize <= 0 or number < 0:
                    raise self.error(offset, f"malformed AEDAT 3.1 packet header (event size "
                                             f"{esize}, number {number})")
                # Compared before reading: a corrupt header may declare up to 2^62 bytes, which
                # f.read would try to allocate.
                remaining = self.size - offset - 28
                data = f.read(min(esize * number, max(remaining, 0)))
                if len(data) < esize * number:
                    raise self.error(offset, f"truncated AEDAT 3.1 packet: {number} events of "
                                             f"{esize} bytes declared, {len(data)} bytes remain")
                if etype == 1:
                    if esize < 8:  # a polarity event is (data u32, timestamp i32)
                        raise self.error(offset, f"malformed AEDAT 3.1 polarity packet: event "
                                                 f"size {esize} bytes, expected at least 8")
                    rec = np.frombuffer(data, dtype=np.dtype([("d", "<u4"), ("t", "<i4")]
                                                             + ([("pad", f"V{esize - 8}")]
                                                                if esize > 8 else [])))
                    d = rec["d"].astype(np.int64)
                    ok = (d & 1) == 1
                    d = d[ok]
                    t = (np.int64(overflow) << 31) | rec["t"][ok].astype(np.int64)
                    pending.append(make_events((d >> 17) & 0x7FFF, (d >> 2) & 0x7FFF, t,
                                               (d >> 1) & 1))
                    count += int(ok.sum())
                    if count >= n:
                        yield np.concatenate(pending)
                        pending, count = [], 0
                offset += 28 + esize * number
        if pending:
            yield np.concatenate(pending)
