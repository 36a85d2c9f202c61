"""Per-organ postprocessing of a crop's prediction before the merge, with nnU-Net's own functions.

An organ network whose nnU-Net results hold a ``postprocessing.pkl`` (``nnUNetv2_find_best_configuration``
or ``nnUNetv2_determine_postprocessing`` chose it on the cross-validation) gets exactly that; otherwise
``predict --largest-component ORGANS`` keeps the largest connected component of those organs (nnU-Net's
``remove_all_but_largest_component``). What is removed is counted in the organ's statistics.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

import numpy as np

Postprocess = Callable[[np.ndarray], np.ndarray]


def largest_component() -> Postprocess:
    """Keep the largest connected component of a binary mask (z, y, x)."""
    from nnunetv2.postprocessing.remove_connected_components import remove_all_but_largest_component
    return remove_all_but_largest_component


def nnunet_postprocessing(path: Path) -> Postprocess:
    """nnU-Net's ``postprocessing.pkl`` (read with an allow-list: :func:`nnunet_oar.safe_load.load_pickle`)
    as a function of a binary mask (label 1 = the organ)."""
    from nnunetv2.postprocessing.remove_connected_components import apply_postprocessing
    from nnunet_oar.safe_load import load_pickle
    pp_fns, pp_kwargs = load_pickle(path, postprocessing=True)
    return lambda mask: apply_postprocessing(mask.astype(np.uint8), pp_fns, pp_kwargs) > 0


def apply(mask: np.ndarray, fn: Optional[Postprocess], method: str) -> tuple:
    """``(kept mask, record)``: the record (``{"method", "removed_voxels"}``) goes to the stats."""
    if fn is None or not mask.any():
        return mask, None
    kept = np.asarray(fn(mask), bool) & mask
    return kept, {"method": method, "removed_voxels": int(mask.sum() - kept.sum())}
