"""``python -m geossm.tasks.segmentation OUT.npz [--split val] [--index 0] [--points N]``: write
one synthetic-parts sample (the input of ``geossm predict``); see ``synthetic._main``."""

from .synthetic import _main

raise SystemExit(_main())
