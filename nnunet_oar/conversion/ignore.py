"""Partial annotations -> nnU-Net's ignore label, for the single-network multi-organ baseline.

In a partially contoured data set (OpenKBP: a missing ROI file means "not contoured") the background
of a case is only known to be background where no uncontoured organ can be. The rule here: in a case
with at least one organ not annotated, every background voxel inside the body (CT > ``body_hu``) gets
nnU-Net's ignore label, so it carries no loss; air outside the body stays background, and the voxels
of the organs that were contoured keep their labels. Fully annotated cases are copied unchanged.
The per-organ networks of the two-stage method need no such rule: an organ's crops come only from
cases where that organ was contoured.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Dict

import numpy as np
import SimpleITK as sitk
from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json
from tqdm import tqdm

from nnunet_oar.conversion.dataset import READER_WRITER
from nnunet_oar.io import InputError, atomic_dir, read_image, read_json, write_image, write_json
from nnunet_oar.paths import dataset_folder_name, find_dataset, raw_root

BODY_HU = -500.0


def ignore_unannotated(label_zyx: np.ndarray, ct_zyx: np.ndarray, ignore_value: int,
                       body_hu: float = BODY_HU) -> np.ndarray:
    """Label map (z, y, x) with in-body background (CT in HU > ``body_hu``) set to ``ignore_value``."""
    out = label_zyx.copy()
    out[(label_zyx == 0) & (ct_zyx > body_hu)] = ignore_value
    return out


def with_ignore_label(source_id: int, target_id: int, body_hu: float = BODY_HU, progress: bool = True) -> Path:
    """Write ``Dataset{target_id}_{source}Ignore``: the source's images (hard links where possible) and
    label maps with the ignore label (highest label value, as nnU-Net requires) for partially annotated
    cases. Returns the new raw folder. A rerun replaces it."""
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
    name = dataset_folder_name(target_id, src.name.split("_", 1)[1] + "Ignore")
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
            out = sitk.GetImageFromArray(ignore_unannotated(sitk.GetArrayFromImage(seg), ct, ignore, body_hu)
                                         .astype(np.uint8))
            out.CopyInformation(seg)
            write_image(out, tmp / "labelsTr" / label.name)
        generate_dataset_json(str(tmp), {0: "CT"}, {**ds["labels"], "ignore": ignore}, len(annotations),
                              ds["file_ending"], dataset_name=name,
                              description=f"{src.name} with in-body background ignored where organs were not "
                                          f"annotated (body: CT > {body_hu} HU)",
                              converted_by="nnunet_oar", overwrite_image_reader_writer=READER_WRITER)
        shutil.copy2(ann_file, tmp / "annotations.json")
        write_json({"rule": "in-body background -> ignore in cases with an organ not annotated",
                    "body_hu": body_hu, "ignore_label": ignore, "partial_cases": partial},
                   tmp / "ignore_report.json")
    return raw_root() / name
