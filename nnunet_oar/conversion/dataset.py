"""Writing an nnU-Net raw data set: images, label maps, dataset.json, annotations.json, report.

Shared by the converters. The data set is assembled in a temporary folder beside its destination and
renamed into place only when complete, so a failed conversion leaves nothing half-written and a rerun
replaces the previous result.
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence

import numpy as np
import SimpleITK as sitk
from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json

from nnunet_oar import organs as catalogue
from nnunet_oar.io import InputError, atomic_dir, read_json, write_image, write_json
from nnunet_oar.paths import dataset_folder_name, find_dataset, raw_root
from nnunet_oar.plausibility import volume_outliers

READER_WRITER = "SimpleITKIOWithReorient"
NETWORK_ORIENTATION = "RAS"   # what SimpleITKIOWithReorient reorients to


def merge_masks(masks: Dict[str, np.ndarray], labels: Dict[str, int]) -> tuple:
    """Combine binary masks into one label map.

    Overlap rule: a voxel claimed by several structures goes to the one with the fewest voxels (small
    structures are the ones an overlap would otherwise erase); ties go to the lower label value.

    Args:
        masks: ``{organ: bool array (z, y, x)}``, all of one shape.
        labels: ``{organ: label value}``.

    Returns:
        ``(label_map uint8 (z, y, x), overlap)``: overlap is ``{"a+b": voxels}`` for each pair that overlaps.
    """
    if not masks:
        raise ValueError("no masks to merge")
    shape = next(iter(masks.values())).shape
    label_map = np.zeros(shape, dtype=np.uint8)
    # paint largest first so that smaller structures overwrite
    order = sorted(masks, key=lambda n: (-int(masks[n].sum()), -labels[n]))
    overlap: Dict[str, int] = {}
    for i, a in enumerate(order):
        for b in order[i + 1:]:
            n = int(np.count_nonzero(masks[a] & masks[b]))
            if n:
                overlap["+".join(sorted((a, b)))] = n
        label_map[masks[a]] = labels[a]
    return label_map, overlap


def read_annotations(raw: Path) -> Dict[str, List[str]]:
    """``{case: [annotated organs]}`` of a raw data set: its ``annotations.json``, or, for a plain nnU-Net
    data set without one, every label of ``dataset.json`` in every case of ``labelsTr`` (said once)."""
    path = Path(raw) / "annotations.json"
    if path.is_file():
        return read_json(path)
    dataset = read_json(Path(raw) / "dataset.json")
    ending = dataset["file_ending"]
    organs = [k for k in dataset["labels"] if k not in ("background", "ignore")]
    cases = sorted(p.name[: -len(ending)] for p in (Path(raw) / "labelsTr").glob(f"*{ending}"))
    print(f"{raw}: no annotations.json; every organ of dataset.json counts as annotated in all {len(cases)} cases")
    return {c: list(organs) for c in cases}


class DatasetBuilder:
    """Accumulates cases into a temporary data set folder; see :func:`build_dataset`."""

    def __init__(self, folder: Path, organs: Sequence[str]):
        self.folder = folder
        self.labels = catalogue.labels_for(organs)
        self.annotations: Dict[str, List[str]] = {}
        self.report: Dict[str, dict] = {}
        self.destination: Optional[Path] = None
        self.extra_report: dict = {}     # a converter's own top-level entries of conversion_report.json
        (folder / "imagesTr").mkdir()
        (folder / "labelsTr").mkdir()

    def add_case(self, case: str, ct: sitk.Image, masks: Dict[str, np.ndarray], notes: Optional[dict] = None) -> None:
        """Write one case.

        Args:
            case: nnU-Net case identifier.
            ct: CT image in HU; the label map gets exactly its geometry.
            masks: ``{organ: bool array (z, y, x)}`` for every annotated organ (an all-False mask means
                annotated and absent). Organs not in the data set's label list are ignored.
            notes: extra per-case facts for the conversion report.
        """
        masks = {k: v for k, v in masks.items() if k in self.labels}
        shape = ct.GetSize()[::-1]
        for name, m in masks.items():
            if m.shape != shape:
                raise InputError(f"case {case}: mask {name} has shape {m.shape}, CT has {shape} (z,y,x)")
        if masks:
            label_map, overlap = merge_masks(masks, self.labels)
        else:
            label_map, overlap = np.zeros(shape, dtype=np.uint8), {}
        seg = sitk.GetImageFromArray(label_map)
        seg.CopyInformation(ct)
        write_image(ct, self.folder / "imagesTr" / f"{case}_0000.nii.gz")
        write_image(seg, self.folder / "labelsTr" / f"{case}.nii.gz")
        self.annotations[case] = [n for n in self.labels if n in masks]
        voxels = {n: int(np.count_nonzero(label_map == self.labels[n])) for n in self.annotations[case]}
        voxel_ml = float(np.prod(ct.GetSpacing())) / 1000
        self.report[case] = {
            "organs": voxels,
            "volume_ml": {n: round(v * voxel_ml, 2) for n, v in voxels.items()},
            "overlap_voxels": overlap,
            **(notes or {}),
        }

    def finish(self, dataset_name: str, description: str) -> None:
        """Write dataset.json, annotations.json and conversion_report.json."""
        if not self.annotations:
            raise InputError(f"no cases were converted into {dataset_name}")
        # nnU-Net's own reorienting reader: every image reaches the networks in RAS array order, so a
        # flipped direction cannot mirror the anatomy (and swap left and right organs) in array space
        generate_dataset_json(str(self.folder), {0: "CT"}, self.labels, len(self.annotations), ".nii.gz",
                              dataset_name=dataset_name, description=description,
                              license="see the source data set", converted_by="nnunet_oar",
                              overwrite_image_reader_writer=READER_WRITER)
        write_json(self.annotations, self.folder / "annotations.json")
        outliers = volume_outliers({c: r["volume_ml"] for c, r in self.report.items()})
        for o in outliers:
            print(f"check {o['case']}: its {o['organ']} contour holds {o['volume_ml']:.1f} mL, where the data set's "
                  f"{o['organ']} contours have a median of {o['median_ml']:.1f} mL (far-out fences "
                  f"{o['fences_ml'][0]:.1f} to {o['fences_ml'][1]:.1f} mL): another structure under its name?")
        write_json({"overlap_rule": "the structure with fewer voxels wins; ties go to the lower label",
                    "volume_outliers": outliers, "cases": self.report, **self.extra_report},
                   self.folder / "conversion_report.json")


@contextlib.contextmanager
def build_dataset(dataset_id: int, name: str, organs: Sequence[str], description: str,
                  root: Optional[Path] = None) -> Iterator[DatasetBuilder]:
    """Context that yields a :class:`DatasetBuilder`; on success it writes the JSON files and moves the
    data set to ``{root or $nnUNet_raw}/Dataset{ID:03d}_{name}`` (replacing an earlier run of the same
    conversion). On error nothing is left behind."""
    root = Path(root) if root is not None else raw_root()
    folder_name = dataset_folder_name(dataset_id, name)
    existing = find_dataset(root, dataset_id)
    if existing is not None and existing.name != folder_name:
        raise FileExistsError(f"{existing}: dataset id {dataset_id} is already used by another data set")
    with atomic_dir(root / folder_name) as tmp:
        builder = DatasetBuilder(tmp, organs)
        builder.destination = root / folder_name
        yield builder
        builder.finish(folder_name, description)
