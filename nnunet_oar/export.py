"""Clinical outputs of one segmented CT: organ statistics (JSON + CSV), RTSTRUCT, DICOM SEG, preview.

Used by ``nnunet_oar predict`` (flags ``--rtstruct``, ``--dicom-seg``, ``--preview``) and by
``nnunet_oar export``, which converts an existing label map. File names, in the output folder:
``{case}_stats.json``, ``{case}_stats.csv``, ``{case}_rtstruct.dcm``, ``{case}_seg.dcm``,
``{case}_preview.png``; every file is written atomically.
"""
from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Dict, Optional

import numpy as np
import SimpleITK as sitk

from nnunet_oar.contracts import BOXES_SUFFIX, LABELS_SUFFIX, STATS_SUFFIX, case_file, check_case_set, read_boxes
from nnunet_oar.geometry import centroid_mm, index_box_to_world, mask_bbox_xyz
from nnunet_oar.io import InputError, atomic_path, case_id, geometry, read_image, read_json, same_geometry, write_json

STATS_COLUMNS = ["organ", "status", "localizer", "volume_ml", "mean_hu", "centroid_x_mm", "centroid_y_mm",
                 "centroid_z_mm", "box_min_x_mm", "box_min_y_mm", "box_min_z_mm", "box_max_x_mm", "box_max_y_mm",
                 "box_max_z_mm", "cut_by_box", "implausible", "flags"]


def organ_stats(label_zyx: np.ndarray, ct_zyx: np.ndarray, geom: dict, labels: Dict[str, int],
                boxes: Optional[dict] = None) -> Dict[str, dict]:
    """Per organ: ``status``, ``volume_ml``, ``mean_hu``, ``centroid_mm`` and ``box_mm`` (world x, y, z).

    Args:
        label_zyx: label map (z, y, x).
        ct_zyx: CT in HU on the same grid.
        geom: geometry record of that grid.
        labels: ``{organ: label value}`` of the label map.
        boxes: the localizer's ``{case}_boxes.json`` (adds its status per organ), if any.

    Status: ``found`` (voxels present), ``absent`` (none: not found by the localizer, no voxel won
    the merge, or removed as ``implausible``, with the reason) or ``not_requested``; ``flags`` lists
    doubts that did not remove the organ (:mod:`nnunet_oar.plausibility`). ``cut_by_box`` (from the boxes)
    lists the box faces inside the image that the organ's prediction touches: it may go on outside its box.
    ``postprocessing`` (``method``, ``removed_voxels``) says what the organ's postprocessing removed.
    ``box_mm`` is the world extent of the organ's voxels, cells included (``min``/``max``, x, y, z in mm).
    """
    voxel_ml = float(np.prod(geom["spacing_xyz"])) / 1000.0
    entries = (boxes or {}).get("organs", {})
    names = list(dict.fromkeys([o for o in labels if o not in ("background", "ignore")] + list(entries)))
    out = {}
    for organ in names:
        loc = entries.get(organ, {}).get("status")
        if organ not in labels or loc == "not_requested":
            out[organ] = {"status": "not_requested"}
            continue
        mask = label_zyx == labels[organ]
        n = int(mask.sum())
        rec = {"status": "found" if n else "absent", "volume_ml": n * voxel_ml}
        if loc is not None:
            rec["localizer"] = loc
        for key in ("cut_by_box", "implausible", "flags", "postprocessing"):     # the predictor's findings
            if key in entries.get(organ, {}):
                rec[key] = entries[organ][key]
        if n:
            lo, hi = index_box_to_world(geom, *mask_bbox_xyz(mask))
            rec.update(mean_hu=float(ct_zyx[mask].mean()), centroid_mm=centroid_mm(geom, mask).tolist(),
                       box_mm={"min": lo.tolist(), "max": hi.tolist()})
        out[organ] = rec
    return out


