"""Heat map -> centroid -> box, and the per-organ box statistics.

Region: the voxels above tau form one or more connected components (26-connectivity). The *region*
is the component with the largest heat-map mass (sum of values), so a lone outlier spike above tau
does not move the centroid; the centroid is that region's bounding-box mid-point (the paper's
"mid-point", ``readout="midpoint"``) or its heat-map-weighted mean (``readout="weighted"``, steadier when
the map's tails are uneven; docs/localization.md compares the two). A heat map whose peak is below tau
means the organ is absent (or missed): no box.

Box: the organ's mean box size from the training labels (world mm, per world axis), centred on the
centroid, plus a margin v mm on every side, converted to voxel indices of the original image and
clipped to it. Along the body axis (world z) the box is kept in the scanned part of the image
(:func:`into_scan`): where a scan ends at the skull base or a slab of slices holds no data, the network's
centroid of an organ it cannot see runs off into the empty slices (OpenKBP pt_221: the brainstem 74 mm
above the last slice with anatomy, containment 0).
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence, Union

import numpy as np
from scipy import ndimage

from nnunet_oar.geometry import index_box_to_world, mask_bbox_xyz, world_box_to_index

DEFAULT_TAU = 0.1
DEFAULT_MARGIN_MM = 10.0
READOUTS = ("midpoint", "weighted")
DEFAULT_READOUT = "weighted"  # measured on the OpenKBP calibration fold: lower errors for every organ (docs/localization.md)


def heatmap_region(heatmap: np.ndarray, tau: float = DEFAULT_TAU, readout: str = DEFAULT_READOUT
                   ) -> Optional[Dict[str, object]]:
    """Find the organ's region in one heat map.

    Args:
        heatmap: 3D array (any axis order).
        tau: threshold.
        readout: ``"midpoint"`` (bounding-box mid-point of the region, the paper's) or ``"weighted"``
            (mean voxel position of the region weighted by the heat map).

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
    if readout == "weighted":
        w = heatmap[region].astype(np.float64)
        centroid = (idx * w[:, None]).sum(0) / w.sum()
    elif readout == "midpoint":
        centroid = (idx.min(0) + idx.max(0)) / 2.0
    else:
        raise ValueError(f"readout must be one of {READOUTS}, got {readout!r}")
    return {"peak": float(heatmap[region].max()), "centroid": centroid, "mask": region}


def into_scan(centroid_mm: Sequence[float], size_mm: Sequence[float],
              scan_z_mm: Optional[Sequence[float]]) -> np.ndarray:
    """The centroid moved along world z, as little as needed, so that the organ's mean-size box (without
    margin) lies in the scanned extent; centred on it when the scan is shorter than the box.

    Args:
        centroid_mm: world centroid (x, y, z) mm.
        size_mm: mean box size (x, y, z) mm.
        scan_z_mm: ``(min, max)`` world z (mm) of the voxels that hold the patient
            (:func:`nnunet_oar.localization.grid.scanned_extent_mm`); ``None``: unchanged.

    Returns:
        (3,) world centroid, mm.
    """
    c = np.array(centroid_mm, float)
    if scan_z_mm is not None:
        lo, hi = scan_z_mm
        half = float(size_mm[2]) / 2
        c[2] = (lo + hi) / 2 if hi - lo < 2 * half else float(np.clip(c[2], lo + half, hi - half))
    return c


def heatmap_centroid(entry: dict) -> list:
    """The heat map's own world centroid (x, y, z) mm of a found organ's boxes entry: before anatomical
    consistency moved it (``position_check``) or the box was moved into the scan (``moved_into_scan_mm``)."""
    if "position_check" in entry:
        return list(entry["position_check"]["heatmap_centroid_mm"])
    c = list(entry["centroid_mm"])
    c[2] -= entry.get("moved_into_scan_mm", 0.0)
    return c


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


def centroid_offsets_mm(label_zyx: np.ndarray, geom: dict, labels: Dict[str, int]) -> Dict[str, list]:
    """Each organ's centroid relative to the image grid's centre (world mm, x,y,z) in one label map: what
    the constant guess (:func:`constant_guess_boxes`) averages."""
    from nnunet_oar.geometry import centroid_mm
    centre = image_centre_mm(geom)
    out = {}
    for name, value in labels.items():
        c = centroid_mm(geom, label_zyx == value) if value else None
        if c is not None:
            out[name] = (c - centre).tolist()
    return out


def image_centre_mm(geom: dict) -> np.ndarray:
    """World point (x, y, z) mm of the centre of the image grid."""
    from nnunet_oar.geometry import index_to_world
    return index_to_world(geom, (np.asarray(geom["size_xyz"], float) - 1) / 2)


def mean_box_sizes(per_case: Dict[str, Dict[str, list]], cases: Sequence[str],
                   offsets: Optional[Dict[str, Dict[str, list]]] = None) -> Dict[str, dict]:
    """Average the per-case box sizes over ``cases``: ``{organ: {"mean_size_mm": [x,y,z], "n": count}}``;
    with ``offsets`` (:func:`centroid_offsets_mm` per case) also ``"mean_offset_mm"``, the constant guess."""
    acc: Dict[str, list] = {}
    for c in cases:
        for organ, size in per_case.get(c, {}).items():
            acc.setdefault(organ, []).append(size)
    out = {o: {"mean_size_mm": np.mean(v, 0).tolist(), "n": len(v)} for o, v in acc.items()}
    if offsets is not None:
        for organ, stats in out.items():
            v = [offsets[c][organ] for c in cases if organ in offsets.get(c, {})]
            if v:
                stats["mean_offset_mm"] = np.mean(v, 0).tolist()
    return out


def constant_guess_boxes(geom: dict, box_stats: Dict[str, dict], margin_mm: Union[float, Dict[str, float]],
                         case: str = "", scan_z_mm: Optional[Sequence[float]] = None) -> dict:
    """The floor every localizer must beat: each organ at its training-set mean position relative to the
    image centre (``mean_offset_mm`` of ``box_stats``), boxed like the localizer's boxes (mean size +
    margin, kept in the scanned extent ``scan_z_mm`` when given (:func:`into_scan`); an organ missing from a
    per-organ ``margin_mm`` gets the default, as in the localizer). Same content as a ``{case}_boxes.json``;
    every organ with an offset is ``found``."""
    centre, organs = image_centre_mm(geom), {}
    for name, stats in box_stats.items():
        if "mean_offset_mm" not in stats:
            continue
        c = into_scan(centre + np.asarray(stats["mean_offset_mm"]), stats["mean_size_mm"], scan_z_mm)
        v = margin_mm.get(name, DEFAULT_MARGIN_MM) if isinstance(margin_mm, dict) else margin_mm
        organs[name] = {"status": "found", "centroid_mm": c.tolist(), "margin_mm": v,
                        **organ_box(geom, c, stats["mean_size_mm"], v)}
    return {"case": case, "image": geom, "organs": organs, "source": "constant guess (training-set mean position)"}


def cut_faces(mask_zyx: np.ndarray, start_xyz: Sequence[int], stop_xyz: Sequence[int], size_xyz: Sequence[int]
              ) -> list:
    """Faces of a box that cut an organ: where the organ's mask predicted in the box touches a face that
    is not the image border, the organ most likely goes on outside the box (the two-stage method's typical
    failure: a box too small or off-centre).

    Args:
        mask_zyx: the organ's predicted mask on the box, numpy (z, y, x).
        start_xyz, stop_xyz: the box in image voxel indices, SimpleITK (x, y, z), stop exclusive.
        size_xyz: the image size (x, y, z).

    Returns:
        Names of the cutting faces, e.g. ``["z-", "x+"]`` (``-`` at the start index); empty when none.
    """
    faces = []
    for k, axis_name in enumerate("xyz"):
        axis = 2 - k                       # numpy axis of SimpleITK axis k
        if mask_zyx.shape[axis] == 0:
            continue
        if start_xyz[k] > 0 and np.take(mask_zyx, 0, axis=axis).any():
            faces.append(f"{axis_name}-")
        if stop_xyz[k] < size_xyz[k] and np.take(mask_zyx, -1, axis=axis).any():
            faces.append(f"{axis_name}+")
    return faces


def reference_boxes(label_zyx: np.ndarray, geom: dict, labels: Dict[str, int], box_stats: Dict[str, dict],
                    margin_mm: Union[float, Dict[str, float]] = DEFAULT_MARGIN_MM, case: str = "",
                    z_extent: Sequence[str] = ()) -> dict:
    """Boxes a perfect localizer would give: the method's box (mean size + margin) centred on each
    organ's reference centre of mass. Same content as a ``{case}_boxes.json``; organs without voxels
    are ``absent``. Used to measure the organ stage alone (oracle localization).

    Args:
        label_zyx: reference label map (z, y, x).
        geom: its geometry record.
        labels: ``{organ: label value}``.
        box_stats: ``{organ: {"mean_size_mm": [x, y, z]}}`` from the localizer's training.
        margin_mm: margin v on every side, mm (one value or per organ).
        z_extent: organs whose boxes span a learned extent along z: a perfect localizer gives them their
            reference extent along z (``size_mm`` records it).
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
        v = margin_mm[name] if isinstance(margin_mm, dict) else margin_mm
        size = list(map(float, box_stats[name]["mean_size_mm"]))
        extent = {}
        if name in z_extent:
            lo, hi = index_box_to_world(geom, *mask_bbox_xyz(mask))
            c[2], size[2] = (lo[2] + hi[2]) / 2, float(hi[2] - lo[2])
            extent = {"size_mm": size}
        organs[name] = {"status": "found", "centroid_mm": c.tolist(), "margin_mm": v, **extent,
                        **organ_box(geom, c, size, v)}
    return {"case": case, "image": geom, "organs": organs, "source": "reference labels (oracle localization)"}
