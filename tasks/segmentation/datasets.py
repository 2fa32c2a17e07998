"""Point-cloud datasets, each reading its official on-disk layout (``data.root``).

Every dataset returns samples ``{"coord": (N, 3) float32, "feat": (N, C) float32,
"label": (N,) int64 (-1 = ignored) or int (classification), ["category": int]}`` of any size
``N``: batches are packed by the task's collate, never padded. Per-sample processing, in order::

    load -> grid sampling (grid_size) -> crop (max_points, training) -> subsample (num_points)
         -> normalisation (objects) -> augmentation (training: ``augment``) -> feat

(``transforms.PointPreprocess`` does all but loading and augmentation; ``geossm predict`` uses
the same object, built by the dataset class's ``build_preprocess``.)

- ``SyntheticParts``: procedurally generated shapes with part labels (no download).
- ``ShapeNetPart``: ``shapenetcore_partanno_segmentation_benchmark_v0_normal`` (16 categories,
  50 parts, official json splits).
- ``S3DIS``: ``Stanford3dDataset_v1.2_Aligned_Version`` (``Area_N/<room>/Annotations/*.txt``,
  13 classes, ``test_area`` held out).
- ``ModelNet40``: ``modelnet40_normal_resampled`` (``modelnet40_{train,test}.txt``, 40 classes).
- ``SemanticKITTI``: official ``sequences/XX/{velodyne,labels}`` with the learning map (19
  classes), or the preprocessed ``points/*.npy`` + ``labels/*.npy`` variant.

A root without the expected layout raises ``FileNotFoundError`` naming the missing path; a file
that cannot be parsed raises ``ValueError`` naming the file.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from geossm.cache import build_once, files_digest, is_whole_npz
from geossm.registry import DATASETS
from geossm.transforms import Compose, build_transforms, torch_generator

from . import synthetic
from .transforms import PointPreprocess

__all__ = ["PointCloudDataset", "SyntheticParts", "ShapeNetPart", "S3DIS", "ModelNet40",
           "SemanticKITTI", "SHAPENETPART_CATEGORIES", "SEMANTICKITTI_LEARNING_MAP",
           "SEMANTICKITTI_LEARNING_MAP_INV", "semantickitti_raw_labels",
           "write_semantickitti_label", "semantickitti_prediction_path", "read_semantickitti_scan"]

EVAL_SPLITS = ("val", "test")


class PointCloudDataset(torch.utils.data.Dataset):
    """Shared processing of the point-cloud datasets (see the module doc for the order).

    Args:
        split: split name; ``"train"`` (and ``"trainval"``) enables augmentation, random grid
            sampling, random crops and random subsets; other splits are deterministic.
        augment: transform specs applied to training samples, e.g.
            ``[{name: RandomRotate, axis: z}, {name: RandomScale, scale: [0.9, 1.1]}]``
            (see ``geossm.transforms``), default none.
        loop: repeat the sample list this many times per epoch (small datasets), default 1.
        **preprocess: ``PointPreprocess`` settings (``feat_keys``, ``grid_size``,
            ``max_points``, ``num_points``, ``normalize``) over the class's
            ``PREPROCESS_DEFAULTS``.
    """

    CLASS_NAMES: tuple[str, ...] = ()
    IGNORE_INDEX = -1
    #: Part segmentation: the parts of each category (global part indices), else None.
    CATEGORY_PARTS: tuple[tuple[int, ...], ...] | None = None
    CATEGORY_NAMES: tuple[str, ...] = ()
    #: This dataset's defaults of the ``PointPreprocess`` settings.
    PREPROCESS_DEFAULTS: Mapping[str, Any] = {}

    def __init__(self, split: str = "train", augment: Sequence[Mapping[str, Any]] | None = None,
                 loop: int = 1, **preprocess: Any) -> None:
        if not isinstance(split, str) or not split:
            raise ValueError(f"split: expected a non-empty string, got {split!r}")
        if not isinstance(loop, int) or loop < 1:
            raise ValueError(f"loop: expected an int >= 1, got {loop!r}")
        self.preprocess = self.build_preprocess(preprocess)
        self.split = split
        self.train = split in ("train", "trainval")
        self.augment = build_transforms(augment) if self.train else Compose()
        self.loop = loop

    @classmethod
    def build_preprocess(cls, settings: Mapping[str, Any]) -> PointPreprocess:
        """The ``PointPreprocess`` of this dataset class: ``settings`` (e.g. from ``data.*``)
        over ``PREPROCESS_DEFAULTS``. Needs no files, so ``predict`` builds it from the config."""
        return PointPreprocess(**{**cls.PREPROCESS_DEFAULTS, **settings})

    # Subclasses implement these two.
    def num_items(self) -> int:
        raise NotImplementedError

    def load(self, index: int) -> dict[str, Any]:
        """The raw sample ``index`` (coord, label and the arrays named in ``feat_keys``)."""
        raise NotImplementedError

    @property
    def num_classes(self) -> int:
        return len(self.CLASS_NAMES)

    def __len__(self) -> int:
        return self.num_items() * self.loop

    def __getitem__(self, i: int) -> dict[str, Any]:
        if not -len(self) <= i < len(self):
            raise IndexError(f"{type(self).__name__}: index {i} out of range for {len(self)} samples")
        index = i % self.num_items()
        sample = self.load(index)
        if not self.train:
            return self.preprocess(sample, index)
        # The point choices draw from one torch-seeded stream, each augmentation from its own.
        sample = self.preprocess.sample_points(sample, torch_generator(), train=True)
        return self.preprocess.features(self.augment(sample))


def _require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise FileNotFoundError(f"{what}: expected a folder at {path}")
    return path


def _require_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"{what}: expected a file at {path}")
    return path


#: What each reader expects in ``data.root``, for the message of a missing folder.
ROOT_LAYOUTS = {
    "ShapeNetPart": "synsetoffset2category.txt, train_test_split/ and one folder of <id>.txt per "
                    "category (shapenetcore_partanno_segmentation_benchmark_v0_normal)",
    "S3DIS": "Area_1/ ... Area_6/, each room with its Annotations/ "
             "(Stanford3dDataset_v1.2_Aligned_Version)",
    "ModelNet40": "modelnet40_shape_names.txt, modelnet40_{train,test}.txt and <class>/<id>.txt "
                  "(modelnet40_normal_resampled)",
    "SemanticKITTI": "sequences/<NN>/velodyne/*.bin with labels/*.label (or points/ and labels/ "
                     "of .npy files)",
}


def _root(root: str | os.PathLike | None, cls: str) -> Path:
    if root is None or str(root) == "":
        raise ValueError(f"{cls}: data.root is not set (the folder of the official layout)")
    path = Path(root).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"{cls} root: expected a folder at {path}; set data.root=PATH "
                                f"to the folder holding {ROOT_LAYOUTS[cls]}")
    return path


def _loadtxt(path: Path, columns: int, delimiter: str | None = None) -> np.ndarray:
    """A numeric text table of at least ``columns`` columns, with the file named on failure."""
    try:
        data = np.loadtxt(path, dtype=np.float32, delimiter=delimiter, ndmin=2)
    except ValueError as err:
        raise ValueError(f"{path}: expected {columns} numeric columns per line "
                         f"({' '.join(str(err).split())[:200]})") from err
    if data.shape[1] < columns:
        raise ValueError(f"{path}: expected at least {columns} columns, got {data.shape[1]}")
    return data


# ------------------------------------------------------------------------- synthetic parts

@DATASETS.register
class SyntheticParts(PointCloudDataset):
    """Procedurally generated part-segmentation shapes (``synthetic.make_shape``), generated on
    the fly, deterministic from ``(seed, split, index)``. No files: ``root`` must be null.

    Args:
        root: must be None (accepted so configs share the ``data.root`` key).
        split: any name; each split is an independent stream of shapes.
        num_samples: shapes in the split, default 512 (``num_val_samples`` for other splits).
        num_val_samples: shapes in splits other than ``train``, default 128.
        min_points, max_points: points per shape, uniform in ``[min, max]``.
        noise: surface jitter (fraction of the size), default 0.01.
        seed: base seed, default 0.
        feat_keys: default ``("coord",)`` (normalised xyz).
        normalize: default True (unit sphere).
        **kwargs: see ``PointCloudDataset`` (``augment``, ``grid_size`` ...).
    """

    CLASS_NAMES = synthetic.PART_NAMES
    CATEGORY_NAMES = synthetic.CATEGORIES
    CATEGORY_PARTS = synthetic.CATEGORY_PARTS
    PREPROCESS_DEFAULTS = {"normalize": True}

    def __init__(self, root: str | None = None, split: str = "train", num_samples: int = 512,
                 num_val_samples: int = 128, min_points: int = 1024, max_points: int = 2048,
                 noise: float = 0.01, seed: int = 0, **kwargs: Any) -> None:
        if root is not None:
            raise ValueError(f"SyntheticParts: root must be null (the data is generated), got "
                             f"{root!r}")
        super().__init__(split=split, **kwargs)
        count = num_samples if self.train else num_val_samples
        if not isinstance(count, int) or count < 1:
            raise ValueError(f"SyntheticParts: num_samples must be an int >= 1, got {count!r}")
        if not 1 <= min_points <= max_points:
            raise ValueError(f"SyntheticParts: expected 1 <= min_points <= max_points, got "
                             f"{min_points} and {max_points}")
        self.count, self.min_points, self.max_points_shape = count, min_points, max_points
        self.noise, self.seed = noise, seed

    def num_items(self) -> int:
        return self.count

    def load(self, index: int) -> dict[str, Any]:
        g = np.random.default_rng(synthetic.sample_seed(self.seed, self.split, index))
        return synthetic.make_shape(g, min_points=self.min_points,
                                    max_points=self.max_points_shape, noise=self.noise)


# ---------------------------------------------------------------------------- ShapeNetPart

#: The 16 ShapeNetPart categories in the official order: (name, synset, global part indices).
SHAPENETPART_CATEGORIES = (
    ("Airplane", "02691156", (0, 1, 2, 3)), ("Bag", "02773838", (4, 5)),
    ("Cap", "02954340", (6, 7)), ("Car", "02958343", (8, 9, 10, 11)),
    ("Chair", "03001627", (12, 13, 14, 15)), ("Earphone", "03261776", (16, 17, 18)),
    ("Guitar", "03467517", (19, 20, 21)), ("Knife", "03624134", (22, 23)),
    ("Lamp", "03636649", (24, 25, 26, 27)), ("Laptop", "03642806", (28, 29)),
    ("Motorbike", "03790512", (30, 31, 32, 33, 34, 35)), ("Mug", "03797390", (36, 37)),
    ("Pistol", "03948459", (38, 39, 40)), ("Rocket", "04099429", (41, 42, 43)),
    ("Skateboard", "04225987", (44, 45, 46)), ("Table", "04379243", (47, 48, 49)),
)


@DATASETS.register
class ShapeNetPart(PointCloudDataset):
    """ShapeNetPart (``shapenetcore_partanno_segmentation_benchmark_v0_normal``).

    Layout: ``synsetoffset2category.txt`` (``<Name>\\t<synset>``), ``<synset>/<shape>.txt``
    (lines ``x y z nx ny nz part``, part in the global 50-part index) and
    ``train_test_split/shuffled_{train,val,test}_file_list.json`` (``shape_data/<synset>/<shape>``).

    Args:
        root: the folder above.
        split: ``train``, ``val``, ``test`` or ``trainval``.
        categories: category names to keep (e.g. ``[Cap]``), default all present.
        split_lists: ``{split: ["<synset>/<shape>", ...]}`` replacing the json lists (to train
            on a subset such as the bundled caps), default None.
        num_points: default 2048 (the published protocol), None keeps all points.
        feat_keys: default ``("coord", "normal")`` (6 channels).
        normalize: default True.
        **kwargs: see ``PointCloudDataset``.

    Samples carry ``category`` (official index 0-15) for category-conditioned segmentation.
    """

    CLASS_NAMES = tuple(f"{name}_{p - parts[0]}" for name, _, parts in SHAPENETPART_CATEGORIES
                        for p in parts)
    CATEGORY_NAMES = tuple(c[0] for c in SHAPENETPART_CATEGORIES)
    CATEGORY_PARTS = tuple(c[2] for c in SHAPENETPART_CATEGORIES)
    PREPROCESS_DEFAULTS = {"num_points": 2048, "feat_keys": ("coord", "normal"),
                           "normalize": True}

    def __init__(self, root: str | os.PathLike | None = None, split: str = "train",
                 categories: Sequence[str] | None = None,
                 split_lists: Mapping[str, Sequence[str]] | None = None, **kwargs: Any) -> None:
        super().__init__(split=split, **kwargs)
        self.root = root = _root(root, "ShapeNetPart")
        catfile = _require_file(root / "synsetoffset2category.txt", "ShapeNetPart category list")
        synset_to_index = {s: i for i, (_, s, _) in enumerate(SHAPENETPART_CATEGORIES)}
        present: dict[str, str] = {}
        for line in catfile.read_text().splitlines():
            fields = line.split()
            if not fields:
                continue
            if len(fields) != 2 or fields[1] not in synset_to_index:
                raise ValueError(f"{catfile}: expected lines '<Name> <synset>' with a ShapeNetPart "
                                 f"synset, got {line!r}")
            present[fields[0]] = fields[1]
        if categories is not None:
            unknown = [c for c in categories if c not in present]
            if unknown:
                raise ValueError(f"ShapeNetPart: categories {unknown} are not in {catfile} "
                                 f"(it lists {sorted(present)})")
            present = {c: present[c] for c in categories}
        keep = set(present.values())
        if split_lists is not None:
            if split not in split_lists:
                raise ValueError(f"ShapeNetPart: split_lists has no entry for split '{split}' "
                                 f"(it has {sorted(split_lists)})")
            entries = list(split_lists[split])
        else:
            names = {"trainval": ("train", "val")}.get(split, (split,))
            entries = []
            for name in names:
                if name not in ("train", "val", "test"):
                    raise ValueError(f"ShapeNetPart: split must be train, val, test or trainval, "
                                     f"got {split!r}")
                lst = _require_file(root / "train_test_split" / f"shuffled_{name}_file_list.json",
                                    "ShapeNetPart split list")
                try:
                    entries += json.loads(lst.read_text())
                except json.JSONDecodeError as err:
                    raise ValueError(f"{lst}: expected a JSON list of shape paths ({err})") from err
        self.items: list[tuple[Path, int]] = []
        for entry in entries:
            parts = str(entry).split("/")
            if len(parts) < 2:
                raise ValueError(f"ShapeNetPart: expected entries '<synset>/<shape>', got {entry!r}")
            synset, shape = parts[-2], parts[-1]
            if synset not in keep:
                continue
            path = _require_file(root / synset / f"{shape}.txt", "ShapeNetPart shape")
            self.items.append((path, synset_to_index[synset]))

    def num_items(self) -> int:
        return len(self.items)

    def load(self, index: int) -> dict[str, Any]:
        path, category = self.items[index]
        data = _loadtxt(path, 7)
        label = data[:, 6].astype(np.int64)
        parts = self.CATEGORY_PARTS[category]
        if label.size and (label.min() < parts[0] or label.max() > parts[-1]):
            raise ValueError(f"{path}: part labels must lie in {parts[0]}..{parts[-1]} for "
                             f"{self.CATEGORY_NAMES[category]}, got {label.min()}..{label.max()}")
        return {"coord": data[:, :3], "normal": data[:, 3:6], "label": label,
                "category": category}


# ---------------------------------------------------------------------------------- S3DIS

S3DIS_CLASSES = ("ceiling", "floor", "wall", "beam", "column", "window", "door", "table",
                 "chair", "sofa", "bookcase", "board", "clutter")


@DATASETS.register
class S3DIS(PointCloudDataset):
    """S3DIS (``Stanford3dDataset_v1.2_Aligned_Version``): one sample per room.

    Layout: ``Area_<k>/<room>/Annotations/<class>_<i>.txt`` with lines ``x y z r g b``; the
    class comes from the file name (``stairs`` counts as ``clutter``, as usual).

    Args:
        root: the folder holding ``Area_1`` ... ``Area_6``.
        split: ``train`` (every area but ``test_area``), ``val`` / ``test`` (``test_area``).
        test_area: default 5.
        areas: explicit list of area numbers for this split (overrides the rule above).
        grid_size: default 0.04 m; ``max_points`` default 80,000 (training crops).
        feat_keys: default ``("coord", "color")`` (colour in [0, 1]).
        cache_dir: parsed rooms are stored there as ``.npz`` (the text files are slow to read),
            each parsed by one process and written whole (``geossm.cache.build_once``), default
            None (no cache; never written beside the data). A room's file is
            ``<area>_<room>_<key>.npz``, the key hashing the resolved room folder and its
            annotation files' names, sizes and mtimes: two S3DIS copies, or a room edited in
            place, never share a cache file.
        **kwargs: see ``PointCloudDataset``.
    """

    CLASS_NAMES = S3DIS_CLASSES
    #: Arrays of a parsed room (and of its cache file).
    ROOM_KEYS = ("coord", "color", "label")
    PREPROCESS_DEFAULTS = {"grid_size": 0.04, "max_points": 80000,
                           "feat_keys": ("coord", "color")}

    def __init__(self, root: str | os.PathLike | None = None, split: str = "train",
                 test_area: int = 5, areas: Sequence[int] | None = None,
                 cache_dir: str | os.PathLike | None = None, **kwargs: Any) -> None:
        super().__init__(split=split, **kwargs)
        self.root = root = _root(root, "S3DIS")
        if areas is None:
            areas = ([a for a in range(1, 7) if a != test_area] if self.train else [test_area])
        self.rooms: list[Path] = []
        for a in areas:
            area = _require_dir(root / f"Area_{a}", "S3DIS area")
            for room in sorted(p for p in area.iterdir() if p.is_dir()):
                _require_dir(room / "Annotations", "S3DIS room annotations")
                self.rooms.append(room)
        if not self.rooms:
            raise FileNotFoundError(f"S3DIS: no room folders in {[str(root / f'Area_{a}') for a in areas]}")
        self.cache_dir = Path(cache_dir) if cache_dir else None
        #: Cache file of each room this process has seen whole: later epochs skip the key, the
        #: lock and the check.
        self._cached_rooms: dict[Path, Path] = {}

    def num_items(self) -> int:
        return len(self.rooms)

    def load(self, index: int) -> dict[str, Any]:
        room = self.rooms[index]
        if self.cache_dir is None:
            return self._read_room(room)
        cached = self._cached_rooms.get(room)
        if cached is None:
            cached = self.room_cache(room)
            # Parsed by one of the processes (DataLoader workers, runs) that ask at once,
            # written whole; a file an older version wrote in place (maybe torn) is parsed again.
            build_once(cached, lambda tmp: np.savez(tmp, **self._read_room(room)),
                       valid=lambda path: is_whole_npz(path, self.ROOM_KEYS))
            self._cached_rooms[room] = cached
        with np.load(cached) as z:
            return {key: z[key] for key in self.ROOM_KEYS}

    def room_cache(self, room: Path) -> Path:
        """The cache file of ``room``: ``<cache_dir>/<area>_<room>_<key>.npz``, ``key`` hashing
        the resolved room folder and its annotation files' names, sizes and mtimes (not their
        contents: rooms are tens of MB of text, and one ``stat`` per file is enough to see a
        room replaced or edited)."""
        files = sorted((room / "Annotations").glob("*.txt"))
        key = hashlib.sha1(f"{room.resolve()}\0{files_digest(files, content=False)}".encode())
        return self.cache_dir / f"{room.parent.name}_{room.name}_{key.hexdigest()[:12]}.npz"

    @staticmethod
    def _read_room(room: Path) -> dict[str, np.ndarray]:
        """``coord (N, 3)``, ``color (N, 3)`` in [0, 1] (float32) and ``label (N,)`` int64 of
        the room folder ``room`` (its ``Annotations/<class>_<i>.txt``)."""
        coords, colors, labels = [], [], []
        files = sorted((room / "Annotations").glob("*.txt"))
        if not files:
            raise FileNotFoundError(f"S3DIS: no <class>_<i>.txt files in {room / 'Annotations'}")
        for f in files:
            name = f.stem.rsplit("_", 1)[0]
            name = "clutter" if name == "stairs" else name
            if name not in S3DIS_CLASSES:
                raise ValueError(f"{f}: unknown S3DIS class '{name}' (expected one of "
                                 f"{', '.join(S3DIS_CLASSES)} or stairs)")
            data = _loadtxt(f, 6)
            coords.append(data[:, :3])
            colors.append(data[:, 3:6] / 255.0)
            labels.append(np.full(len(data), S3DIS_CLASSES.index(name), dtype=np.int64))
        return {"coord": np.concatenate(coords).astype(np.float32),
                "color": np.concatenate(colors).astype(np.float32),
                "label": np.concatenate(labels)}


# ----------------------------------------------------------------------------- ModelNet40

@DATASETS.register
class ModelNet40(PointCloudDataset):
    """ModelNet40 (``modelnet40_normal_resampled``): shape classification.

    Layout: ``modelnet40_shape_names.txt`` (one class per line), ``modelnet40_train.txt`` /
    ``modelnet40_test.txt`` (one shape id per line, ``<class>_<NNNN>``) and
    ``<class>/<shape id>.txt`` with lines ``x,y,z,nx,ny,nz``.

    Args:
        root: the folder above.
        split: ``train`` or ``test`` (``val`` reads the test list, as is customary).
        num_points: default 1024; the first points of each file (they are already resampled).
        use_normals: add normals to ``feat`` (6 channels), default False.
        **kwargs: see ``PointCloudDataset``.

    Samples have ``label: int`` (the class).
    """

    PREPROCESS_DEFAULTS = {"normalize": True}

    def __init__(self, root: str | os.PathLike | None = None, split: str = "train",
                 num_points: int | None = 1024, use_normals: bool = False,
                 **kwargs: Any) -> None:
        kwargs.setdefault("feat_keys", ("coord", "normal") if use_normals else ("coord",))
        super().__init__(split=split, **kwargs)
        self.first_points = num_points
        self.root = root = _root(root, "ModelNet40")
        names = _require_file(root / "modelnet40_shape_names.txt", "ModelNet40 class list")
        self.class_names = tuple(l.strip() for l in names.read_text().splitlines() if l.strip())
        list_split = {"val": "test", "trainval": "train"}.get(split, split)
        if list_split not in ("train", "test"):
            raise ValueError(f"ModelNet40: split must be train, val or test, got {split!r}")
        lst = _require_file(root / f"modelnet40_{list_split}.txt", "ModelNet40 split list")
        self.items: list[tuple[Path, int]] = []
        for line in lst.read_text().splitlines():
            shape = line.strip()
            if not shape:
                continue
            cls = shape.rsplit("_", 1)[0]
            if cls not in self.class_names:
                raise ValueError(f"{lst}: shape '{shape}' has class '{cls}', not listed in {names}")
            path = _require_file(root / cls / f"{shape}.txt", "ModelNet40 shape")
            self.items.append((path, self.class_names.index(cls)))

    @property
    def CLASS_NAMES(self) -> tuple[str, ...]:  # noqa: N802 - read from the dataset's list
        return self.class_names

    def num_items(self) -> int:
        return len(self.items)

    def load(self, index: int) -> dict[str, Any]:
        path, label = self.items[index]
        data = _loadtxt(path, 6, delimiter=",")
        if self.first_points is not None:
            data = data[:self.first_points]
        return {"coord": data[:, :3], "normal": data[:, 3:6], "label": label}


# -------------------------------------------------------------------------- SemanticKITTI

#: Raw SemanticKITTI label -> training class 0-19 (0 = unlabeled), from the official
#: ``semantic-kitti.yaml``; moving classes merge into their static ones.
SEMANTICKITTI_LEARNING_MAP = {
    0: 0, 1: 0, 10: 1, 11: 2, 13: 5, 15: 3, 16: 5, 18: 4, 20: 5, 30: 6, 31: 7, 32: 8, 40: 9,
    44: 10, 48: 11, 49: 12, 50: 13, 51: 14, 52: 0, 60: 9, 70: 15, 71: 16, 72: 17, 80: 18,
    81: 19, 99: 0, 252: 1, 253: 7, 254: 6, 255: 8, 256: 5, 257: 5, 258: 4, 259: 5,
}
SEMANTICKITTI_CLASSES = ("car", "bicycle", "motorcycle", "truck", "other-vehicle", "person",
                         "bicyclist", "motorcyclist", "road", "parking", "sidewalk",
                         "other-ground", "building", "fence", "vegetation", "trunk", "terrain",
                         "pole", "traffic-sign")
SEMANTICKITTI_SPLITS = {"train": (0, 1, 2, 3, 4, 5, 6, 7, 9, 10), "val": (8,),
                        "test": tuple(range(11, 22))}

_LUT = np.zeros(2 ** 16, dtype=np.int64)  # unknown raw labels -> 0 (unlabeled)
for _raw, _cls in SEMANTICKITTI_LEARNING_MAP.items():
    _LUT[_raw] = _cls


#: Training class 0-19 -> raw SemanticKITTI label (``learning_map_inv`` of the official
#: ``semantic-kitti.yaml``): what submissions and ``.label`` prediction files hold.
SEMANTICKITTI_LEARNING_MAP_INV = {
    0: 0, 1: 10, 2: 11, 3: 15, 4: 18, 5: 20, 6: 30, 7: 31, 8: 32, 9: 40, 10: 44, 11: 48, 12: 49,
    13: 50, 14: 51, 15: 70, 16: 71, 17: 72, 18: 80, 19: 81,
}


def semantickitti_raw_labels(pred: np.ndarray) -> np.ndarray:
    """Training labels ``0..18`` (``-1`` = unlabeled) -> raw SemanticKITTI ids ``(N,) uint32``
    (semantic id in the low 16 bits, instance 0), the inverse of ``semantickitti_learning_map``
    on the classes it keeps. ``ValueError`` names labels outside ``-1..18``."""
    pred = np.asarray(pred).reshape(-1)
    if pred.size and (pred.min() < -1 or pred.max() > 18):
        raise ValueError(f"pred: expected SemanticKITTI training labels in -1..18, got "
                         f"{pred.min()}..{pred.max()}")
    table = np.array([SEMANTICKITTI_LEARNING_MAP_INV[c] for c in range(20)], dtype=np.uint32)
    return table[pred.astype(np.int64) + 1]


def semantickitti_prediction_path(root: str | os.PathLike, sequence: str | int | None,
                                  frame: str | int) -> Path:
    """``root/sequences/<XX>/predictions/<NNNNNN>.label``: the official submission layout
    (``root/predictions/<NNNNNN>.label`` when the sequence is unknown, ``None``)."""
    name = f"{int(frame):06d}.label"
    if sequence is None:
        return Path(root) / "predictions" / name
    return Path(root) / "sequences" / f"{int(sequence):02d}" / "predictions" / name


def write_semantickitti_label(path: str | os.PathLike, pred: np.ndarray) -> Path:
    """Write predictions (training labels ``0..18``) as a SemanticKITTI ``.label`` file: one
    little-endian uint32 per point, the raw label id (``semantickitti_raw_labels``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    semantickitti_raw_labels(pred).astype("<u4").tofile(path)
    return path


def read_semantickitti_scan(scan: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """``coord (N, 3)`` and ``strength (N, 1)`` (remission) of a ``velodyne/*.bin`` scan."""
    raw = np.fromfile(scan, dtype=np.float32)
    if raw.size % 4:
        raise ValueError(f"{scan}: expected float32 records of 4 values (x y z "
                         f"remission), got {raw.size} values")
    raw = raw.reshape(-1, 4)
    return raw[:, :3], raw[:, 3:4]


def semantickitti_learning_map(raw: np.ndarray) -> np.ndarray:
    """Raw ``.label`` values (uint32: semantic in the low 16 bits, instance above) -> training
    labels ``0..18``, ``-1`` for unlabeled / ignored."""
    return _LUT[np.asarray(raw, dtype=np.uint32) & 0xFFFF] - 1


@DATASETS.register
class SemanticKITTI(PointCloudDataset):
    """SemanticKITTI LiDAR scans, 19 classes (``-1`` = unlabeled).

    Two layouts are read (``layout: auto`` picks by what ``root`` holds):

    - ``official``: ``sequences/<XX>/velodyne/<NNNNNN>.bin`` (float32 ``x y z remission``) and
      ``sequences/<XX>/labels/<NNNNNN>.label`` (uint32), mapped by the learning map; splits are
      the official sequences (train 00-07, 09, 10; val 08; test 11-21, without labels);
    - ``npy``: ``points/<NNNNNN>.npy`` (``(N, 3)`` xyz) and ``labels/<NNNNNN>.npy`` (``(N, 1)``,
      already 0-19 with 0 = unlabeled), as archived in ``shared/data/semantickitti``; there is no
      remission (``strength`` is 0) and no official split: ``frames`` chooses.

    Args:
        root: the dataset folder (above ``sequences/``, or holding ``points/`` and ``labels/``).
        split: ``train``, ``val`` or ``test`` (or any key of ``sequences`` / ``frames``).
        sequences: ``{split: [sequence numbers]}`` replacing the official split (official layout).
        frames: ``{split: ["000000", ...]}`` frame ids per split, default None (every frame, in
            every split). Both layouts.
        grid_size: default 0.05 m; ``max_points`` default 120,000 (training crops).
        feat_keys: default ``("coord", "strength")`` (4 channels).
        layout: ``auto``, ``official`` or ``npy``.
        **kwargs: see ``PointCloudDataset``.
    """

    CLASS_NAMES = SEMANTICKITTI_CLASSES
    PREPROCESS_DEFAULTS = {"grid_size": 0.05, "max_points": 120000,
                           "feat_keys": ("coord", "strength")}

    def __init__(self, root: str | os.PathLike | None = None, split: str = "train",
                 sequences: Mapping[str, Sequence[int]] | None = None,
                 frames: Mapping[str, Sequence[str]] | None = None, layout: str = "auto",
                 **kwargs: Any) -> None:
        super().__init__(split=split, **kwargs)
        self.root = root = _root(root, "SemanticKITTI")
        if layout == "auto":
            layout = "official" if (root / "sequences").is_dir() else (
                "npy" if (root / "points").is_dir() else None)
            if layout is None:
                raise FileNotFoundError(f"SemanticKITTI: expected {root / 'sequences'} (official "
                                        f"layout) or {root / 'points'} (npy layout)")
        if layout not in ("official", "npy"):
            raise ValueError(f"SemanticKITTI: layout must be auto, official or npy, got {layout!r}")
        self.layout = layout
        wanted = None
        if frames is not None:
            if split not in frames:
                raise ValueError(f"SemanticKITTI: frames has no entry for split '{split}' "
                                 f"(it has {sorted(frames)})")
            wanted = {f"{int(f):06d}" if str(f).isdigit() else str(f) for f in frames[split]}
        self.items: list[tuple[Path, Path | None]] = []
        if layout == "official":
            table = dict(SEMANTICKITTI_SPLITS) if sequences is None else {
                k: tuple(v) for k, v in sequences.items()}
            if split not in table:
                raise ValueError(f"SemanticKITTI: unknown split '{split}' (sequences define "
                                 f"{sorted(table)})")
            for seq in table[split]:
                folder = _require_dir(root / "sequences" / f"{int(seq):02d}" / "velodyne",
                                      "SemanticKITTI scans")
                for scan in sorted(folder.glob("*.bin")):
                    if wanted is not None and scan.stem not in wanted:
                        continue
                    label = scan.parent.parent / "labels" / f"{scan.stem}.label"
                    if split != "test":
                        _require_file(label, "SemanticKITTI labels")
                    self.items.append((scan, label if label.is_file() else None))
        else:
            points = _require_dir(root / "points", "SemanticKITTI npy points")
            labels = _require_dir(root / "labels", "SemanticKITTI npy labels")
            for scan in sorted(points.glob("*.npy")):
                if wanted is not None and scan.stem not in wanted:
                    continue
                self.items.append((scan, _require_file(labels / scan.name, "SemanticKITTI labels")))
            if wanted is None:
                # no official split in this layout: every split would be the same scans, and a
                # model would be selected and scored on the scans it trained on
                warnings.warn(f"SemanticKITTI: npy layout under {root} without frames: split "
                              f"'{split}' reads every scan (train, val and test are then the "
                              "same scans); set data.frames={train: [...], val: [...]}",
                              stacklevel=2)
        if wanted is not None:
            found = {p.stem for p, _ in self.items}
            missing = sorted(wanted - found)
            if missing:
                raise FileNotFoundError(f"SemanticKITTI: frames {missing} of split '{split}' not "
                                        f"found under {root}")
        if not self.items:
            raise FileNotFoundError(f"SemanticKITTI: no scans for split '{split}' under {root}")

    def num_items(self) -> int:
        return len(self.items)

    def scan_id(self, index: int) -> str:
        """``"<XX>/<NNNNNN>"`` (official layout) or ``"<NNNNNN>"`` (npy) of scan ``index``."""
        scan = self.items[index][0]
        return f"{scan.parent.parent.name}/{scan.stem}" if self.layout == "official" else scan.stem

    def __getitem__(self, i: int) -> dict[str, Any]:
        """The sample; evaluation samples also name their scan (``scan_id``), so predictions of
        a whole split can be written as ``.label`` files (``eval.write_predictions``)."""
        sample = super().__getitem__(i)
        if not self.train:
            sample["scan_id"] = self.scan_id(i % self.num_items())
        return sample

    def load(self, index: int) -> dict[str, Any]:
        scan, label_path = self.items[index]
        if self.layout == "official":
            coord, strength = read_semantickitti_scan(scan)
            if label_path is None:
                label = np.full(len(coord), -1, dtype=np.int64)
            else:
                lab = np.fromfile(label_path, dtype=np.uint32)
                if lab.size != len(coord):
                    raise ValueError(f"{label_path}: expected {len(coord)} labels (one per point "
                                     f"of {scan.name}), got {lab.size}")
                label = semantickitti_learning_map(lab)
        else:
            coord = np.load(scan, allow_pickle=False).astype(np.float32)
            if coord.ndim != 2 or coord.shape[1] < 3:
                raise ValueError(f"{scan}: expected an (N, 3) array, got shape {coord.shape}")
            coord = coord[:, :3]
            strength = np.zeros((len(coord), 1), dtype=np.float32)
            lab = np.load(label_path, allow_pickle=False).reshape(-1)
            if lab.size != len(coord):
                raise ValueError(f"{label_path}: expected {len(coord)} labels, got {lab.size}")
            if lab.size and (lab.min() < 0 or lab.max() > 19):
                raise ValueError(f"{label_path}: expected labels in 0..19, got "
                                 f"{lab.min()}..{lab.max()}")
            label = lab.astype(np.int64) - 1
        return {"coord": coord, "strength": strength, "label": label}
