"""Event cameras: file readers, recognition and MambaEVT-style single-object tracking.

- ``io``: ``read_events`` / ``iter_events`` for N-MNIST ``.bin``, Prophesee EVT 2.0 / 3.0 and
  ``.dat``, AEDAT 4 / 3.1, Event Stream ``.es``, ``.npy`` / ``.npz`` and HDF5;
- ``datasets``: ``NMNIST``, ``DVSGesture`` (official layouts; frames, voxel grids or raw events);
- ``models``: ``EventMambaCls`` (serialized raw events or windowed patches -> BiMamba);
- ``task``: ``EventClassificationTask``;
- ``tracking``: event simulator, EventVOT / FE108 readers, ``MambaEVTTracker``, tracking metrics.

Configs: ``configs/events/*.yaml``.
"""

from . import datasets, io, models, simulator, task, tracking
from .datasets import NMNIST, DVSGesture
from .io import EVENT_DTYPE, EventFileError, Recording, iter_events, read_events
from .models import EventMambaCls
from .task import EventClassificationTask
from .tracking import EventTrackingTask, EventVOT, FE108, MambaEVTTracker, SyntheticTracking

__all__ = ["datasets", "io", "models", "simulator", "task", "tracking", "NMNIST", "DVSGesture",
           "EventMambaCls", "EventClassificationTask", "EventTrackingTask", "MambaEVTTracker",
           "SyntheticTracking", "EventVOT", "FE108", "EVENT_DTYPE", "EventFileError", "Recording",
           "iter_events", "read_events"]
