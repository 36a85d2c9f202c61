"""DICOM RTSTRUCT from a label map on a CT series' grid, written with pydicom.

Why not rt-utils: it traces contours through the centres of the boundary voxels (OpenCV), which
shrinks every structure by half a voxel all round (a 1 mL organ at 1 mm loses about a third of its
volume), and it pulls in the GUI build of OpenCV. highdicom writes SEG but not RTSTRUCT. Here each
axial contour is the marching-squares iso-line at 0.5 of the binary slice (scikit-image), which runs
half-way between inside and outside voxel centres: rasterising the polygons again with the even-odd
rule (how planning systems read RTSTRUCT) gives back exactly the voxels of the label map. Holes are
written as separate contours inside their outer contour (even-odd makes them holes) and each
connected component is its own contour.
"""
from __future__ import annotations

import datetime
from pathlib import Path
from typing import Dict, List

import numpy as np

from nnunet_oar import organs as catalogue
from nnunet_oar.dicom.series import DicomSeries
from nnunet_oar.io import InputError, atomic_path

RTSTRUCT_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.481.3"


def slice_contours(mask_yx: np.ndarray) -> List[np.ndarray]:
    """Closed contours of one binary slice (rows y, columns x).

    Returns:
        One ``(n, 2)`` array of (row, column) voxel coordinates per contour (not repeating the first
        point), with collinear points removed; outer boundaries and holes alike.
    """
    from skimage.measure import find_contours
    out = []
    for c in find_contours(np.pad(mask_yx.astype(np.uint8), 1), 0.5):
        c = c[:-1] - 1.0                             # closed: last point repeats the first; undo the pad
        prev, nxt = np.roll(c, 1, axis=0), np.roll(c, -1, axis=0)
        turn = (c - prev)[:, 0] * (nxt - c)[:, 1] - (c - prev)[:, 1] * (nxt - c)[:, 0]
        c = c[np.abs(turn) > 1e-9]
        if len(c) >= 3:
            out.append(c)
    return out


def _copy(dst, src, keywords) -> None:
    for k in keywords:
        if k in src:
            setattr(dst, k, getattr(src, k))


def write_rtstruct(label_zyx: np.ndarray, labels: Dict[str, int], series: DicomSeries, dst: Path,
                   label: str = "nnunet_oar", roi_names: str = "tg263") -> List[str]:
    """Write an RTSTRUCT for ``series`` with one ROI per organ present in ``label_zyx``.

    Args:
        label_zyx: label map (z, y, x) on the series' grid: slice k is ``series.files[k]``, row y, column x.
        labels: ``{organ: label value}``; organs with no voxel get no ROI.
        series: the sorted CT series (from :func:`nnunet_oar.dicom.series.read_ct_series`).
        dst: file to write (atomically).
        label: StructureSetLabel.
        roi_names: ``"tg263"`` (``Kidney_L``) or ``"catalogue"`` (``kidney_left``), see
            :func:`nnunet_oar.organs.roi_name`.

    Returns:
        The ROI names written, in ROI number order.
    """
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.sequence import Sequence
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    first = series.headers[0]
    if label_zyx.shape != (len(series.files), int(first.Rows), int(first.Columns)):
        raise InputError(f"label map {label_zyx.shape} (z,y,x) does not match the series "
                         f"({len(series.files)}, {first.Rows}, {first.Columns})")
    now = datetime.datetime.now()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = RTSTRUCT_SOP_CLASS
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    # the CT's character set travels with the names copied from it (a non-ASCII name is invalid without)
    _copy(ds, first, ["SpecificCharacterSet", "PatientName", "PatientID", "PatientBirthDate", "PatientSex",
                      "StudyInstanceUID", "StudyDate", "StudyTime", "StudyID", "AccessionNumber",
                      "ReferringPhysicianName", "StudyDescription", "FrameOfReferenceUID", "PositionReferenceIndicator"])
    ds.SOPClassUID, ds.SOPInstanceUID = RTSTRUCT_SOP_CLASS, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.SeriesInstanceUID, ds.SeriesNumber, ds.InstanceNumber = "RTSTRUCT", generate_uid(), 9901, 1
    ds.SeriesDescription = "nnunet_oar organs at risk (automatic)"
    ds.Manufacturer, ds.ManufacturerModelName = "nnunet_oar", "nnunet_oar"
    ds.OperatorsName = ""                                             # Type 2 in the RT Series module
    ds.StructureSetLabel = label
    ds.StructureSetDate, ds.StructureSetTime = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    ds.ApprovalStatus = "UNAPPROVED"

    contour_images = []
    for h in series.headers:
        item = Dataset()
        item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = h.SOPClassUID, h.SOPInstanceUID
        contour_images.append(item)
    ref_series = Dataset()
    ref_series.SeriesInstanceUID = series.series_uid
    ref_series.ContourImageSequence = Sequence(contour_images)
    ref_study = Dataset()
    ref_study.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.3.1"        # Detached Study Management: retired, still what planning systems expect
    ref_study.ReferencedSOPInstanceUID = first.StudyInstanceUID
    ref_study.RTReferencedSeriesSequence = Sequence([ref_series])
    frame = Dataset()
    frame.FrameOfReferenceUID = first.FrameOfReferenceUID
    frame.RTReferencedStudySequence = Sequence([ref_study])
    ds.ReferencedFrameOfReferenceSequence = Sequence([frame])

    row_dir = np.array([float(v) for v in first.ImageOrientationPatient[:3]])
    col_dir = np.array([float(v) for v in first.ImageOrientationPatient[3:]])
    dy, dx = (float(v) for v in first.PixelSpacing)                    # row spacing, column spacing
    rois, roi_contours, observations, names = [], [], [], []
    for organ, value in labels.items():
        if organ in ("background", "ignore"):
            continue
        mask = label_zyx == value
        if not mask.any():
            continue
        number = len(names) + 1
        contours = []
        for k in np.flatnonzero(mask.any(axis=(1, 2))):
            ipp = np.array([float(v) for v in series.headers[k].ImagePositionPatient])
            for c in slice_contours(mask[k]):
                pts = ipp + np.outer(c[:, 1] * dx, row_dir) + np.outer(c[:, 0] * dy, col_dir)
                item = Dataset()
                item.ContourImageSequence = Sequence([contour_images[k]])
                item.ContourGeometricType = "CLOSED_PLANAR"
                item.NumberOfContourPoints = len(pts)
                item.ContourData = [f"{v:.4f}" for v in pts.ravel()]
                contours.append(item)
        roi = Dataset()
        roi.ROINumber, roi.ReferencedFrameOfReferenceUID = number, first.FrameOfReferenceUID
        roi.ROIName, roi.ROIGenerationAlgorithm = catalogue.roi_name(organ, roi_names), "AUTOMATIC"
        rois.append(roi)
        rc = Dataset()
        rc.ROIDisplayColor = list(catalogue.colour(organ)) if organ in catalogue.ORGANS else [255, 0, 0]
        rc.ReferencedROINumber = number
        rc.ContourSequence = Sequence(contours)
        roi_contours.append(rc)
        obs = Dataset()
        obs.ObservationNumber, obs.ReferencedROINumber = number, number
        obs.RTROIInterpretedType, obs.ROIInterpreter = "ORGAN", ""
        observations.append(obs)
        names.append(roi.ROIName)
    ds.StructureSetROISequence = Sequence(rois)
    ds.ROIContourSequence = Sequence(roi_contours)
    ds.RTROIObservationsSequence = Sequence(observations)
    with atomic_path(dst) as tmp:
        pydicom.dcmwrite(tmp, ds, enforce_file_format=True)
    return names
