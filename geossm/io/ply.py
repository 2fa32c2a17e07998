"""PLY point clouds with NumPy: ``write_ply`` (binary little-endian, extra per-point properties
such as ``label`` / ``pred`` kept) and ``read_ply`` (ascii or binary, every vertex property).

The engine writes and reads predictions with these (``Task.write_prediction`` /
``Task.load_input``), so saving and loading a cloud needs no Open3D.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np


_PLY_TYPES = {"char": "i1", "uchar": "u1", "short": "i2", "ushort": "u2", "int": "i4",
              "uint": "u4", "float": "f4", "double": "f8", "int8": "i1", "uint8": "u1",
              "int16": "i2", "uint16": "u2", "int32": "i4", "uint32": "u4", "float32": "f4",
              "float64": "f8"}
_NP_TO_PLY = {"i1": "char", "u1": "uchar", "i2": "short", "u2": "ushort", "i4": "int",
              "u4": "uint", "f4": "float", "f8": "double"}


def write_ply(path: str | os.PathLike, coord: np.ndarray, colors: np.ndarray | None = None,
              **fields: np.ndarray) -> Path:
    """Write a binary little-endian PLY point cloud.

    Shapes: ``coord (N, 3)``; ``colors (N, 3)`` uint8 (or floats in [0, 1]); each extra field
    ``(N,)`` (stored as a vertex property of its name; int64 is stored as int32, bool as uchar).
    """
    coord = np.asarray(coord)
    if coord.ndim != 2 or coord.shape[1] != 3:
        raise ValueError(f"coord: expected shape (N, 3), got {coord.shape}")
    n = len(coord)
    cols: list[tuple[str, np.ndarray]] = [("x", coord[:, 0].astype("<f4")),
                                          ("y", coord[:, 1].astype("<f4")),
                                          ("z", coord[:, 2].astype("<f4"))]
    if colors is not None:
        colors = np.asarray(colors)
        if colors.shape != (n, 3):
            raise ValueError(f"colors: expected shape ({n}, 3), got {colors.shape}")
        if np.issubdtype(colors.dtype, np.floating):
            colors = np.clip(np.round(colors * 255), 0, 255)
        colors = colors.astype(np.uint8)
        cols += [("red", colors[:, 0]), ("green", colors[:, 1]), ("blue", colors[:, 2])]
    for name, values in fields.items():
        values = np.asarray(values)
        if values.shape != (n,):
            raise ValueError(f"{name}: expected shape ({n},), got {values.shape}")
        if values.dtype == bool:
            values = values.astype("u1")
        elif values.dtype.kind in "iu" and values.dtype.itemsize == 8:
            values = values.astype("<i4")
        elif values.dtype.kind == "f" and values.dtype.itemsize not in (4, 8):
            values = values.astype("<f4")
        cols.append((name, values.astype(values.dtype.newbyteorder("<"))))
    dtype = np.dtype([(name, v.dtype) for name, v in cols])
    table = np.empty(n, dtype=dtype)
    for name, v in cols:
        table[name] = v
    # "geossm.viz" (the module that wrote PLYs before geossm.io): files stay byte-identical.
    header = ["ply", "format binary_little_endian 1.0", "comment written by geossm.viz",
              f"element vertex {n}"]
    header += [f"property {_NP_TO_PLY[v.dtype.str[1:]]} {name}" for name, v in cols]
    header.append("end_header")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(("\n".join(header) + "\n").encode("ascii"))
        f.write(table.tobytes())
    return path


def read_ply(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Vertex properties of a ``.ply`` (ascii or binary): ``coord (N, 3) float32``, ``color``
    when it has red/green/blue, and every other vertex property under its name. Raises
    ``FileNotFoundError`` or a ``ValueError`` naming the file for a malformed or truncated one."""
    path = Path(path)
    try:
        return _read_ply(path)
    except (IndexError, ValueError) as err:
        if str(path) in str(err):
            raise
        raise ValueError(f"{path}: malformed PLY file ({err})") from None


def _read_ply(path: Path) -> dict[str, np.ndarray]:
    """Read the vertices of a PLY file (ascii or binary, as written by most tools).

    Returns ``coord (N, 3) float32``, ``color (N, 3) uint8`` when present, and every other
    vertex property ``(N,)`` under its name (e.g. ``label``, ``pred``).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"PLY file not found: {path}")
    with open(path, "rb") as f:
        if f.readline().strip() != b"ply":
            raise ValueError(f"{path}: not a PLY file (no 'ply' magic line)")
        fmt, elements = None, []  # elements: [name, count, [(prop, dtype)]]
        while True:
            line = f.readline()
            if not line:
                raise ValueError(f"{path}: PLY header has no end_header")
            words = line.decode("ascii", "replace").split()
            if not words or words[0] in ("comment", "obj_info"):
                continue
            if words[0] == "format":
                fmt = words[1]
            elif words[0] == "element":
                elements.append([words[1], int(words[2]), []])
            elif words[0] == "property":
                if words[1] == "list":
                    elements[-1][2].append((words[-1], None))
                else:
                    if words[1] not in _PLY_TYPES:
                        raise ValueError(f"{path}: unknown PLY property type '{words[1]}'")
                    elements[-1][2].append((words[2], _PLY_TYPES[words[1]]))
            elif words[0] == "end_header":
                break
        if not elements or elements[0][0] != "vertex":
            raise ValueError(f"{path}: expected the first PLY element to be 'vertex'")
        _, n, props = elements[0]
        if any(t is None for _, t in props):
            raise ValueError(f"{path}: list properties on vertices are not supported")
        if fmt == "ascii":
            table = np.loadtxt(f, max_rows=n, ndmin=2)
            data = {name: table[:, i].astype(t) for i, (name, t) in enumerate(props)}
        elif fmt in ("binary_little_endian", "binary_big_endian"):
            order = "<" if fmt == "binary_little_endian" else ">"
            dtype = np.dtype([(name, order + t) for name, t in props])
            left = os.fstat(f.fileno()).st_size - f.tell()
            # checked before reading: a corrupt count must not make f.read allocate it
            if n < 0 or dtype.itemsize * n > left:
                raise ValueError(f"{path}: PLY header declares {n} vertices of "
                                 f"{dtype.itemsize} bytes, {left} bytes follow (truncated?)")
            table = np.frombuffer(f.read(dtype.itemsize * n), dtype=dtype, count=n)
            data = {name: table[name].astype(np.dtype(t).newbyteorder("=")) for name, t in props}
        else:
            raise ValueError(f"{path}: unsupported PLY format {fmt!r}")
    for axis in "xyz":
        if axis not in data:
            raise ValueError(f"{path}: PLY vertices lack the '{axis}' property")
    out = {"coord": np.stack([data.pop("x"), data.pop("y"), data.pop("z")], 1).astype(np.float32)}
    if all(c in data for c in ("red", "green", "blue")):
        rgb = np.stack([data.pop("red"), data.pop("green"), data.pop("blue")], 1)
        if np.issubdtype(rgb.dtype, np.floating) and rgb.max(initial=0) <= 1.0:
            rgb = rgb * 255
        out["color"] = np.clip(rgb, 0, 255).astype(np.uint8)
    out.update(data)
    return out
