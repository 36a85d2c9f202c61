"""Reading a DICOM CT series: slice order from positions, HU, and checks that name what is wrong.

The image is read with SimpleITK's series reader (which applies Rescale Slope / Intercept, so voxels
are HU) from the file list *we* sort: by each slice's position along the slice normal
(``ImagePositionPatient`` projected on ``row x column`` of ``ImageOrientationPatient``), never by file
name. Slice k of the returned image (numpy axis 0, SimpleITK index z) is ``series.files[k]``.

Refused with an :class:`~nnunet_oar.io.InputError` naming the folder (and files): no DICOM, several
CT series without ``series_uid`` (other objects such as an RTSTRUCT beside a single CT series
are ignored), a modality other than CT (in any slice), unreadable pixel data, differing orientations
or matrix sizes, two slices at one position, missing slices, non-uniform spacing, and gantry tilt (a
sheared stack). Blank UIDs are no reason to refuse the image, but RTSTRUCT and SEG output
(:meth:`DicomSeries.require_uids`).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import SimpleITK as sitk

from nnunet_oar.io import InputError

TOL_MM = 0.01


@dataclass
class DicomSeries:
    """One sorted CT series.

    Attributes:
        folder: the folder it was read from.
        series_uid: SeriesInstanceUID.
        files: files in slice order (index k = image slice z = k).
        headers: their pydicom datasets, without pixel data, same order.
    """
    folder: Path
    series_uid: str
    files: List[Path]
    headers: list

    def require_uids(self, what: str) -> None:
        """Refuse to write ``what`` (RTSTRUCT, DICOM SEG) for a series whose references would be empty:
        they are Type 1, and a reader would attach the contours to nothing (or to every slice).

        Raises:
            InputError: naming the missing attribute and the files.
        """
        for key in ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID", "SOPInstanceUID", "SOPClassUID"):
            blank = [f for f, h in zip(self.files, self.headers) if not str(getattr(h, key, "") or "").strip()]
            if blank:
                raise InputError(f"{self.folder}: cannot write {what}: {key} is empty in {len(blank)} of "
                                 f"{len(self.files)} files ({', '.join(f.name for f in blank[:3])}"
                                 f"{', ...' if len(blank) > 3 else ''}); the label map is not affected")


def scan_series(folder: Path) -> Dict[str, List[Tuple[Path, object]]]:
    """``{SeriesInstanceUID: [(file, header)]}`` of every DICOM file under ``folder`` (recursive; pixel
    data not read). Files that are not DICOM are skipped."""
    import pydicom
    from pydicom.errors import InvalidDicomError
    groups: Dict[str, List[Tuple[Path, object]]] = {}
    seen = set()
    for f in sorted(p for p in folder.rglob("*") if p.is_file()):
        try:
            ds = pydicom.dcmread(f, stop_before_pixels=True)
        except (InvalidDicomError, OSError):
            continue
        uid = getattr(ds, "SeriesInstanceUID", None)
        instance = str(getattr(ds, "SOPInstanceUID", "") or "")
        if instance and instance in seen:        # the same instance exported twice: the first copy counts
            continue
        seen.add(instance)
        if uid is not None:
            groups.setdefault(str(uid), []).append((f, ds))
    return groups


def is_dicom_folder(path: Path) -> bool:
    """True if ``path`` is a folder holding at least one DICOM file (checked by the 'DICM' preamble)."""
    path = Path(path)
    if not path.is_dir():
        return False
    for f in path.rglob("*"):
        if f.is_file():
            with open(f, "rb") as fh:
                fh.seek(128)
                if fh.read(4) == b"DICM":
                    return True
    return False


def _describe(uid: str, items: list) -> str:
    ds = items[0][1]
    return (f"{uid} ({getattr(ds, 'Modality', '?')}, {len(items)} files, "
            f"'{getattr(ds, 'SeriesDescription', '')}')")


def slice_geometry(headers: list, where: str) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sort slices along their normal and check the stack.

    Args:
        headers: pydicom datasets of one series.
        where: what to name in errors (the folder).

    Returns:
        ``(order, direction, spacing_xyz)``: slice order (indices into ``headers``), the 3x3 direction
        (columns: row direction, column direction, normal; SimpleITK x, y, z) and the spacing in mm
        (x = between columns, y = between rows, z = between slices).
    """
    iop = np.array([[float(v) for v in h.ImageOrientationPatient] for h in headers])
    if np.abs(iop - iop[0]).max() > 1e-4:
        raise InputError(f"{where}: slices have different ImageOrientationPatient")
    for key in ("Rows", "Columns"):
        if len({int(getattr(h, key)) for h in headers}) > 1:
            raise InputError(f"{where}: slices have different {key}")
    ps = np.array([[float(v) for v in h.PixelSpacing] for h in headers])
    if np.abs(ps - ps[0]).max() > 1e-4:
        raise InputError(f"{where}: slices have different PixelSpacing")
    row_dir, col_dir = iop[0, :3], iop[0, 3:]
    normal = np.cross(row_dir, col_dir)
    ipp = np.array([[float(v) for v in h.ImagePositionPatient] for h in headers])
    order = np.argsort(ipp @ normal, kind="stable")
    ipp = ipp[order]
    files = [getattr(headers[i], "filename", "?") for i in order]
    pos = ipp @ normal
    if len(headers) > 1:
        steps = np.diff(pos)
        if (steps < TOL_MM).any():
            k = int(np.argmax(steps < TOL_MM))
            raise InputError(f"{where}: two slices at one position ({pos[k]:.2f} mm): {files[k]} and {files[k + 1]}")
        tilt = getattr(headers[0], "GantryDetectorTilt", 0) or 0
        # offsets across the slice plane mean a sheared stack (gantry tilt)
        shear = np.linalg.norm((ipp - ipp[0]) - np.outer(pos - pos[0], normal), axis=1).max()
        if abs(float(tilt)) > 1e-3 or shear > TOL_MM * len(headers):
            raise InputError(f"{where}: gantry tilt ({float(tilt):.1f} degrees, in-plane offset {shear:.1f} mm "
                             "across the stack); resample the series to an orthogonal grid first")
        step = float(np.median(steps))
        if np.abs(steps - step).max() > max(TOL_MM, 0.01 * step):
            k = int(np.argmax(np.abs(steps - step)))
            ratio = steps[k] / step
            what = (f"missing slice(s): a {steps[k]:.2f} mm gap between {files[k]} and {files[k + 1]} "
                    f"where the spacing is {step:.2f} mm" if abs(ratio - round(ratio)) < 0.05 and ratio > 1.5
                    else f"non-uniform slice spacing ({steps.min():.2f} to {steps.max():.2f} mm)")
            raise InputError(f"{where}: {what}")
        # a uniform stack's spacing from its end slices: from the median of positions a scanner rounded to
        # 0.01 mm, the grid would drift by up to a slice over a long stack
        step = float((pos[-1] - pos[0]) / (len(pos) - 1))
    else:
        step = float(getattr(headers[0], "SliceThickness", 1.0) or 1.0)
    direction = np.stack([row_dir, col_dir, normal], axis=1)
    spacing_xyz = np.array([ps[0, 1], ps[0, 0], step])
    return order, direction, spacing_xyz


