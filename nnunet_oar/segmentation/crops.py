"""Per-organ ROI data sets: ``Dataset{N+k}_{source}_{organ}`` cropped at the CT's original resolution.

Each organ data set holds, for every case where the organ is annotated and has a box, the CT cropped
to that box and the organ's binary mask on the crop (background 0, organ 1), plus ``crops.json``:
per crop, the source case, the box in source voxel indices (SimpleITK x,y,z; stop exclusive) and the
source image geometry, so a prediction on the crop can always be pasted back exactly.

Boxes come from the localizer's out-of-fold ``{case}_boxes.json`` (default), so the organ networks
learn on crops like those they will see; or from the reference labels (``boxes_from_labels``): the
organ's bounding box plus the margin, optionally shifted at random as augmentation. Skipped cases
(not annotated, absent, missed by the localizer) and boxes that cut the organ are reported.
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Dict, Optional, Sequence

import numpy as np
import SimpleITK as sitk
from tqdm import tqdm

from nnunet_oar import organs as catalogue
from nnunet_oar.contracts import read_boxes
from nnunet_oar.conversion.dataset import build_dataset, read_annotations
from nnunet_oar.geometry import crop_image, crop_zyx, index_box_to_world, mask_bbox_xyz, world_box_to_index
from nnunet_oar.io import InputError, geometry, read_image, read_json, write_json
from nnunet_oar.localization.boxes import DEFAULT_MARGIN_MM
from nnunet_oar.paths import find_dataset, raw_root


def source_name(raw_folder: Path) -> str:
    """``VISCERAL`` for ``Dataset501_VISCERAL``."""
    return raw_folder.name.split("_", 1)[1]


def organ_dataset_ids(first_id: int, organs: Sequence[str]) -> Dict[str, int]:
    """``{organ: first_id + k}`` with organs in catalogue order."""
    order = [n for n in catalogue.labels_for(organs) if n != "background"]
    return {organ: first_id + k for k, organ in enumerate(order)}


def label_box(mask_zyx: np.ndarray, geom: dict, margin_mm: float, shift_mm: float,
              rng: np.random.Generator) -> Dict[str, list]:
    """Box around a reference mask: its bounding box + ``margin_mm``, moved by up to ``shift_mm`` per axis."""
    lo, hi = index_box_to_world(geom, *mask_bbox_xyz(mask_zyx))
    shift = rng.uniform(-shift_mm, shift_mm, 3) if shift_mm > 0 else np.zeros(3)
    start, stop, clipped = world_box_to_index(geom, lo - margin_mm + shift, hi + margin_mm + shift)
    return {"start": start.tolist(), "stop": stop.tolist(), "clipped": clipped}


def crop_rois(source_id: int, first_id: int, boxes_dir: Optional[Path] = None, organs: Optional[Sequence[str]] = None,
              boxes_from_labels: bool = False, margin_mm: float = DEFAULT_MARGIN_MM, shift_mm: float = 0.0,
              seed: int = 0, progress: bool = True) -> Dict[str, dict]:
    """Write one cropped nnU-Net raw data set per organ.

    Args:
        source_id: id of the full-image raw data set.
        first_id: id of the first organ data set; organ k (catalogue order) gets ``first_id + k``.
        boxes_dir: folder with ``{case}_boxes.json`` (out-of-fold localizer boxes).
        organs: organs to write (default: all of the source data set).
        boxes_from_labels: take boxes from the reference labels instead of ``boxes_dir``.
        margin_mm: margin around the reference bounding box (``boxes_from_labels`` only).
        shift_mm: maximal random shift of a reference box per axis, mm (``boxes_from_labels`` only).
        seed: seed of the shifts.

    Returns:
        ``{organ: report}`` (also written as ``crop_report.json`` in each data set).
    """
    raw = find_dataset(raw_root(), source_id)
    if raw is None:
        raise FileNotFoundError(f"{raw_root()}: no raw data set with id {source_id}")
    if not boxes_from_labels and boxes_dir is None:
        raise InputError("give the localizer's boxes (--boxes) or use --boxes-from-labels")
    dataset = read_json(raw / "dataset.json")
    labels = {k: v for k, v in dataset["labels"].items() if k != "background"}
    organs = list(organs) if organs else list(labels)
    for o in organs:
        if o not in labels:
            raise InputError(f"{o} is not a label of {raw.name} ({', '.join(labels)})")
    annotations = read_annotations(raw)
    cases = sorted(annotations)
    ids = organ_dataset_ids(first_id, organs)
    rng = np.random.default_rng(seed)
    reports = {o: {"dataset_id": i, "cases": 0, "skipped": {}, "cut": {}} for o, i in ids.items()}
    crops: Dict[str, dict] = {o: {} for o in ids}
    # every organ data set is open at once, so each source CT and label map is read only once
    with contextlib.ExitStack() as stack:
        builders = {o: stack.enter_context(build_dataset(i, f"{source_name(raw)}_{o}", [o],
                                                         f"{o} ROIs cropped from {raw.name}"))
                    for o, i in ids.items()}
        for case in tqdm(cases, desc="crop ROIs", disable=not progress):
            wanted = [o for o in ids if o in annotations[case]]
            for o in ids:
                if o not in wanted:
                    reports[o]["skipped"][case] = "not annotated"
            if not wanted:
                continue
            seg = sitk.ReadImage(str(raw / "labelsTr" / f"{case}{dataset['file_ending']}"))
            seg_zyx, geom = sitk.GetArrayViewFromImage(seg), geometry(seg)
            entries = None if boxes_from_labels else _localizer_entries(Path(boxes_dir), case)
            ct = None
            for organ in wanted:
                report = reports[organ]
                mask = seg_zyx == labels[organ]
                if boxes_from_labels:
                    if not mask.any():
                        report["skipped"][case] = "absent in the reference"
                        continue
                    box = label_box(mask, geom, margin_mm, shift_mm, rng)
                else:
                    entry = entries.get(organ, {})
                    if entry.get("status") != "found":
                        report["skipped"][case] = ("missed by the localizer" if mask.any()
                                                   else "absent (reference and localizer)")
                        continue
                    box = {**entry["box_index_xyz"], "clipped": entry.get("clipped", False)}
                n_organ = int(mask.sum())
                if n_organ:
                    cut = 1 - int(crop_zyx(mask, box["start"], box["stop"]).sum()) / n_organ
                    if cut > 0:
                        report["cut"][case] = round(cut, 4)
                if ct is None:
                    ct = read_image(raw / "imagesTr" / f"{case}_0000{dataset['file_ending']}", "CT")
                builders[organ].add_case(case, crop_image(ct, box["start"], box["stop"]),
                                         {organ: crop_zyx(mask, box["start"], box["stop"]).copy()})
                # the organ's whole volume: export-models keeps the range, predict flags what falls outside
                crops[organ][case] = {"source_case": case, "organ": organ,
                                      "box_index_xyz": {"start": box["start"], "stop": box["stop"]},
                                      "clipped": box["clipped"], "source_image": geom,
                                      "organ_volume_ml": n_organ * float(np.prod(geom["spacing_xyz"])) / 1000}
                report["cases"] += 1
        for organ, builder in builders.items():
            if not crops[organ]:
                raise InputError(f"{organ}: no case with a box; nothing to train on")
            holding = [c for c, crop in crops[organ].items()
                       if crop["organ_volume_ml"] > 0 and reports[organ]["cut"].get(c, 0.0) < 1.0]
            if not holding:     # nnU-Net's planning would fail later on a data set without foreground
                raise InputError(f"{organ}: none of its {len(crops[organ])} crops holds any of the organ (the boxes miss "
                                 f"it in every case; a localizer trained too briefly?); nothing to train on")
            write_json(crops[organ], builder.folder / "crops.json")
            write_json(reports[organ], builder.folder / "crop_report.json")
    for organ, report in reports.items():
        if report["cut"]:
            tqdm.write(f"WARNING {organ}: the box cuts the organ in {len(report['cut'])} case(s), worst "
                       f"{max(report['cut'].values()):.1%} outside (see crop_report.json)")
    return reports


def _localizer_entries(boxes_dir: Path, case: str) -> Dict[str, dict]:
    return read_boxes(boxes_dir, case)["organs"]
