"""VISCERAL Anatomy layout -> nnU-Net raw data set.

Input naming: volumes ``{patient}_{volume}_{modality}_{region}.nii.gz`` and one mask per structure
``{patient}_{volume}_{modality}_{region}_{radlex}_{annotator}.nii.gz``. The nnU-Net case id is
``{patient}_{volume}``. A structure without a mask file is *not annotated* for that case (recorded in
annotations.json), which is different from absent (an all-zero mask).

Rules: an unknown RadLex id is skipped with a warning; two annotators for one structure -> the lowest
annotator number is used and the choice is reported; overlapping masks -> the smaller structure wins
(:func:`nnunet_oar.conversion.dataset.merge_masks`); a mask on another grid than its volume is an error
unless ``resample_masks`` is set, when it is resampled (nearest neighbour) onto the volume's grid.
"""
from __future__ import annotations

import re
import warnings
from collections import defaultdict
from pathlib import Path
from typing import Dict, Optional, Sequence

import numpy as np
import SimpleITK as sitk
from tqdm import tqdm

from nnunet_oar import organs as catalogue
from nnunet_oar.conversion.dataset import build_dataset
from nnunet_oar.io import InputError, read_image, same_geometry

_NAME = re.compile(r"^(?P<patient>\d+)_(?P<volume>\d+)_(?P<modality>[A-Za-z0-9]+)_(?P<region>[A-Za-z0-9]+)"
                   r"(?:_(?P<radlex>\d+)_(?P<annotator>\d+))?\.nii(?:\.gz)?$")


def scan(folder: Path, modality: str = "CTce_ThAb") -> Dict[str, dict]:
    """Group the files of a VISCERAL folder by case.

    Returns:
        ``{case_id: {"volume": Path, "masks": {radlex: {annotator: Path}}}}`` for the requested
        ``{modality}_{region}``; ``.fcsv`` landmark files are ignored with a warning.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: VISCERAL folder does not exist")
    cases: Dict[str, dict] = defaultdict(lambda: {"volume": None, "masks": defaultdict(dict)})
    ignored = []
    for f in sorted(folder.rglob("*")):
        if f.is_dir():
            continue
        m = _NAME.match(f.name)
        if m is None:
            ignored.append(f.name)
            continue
        if f"{m['modality']}_{m['region']}" != modality:
            continue
        case = f"{m['patient']}_{m['volume']}"
        if m["radlex"] is None:
            if cases[case]["volume"] is not None:
                raise InputError(f"{f}: second volume for case {case} (first: {cases[case]['volume']})")
            cases[case]["volume"] = f
        else:
            cases[case]["masks"][int(m["radlex"])][int(m["annotator"])] = f
    if ignored:
        fcsv = sum(n.endswith(".fcsv") for n in ignored)
        warnings.warn(f"{folder}: ignored {len(ignored)} files that are not VISCERAL volumes or masks"
                      f" ({fcsv} landmark/lesion .fcsv files)")
    for case, c in cases.items():
        if c["volume"] is None:
            some = next(iter(next(iter(c["masks"].values())).values()))
            raise InputError(f"{some}: mask without its volume {case}_{modality}.nii.gz")
    if not cases:
        raise InputError(f"{folder}: no VISCERAL volumes named *_{modality}.nii.gz")
    return dict(cases)


def _read_mask(path: Path, volume: sitk.Image, volume_path: Path, resample: bool) -> np.ndarray:
    mask = read_image(path, "mask")
    if not same_geometry(mask, volume):
        if not resample:
            raise InputError(f"{path}: mask geometry (size {mask.GetSize()}, spacing {mask.GetSpacing()}, origin "
                             f"{mask.GetOrigin()}) differs from its volume {volume_path} (size {volume.GetSize()}, "
                             f"spacing {volume.GetSpacing()}, origin {volume.GetOrigin()}); "
                             "use --resample-masks to resample it")
        mask = sitk.Resample(mask, volume, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
    return sitk.GetArrayFromImage(mask) > 0


def convert_visceral(visceral_dir: Path, dataset_id: int, modality: str = "CTce_ThAb",
                     organs: Optional[Sequence[str]] = None, resample_masks: bool = False,
                     raw: Optional[Path] = None, progress: bool = True) -> Path:
    """Convert a VISCERAL folder to ``$nnUNet_raw/Dataset{ID}_VISCERAL``.

    Args:
        visceral_dir: folder with VISCERAL volumes and masks (searched recursively).
        dataset_id: nnU-Net data set id.
        modality: ``{modality}_{region}`` to take, e.g. ``CTce_ThAb``.
        organs: canonical names to keep; default: every catalogue structure found in the folder.
        resample_masks: resample masks whose grid differs from their volume instead of failing.
        raw: nnU-Net raw root (default ``$nnUNet_raw``).

    Returns:
        The data set folder.
    """
    cases = scan(visceral_dir, modality)
    found = set()
    for c in cases.values():
        for radlex in list(c["masks"]):
            if radlex not in catalogue.BY_RADLEX:
                paths = list(c["masks"].pop(radlex).values())
                warnings.warn(f"{paths[0]}: unknown RadLex id {radlex}, skipped")
            else:
                found.add(catalogue.BY_RADLEX[radlex].name)
    if organs is None:
        organs = [n for n in catalogue.organ_set("visceral") if n in found]
    else:
        for n in organs:
            if catalogue.get(n).radlex is None:
                raise InputError(f"{n} is not a VISCERAL structure")
    if not organs:
        raise InputError(f"{visceral_dir}: no masks of known VISCERAL structures")
    wanted = {catalogue.get(n).radlex: n for n in organs}
    with build_dataset(dataset_id, "VISCERAL", organs, f"VISCERAL {modality}, converted by nnunet_oar",
                       raw) as builder:
        for case in tqdm(sorted(cases), desc="convert VISCERAL", disable=not progress):
            c = cases[case]
            ct = read_image(c["volume"], "CT volume")
            masks, annotator_choice = {}, {}
            for radlex, by_annotator in sorted(c["masks"].items()):
                if radlex not in wanted:
                    continue
                annotator = min(by_annotator)
                if len(by_annotator) > 1:
                    annotator_choice[wanted[radlex]] = {"used": annotator, "available": sorted(by_annotator)}
                masks[wanted[radlex]] = _read_mask(by_annotator[annotator], ct, c["volume"], resample_masks)
            builder.add_case(case, ct, masks, {"source": c["volume"].name,
                                                 "annotator_choice (lowest number wins)": annotator_choice})
    return builder.destination
