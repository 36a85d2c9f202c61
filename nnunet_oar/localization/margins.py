"""The margin v around each box: calibrated on out-of-fold boxes (``localize --cross-validation``), read back
by inference from ``margins.json``.

Calibration keeps, per organ, only the voxel counts inside its boxes at every candidate margin, so memory is
one case's masks whatever the number of cases.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional, Sequence

import numpy as np

from nnunet_oar.geometry import crop_zyx
from nnunet_oar.io import InputError, read_json
from nnunet_oar.localization.boxes import organ_box
from nnunet_oar.localization.extent import ENDS
from nnunet_oar.plausibility import far_out_fences


def read_margins(path: Path, organs: Optional[Sequence[str]] = None) -> Dict[str, float]:
    """Per-organ margins (mm) from a ``margins.json`` written by ``localize --cross-validation``; with
    ``organs`` (the localizer's), a file naming any other organ is refused."""
    path = Path(path)
    try:
        content = read_json(path)
        margins = {organ: float(m["margin_mm"]) for organ, m in content.items()}
    except (OSError, ValueError, TypeError, KeyError) as e:
        raise InputError(f"{path}: not a margins file ({{organ: {{margin_mm: ...}}}}): {e}") from e
    unknown = sorted(set(margins) - set(organs)) if organs is not None else []
    if unknown:
        raise InputError(f"{path}: margins for organs the localizer does not have: {unknown} (it has {list(organs)})")
    return margins


def read_z_extents(path: Path) -> Dict[str, dict]:
    """The learned extents along z (:mod:`~nnunet_oar.localization.extent`) that ``localize --cross-validation``
    chose, from the same ``margins.json``: ``{organ: rule}`` (organs without one keep the mean-size box)."""
    rules = {organ: m["z_extent"] for organ, m in read_json(Path(path)).items() if m.get("z_extent")}
    for organ, rule in rules.items():
        if not all(isinstance(rule.get(end), dict) and {"anchor", "offset_mm"} <= set(rule[end]) for end in ENDS):
            raise InputError(f"{path}: {organ}'s z_extent needs bottom and top, each with anchor and offset_mm")
    return rules


def read_positions(path: Path) -> Dict[str, dict]:
    """The anatomical-consistency rules (:mod:`~nnunet_oar.localization.consistency`) fitted by
    ``localize --cross-validation``, from the same ``margins.json``: ``{organ: rule}``."""
    from nnunet_oar.localization.consistency import validate_positions
    content = read_json(Path(path))
    return validate_positions({organ: m["position"] for organ, m in content.items()
                               if isinstance(m, dict) and m.get("position")}, str(path))


def inside_counts(mask_zyx: np.ndarray, geom: dict, centroid_mm: Sequence[float], size_mm: Sequence[float],
                  margins_mm: Sequence[float]) -> np.ndarray:
    """Voxels of one organ's reference mask inside its box, for each candidate margin.

    Args:
        mask_zyx: reference mask (z, y, x) on the image grid of ``geom``.
        geom: geometry record of the image.
        centroid_mm: predicted centroid (x, y, z) mm; size_mm: mean box size (x, y, z) mm.
        margins_mm: candidate margins v, mm.

    Returns:
        int64 array, one count per margin.
    """
    out = np.zeros(len(margins_mm), np.int64)
    for i, v in enumerate(margins_mm):
        b = organ_box(geom, centroid_mm, size_mm, float(v))["box_index_xyz"]
        out[i] = int(crop_zyx(mask_zyx, b["start"], b["stop"]).sum())
    return out


def far_miss_fence(errors_mm: Sequence[float], floor_mm: float = 20.0) -> float:
    """Centroid error (mm) beyond which an organ's out-of-fold box counts as a far miss: Tukey's far-out fence
    (Q3 + 3 IQR) of that organ's errors, never below ``floor_mm`` (the anatomical-consistency fence's floor).

    A far miss is a localization failure (the heat map peaked on another structure), not the ordinary error a
    margin is for: sized to hold one, the margin grows for every patient (on OpenKBP one brainstem found 72 mm
    off among 31 took the brainstem's margin from 10 to 49 mm, 12 times the box volume, and still left that
    brainstem 20 % outside its box).

    Args:
        errors_mm: one organ's centroid errors (mm) over the calibration cases where it was found.
    """
    return max(far_out_fences(errors_mm)[1], float(floor_mm))


def calibrate_margin(inside: np.ndarray, total: int, margins_mm: Sequence[float], target: float = 0.99
                     ) -> Dict[str, float]:
    """Smallest margin v (mm) for which the pooled containment of one organ reaches ``target``.

    Args:
        inside: voxels inside the boxes at each margin, summed over cases (:func:`inside_counts`).
        total: the organ's reference voxels over the same cases (those pooled; the caller leaves failures out).
        margins_mm: the candidate margins, ascending.

    Returns:
        ``{"margin_mm": v, "containment": fraction at v, "reached": bool}``; the largest candidate when
        none reaches the target.
    """
    frac = np.asarray(inside, float) / max(int(total), 1)
    ok = frac >= target
    i = int(np.argmax(ok)) if ok.any() else len(frac) - 1
    return {"margin_mm": float(margins_mm[i]), "containment": float(frac[i]), "reached": bool(ok[i])}
