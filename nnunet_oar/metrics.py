"""Metrics, in one place: localization (centroid error, wall distance, box IoU, containment, detection).

All distances are in world millimetres; boxes are index boxes ``start_xyz``/``stop_xyz`` (stop
exclusive) of the image the label map lives on.
"""
from __future__ import annotations

from typing import Dict, List, Optional

import numpy as np

from nnunet_oar.geometry import centroid_mm, crop_zyx, index_box_to_world, mask_bbox_xyz


def box_iou(a_min, a_max, b_min, b_max) -> float:
    """Intersection over union of two axis-aligned world boxes (mm)."""
    a_min, a_max, b_min, b_max = (np.asarray(v, float) for v in (a_min, a_max, b_min, b_max))
    inter = np.prod(np.clip(np.minimum(a_max, b_max) - np.maximum(a_min, b_min), 0, None))
    union = np.prod(a_max - a_min) + np.prod(b_max - b_min) - inter
    return float(inter / union) if union > 0 else 0.0


def localization_metrics(mask_zyx: np.ndarray, geom: dict, entry: Optional[dict]) -> Dict[str, object]:
    """Compare one organ's predicted localization with its reference mask.

    Args:
        mask_zyx: reference mask (z, y, x) on the image grid of ``geom``.
        geom: geometry record of that image.
        entry: the organ's entry of a ``{case}_boxes.json`` (status, centroid_mm, box_index_xyz, ...).

    Returns:
        ``detection`` (``tp`` found and present, ``fn`` missed, ``fp`` found but absent, ``tn``) and,
        for a ``tp``: ``centroid_error_mm``, ``wall_distance_mm`` (mean absolute distance of the six box
        walls), ``iou`` (box IoU) and ``containment`` (fraction of reference voxels inside the box).
    """
    present = bool(mask_zyx.any())
    found = entry is not None and entry.get("status") == "found"
    detection = {(True, True): "tp", (True, False): "fn", (False, True): "fp", (False, False): "tn"}[(present, found)]
    out: Dict[str, object] = {"detection": detection}
    if present and not found:
        out["containment"] = 0.0
    if detection != "tp":
        return out
    ref_min, ref_max = index_box_to_world(geom, *mask_bbox_xyz(mask_zyx))
    box = entry["box_index_xyz"]
    inside = int(crop_zyx(mask_zyx, box["start"], box["stop"]).sum())
    out.update(
        centroid_error_mm=float(np.linalg.norm(centroid_mm(geom, mask_zyx) - np.asarray(entry["centroid_mm"]))),
        wall_distance_mm=float(np.mean(np.abs(np.concatenate([np.asarray(entry["box_mm"]["min"]) - ref_min,
                                                               np.asarray(entry["box_mm"]["max"]) - ref_max])))),
        iou=box_iou(entry["box_mm"]["min"], entry["box_mm"]["max"], ref_min, ref_max),
        containment=inside / int(mask_zyx.sum()),
    )
    return out


def summarize_localization(per_case: Dict[str, Dict[str, dict]]) -> Dict[str, dict]:
    """Per organ over cases: median and mean of each distance metric, mean and minimum containment,
    and the detection counts. ``per_case`` is ``{case: {organ: localization_metrics(...)}}``."""
    organs: Dict[str, List[dict]] = {}
    for case in per_case.values():
        for organ, m in case.items():
            organs.setdefault(organ, []).append(m)
    summary = {}
    for organ, ms in organs.items():
        s: Dict[str, object] = {"n": len(ms), "detection": {k: sum(m["detection"] == k for m in ms)
                                                             for k in ("tp", "fn", "fp", "tn")}}
        for key in ("centroid_error_mm", "wall_distance_mm", "iou"):
            v = [m[key] for m in ms if key in m]
            if v:
                s[key] = {"median": float(np.median(v)), "mean": float(np.mean(v))}
        c = [m["containment"] for m in ms if "containment" in m]
        if c:
            s["containment"] = {"mean": float(np.mean(c)), "min": float(np.min(c))}
        summary[organ] = s
    return summary


def dice(reference: np.ndarray, prediction: np.ndarray) -> float:
    """Dice of two boolean masks; NaN when both are empty (nothing to score)."""
    ref, pred = reference.astype(bool), prediction.astype(bool)
    denom = int(ref.sum()) + int(pred.sum())
    return float("nan") if denom == 0 else 2.0 * int((ref & pred).sum()) / denom
