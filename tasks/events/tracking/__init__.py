"""MambaEVT-style single-object tracking on event streams.

Pieces (after MambaEVT, Wang et al. 2024: template + search region, a Mamba backbone, a dynamic
template memory):

- ``event_frames``: per ground-truth time ``t_k``, event counts per polarity in ``(t_k - window,
  t_k]``: ``(K, 2, H, W)`` (counted by ``geossm.serialization.events.to_frame``);
- ``crop``: square crops ``(side x side`` pixels around a centre, resampled to a fixed size,
  zeros outside the sensor), the template (``template_factor * sqrt(w h)``) and the search
  region (``search_factor * sqrt(w h)``);
- ``MambaEVTTracker``: shared patch embedding of template, search and memory crops; the memory
  templates, each pooled to one token, run through a memory ``Mamba`` in time order; the
  sequence ``[memory, template, search]`` runs through BiMamba ``SerializedBlock`` s (one
  segment per sample, in token order); a centre head on the search tokens gives a heatmap over
  the ``G x G`` cells plus a sub-cell offset and the box size relative to the search side;
- ``track``: the online loop (batched over sequences): search around the last box, a cosine
  window on the heatmap, box from the best cell, and the dynamic memory - a long-term library
  (one crop every ``interval`` frames) and a short-term library (the latest confident crops);
- metrics as the tracking toolkits (OTB / LaSOT / pytracking) define them: ``success_curve``
  (IoU > threshold, 21 thresholds in [0, 1]) and its AUC, ``precision`` at 20 px (centre
  distance), ``normalized_precision`` at 0.2 (centre distance over the ground-truth size);
- datasets: ``SyntheticTracking`` (the shipped simulator), ``EventVOT`` and ``FE108`` (official
  layouts; untested on the real data here, which is not available offline).

Modules: ``crops`` (event frames, crops), ``metrics``, ``models`` (``MambaEVTTracker``,
``decode_boxes``, ``track``), ``datasets`` and ``task`` (``EventTrackingTask``).

Boxes are ``[x, y, w, h]`` with ``(x, y)`` the top-left corner in pixels (``groundtruth.txt``).
"""

from .crops import box_center_side, crop, event_frames
from .datasets import FE108, EventVOT, SyntheticTracking
from .metrics import (TrackingMetric, center_errors, iou_xywh, normalized_precision, precision,
                      success_auc, success_curve)
from .models import MambaEVTTracker, decode_boxes, track
from .task import EventTrackingTask

__all__ = ["event_frames", "crop", "box_center_side", "iou_xywh", "success_curve",
           "success_auc", "precision", "normalized_precision", "center_errors",
           "TrackingMetric", "MambaEVTTracker", "decode_boxes", "track", "SyntheticTracking",
           "EventVOT", "FE108", "EventTrackingTask"]
