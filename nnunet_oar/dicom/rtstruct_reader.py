"""Reading an RTSTRUCT back onto a CT grid: which CT series it references, and every ROI rasterised with
the even-odd rule at voxel centres (the reading :func:`nnunet_oar.dicom.rtstruct.write_rtstruct` is written
for). Used by ``nnunet_oar convert-dicom`` (:mod:`nnunet_oar.conversion.dicom_rt`).

A voxel centre on a contour belongs to the structure the contour outlines: inside an outer contour
(scikit-image's polygon fill counts it in), outside a hole (a contour inside an odd number of the slice's
others). Our writer never puts a vertex on a centre; tools that trace a mask's pixels through their centres
do, and so their outer contours keep their boundary voxels and their holes take none of the voxels around
them."""
from __future__ import annotations

from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np


def referenced_series(ds) -> List[str]:
    """The CT series an RTSTRUCT data set references (``ReferencedFrameOfReferenceSequence`` ->
    study -> series), in order, without repeats."""
    out: List[str] = []
    for frame in getattr(ds, "ReferencedFrameOfReferenceSequence", []):
        for study in getattr(frame, "RTReferencedStudySequence", []):
            for series in getattr(study, "RTReferencedSeriesSequence", []):
                uid = str(getattr(series, "SeriesInstanceUID", "") or "")
                if uid and uid not in out:
                    out.append(uid)
    return out


def roi_names(ds) -> List[str]:
    """The ROI names of an RTSTRUCT (``StructureSetROISequence``), in order."""
    return [str(getattr(r, "ROIName", "") or "") for r in getattr(ds, "StructureSetROISequence", [])]


def _points(contour) -> Tuple[Optional[np.ndarray], int]:
    """A contour's points (n, 3) world mm, or None where its ContourData is missing or malformed; and how
    many values it holds."""
    data = getattr(contour, "ContourData", None)
    try:
        values = np.asarray(data if data is not None else [], float).ravel()
    except (TypeError, ValueError):
        return None, int(np.size(data))
    ok = values.size and values.size % 3 == 0 and np.isfinite(values).all()
    return (values.reshape(-1, 3) if ok else None), int(values.size)


