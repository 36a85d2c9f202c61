"""Metrics, in one place: localization (centroid error, wall distance, box IoU, containment, detection)
and segmentation (Dice, HD95, normalised surface Dice, volume difference).

All distances are in world millimetres; boxes are index boxes ``start_xyz``/``stop_xyz`` (stop
exclusive) of the image the label map lives on.
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence

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
        for a ``tp``: ``centroid_error_mm``, ``centroid_error_xyz_mm`` (absolute error along world x, y, z:
        for a patient in standard orientation, left-right, front-back, head-foot), ``centroid_offset_xyz_mm``
        (the same, signed: predicted minus reference, world x, y, z), ``wall_distance_mm``
        (mean absolute distance of the six box walls), ``iou`` (box IoU), ``containment`` (fraction of
        reference voxels inside the box) and ``spill_mm`` (how far the reference's extent reaches beyond the
        box's walls, ``{"min": [x, y, z], "max": [x, y, z]}`` in world mm, 0 where it stays inside; in
        ITK's LPS world the min walls face the patient's right, anterior and inferior side).
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
    error_xyz = centroid_mm(geom, mask_zyx) - np.asarray(entry["centroid_mm"])
    out.update(
        centroid_error_mm=float(np.linalg.norm(error_xyz)),
        centroid_error_xyz_mm=np.abs(error_xyz).tolist(),
        centroid_offset_xyz_mm=(-error_xyz).tolist(),
        wall_distance_mm=float(np.mean(np.abs(np.concatenate([np.asarray(entry["box_mm"]["min"]) - ref_min,
                                                               np.asarray(entry["box_mm"]["max"]) - ref_max])))),
        iou=box_iou(entry["box_mm"]["min"], entry["box_mm"]["max"], ref_min, ref_max),
        containment=inside / int(mask_zyx.sum()),
        spill_mm={"min": np.maximum(np.asarray(entry["box_mm"]["min"]) - ref_min, 0).tolist(),
                  "max": np.maximum(ref_max - np.asarray(entry["box_mm"]["max"]), 0).tolist()},
    )
    return out


def summarize_localization(per_case: Dict[str, Dict[str, dict]]) -> Dict[str, dict]:
    """Per organ over cases: median and mean of each distance metric (per axis for
    ``centroid_error_xyz_mm`` and the signed ``centroid_offset_xyz_mm``), mean and minimum containment with the case of the minimum, and the detection
    counts. ``per_case`` is ``{case: {organ: localization_metrics(...)}}``."""
    organs: Dict[str, Dict[str, dict]] = {}
    for case, metrics in per_case.items():
        for organ, m in metrics.items():
            organs.setdefault(organ, {})[case] = m
    summary = {}
    for organ, ms in organs.items():
        s: Dict[str, object] = {"n": len(ms), "detection": {k: sum(m["detection"] == k for m in ms.values())
                                                             for k in ("tp", "fn", "fp", "tn")}}
        for key in ("centroid_error_mm", "wall_distance_mm", "iou"):
            v = [m[key] for m in ms.values() if key in m]
            if v:
                s[key] = {"median": float(np.median(v)), "mean": float(np.mean(v))}
        for key in ("centroid_error_xyz_mm", "centroid_offset_xyz_mm"):      # per axis
            v = [m[key] for m in ms.values() if key in m]
            if v:
                s[key] = {"median": np.median(v, axis=0).tolist(), "mean": np.mean(v, axis=0).tolist()}
        c = {case: m["containment"] for case, m in ms.items() if "containment" in m}
        if c:
            worst = min(c, key=c.get)
            s["containment"] = {"mean": float(np.mean(list(c.values()))), "min": c[worst], "min_case": worst}
        summary[organ] = s
    return summary


def dice(reference: np.ndarray, prediction: np.ndarray) -> float:
    """Dice of two boolean masks; NaN when both are empty (nothing to score)."""
    ref, pred = reference.astype(bool), prediction.astype(bool)
    denom = int(ref.sum()) + int(pred.sum())
    return float("nan") if denom == 0 else 2.0 * int((ref & pred).sum()) / denom


def surface_metrics(reference: np.ndarray, prediction: np.ndarray, spacing_zyx_mm: Sequence[float],
                    tolerance_mm: float) -> Dict[str, float]:
    """HD95 and normalised surface Dice of two non-empty boolean masks (z, y, x).

    Surface distances are DeepMind's surfel-based ones (the ``surface-distance`` package, the reference
    implementation of Nikolov et al. 2021, whose NSD definition this is): each surface element is weighted
    by its area, in mm with ``spacing_zyx_mm`` given in the array's (z, y, x) order.

    Returns:
        ``hd95_mm`` (95th-percentile symmetric Hausdorff distance) and ``nsd`` (fraction of both surfaces
        within ``tolerance_mm`` of the other).
    """
    import surface_distance as sd
    d = sd.compute_surface_distances(reference.astype(bool), prediction.astype(bool),
                                     [float(v) for v in spacing_zyx_mm])
    return {"hd95_mm": float(sd.compute_robust_hausdorff(d, 95)),
            "nsd": float(sd.compute_surface_dice_at_tolerance(d, tolerance_mm))}


def organ_metrics(reference: np.ndarray, prediction: np.ndarray, spacing_zyx_mm: Sequence[float],
                  tolerance_mm: float = 2.0) -> Dict[str, object]:
    """Dice, HD95, NSD and volume difference of one organ, with one rule per kind of outcome.

    Args:
        reference, prediction: boolean masks (z, y, x) on one grid.
        spacing_zyx_mm: voxel spacing in mm, (z, y, x) order.
        tolerance_mm: NSD tolerance.

    Returns:
        ``outcome`` and the metrics:

        * ``tp`` (both non-empty): all four metrics;
        * ``tn`` (both empty: correctly absent): no overlap metric (``None``), volume difference 0; not
          counted in the means;
        * ``fn`` (missed) and ``fp`` (hallucinated): Dice 0, NSD 0, HD95 = the image diagonal in mm (the
          largest distance the image can hold, so a miss is never better than a poor hit), volume
          difference as measured.

        ``volume_diff_ml`` is prediction minus reference, in mL.
    """
    ref, pred = reference.astype(bool), prediction.astype(bool)
    voxel_ml = float(np.prod(spacing_zyx_mm)) / 1000.0
    out: Dict[str, object] = {"volume_ref_ml": int(ref.sum()) * voxel_ml, "volume_pred_ml": int(pred.sum()) * voxel_ml}
    out["volume_diff_ml"] = out["volume_pred_ml"] - out["volume_ref_ml"]
    has_ref, has_pred = bool(ref.any()), bool(pred.any())
    if has_ref and has_pred:
        out.update(outcome="tp", dice=dice(ref, pred), **surface_metrics(ref, pred, spacing_zyx_mm, tolerance_mm))
    elif not has_ref and not has_pred:
        out.update(outcome="tn", dice=None, hd95_mm=None, nsd=None)
    else:
        diagonal = float(np.linalg.norm(np.asarray(ref.shape) * np.asarray(spacing_zyx_mm, float)))
        out.update(outcome="fn" if has_ref else "fp", dice=0.0, hd95_mm=diagonal, nsd=0.0)
    return out
