"""Merge per-organ crop probabilities into one label map on the full image (the paper's step 4).

Rule: each voxel gets the organ with the highest probability among those above 0.5; a voxel where no
organ is above 0.5 is background. Ties go to the organ pasted first.

Streaming: the merger holds one label volume (uint8) and one float32 max-probability volume; organ
crops are pasted one at a time and can be freed right after, so memory does not grow with the number
of organs.
"""
from __future__ import annotations

from typing import Iterable, Sequence, Tuple

import numpy as np

from nnunet_oar.geometry import crop_zyx

THRESHOLD = 0.5


class MaxProbabilityMerger:
    """Accumulate organ crops into a label map.

    Args:
        shape_zyx: shape of the full image, numpy (z, y, x).
    """

    def __init__(self, shape_zyx: Sequence[int]):
        self.labels = np.zeros(shape_zyx, dtype=np.uint8)
        self.max_prob = np.full(shape_zyx, THRESHOLD, dtype=np.float32)

    def add(self, label: int, prob_zyx: np.ndarray, start_xyz: Sequence[int]) -> None:
        """Paste one organ's foreground probability crop.

        Args:
            label: the organ's label value (1..255).
            prob_zyx: probabilities on the crop, numpy (z, y, x), on the full image's grid.
            start_xyz: the crop's first voxel in the full image, SimpleITK (x, y, z).
        """
        stop_xyz = np.asarray(start_xyz) + np.asarray(prob_zyx.shape[::-1])
        region_max = crop_zyx(self.max_prob, start_xyz, stop_xyz)
        region_lab = crop_zyx(self.labels, start_xyz, stop_xyz)
        wins = prob_zyx > region_max                     # above 0.5 and above every organ pasted so far
        region_lab[wins] = label
        region_max[wins] = prob_zyx[wins]


def merge_arrays(shape_zyx: Sequence[int], crops: Iterable[Tuple[int, np.ndarray, Sequence[int]]]) -> np.ndarray:
    """Merge ``(label, prob_zyx, start_xyz)`` crops into a uint8 label map of ``shape_zyx``."""
    merger = MaxProbabilityMerger(shape_zyx)
    for label, prob, start in crops:
        merger.add(label, prob, start)
    return merger.labels


def merge_folders(organ_folders: Sequence, output) -> list:
    """Merge nnU-Net predictions on organ crops into full-image label maps (``nnunet_oar merge``).

    Each folder holds one organ's ``nnUNetv2_predict --save_probabilities`` output on crops
    (``{crop}.npz`` with ``probabilities`` (2, z, y, x) and ``{crop}.pkl``) and a ``crops.json`` mapping each
    crop to its source case, box and source geometry (the format ``crop_rois`` writes). Organs are streamed one at a
    time per case. Writes ``{case}.nii.gz`` and ``{case}.json`` (label names) into ``output``.

    Returns:
        The case ids written.
    """
    from pathlib import Path

    from tqdm import tqdm

    from nnunet_oar import organs as catalogue
    from nnunet_oar.io import InputError, image_from_geometry, read_json, write_image, write_json

    per_case: dict = {}
    names = []
    for folder in map(Path, organ_folders):
        path = folder / "crops.json"
        if not path.is_file():
            raise InputError(f"{path}: missing; each organ folder needs the crops.json of its crops")
        crops = read_json(path)
        for crop_id, c in crops.items():
            per_case.setdefault(c["source_case"], []).append((c["organ"], folder / f"{crop_id}.npz", c))
            names.append(c["organ"])
    labels = catalogue.labels_for(sorted(set(names)))
    for case, items in tqdm(sorted(per_case.items()), desc="merge"):
        geom = items[0][2]["source_image"]
        merger = MaxProbabilityMerger(geom["size_xyz"][::-1])
        for organ, npz, c in items:
            if not npz.is_file():
                raise InputError(f"{npz}: missing prediction for crop of {case} ({organ})")
            prob = _probabilities_in_file_orientation(npz)
            start, stop = c["box_index_xyz"]["start"], c["box_index_xyz"]["stop"]
            if tuple(prob.shape[::-1]) != tuple(np.subtract(stop, start)):
                raise InputError(f"{npz}: probabilities (z,y,x) {prob.shape} do not match the box {start}..{stop}")
            merger.add(labels[organ], prob.astype(np.float32), start)
            del prob
        write_image(image_from_geometry(merger.labels, geom), Path(output) / f"{case}.nii.gz")
        write_json({"labels": labels, "image": geom}, Path(output) / f"{case}.json")
    return sorted(per_case)


def _probabilities_in_file_orientation(npz) -> np.ndarray:
    """Foreground probabilities (z, y, x) of an nnU-Net ``.npz`` in the orientation of the input file.

    nnU-Net saves probabilities in its reader's array order; with SimpleITKIOWithReorient that is RAS,
    so they are reoriented back with the geometry nnU-Net kept in the ``.pkl`` beside them.
    """
    from pathlib import Path

    import SimpleITK as sitk

    from nnunet_oar.safe_load import load_pickle

    prob = np.load(npz, allow_pickle=False)["probabilities"][1].astype(np.float32)
    stuff = load_pickle(Path(str(npz)[:-4] + ".pkl"))["sitk_stuff"]
    if "original_orientation" not in stuff:
        return prob
    img = sitk.GetImageFromArray(prob)
    img.SetSpacing(stuff["spacing"])
    img.SetOrigin(stuff["origin"])
    img.SetDirection(stuff["direction"])
    return sitk.GetArrayFromImage(sitk.DICOMOrient(img, stuff["original_orientation"]))
