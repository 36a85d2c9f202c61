"""Plausibility of an input CT and of the organs found in it: absence must stay a result.

A network always outputs something, so without a check an all-air volume yields a 10 mL "liver" at
-1000 HU. Each organ network's training data give what its organ looks like: the HU range of its voxels
(nnU-Net's ``dataset_fingerprint.json`` of the organ data set: 0.5 and 99.5 percentiles) and the range of
its volumes (``crops.json``, recorded in ``models.json`` by ``export-models``). A predicted organ whose
mean HU lies outside the HU range (widened by :data:`HU_SLACK`) is removed and reported absent with the
reason; a volume outside the range (widened by :data:`VOLUME_FACTOR`) or a field of view smaller than
half the organ's mean box is flagged in the statistics, not removed (a partly imaged organ is real);
so is every organ found in an input with :func:`input_warnings` (see ``OARPredictor``).

The references get a check too: a contour whose volume lies far outside its organ's other contours in
the same data set (:func:`volume_outliers`) is named when the data set is converted, since a "SpinalCord"
of 500 mL would teach a network, size its boxes and widen the volume range above.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import numpy as np

HU_SLACK = 100.0         # HU added on both sides of the trained range (contrast, scanner and clinic differ)
VOLUME_FACTOR = 3.0      # volumes down to min / 3 and up to 3 x max of the training organs pass


FAR_OUT = 3.0            # Tukey's far-out fences: Q1 - 3 IQR, Q3 + 3 IQR
MIN_CASES = 10           # fewer contours of an organ give no range to judge one of them by


def far_out_fences(values: Sequence[float]) -> tuple:
    """Tukey's far-out fences ``(Q1 - 3 IQR, Q3 + 3 IQR)`` of ``values``: beyond them a value is no
    ordinary member of the sample (the same rule as the localizer's far misses)."""
    q1, q3 = np.percentile(np.asarray(values, float), [25, 75])
    return float(q1 - FAR_OUT * (q3 - q1)), float(q3 + FAR_OUT * (q3 - q1))


def volume_fences(volumes_ml: Dict[str, Dict[str, float]], min_cases: int = MIN_CASES) -> Dict[str, dict]:
    """Per organ with at least ``min_cases`` contours, the far-out fences (:func:`far_out_fences`, the low one
    no lower than 0 mL) and the median of its contours' volumes. Absent organs (0 mL) are not contours.

    Args:
        volumes_ml: ``{case: {organ: volume in mL}}``.

    Returns:
        ``{organ: {"fences_ml": [low, high], "median_ml", "n"}}``.
    """
    per_organ: Dict[str, List[float]] = {}
    for organs in volumes_ml.values():
        for organ, v in organs.items():
            if v > 0:
                per_organ.setdefault(organ, []).append(float(v))
    out = {}
    for organ, v in sorted(per_organ.items()):
        if len(v) >= min_cases:
            low, high = far_out_fences(v)
            out[organ] = {"fences_ml": [round(max(low, 0.0), 2), round(high, 2)],     # no volume lies below 0
                          "median_ml": round(float(np.median(v)), 2), "n": len(v)}
    return out


def volume_outliers(volumes_ml: Dict[str, Dict[str, float]], min_cases: int = MIN_CASES) -> List[dict]:
    """Reference contours whose volume lies outside their organ's fences over the same data set
    (:func:`volume_fences`): a mislabelled structure, a PRV under the organ's name, a slip of the brush.

    Returns:
        ``[{"case", "organ", "volume_ml", "median_ml", "fences_ml": [low, high]}]``, by organ and case.
    """
    fences = volume_fences(volumes_ml, min_cases)
    return [{"case": case, "organ": organ, "volume_ml": round(v, 2), "median_ml": f["median_ml"],
             "fences_ml": f["fences_ml"]}
            for organ, f in fences.items() for case, organs in sorted(volumes_ml.items())
            for v in [organs.get(organ, 0.0)] if v > 0 and not f["fences_ml"][0] <= v <= f["fences_ml"][1]]


def input_warnings(size_xyz: Sequence[int], spacing_xyz: Sequence[float], ct_zyx: np.ndarray) -> List[str]:
    """Reasons why an image does not look like a CT in HU (empty when it does).

    Args:
        size_xyz: image size, voxels (x, y, z).
        spacing_xyz: voxel spacing, mm (x, y, z).
        ct_zyx: the voxel values (z, y, x).
    """
    out = []
    if min(size_xyz) < 5:
        out.append(f"only {min(size_xyz)} voxels along one axis (size {list(size_xyz)})")
    if max(spacing_xyz) > 10:
        out.append(f"voxel spacing up to {max(spacing_xyz):.1f} mm (CT is rarely coarser than 10 mm)")
    # scanners pad outside the reconstruction circle with -1024, -2048 or -3024, so only content is judged
    tissue = float(np.mean((ct_zyx > -200) & (ct_zyx < 300)))
    if tissue < 0.01:
        out.append(f"{tissue:.1%} of the voxels are soft tissue (-200 to 300 HU): an empty image, or not CT in HU?")
    if float(ct_zyx.min()) > -500:
        out.append(f"no voxel below -500 HU (no air; lowest {float(ct_zyx.min()):.0f}): not CT in HU?")
    return out


def organ_check(mask_zyx: np.ndarray, ct_zyx: np.ndarray, spacing_xyz: Sequence[float],
                expected: Dict[str, Optional[Sequence[float]]]) -> Dict[str, object]:
    """Check one predicted organ against what its network was trained on.

    Args:
        mask_zyx: the organ's predicted voxels (z, y, x).
        ct_zyx: CT in HU on the same grid.
        spacing_xyz: voxel spacing, mm (x, y, z).
        expected: ``mean_hu`` (trained HU range [lo, hi]), ``volume_ml`` (trained volume range [lo, hi], mL)
            and ``size_mm`` (mean box size x, y, z, mm); any may be ``None`` (not checked).

    Returns:
        ``{"implausible": reason or None, "flags": [reasons]}``: an implausible organ is to be removed.
    """
    out: Dict[str, object] = {"implausible": None, "flags": []}
    n = int(mask_zyx.sum())
    if n == 0:
        return out
    hu = expected.get("mean_hu")
    mean = float(ct_zyx[mask_zyx].mean())
    if hu is not None and not hu[0] - HU_SLACK <= mean <= hu[1] + HU_SLACK:
        out["implausible"] = (f"mean {mean:.0f} HU, outside the {hu[0]:.0f} to {hu[1]:.0f} HU of its training "
                              f"voxels (+/- {HU_SLACK:.0f})")
    volume = n * float(np.prod(spacing_xyz)) / 1000
    vol = expected.get("volume_ml")
    if vol is not None and not vol[0] / VOLUME_FACTOR <= volume <= vol[1] * VOLUME_FACTOR:
        out["flags"].append(f"volume {volume:.1f} mL, outside {vol[0] / VOLUME_FACTOR:.1f} to "
                            f"{vol[1] * VOLUME_FACTOR:.1f} mL (training range / x {VOLUME_FACTOR:g})")
    size = expected.get("size_mm")
    fov = np.asarray(mask_zyx.shape[::-1]) * np.asarray(spacing_xyz)
    if size is not None and (fov < 0.5 * np.asarray(size)).any():
        out["flags"].append(f"field of view {np.round(fov).tolist()} mm is less than half the organ's mean "
                            f"box {np.round(size).tolist()} mm")
    return out
