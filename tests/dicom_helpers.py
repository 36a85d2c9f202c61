"""Make DICOM CT series from SimpleITK volumes, and read RTSTRUCT contours back, for round-trip tests.

The series writer is deliberately independent of the reader under test: pydicom datasets built from
the volume's geometry, file names in random order.
"""
import datetime
from pathlib import Path
from typing import Dict, Optional

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid


def write_ct_series(image: sitk.Image, folder: Path, seed: int = 0, modality: str = "CT",
                    series_uid: Optional[str] = None, study_uid: Optional[str] = None,
                    tilt_mm_per_slice: float = 0.0) -> Dict[str, object]:
    """One file per slice, stored as HU + 1024 with RescaleIntercept -1024.

    A left-handed direction (third column = -row x column) is written the DICOM way: the slices then
    run against the normal. ``tilt_mm_per_slice`` shifts each slice along the rows (a gantry-tilt stack).
    Returns the UIDs used.
    """
    folder.mkdir(parents=True, exist_ok=True)
    d = np.array(image.GetDirection()).reshape(3, 3)
    hu = sitk.GetArrayFromImage(image)
    sx, sy, sz = image.GetSpacing()
    study_uid, series_uid, frame_uid = study_uid or generate_uid(), series_uid or generate_uid(), generate_uid()
    rng = np.random.default_rng(seed)
    names = rng.permutation(len(hu))
    today = datetime.date.today().strftime("%Y%m%d")
    for k in range(len(hu)):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = CTImageStorage, generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame_uid
        ds.Modality, ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = modality, "Phantom^Test", "P1", "", "O"
        ds.StudyDate, ds.StudyTime, ds.SeriesDate, ds.SeriesTime = today, "120000", today, "120000"
        ds.StudyID, ds.AccessionNumber, ds.ReferringPhysicianName = "1", "", ""
        ds.SeriesNumber, ds.InstanceNumber, ds.Manufacturer = 3, k + 1, "tests"
        ds.PositionReferenceIndicator, ds.ImageType = "", ["ORIGINAL", "PRIMARY", "AXIAL"]
        pos = np.array(image.TransformIndexToPhysicalPoint((0, 0, k))) + tilt_mm_per_slice * k * d[:, 0]
        ds.ImagePositionPatient = [f"{v:.6f}" for v in pos]
        ds.ImageOrientationPatient = [f"{v:.6f}" for v in (*d[:, 0], *d[:, 1])]
        ds.PixelSpacing = [f"{sy:.6f}", f"{sx:.6f}"]
        ds.SliceThickness = f"{sz:.6f}"
        ds.Rows, ds.Columns = hu.shape[1], hu.shape[2]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = "-1024", "1", "HU"
        ds.PixelData = np.clip(hu[k].astype(np.int32) + 1024, 0, 65535).astype(np.uint16).tobytes()
        pydicom.dcmwrite(folder / f"IM{names[k]:04d}", ds, enforce_file_format=True)
    return {"study": study_uid, "series": series_uid, "frame": frame_uid}


def rasterize_rtstruct(rtstruct: Path, reference: sitk.Image) -> Dict[str, np.ndarray]:
    """Every ROI's contours rasterised on ``reference``'s grid (z, y, x), even-odd rule, voxel centres."""
    from skimage.draw import polygon
    ds = pydicom.dcmread(rtstruct)
    names = {r.ROINumber: r.ROIName for r in ds.StructureSetROISequence}
    shape = reference.GetSize()[::-1]
    out = {}
    for rc in ds.ROIContourSequence:
        mask = np.zeros(shape, bool)
        for c in getattr(rc, "ContourSequence", []):
            pts = np.array(c.ContourData, float).reshape(-1, 3)
            idx = np.array([reference.TransformPhysicalPointToContinuousIndex(p.tolist()) for p in pts])
            k = int(round(idx[:, 2].mean()))
            assert np.allclose(idx[:, 2], k, atol=1e-3), "contour not in a slice plane"
            fill = np.zeros(shape[1:], bool)
            rr, cc = polygon(idx[:, 1], idx[:, 0], shape[1:])
            fill[rr, cc] = True
            mask[k] ^= fill
        out[names[rc.ReferencedROINumber]] = mask
    return out


def write_rtstruct_file(path: Path, reference: sitk.Image, uids: Dict[str, object], rois: Dict[str, object],
                        label: str = "clinic", date: str = "20260101", frame_uid: Optional[str] = None,
                        series_uid: Optional[str] = None, manufacturer: str = "TPS") -> None:
    """An RTSTRUCT written with pydicom alone, as another vendor's would be (independent of the package).

    ``rois``: ``{ROI name: bool mask (z, y, x) on reference's grid}``, traced per slice at the 0.5 iso-line
    (closed planar contours, holes as separate contours), or ``{ROI name: [(geometric type, (n, 3) world
    points mm), ...]}`` for hand-made contours (an empty list: an ROI without contours).
    ``frame_uid``/``series_uid`` override the references (a wrong frame, a missing series; ``""``: none).
    """
    from skimage.measure import find_contours
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = "1.2.840.10008.5.1.4.1.1.481.3", generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.SeriesInstanceUID, ds.StudyInstanceUID = "RTSTRUCT", generate_uid(), uids["study"]
    ds.PatientName, ds.PatientID, ds.Manufacturer = "Phantom^Test", "P1", manufacturer
    ds.StructureSetLabel, ds.StructureSetDate, ds.StructureSetTime = label, date, "120000"
    frame = Dataset()
    frame.FrameOfReferenceUID = frame_uid or uids["frame"]
    study, series = Dataset(), Dataset()
    if series_uid != "":                                 # "": no series reference at all
        series.SeriesInstanceUID = series_uid or uids["series"]
        study.RTReferencedSeriesSequence = [series]
    frame.RTReferencedStudySequence = [study]
    ds.ReferencedFrameOfReferenceSequence = [frame]
    ds.StructureSetROISequence, ds.ROIContourSequence = [], []
    for number, (name, content) in enumerate(rois.items(), start=1):
        roi = Dataset()
        roi.ROINumber, roi.ROIName, roi.ReferencedFrameOfReferenceUID = number, name, frame_uid or uids["frame"]
        ds.StructureSetROISequence.append(roi)
        contours = []
        if isinstance(content, np.ndarray):
            for k in np.flatnonzero(content.any(axis=(1, 2))):
                for c in find_contours(np.pad(content[k].astype(float), 1), 0.5):
                    idx = c[:-1, ::-1] - 1.0                     # (row, col) -> (x, y) index
                    pts = [reference.TransformContinuousIndexToPhysicalPoint((float(x), float(y), float(k)))
                           for x, y in idx]
                    contours.append(("CLOSED_PLANAR", np.array(pts)))
        else:
            contours = content
        rc = Dataset()
        rc.ReferencedROINumber, rc.ContourSequence = number, []
        for kind, pts in contours:
            item = Dataset()
            item.ContourGeometricType, item.NumberOfContourPoints = kind, len(pts)
            item.ContourData = [f"{v:.4f}" for v in np.asarray(pts).ravel()]
            rc.ContourSequence.append(item)
        ds.ROIContourSequence.append(rc)
    path.parent.mkdir(parents=True, exist_ok=True)
    pydicom.dcmwrite(path, ds, enforce_file_format=True)
