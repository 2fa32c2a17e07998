"""Training engine: the task interface, trainer, optimisers and schedules, checkpoints, metrics,
DDP and logging.

Importing this package does not import TensorBoard or open3d (they load on use).
"""

from geossm.engine.checkpoint import (CheckpointError, get_rng_state, load_checkpoint,
                                      save_checkpoint, seed_everything, set_rng_state)
from geossm.engine.metrics import (ConfusionMatrix, ListMetric, MeanMetric, Metric,
                                   MetricCollection)
from geossm.engine.optim import (SCHEDULES, build_optimizer, build_scheduler,
                                 cosine_warmup_factor)
from geossm.engine.task import Task, move_to
from geossm.engine.trainer import Trainer, resolve_run_dir
from geossm.packed import pack_collate

__all__ = [
    "Task", "Trainer", "pack_collate", "move_to", "Metric", "ListMetric", "MeanMetric",
    "MetricCollection",
    "ConfusionMatrix", "save_checkpoint", "load_checkpoint", "CheckpointError", "get_rng_state",
    "set_rng_state", "seed_everything", "cosine_warmup_factor", "build_optimizer",
    "build_scheduler", "SCHEDULES", "resolve_run_dir",
]
