"""DICOM SEG from a label map on a CT series' grid, written with highdicom.

One segment per organ present, numbered 1..n in label order, labelled with the catalogue name and
coded with the organ's SNOMED CT concept (laterality as a property-type modifier) where the catalogue
has one, else the generic "Anatomical Structure". Binary segmentation, one frame per CT slice that
holds an organ.
"""
from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Dict, List

import numpy as np

from nnunet_oar import organs as catalogue
from nnunet_oar.dicom.series import DicomSeries
from nnunet_oar.io import InputError, atomic_path


def _software_version() -> str:
    try:
        return version("nnunet_oar")
    except PackageNotFoundError:
        return "unknown"


def segment_description(number: int, organ: str, roi_names: str = "tg263"):
    """highdicom SegmentDescription of one organ (SNOMED CT type and laterality where known), labelled
    by :func:`nnunet_oar.organs.roi_name`."""
    import highdicom as hd
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence
    from pydicom.sr.codedict import codes
    entry = catalogue.ORGANS.get(organ)
    if entry is not None and entry.sct:
        prop = getattr(codes.SCT, entry.sct)
    elif entry is not None and entry.snomed:         # a user catalogue's code value
        prop = hd.sr.CodedConcept(entry.snomed, "SCT", entry.tg263 or entry.name)
    else:
        prop = codes.cid7150.AnatomicalStructure
    r, g, b = catalogue.colour(organ) if entry is not None else (255, 0, 0)
    desc = hd.seg.SegmentDescription(
        segment_number=number, segment_label=catalogue.roi_name(organ, roi_names),
        segmented_property_category=codes.cid7150.AnatomicalStructure, segmented_property_type=prop,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=hd.AlgorithmIdentificationSequence(
            name="nnunet_oar", family=codes.cid7162.ArtificialIntelligence, version=_software_version()),
        display_color=hd.color.CIELabColor.from_rgb(r, g, b))
    if entry is not None and entry.sct and entry.side:
        # the modifier belongs inside the property type item, so that a reader sees "Kidney, left"
        side = hd.sr.CodedConcept.from_code(codes.SCT.Right if entry.side == "right" else codes.SCT.Left)
        modifier = Dataset()
        modifier.update(side)
        desc.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence = Sequence([modifier])
    return desc


def write_dicom_seg(label_zyx: np.ndarray, labels: Dict[str, int], series: DicomSeries, dst: Path,
                    roi_names: str = "tg263") -> List[str]:
    """Write a DICOM SEG for ``series`` with one segment per organ present in ``label_zyx``.

    Args:
        label_zyx: label map (z, y, x) on the series' grid (slice k is ``series.files[k]``).
        labels: ``{organ: label value}``.
        series: the sorted CT series.
        dst: file to write (atomically).
        roi_names: segment labels, ``"tg263"`` or ``"catalogue"``.

    Returns:
        The segment labels, segment number i + 1 for entry i.
    """
    import highdicom as hd
    import pydicom
    present = [(o, v) for o, v in labels.items() if o not in ("background", "ignore") and (label_zyx == v).any()]
    if not present:
        raise InputError(f"{dst}: no organ to write (DICOM SEG needs at least one segment)")
    segments = np.zeros(label_zyx.shape, np.uint16 if len(present) > 255 else np.uint8)
    for number, (_, value) in enumerate(present, start=1):
        segments[label_zyx == value] = number
    sources = [pydicom.dcmread(f) for f in series.files]
    seg = hd.seg.Segmentation(
        source_images=sources, pixel_array=segments, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[segment_description(n, o, roi_names) for n, (o, _) in enumerate(present, 1)],
        series_instance_uid=hd.UID(), series_number=9902, sop_instance_uid=hd.UID(), instance_number=1,
        manufacturer="nnunet_oar", manufacturer_model_name="nnunet_oar", software_versions=_software_version(),
        device_serial_number="none", series_description="nnunet_oar organs at risk (automatic)")
    with atomic_path(dst) as tmp:
        seg.save_as(tmp)
    return [catalogue.roi_name(o, roi_names) for o, _ in present]
