"""``python -m geossm.tasks.segmentation OUT.npz [--split val] [--index 0] [--points N]``: write
one synthetic-parts sample (the input of ``geossm predict``) and print one JSON line saying what
was written (``{"output": ..., "points": N, "category": ..., "split": ..., "index": ...}``); see
``synthetic._main``."""

from .synthetic import _main

raise SystemExit(_main())
