"""Partial annotations -> nnU-Net's ignore label, for the single-network multi-organ baseline.

In a partially contoured data set (OpenKBP: a missing ROI file means "not contoured") the background
of a case is only known to be background where no uncontoured organ can be. Two rules, for cases with
at least one organ not annotated (fully annotated cases are copied unchanged; the voxels of contoured
organs keep their labels; air outside the body, CT <= ``body_hu``, stays background):

* ``body``: every in-body background voxel gets nnU-Net's ignore label and carries no loss. Safe, but
  in OpenKBP most training cases lack some organ, so most of the body teaches the network nothing.
* ``likely``: only in-body background inside the box where each missing organ is likely to lie is
  ignored. The box is centred on the organ's mean position relative to the image centre in the cases
  that contoured it, and spans its mean size plus ``LIKELY_SD`` standard deviations of that position
  per axis; the rest of the body stays background and carries loss.

The per-organ networks of the two-stage method need no such rule: an organ's crops come only from
cases where that organ was contoured.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Dict, Optional, Sequence

import numpy as np
import SimpleITK as sitk
from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json
from tqdm import tqdm

from nnunet_oar.conversion.dataset import READER_WRITER
from nnunet_oar.geometry import crop_zyx, index_to_world, world_box_to_index
from nnunet_oar.io import InputError, atomic_dir, geometry, read_image, read_json, write_image, write_json
from nnunet_oar.paths import dataset_folder_name, find_dataset, raw_root

BODY_HU = -500.0
REGIONS = ("body", "likely")
LIKELY_SD = 3.0


def ignore_unannotated(label_zyx: np.ndarray, ct_zyx: np.ndarray, ignore_value: int, body_hu: float = BODY_HU,
                       region_zyx: Optional[np.ndarray] = None) -> np.ndarray:
    """Label map (z, y, x) with in-body background (CT in HU > ``body_hu``) set to ``ignore_value``;
    with ``region_zyx`` (boolean, same shape) only inside that region."""
    out = label_zyx.copy()
    where = (label_zyx == 0) & (ct_zyx > body_hu)
    out[where if region_zyx is None else where & region_zyx] = ignore_value
    return out


def organ_positions(raw: Path, progress: bool = True) -> Dict[str, dict]:
    """Where each organ lies over the cases of a raw data set that contoured it: ``{organ: {"mean_offset_mm",
    "sd_offset_mm", "mean_size_mm", "n"}}``, the centroid's offset from the image centre and the
    bounding-box size, world x,y,z mm (the localizer's own box statistics, plus the offsets' spread)."""
    # the statistics the localizer's constant guess uses; only the spread is added here
    from nnunet_oar.localization.boxes import mean_box_sizes
    from nnunet_oar.localization.plans import case_box_sizes
    sizes, offsets = case_box_sizes(raw, progress)
    positions = mean_box_sizes(sizes, list(sizes), offsets)
    for organ, stats in positions.items():
        stats["sd_offset_mm"] = np.std([o[organ] for o in offsets.values() if organ in o], 0).tolist()
    return positions


def likely_region(geom: dict, positions: Dict[str, dict], organs: Sequence[str], sd: float = LIKELY_SD
                  ) -> np.ndarray:
    """Boolean mask (z, y, x) on the grid of ``geom``: the union of the boxes where ``organs`` are likely to
    lie (mean position relative to the image centre; mean size / 2 + ``sd`` standard deviations per axis)."""
    region = np.zeros(tuple(geom["size_xyz"][::-1]), bool)
    centre = index_to_world(geom, (np.asarray(geom["size_xyz"], float) - 1) / 2)
    for organ in organs:
        if organ not in positions:          # never contoured anywhere: nothing says where it lies
            continue
        p = positions[organ]
        c = centre + np.asarray(p["mean_offset_mm"])
        half = np.asarray(p["mean_size_mm"]) / 2 + sd * np.asarray(p["sd_offset_mm"])
        start, stop, _ = world_box_to_index(geom, c - half, c + half)
        crop_zyx(region, start, stop)[...] = True
    return region


def with_ignore_label(source_id: int, target_id: int, body_hu: float = BODY_HU, region: str = "body",
                      progress: bool = True) -> Path:
    """Write ``Dataset{target_id}_{source}Ignore`` (``..IgnoreLikely`` for ``region="likely"``): the
    source's images (hard links where possible) and label maps with the ignore label (highest label value,
    as nnU-Net requires) for partially annotated cases, by the rule ``region`` (see the module). Returns
    the new raw folder. A rerun replaces it."""
    if region not in REGIONS:
        raise InputError(f"ignore region must be one of {REGIONS}, got {region!r}")
    src = find_dataset(raw_root(), source_id)
    if src is None:
        raise FileNotFoundError(f"{raw_root()}: no raw data set {source_id}")
    ds = read_json(src / "dataset.json")
    ann_file = src / "annotations.json"
    if not ann_file.is_file():
        raise InputError(f"{ann_file}: missing; it lists the organs annotated in each case")
    annotations: Dict[str, list] = read_json(ann_file)
    organs = [n for n in ds["labels"] if n != "background"]
    ignore = max(ds["labels"].values()) + 1
    name = dataset_folder_name(target_id, src.name.split("_", 1)[1] + ("Ignore" if region == "body" else "IgnoreLikely"))
    positions = organ_positions(src, progress) if region == "likely" else None
    partial = {}
    with atomic_dir(raw_root() / name) as tmp:
        (tmp / "imagesTr").mkdir()
        (tmp / "labelsTr").mkdir()
        for case, annotated in tqdm(sorted(annotations.items()), desc="ignore label", disable=not progress):
            image = src / "imagesTr" / f"{case}_0000{ds['file_ending']}"
            label = src / "labelsTr" / f"{case}{ds['file_ending']}"
            try:
                os.link(image, tmp / "imagesTr" / image.name)
            except OSError:
                shutil.copy2(image, tmp / "imagesTr" / image.name)
            missing = [o for o in organs if o not in annotated]
            if not missing:
                shutil.copy2(label, tmp / "labelsTr" / label.name)
                continue
            partial[case] = missing
            seg = read_image(label, "label map")
            ct = sitk.GetArrayFromImage(read_image(image, "CT"))
            where = likely_region(geometry(seg), positions, missing) if positions is not None else None
            out = sitk.GetImageFromArray(ignore_unannotated(sitk.GetArrayFromImage(seg), ct, ignore, body_hu, where)
                                         .astype(np.uint8))
            out.CopyInformation(seg)
            write_image(out, tmp / "labelsTr" / label.name)
        generate_dataset_json(str(tmp), {0: "CT"}, {**ds["labels"], "ignore": ignore}, len(annotations),
                              ds["file_ending"], dataset_name=name,
                              description=f"{src.name} with in-body background ignored where organs were not "
                                          f"annotated (body: CT > {body_hu} HU; region: {region})",
                              converted_by="nnunet_oar", overwrite_image_reader_writer=READER_WRITER)
        shutil.copy2(ann_file, tmp / "annotations.json")
        rule = ("in-body background -> ignore in cases with an organ not annotated" if region == "body" else
                f"in-body background inside the likely box of each organ not annotated (mean position and size, "
                f"+ {LIKELY_SD:g} SD of the position) -> ignore")
        write_json({"rule": rule, "region": region, "body_hu": body_hu, "ignore_label": ignore,
                    "partial_cases": partial, **({"organ_positions": positions} if positions else {})},
                   tmp / "ignore_report.json")
    return raw_root() / name