def read_ct_series(folder: Path, series_uid: Optional[str] = None) -> Tuple[sitk.Image, DicomSeries]:
    """Read one CT series from ``folder`` in HU.

    Args:
        folder: folder with the series' files (searched recursively; other files are ignored).
        series_uid: which series, when the folder holds several.

    Returns:
        ``(image, series)``: the CT (origin = first slice's ImagePositionPatient, direction from
        ImageOrientationPatient and the slice normal, spacing in mm) and the sorted :class:`DicomSeries`.
    """
    folder = Path(folder)
    groups = scan_series(folder)
    if not groups:
        raise InputError(f"{folder}: no DICOM files")
    if series_uid is None:
        # other objects beside one CT series (an RTSTRUCT, a dose) do not make the choice ambiguous
        ct = [u for u, items in groups.items() if getattr(items[0][1], "Modality", None) == "CT"]
        if len(ct) > 1 or (not ct and len(groups) > 1):
            listing = "; ".join(_describe(u, items) for u, items in groups.items())
            raise InputError(f"{folder}: {len(ct) or len(groups)} series; choose one with --series-uid: {listing}")
        series_uid = ct[0] if ct else next(iter(groups))
    elif series_uid not in groups:
        listing = "; ".join(_describe(u, items) for u, items in groups.items())
        raise InputError(f"{folder}: no series {series_uid}; found {listing}")
    return ct_from_files(groups[series_uid], str(folder))


def ct_from_files(items: List[Tuple[Path, object]], where: str) -> Tuple[sitk.Image, DicomSeries]:
    """Read one CT series from its ``(file, header)`` pairs (one group of :func:`scan_series`), in HU;
    ``where`` names it in errors. Returns what :func:`read_ct_series` returns."""
    folder = Path(where)
    series_uid = str(getattr(items[0][1], "SeriesInstanceUID", ""))
    modality = getattr(items[0][1], "Modality", "?")
    if modality != "CT":
        raise InputError(f"{folder}: series {series_uid} is {modality}, not CT")
    other = [(f, getattr(ds, "Modality", "?")) for f, ds in items if getattr(ds, "Modality", "?") != "CT"]
    if other:
        raise InputError(f"{folder}: series {series_uid} mixes modalities: {other[0][0]} is {other[0][1]}"
                         + (f" (and {len(other) - 1} more)" if len(other) > 1 else ""))
    headers = [ds for _, ds in items]
    for f, ds in items:
        ds.filename = str(f)
        # anonymisers may blank the instance UIDs in the data set but keep them in the file meta header
        for key, meta_key in (("SOPInstanceUID", "MediaStorageSOPInstanceUID"),
                              ("SOPClassUID", "MediaStorageSOPClassUID")):
            meta_uid = str(getattr(getattr(ds, "file_meta", None), meta_key, "") or "")
            if not str(getattr(ds, key, "") or "").strip() and meta_uid.strip():
                setattr(ds, key, meta_uid)
    order, direction, spacing = slice_geometry(headers, str(folder))
    files = [items[i][0] for i in order]
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(f) for f in files])
    try:
        image = reader.Execute()        # applies RescaleSlope / RescaleIntercept
    except RuntimeError:
        bad = [str(f) for f in files if not _readable(f)]
        named = ", ".join(bad[:3]) + (f" (and {len(bad) - 3} more)" if len(bad) > 3 else "")
        raise InputError(f"{folder}: cannot read the pixel data of {named or 'the series'} "
                         "(truncated or damaged?)") from None
    # the geometry is ours (from every slice's header), not what the reader derived from two slices
    image.SetOrigin([float(v) for v in headers[order[0]].ImagePositionPatient])
    image.SetDirection(direction.flatten().tolist())
    image.SetSpacing(spacing.tolist())
    return image, DicomSeries(folder, series_uid, files, [headers[i] for i in order])


def _readable(f: Path) -> bool:
    try:
        sitk.ReadImage(str(f))
    except RuntimeError:
        return False
    return True
