"""Anatomical consistency: a centroid far from where the other organs put it is moved there.

A heat map can peak on the wrong structure. On OpenKBP's calibration fold a right parotid was found 87 mm
from its contour (peak 0.27) and a larynx 75 mm away (peak 0.12); a calibrated margin then grows for every
patient (to 60 mm for the parotid) without saving that one. The organs' positions relative to each other
vary far less than that, so each organ's offset from every other organ is learned from the training labels
(median, inter-quartile range per axis; an anchor's spread is the norm of its IQR). At inference the organs
found with a confident peak (:data:`CONFIDENT_PEAK`) among an organ's :data:`ANCHORS` steadiest anchors
vote where it should be. A voter beyond the fence from the voters' per-axis median is left out (one wrong
anchor among three is outvoted), and at least :data:`MIN_VOTERS` must remain: a single organ, right or
wrong, never moves another. The fence is :data:`FENCE` times the largest spread among the voters, at least
:data:`MIN_FENCE_MM`. A centroid beyond the fence from the vote (the remaining voters' median) is moved to
it; its entry keeps the heat map's centroid (``position_check``). Absence stays the heat map's call (a peak
below tau): this only moves found organs.

Units: world mm, axes (x, y, z).
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence, Tuple

import numpy as np

CONFIDENT_PEAK = 0.5    # half the target Gaussian's maximum: below it the network itself is unsure
ANCHORS = 3             # anchors voting on an organ's position (per-axis median)
FENCE = 3.0             # distance from the vote, in units of the voters' largest spread, that moves a centroid
MIN_VOTERS = 2
MIN_FENCE_MM = 20.0     # never closer: a heat map off by less is no failure (median errors on real CT: 3-10 mm)
MIN_CASES = 10


def fit_position(cases: Sequence[dict], organ: str, min_cases: int = MIN_CASES) -> Optional[dict]:
    """Offsets of one organ from the other organs over training cases, steadiest first.

    Args:
        cases: per case ``{"organs": {organ: {"position_mm": [x, y, z], ...}}}``
            (:func:`~nnunet_oar.localization.extent.organ_facts`).
        organ: the organ to fit.
        min_cases: an anchor needs the organ and itself in at least this many cases.

    Returns:
        ``{"anchors": [{"anchor", "offset_mm": [x, y, z], "iqr_mm": [x, y, z], "n"}, ...]}``, anchors sorted
        by the norm of their IQR; ``None`` when no anchor has ``min_cases`` cases.
    """
    offsets: Dict[str, list] = {}
    for case in cases:
        own = case["organs"].get(organ)
        if own is None:
            continue
        for name, facts in case["organs"].items():
            if name != organ:
                offsets.setdefault(name, []).append(np.subtract(own["position_mm"], facts["position_mm"]))
    anchors = []
    for name, d in offsets.items():
        if len(d) >= min_cases:
            iqr = np.subtract(*np.percentile(d, [75, 25], axis=0))
            anchors.append({"anchor": name, "offset_mm": np.round(np.median(d, axis=0), 2).tolist(),
                            "iqr_mm": np.round(iqr, 2).tolist(), "n": len(d)})
    if not anchors:
        return None
    anchors.sort(key=lambda a: (float(np.linalg.norm(a["iqr_mm"])), a["anchor"]))
    return {"anchors": anchors}


def validate_positions(rules, source: str) -> Dict[str, dict]:
    """``rules`` (``{organ: rule}``, from ``margins.json`` or ``models.json``) as :func:`fit_position` writes
    them, or :class:`~nnunet_oar.io.InputError` naming ``source`` and the organ."""
    from nnunet_oar.io import InputError
    if not isinstance(rules, dict):
        raise InputError(f"{source}: the positions must be {{organ: rule}}, got {type(rules).__name__}")
    for organ, rule in rules.items():
        anchors = rule.get("anchors") if isinstance(rule, dict) else None
        if not (isinstance(anchors, list) and anchors and all(
                isinstance(a, dict) and isinstance(a.get("anchor"), str)
                and all(_finite_triple(a.get(k)) for k in ("offset_mm", "iqr_mm")) for a in anchors)):
            raise InputError(f"{source}: {organ}'s position needs anchors, each with anchor, offset_mm and iqr_mm "
                             "(x, y, z; finite numbers, mm)")
    return rules


def _finite_triple(v) -> bool:
    return isinstance(v, list) and len(v) == 3 and all(
        isinstance(x, (int, float)) and not isinstance(x, bool) and np.isfinite(x) for x in v)


def expected_position(rule: dict, found: Dict[str, Tuple[Sequence[float], float]]
                      ) -> Optional[Tuple[np.ndarray, list, float]]:
    """Where the confidently found organs put one organ.

    Args:
        rule: the organ's :func:`fit_position` rule.
        found: ``{organ: (centroid (x, y, z) mm, heat-map peak)}`` of one case's found organs.

    Returns:
        ``(position (x, y, z) mm, the anchors that voted, fence mm)``, or ``None`` when fewer than
        :data:`MIN_VOTERS` confident anchors agree.
    """
    votes = [(a["anchor"], np.add(found[a["anchor"]][0], a["offset_mm"]), float(np.linalg.norm(a["iqr_mm"])))
             for a in rule["anchors"] if a["anchor"] in found and found[a["anchor"]][1] >= CONFIDENT_PEAK][:ANCHORS]
    for _ in range(2):          # leave out the voters beyond the fence, then check those that remain
        if len(votes) < MIN_VOTERS:
            return None
        position = np.median([v for _, v, _ in votes], axis=0)
        fence = max(FENCE * max(spread for _, _, spread in votes), MIN_FENCE_MM)
        agreeing = [vote for vote in votes if np.linalg.norm(vote[1] - position) <= fence]
        if len(agreeing) == len(votes):
            return position, [name for name, _, _ in votes], fence
        votes = agreeing
    return None


def check_positions(organs: Dict[str, dict], rules: Dict[str, dict], mean_sizes: Dict[str, Sequence[float]],
                    image_geom: dict, scan_z_mm: Optional[Sequence[float]]) -> None:
    """Move each found organ whose centroid lies beyond the fence from where the other organs put it, in
    place in one case's ``organs`` of a boxes record (before the learned extents, which anchor on centroids).

    The votes use every organ's heat-map centroid as found, so the order of the organs does not matter. A
    moved organ gets its mean-size box at the voted position (kept in the scan, ``scan_z_mm``) and
    ``position_check``: ``{"heatmap_centroid_mm", "distance_mm", "anchors"}``.
    """
    from nnunet_oar.localization.boxes import heatmap_centroid, into_scan, organ_box
    found = {o: (heatmap_centroid(e), e["peak"]) for o, e in organs.items() if e.get("status") == "found"}
    moves = {}
    for organ, rule in rules.items():
        if organ not in found:
            continue
        vote = expected_position(rule, {o: f for o, f in found.items() if o != organ})
        if vote is None:
            continue
        distance = float(np.linalg.norm(np.subtract(found[organ][0], vote[0])))
        if distance > vote[2]:
            moves[organ] = (vote[0], vote[1], distance)
    for organ, (position, anchors, distance) in moves.items():
        entry, size = organs[organ], mean_sizes[organ]
        c = into_scan(position, size, scan_z_mm)
        entry.pop("moved_into_scan_mm", None)
        entry.update(centroid_mm=c.tolist(), **organ_box(image_geom, c, size, entry["margin_mm"]),
                     position_check={"heatmap_centroid_mm": [round(float(x), 1) for x in found[organ][0]],
                                     "distance_mm": round(distance, 1), "anchors": anchors})
        if c[2] != position[2]:
            entry["moved_into_scan_mm"] = round(float(c[2] - position[2]), 1)