def _centres_on(xy: np.ndarray, shape_yx: Sequence[int]) -> Tuple[np.ndarray, np.ndarray]:
    """The voxel centres (rows, columns) on a closed polygon's edges (in-plane indices x, y): the lattice
    points of every edge between two vertices on voxel centres (elsewhere a centre lies on an edge only by a
    coincidence that is not looked for)."""
    rows, cols = [], []
    for (x0, y0), (x1, y1) in zip(xy, np.roll(xy, -1, axis=0)):
        if not all(float(v).is_integer() for v in (x0, y0, x1, y1)):
            continue
        dx, dy = int(x1 - x0), int(y1 - y0)
        g = max(np.gcd(abs(dx), abs(dy)), 1)
        t = np.arange(g + 1)
        cols.append(int(x0) + t * (dx // g))
        rows.append(int(y0) + t * (dy // g))
    if not rows:
        return np.zeros(0, int), np.zeros(0, int)
    r, c = np.concatenate(rows), np.concatenate(cols)
    keep = (r >= 0) & (r < shape_yx[0]) & (c >= 0) & (c < shape_yx[1])
    return r[keep], c[keep]


def rasterize_rois(ds, image, frame_uid: str, keep: Optional[Callable[[str], bool]] = None
                   ) -> Tuple[Dict[str, np.ndarray], Dict[str, str], Dict[str, str]]:
    """Every ROI of an RTSTRUCT on a CT's grid: the even-odd rule per slice at voxel centres, the reading
    :func:`write_rtstruct` is written for (holes and several components kept).

    Args:
        ds: the RTSTRUCT (pydicom data set).
        image: the CT (SimpleITK) whose slices the contours lie on.
        frame_uid: the CT's FrameOfReferenceUID; an ROI in another frame (its own, or where it names none,
            the structure set's only one) is refused.
        keep: the ROI names to read (default all): a plan's other structures (targets, rings, couch) are
            neither checked nor rasterised, which would cost a full-size mask each.

    Returns:
        ``(masks, refused, notes)``: ``{ROI name: bool array (z, y, x)}`` for the ROIs that rasterise,
        ``{ROI name: reason}`` for those that do not (empty, open contours or points, malformed contour
        data, contours outside the image, another frame of reference, contours on fewer than 60 % of the
        slices of its extent), and ``{ROI name: note}`` for ROIs kept with a remark (clipped in-plane,
        contours between slices left out, contours of fewer than 3 points or on one line left out, repeated
        contours counted once, slices without contour).
    """
    from skimage.draw import polygon
    from skimage.measure import points_in_poly
    rois = [r for r in getattr(ds, "StructureSetROISequence", []) if hasattr(r, "ROINumber")]
    names = {int(r.ROINumber): str(getattr(r, "ROIName", "") or "") for r in rois}
    # an ROI without a number cannot be tied to its contours
    unnumbered = [str(getattr(r, "ROIName", "") or "") for r in getattr(ds, "StructureSetROISequence", [])
                  if not hasattr(r, "ROINumber")]
    # an ROI that names no frame is in the structure set's, where it has exactly one
    set_frames = {str(getattr(f, "FrameOfReferenceUID", "") or "")
                  for f in getattr(ds, "ReferencedFrameOfReferenceSequence", [])} - {""}
    default_frame = next(iter(set_frames)) if len(set_frames) == 1 else ""
    frames = {int(r.ROINumber): str(getattr(r, "ReferencedFrameOfReferenceUID", "") or "") or default_frame
              for r in rois}
    shape = image.GetSize()[::-1]
    # world (x, y, z) mm -> continuous index (x, y, z)
    to_index = np.linalg.inv(np.array(image.GetDirection()).reshape(3, 3) * np.array(image.GetSpacing()))
    origin = np.array(image.GetOrigin())
    contours_of = {int(rc.ReferencedROINumber): list(getattr(rc, "ContourSequence", []) or [])
                   for rc in getattr(ds, "ROIContourSequence", []) if hasattr(rc, "ReferencedROINumber")}
    masks, notes = {}, {}
    refused = {name: "no ROINumber: its contours cannot be found" for name in unnumbered
               if keep is None or keep(name)}
    same_name = {n for n in names.values() if list(names.values()).count(n) > 1}
    for number, name in names.items():
        if keep is not None and not keep(name):
            continue
        contours = contours_of.get(number, [])
        if name in same_name:
            refused[name] = "several ROIs have this name"
            continue
        if frames[number] and frame_uid and frames[number] != frame_uid:
            refused[name] = f"frame of reference {frames[number]} is not the CT's ({frame_uid})"
            continue
        if not contours:
            refused[name] = "empty (no contours)"
            continue
        kinds = {str(getattr(c, "ContourGeometricType", "")) for c in contours}
        if kinds != {"CLOSED_PLANAR"}:
            refused[name] = f"contour types {sorted(kinds)}: only CLOSED_PLANAR contours outline a volume"
            continue
        mask, reason, clipped, seen, off_slice, twice, flat = np.zeros(shape, bool), None, False, set(), 0, 0, 0
        on_slice: Dict[int, List[np.ndarray]] = {}     # slice -> its contours' in-plane indices (x, y)
        # a contour belongs to a slice within min(0.5 mm, a quarter slice) of it (planning systems round)
        tol = min(0.5, 0.25 * image.GetSpacing()[2]) / image.GetSpacing()[2]
        for i, c in enumerate(contours):
            pts, n = _points(c)
            if pts is None:
                reason = f"contour {i + 1} has malformed ContourData ({n} values, not x, y, z triplets of numbers)"
                break
            key = np.round(pts, 2).tobytes()
            if key in seen:                      # the same contour twice would cancel itself (even-odd)
                twice += 1
                continue
            seen.add(key)
            idx = (pts - origin) @ to_index.T
            # in-plane indices within 0.01 voxel of a voxel centre go onto it (ContourData's few decimals and
            # float noise put them a hair off): a contour traced through voxel centres, as tools that outline
            # a mask's pixels write them, then holds those centres every time (a 21 x 21 square read 422
            # voxels of its 441)
            near = np.abs(idx[:, :2] - np.round(idx[:, :2])) < 0.01
            idx[:, :2] = np.where(near, np.round(idx[:, :2]), idx[:, :2])
            k = int(round(float(idx[:, 2].mean())))
            if np.abs(idx[:, 2] - k).max() > tol:
                off_slice += 1                   # between slices or not planar: not representable here
                continue
            # a contour of 1-2 points or on one line holds no voxel centre; the polygon filler would still
            # mark the voxels under its points (some export tools write such contours)
            if np.linalg.matrix_rank(idx[:, :2] - idx[:, :2].mean(axis=0), tol=1e-6) < 2:
                flat += 1
                continue
            if not 0 <= k < shape[0]:
                reason = f"a contour at z = {pts[:, 2].mean():.2f} mm lies outside the CT's slices"
                break
            clipped |= bool((idx[:, :2] < -0.5).any() or (idx[:, 0] > shape[2] - 0.5).any()
                            or (idx[:, 1] > shape[1] - 0.5).any())
            on_slice.setdefault(k, []).append(idx[:, :2])
        for k, polys in ({} if reason else on_slice).items():
            for j, xy in enumerate(polys):
                fill = np.zeros(shape[1:], bool)
                rr, cc = polygon(xy[:, 1], xy[:, 0], shape[1:])
                fill[rr, cc] = True
                # inside an odd number of the slice's other contours: a hole, whose own line stays outside it
                if sum(bool(points_in_poly(xy[:1], other)[0]) for m, other in enumerate(polys) if m != j) % 2:
                    fill[_centres_on(xy, shape[1:])] = False
                mask[k] ^= fill                  # even-odd: a contour inside another is a hole
        slices = np.flatnonzero(mask.any(axis=(1, 2)))
        gaps = int(slices[-1] - slices[0] + 1 - len(slices)) if len(slices) else 0
        remarks = [text for n, text in (
            (clipped, "extends beyond the CT's field of view; clipped to it"),
            (off_slice, f"{off_slice} contour(s) between CT slices or not planar, left out"),
            (flat, f"{flat} contour(s) of fewer than 3 points or on one line, left out"),
            (twice, f"{twice} repeated contour(s) counted once"),
            (gaps, f"{gaps} slice(s) without contour inside its extent")) if n]
        if reason:
            refused[name] = reason
        elif not mask.any():
            refused[name] = "its contours enclose no voxel centre" + (f" ({remarks[0]})" if remarks else "")
        elif gaps >= 0.4 * (slices[-1] - slices[0] + 1):
            refused[name] = (f"contoured on {len(slices)} of the {slices[-1] - slices[0] + 1} slices of its extent "
                             "(sparse contouring: interpolate in the planning system first)")
        else:
            masks[name] = mask
            if remarks:
                notes[name] = "; ".join(remarks)
    return masks, refused, notes
