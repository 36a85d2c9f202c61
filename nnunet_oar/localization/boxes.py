"""Heat map -> centroid -> box, and the per-organ box statistics.

Region: the voxels above tau form one or more connected components (26-connectivity). The *region*
is the component with the largest heat-map mass (sum of values), so a lone outlier spike above tau
does not move the centroid; the centroid is that region's bounding-box mid-point (the paper's
"mid-point"). A heat map whose peak is below tau means the organ is absent (or missed): no box.

Box: the organ's mean box size from the training labels (world mm, per world axis), centred on the
centroid, plus a margin v mm on every side, converted to voxel indices of the original image and
clipped to it.
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence

import numpy as np
from scipy import ndimage

from nnunet_oar.geometry import index_box_to_world, mask_bbox_xyz, world_box_to_index

DEFAULT_TAU = 0.1
DEFAULT_MARGIN_MM = 10.0


def heatmap_region(heatmap: np.ndarray, tau: float = DEFAULT_TAU) -> Optional[Dict[str, object]]:
    """Find the organ's region in one heat map.

    Args:
        heatmap: 3D array (any axis order).
        tau: threshold.

    Returns:
        ``None`` when the peak is below ``tau`` (absent); else ``{"peak": float, "centroid": (3,)
        continuous voxel coordinates in the heat map's axis order, "mask": bool region}``.
    """
    peak = float(heatmap.max())
    if not peak >= tau:
        return None
    components, n = ndimage.label(heatmap > tau, structure=np.ones((3, 3, 3), bool))
    mass = ndimage.sum_labels(heatmap, components, index=np.arange(1, n + 1))
    region = components == int(np.argmax(mass)) + 1
    idx = np.argwhere(region)
    centroid = (idx.min(0) + idx.max(0)) / 2.0
    return {"peak": float(heatmap[region].max()), "centroid": centroid, "mask": region}


def box_sizes_mm(label_zyx: np.ndarray, geom: dict, labels: Dict[str, int]) -> Dict[str, list]:
    """World-axis extents (mm, x,y,z) of each organ's bounding box in one label map; voxel cells included.

    Args:
        label_zyx: label map (z, y, x).
        geom: geometry record of the label image.
        labels: ``{organ: label value}``.
    """
    out = {}
    for name, value in labels.items():
        bb = mask_bbox_xyz(label_zyx == value) if value else None
        if bb is not None:
            lo, hi = index_box_to_world(geom, *bb)
            out[name] = (hi - lo).tolist()
    return out


def organ_box(geom: dict, centroid_mm: Sequence[float], size_mm: Sequence[float],
              margin_mm: float = DEFAULT_MARGIN_MM) -> Dict[str, object]:
    """Box of ``size_mm + 2 * margin_mm`` centred on ``centroid_mm`` in an image.

    Args:
        geom: geometry record of the original image.
        centroid_mm: world centroid (x, y, z) mm.
        size_mm: mean box size (x, y, z) mm along world axes.
        margin_mm: margin v added on every side, mm.

    Returns:
        ``{"box_index_xyz": {"start", "stop"}, "box_mm": {"min", "max"}, "clipped": bool}``; indices in
        SimpleITK x,y,z order, start inclusive, stop exclusive.
    """
    half = np.asarray(size_mm, float) / 2 + margin_mm
    c = np.asarray(centroid_mm, float)
    start, stop, clipped = world_box_to_index(geom, c - half, c + half)
    lo, hi = index_box_to_world(geom, start, stop)
    return {"box_index_xyz": {"start": start.tolist(), "stop": stop.tolist()},
            "box_mm": {"min": lo.tolist(), "max": hi.tolist()}, "clipped": clipped}


def mean_box_sizes(per_case: Dict[str, Dict[str, list]], cases: Sequence[str]) -> Dict[str, dict]:
    """Average the per-case box sizes over ``cases``: ``{organ: {"mean_size_mm": [x,y,z], "n": count}}``."""
    acc: Dict[str, list] = {}
    for c in cases:
        for organ, size in per_case.get(c, {}).items():
            acc.setdefault(organ, []).append(size)
    return {o: {"mean_size_mm": np.mean(v, 0).tolist(), "n": len(v)} for o, v in acc.items()}


def calibrate_margin(samples: Sequence[tuple], target: float = 0.99, max_margin_mm: float = 60.0,
                     step_mm: float = 1.0) -> Dict[str, float]:
    """Smallest margin v (mm) for which the pooled containment of one organ reaches ``target``.

    Args:
        samples: ``(mask_zyx, geom, centroid_mm, size_mm)`` per case: the reference mask on the image
            grid, the image geometry, the out-of-fold predicted centroid and the mean box size (mm).
        target: fraction of the organ's reference voxels (pooled over cases) that must lie in the boxes.
        max_margin_mm, step_mm: search range.

    Returns:
        ``{"margin_mm": v, "containment": fraction at v, "reached": bool}``.
    """
    from nnunet_oar.geometry import crop_zyx
    total = sum(int(m.sum()) for m, *_ in samples)
    margin, inside = 0.0, 0
    for margin in np.arange(0.0, max_margin_mm + step_mm / 2, step_mm):
        inside = 0
        for mask, geom, c, size in samples:
            b = organ_box(geom, c, size, float(margin))["box_index_xyz"]
            inside += int(crop_zyx(mask, b["start"], b["stop"]).sum())
        if total == 0 or inside / total >= target:
            break
    frac = inside / total if total else 1.0
    return {"margin_mm": float(margin), "containment": frac, "reached": bool(frac >= target)}


def reference_boxes(label_zyx: np.ndarray, geom: dict, labels: Dict[str, int], box_stats: Dict[str, dict],
                    margin_mm: float = DEFAULT_MARGIN_MM, case: str = "") -> dict:
    """Boxes a perfect localizer would give: the method's box (mean size + margin) centred on each
    organ's reference centre of mass. Same content as a ``{case}_boxes.json``; organs without voxels
    are ``absent``. Used to measure the organ stage alone (oracle localization).

    Args:
        label_zyx: reference label map (z, y, x).
        geom: its geometry record.
        labels: ``{organ: label value}``.
        box_stats: ``{organ: {"mean_size_mm": [x, y, z]}}`` from the localizer's training.
        margin_mm: margin v on every side, mm.
    """
    from nnunet_oar.geometry import centroid_mm
    organs = {}
    for name, value in labels.items():
        if name in ("background", "ignore") or name not in box_stats:
            continue
        mask = label_zyx == value
        if not mask.any():
            organs[name] = {"status": "absent"}
            continue
        c = centroid_mm(geom, mask)
        organs[name] = {"status": "found", "centroid_mm": c.tolist(), "margin_mm": margin_mm,
                        **organ_box(geom, c, box_stats[name]["mean_size_mm"], margin_mm)}
    return {"case": case, "image": geom, "organs": organs, "source": "reference labels (oracle localization)"}
