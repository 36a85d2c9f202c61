"""A learned extent along the body axis, for organs whose contoured length varies (the paper's future work).

The mean-size box suits compact organs. A long organ's contoured length depends on the field of view and
the clinic: on OpenKBP the spinal cord runs from the brainstem down to where the scanned patient ends, so
its centroid moves with the scan, not with anything the heat map sees. Each end of an organ along world z
(``bottom``, ``top``) is therefore placed relative to the anchor that predicts it best on training cases:
the organ's own centroid (which is what the mean-size box does), an end of the scanned slices
(``scan_bottom``, ``scan_top``, :func:`nnunet_oar.localization.grid.scanned_extent_mm`) or another organ's
centroid, at the median offset; the anchor is the one whose offset has the smallest inter-quartile range.

The IQR does not see how well the localizer finds an anchor, so whether an organ uses its learned extent is
decided on out-of-fold boxes (``localize --cross-validation``), like its margin, and recorded with it in
``margins.json``; inference reads it from there. Units: world mm along z (the body axis of axial CT).
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from nnunet_oar.geometry import centroid_mm, index_box_to_world, mask_bbox_xyz

ENDS = ("bottom", "top")
SELF = "self"
MIN_CASES = 10


def organ_facts(label_zyx: np.ndarray, geom: dict, labels: Dict[str, int]) -> Dict[str, dict]:
    """Each organ's extent and centroid along world z, and its centroid, in one label map: what the learned
    extents and the anatomical consistency (:mod:`~nnunet_oar.localization.consistency`) learn from.

    Args:
        label_zyx: label map (z, y, x); geom: its geometry record; labels: ``{organ: value}`` to measure.

    Returns:
        ``{organ: {"ends_mm": [bottom, top], "centroid_mm": z, "position_mm": [x, y, z]}}`` (world mm; voxel
        cells included in the ends), for the organs present.
    """
    out = {}
    for organ, value in labels.items():
        mask = label_zyx == value
        bb = mask_bbox_xyz(mask)
        if bb is not None:
            lo, hi = index_box_to_world(geom, *bb)
            c = [float(x) for x in centroid_mm(geom, mask)]
            out[organ] = {"ends_mm": [float(lo[2]), float(hi[2])], "centroid_mm": c[2], "position_mm": c}
    return out


def found_centroids_z(organs: Dict[str, dict]) -> Dict[str, float]:
    """World z (mm) of the centroid of every found organ of one case's boxes record."""
    return {o: e["centroid_mm"][2] for o, e in organs.items() if e.get("status") == "found"}


def anchors_z(scan_z_mm: Optional[Sequence[float]], centroids_z: Dict[str, float]) -> Dict[str, float]:
    """The anchors of one case: the scanned extent's ends (when known) and the organs' centroids (z, mm)."""
    out = dict(centroids_z)
    if scan_z_mm is not None:
        out.update(scan_bottom=float(scan_z_mm[0]), scan_top=float(scan_z_mm[1]))
    return out


def fit_z_extent(cases: Sequence[dict], organ: str, min_cases: int = MIN_CASES) -> Optional[dict]:
    """The best anchor and offset of each end of one organ over training cases.

    Args:
        cases: per case ``{"scan_z_mm": [lo, hi] or None, "organs": organ_facts(...)}``.
        organ: the organ to fit.
        min_cases: an anchor needs the organ and itself in at least this many cases.

    Returns:
        ``{"bottom": {"anchor", "offset_mm", "iqr_mm", "n"}, "top": {...}}``, or ``None`` with fewer than
        ``min_cases`` cases holding the organ.
    """
    rule = {}
    for e, end in enumerate(ENDS):
        offsets: Dict[str, List[float]] = {}
        for case in cases:
            facts = case["organs"].get(organ)
            if facts is None:
                continue
            anchors = anchors_z(case.get("scan_z_mm"), {o: f["centroid_mm"] for o, f in case["organs"].items() if o != organ})
            anchors[SELF] = facts["centroid_mm"]
            for name, z in anchors.items():
                offsets.setdefault(name, []).append(facts["ends_mm"][e] - z)
        if len(offsets.get(SELF, [])) < min_cases:
            return None
        spread = {name: float(np.subtract(*np.percentile(d, [75, 25]))) for name, d in offsets.items()
                  if len(d) >= min_cases}
        best = min(spread, key=lambda name: (spread[name], name != SELF))     # a tie keeps the organ's own
        rule[end] = {"anchor": best, "offset_mm": round(float(np.median(offsets[best])), 2),
                     "iqr_mm": round(spread[best], 2), "n": len(offsets[best])}
    return rule


def learned_ends(rule: dict, own_z: float, anchors: Dict[str, float],
                 scan_z_mm: Optional[Sequence[float]] = None) -> Optional[Tuple[float, float]]:
    """``(bottom, top)`` z (mm) of one organ in one case from its rule (:func:`fit_z_extent`), its own
    centroid z and the case's anchors (:func:`anchors_z`), kept in the scanned extent ``scan_z_mm`` when
    given (what lies beyond cannot be segmented); ``None`` when an anchor is missing (say, the anchor organ
    was not found) or the ends would not make an extent."""
    ends = []
    for end in ENDS:
        anchor = rule[end]["anchor"]
        z = own_z if anchor == SELF else anchors.get(anchor)
        if z is None:
            return None
        ends.append(z + rule[end]["offset_mm"])
    if scan_z_mm is not None:
        ends = [max(ends[0], scan_z_mm[0]), min(ends[1], scan_z_mm[1])]
    return (ends[0], ends[1]) if ends[1] > ends[0] else None


def apply_z_extent(organs: Dict[str, dict], rules: Dict[str, dict], mean_sizes: Dict[str, Sequence[float]],
                   image_geom: dict, scan_z_mm: Optional[Sequence[float]]) -> None:
    """Give each found organ that has a rule the box between its learned ends (its mean size in-plane),
    in place in one case's ``organs`` of a boxes record. The anchors are the other organs' centroids as
    found (mean-size boxes) and the scanned extent, which also bounds the ends; an organ whose anchor is
    missing keeps its box. The entry records
    ``size_mm`` (the box without margin) and ``z_extent`` (the box's ends, their anchors, the heat map's z).
    """
    from nnunet_oar.localization.boxes import heatmap_centroid, organ_box
    centroids = found_centroids_z(organs)
    anchors = anchors_z(scan_z_mm, centroids)
    for organ, rule in rules.items():
        entry = organs.get(organ, {})
        if entry.get("status") != "found":
            continue
        ends = learned_ends(rule, centroids[organ], anchors, scan_z_mm)
        if ends is None:
            continue
        heat_z = heatmap_centroid(entry)[2]
        entry.pop("moved_into_scan_mm", None)
        size = [*map(float, mean_sizes[organ][:2]), ends[1] - ends[0]]
        c = [*entry["centroid_mm"][:2], (ends[0] + ends[1]) / 2]
        entry.update(centroid_mm=c, size_mm=size, **organ_box(image_geom, c, size, entry["margin_mm"]),
                     z_extent={"ends_mm": [round(z, 1) for z in ends], "heatmap_z_mm": round(heat_z, 1),
                               "anchors": {end: rule[end]["anchor"] for end in ENDS}})