def stats_csv(stats: Dict[str, dict]) -> str:
    """The statistics as CSV, one row per organ (empty cells where a value does not apply)."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(STATS_COLUMNS)
    for organ, s in stats.items():
        c = s.get("centroid_mm") or [None] * 3
        b = s.get("box_mm") or {"min": [None] * 3, "max": [None] * 3}
        w.writerow([organ, s["status"], s.get("localizer"), s.get("volume_ml"), s.get("mean_hu"), *c, *b["min"],
                    *b["max"], " ".join(s.get("cut_by_box", [])), s.get("implausible", ""),
                    "; ".join(s.get("flags", []))])
    return buf.getvalue()


def write_outputs(ct: sitk.Image, seg: sitk.Image, labels: Dict[str, int], case: str, output: Path,
                  boxes: Optional[dict] = None, series=None, rtstruct: bool = False, dicom_seg: bool = False,
                  preview: bool = False, roi_names: str = "tg263") -> Dict[str, Path]:
    """Write the statistics and the requested clinical files for one case.

    Args:
        ct: the CT (HU); ``seg`` must be on exactly its grid.
        seg: label map.
        labels: ``{organ: label value}`` of ``seg``.
        case: case id (file name stem).
        output: output folder.
        boxes: localizer boxes, if any (drawn in the preview, status in the statistics).
        series: the :class:`~nnunet_oar.dicom.series.DicomSeries` ``ct`` was read from; needed for
            ``rtstruct`` and ``dicom_seg``, which reference its slices.
        roi_names: ROI / segment names in RTSTRUCT and SEG: ``"tg263"`` or ``"catalogue"``.

    Returns:
        ``{kind: path}`` of the files written.
    """
    if not same_geometry(ct, seg):
        raise InputError(f"{case}: label map grid {geometry(seg)} differs from the CT's {geometry(ct)}")
    if (rtstruct or dicom_seg) and series is None:
        raise InputError(f"{case}: RTSTRUCT and DICOM SEG reference the CT's DICOM slices; give a DICOM series")
    if rtstruct or dicom_seg:
        series.require_uids("RTSTRUCT" if rtstruct else "DICOM SEG")     # before any file is written
    output = Path(output)
    label_zyx, ct_zyx = sitk.GetArrayFromImage(seg), sitk.GetArrayFromImage(ct)
    stats = organ_stats(label_zyx, ct_zyx, geometry(ct), labels, boxes)
    written = {"stats": case_file(output, case, STATS_SUFFIX), "stats_csv": output / f"{case}_stats.csv"}
    write_json({"case": case, "units": {"volume": "mL", "positions": "world mm (x, y, z)", "mean_hu": "HU"},
                "input_warnings": (boxes or {}).get("input_warnings", []), "organs": stats}, written["stats"])
    with atomic_path(written["stats_csv"]) as tmp:
        tmp.write_text(stats_csv(stats))
    if rtstruct:
        from nnunet_oar.dicom.rtstruct import write_rtstruct
        written["rtstruct"] = output / f"{case}_rtstruct.dcm"
        write_rtstruct(label_zyx, labels, series, written["rtstruct"], roi_names=roi_names)
    if dicom_seg and any(s["status"] == "found" for s in stats.values()):
        from nnunet_oar.dicom.seg import write_dicom_seg
        written["dicom_seg"] = output / f"{case}_seg.dcm"
        write_dicom_seg(label_zyx, labels, series, written["dicom_seg"], roi_names)
    if preview:
        from nnunet_oar.report import organ_montage_png
        written["preview"] = output / f"{case}_preview.png"
        organ_montage_png(ct, seg, labels, boxes, written["preview"], title=case)
    return written


def export_label_map(labels_file: Path, ct_input: Path, output: Path, series_uid: Optional[str] = None,
                     label_names: Optional[Dict[str, int]] = None, rtstruct: bool = False, dicom_seg: bool = False,
                     preview: bool = False, roi_names: str = "tg263") -> Dict[str, Path]:
    """``nnunet_oar export``: clinical files for an existing label map.

    Args:
        labels_file: label map (``{case}.nii.gz``); its names come from ``label_names``, else the
            ``{case}.json`` beside it (written by ``predict``).
        ct_input: the CT it was made from: a DICOM series folder (needed for RTSTRUCT / SEG) or an image file.
        output: output folder.
        series_uid: the series, when the DICOM folder holds several.

    A label map in another orientation of the same grid (e.g. a converter's RAS NIfTI) is reoriented
    to the CT's, which is exact; any other grid is an error.
    """
    from nnunet_oar.dicom.series import is_dicom_folder, read_ct_series
    labels_file = Path(labels_file)
    case = case_id(labels_file)
    check_case_set(labels_file.parent, case)
    if label_names is None:
        names_file = case_file(labels_file.parent, case, LABELS_SUFFIX)
        if not names_file.is_file():
            raise InputError(f"{labels_file}: no {names_file.name} beside it naming the labels; give --labels")
        label_names = read_json(names_file)["labels"]
    if is_dicom_folder(ct_input):
        ct, series = read_ct_series(Path(ct_input), series_uid)
    else:
        ct, series = read_image(ct_input, "CT"), None
    seg = read_image(labels_file, "label map")
    if not same_geometry(ct, seg):
        seg = sitk.DICOMOrient(seg, sitk.DICOMOrientImageFilter_GetOrientationFromDirectionCosines(ct.GetDirection()))
        if not same_geometry(ct, seg):
            raise InputError(f"{labels_file}: not on the grid of the CT {ct_input}")
    boxes = read_boxes(labels_file.parent, case) if case_file(labels_file.parent, case, BOXES_SUFFIX).is_file() else None
    return write_outputs(ct, seg, label_names, case, Path(output), boxes, series, rtstruct, dicom_seg, preview,
                         roi_names)
