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


def volume_outliers(volumes_ml: Dict[str, Dict[str, float]], min_cases: int = MIN_CASES) -> List[dict]:
    """Reference contours whose volume lies outside the far-out fences (:func:`far_out_fences`) of the same
    organ's contours over the data set: a mislabelled structure, a PRV under the organ's name, a slip of
    the brush. Absent organs (0 mL) are not contours and do not count.

    Args:
        volumes_ml: ``{case: {organ: volume in mL}}``.
        min_cases: organs with fewer contours are not judged.

    Returns:
        ``[{"case", "organ", "volume_ml", "median_ml", "fences_ml": [low, high]}]``, by organ and case.
    """
    per_organ: Dict[str, Dict[str, float]] = {}
    for case, organs in volumes_ml.items():
        for organ, v in organs.items():
            if v > 0:
                per_organ.setdefault(organ, {})[case] = float(v)
    out = []
    for organ, by_case in sorted(per_organ.items()):
        if len(by_case) < min_cases:
            continue
        low, high = far_out_fences(list(by_case.values()))
        median = float(np.median(list(by_case.values())))
        out += [{"case": case, "organ": organ, "volume_ml": round(v, 2), "median_ml": round(median, 2),
                 "fences_ml": [round(max(low, 0.0), 2), round(high, 2)]}       # no volume lies below 0
                for case, v in sorted(by_case.items()) if not low <= v <= high]
    return out


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
