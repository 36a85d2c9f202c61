"""What ``predict --preset`` sets for the organ networks (light: the CLI's help reads it without torch).

- ``accurate``: nnU-Net's defaults, every fold with test-time mirroring, the trained patch sliding.
- ``fast``: each network's first fold, no mirroring.
- ``fastest``: ``fast`` with each crop's own tile, on organ grids ``GRID_FACTOR_FASTEST`` times coarser than
  trained (Dice -0.017 on held-out phantoms at 1.25, -0.039 at 1.5: docs/results/organ_grid.md).
"""
from __future__ import annotations

TILES = ("crop", "trained")
GRID_FACTOR_FASTEST = 1.25
PRESETS = {"accurate": {"tta": True, "one_fold": False, "tile": "trained", "grid_factor": 1.0},
           "fast": {"tta": False, "one_fold": True, "tile": "trained", "grid_factor": 1.0},
           "fastest": {"tta": False, "one_fold": True, "tile": "crop", "grid_factor": GRID_FACTOR_FASTEST}}
