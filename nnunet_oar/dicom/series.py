"""Reading a DICOM CT series: slice order from positions, HU, and checks that name what is wrong.

The image is read with SimpleITK's series reader (which applies Rescale Slope / Intercept, so voxels
are HU) from the file list *we* sort: by each slice's position along the slice normal
(``ImagePositionPatient`` projected on ``row x column`` of ``ImageOrientationPatient``), never by file
name. Slice k of the returned image (numpy axis 0, SimpleITK index z) is ``series.files[k]``.

Refused with an :class:`~nnunet_oar.io.InputError` naming the folder (and files): no DICOM, a DICOM
file that cannot be read (a truncated slice must not silently shorten the volume), two different images
with one SOPInstanceUID, several CT series without ``series_uid`` (other objects such as an RTSTRUCT,
a dose, a localizer or a dose-report screen beside a single CT series are ignored), a modality other
than CT (in any slice), multi-frame (Enhanced) CT, a missing Rescale Intercept / Slope, missing or
malformed geometry attributes, unreadable pixel data (naming a transfer syntax GDCM cannot decode),
differing orientations or matrix sizes, a single slice, two slices at one position, missing slices,
non-uniform spacing, and gantry tilt or a slice shifted in plane (a sheared stack). Localizer and
secondary capture images inside the series are left out. Blank UIDs are no reason to refuse the image,
but RTSTRUCT and SEG output (:meth:`DicomSeries.require_uids`).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import SimpleITK as sitk

from nnunet_oar.io import InputError

TOL_MM = 0.01
ROUNDING_MM = 0.1        # how coarsely exports write ImagePositionPatient (0.1 mm: Elekta XiO)


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


# objects that are never a slice of a CT volume, even with Modality CT: scouts (ImageType value 3 is
# LOCALIZER for CT; some vendors write TOPOGRAM or SCOUT) and secondary captures (dose report screens)
_LOCALIZER = {"LOCALIZER", "SCOUT", "TOPOGRAM"}
_SECONDARY_CAPTURE = {"1.2.840.10008.5.1.4.1.1.7", "1.2.840.10008.5.1.4.1.1.7.1", "1.2.840.10008.5.1.4.1.1.7.2",
                      "1.2.840.10008.5.1.4.1.1.7.3", "1.2.840.10008.5.1.4.1.1.7.4"}
_CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
_DIRECTORY = "1.2.840.10008.1.3.10"                 # DICOMDIR
_UNCOMPRESSED = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99"}


def _dicom_start(f: Path) -> Optional[bool]:
    """True: a DICOM file ('DICM' after the preamble); False: perhaps a data set without preamble and file
    meta header (it begins with a group 0002 or 0008 element, as old exports and some PACS copies do);
    None: not DICOM (empty, text, DICOMDIR-less hidden files, ...)."""
    with open(f, "rb") as fh:
        head = fh.read(132)
    if head[128:132] == b"DICM":
        return True
    if len(head) >= 8 and head[:2] in (b"\x02\x00", b"\x08\x00") and head[3:4] == b"\x00":
        return False
    return None


def _not_a_slice(ds) -> Optional[str]:
    """Why ``ds`` cannot be a slice of a CT volume (a localizer, a secondary capture), or None."""
    if str(getattr(ds, "SOPClassUID", "") or "") in _SECONDARY_CAPTURE:
        return "a secondary capture (e.g. a dose report)"
    image_type = getattr(ds, "ImageType", None) or []
    image_type = [image_type] if isinstance(image_type, str) else list(image_type)
    if _LOCALIZER & {str(v).strip().upper() for v in image_type}:
        return "a localizer (scout)"
    return None


def scan_series(folder: Path, problems: Optional[List[Tuple[Path, str]]] = None
                ) -> Dict[str, List[Tuple[Path, object]]]:
    """``{SeriesInstanceUID: [(file, header)]}`` of every DICOM file under ``folder`` (recursive; pixel
    data not read). Files that are not DICOM are skipped; so is a second copy of an instance (same
    SOPInstanceUID, series and position: the first copy counts).

    Some files make any CT beside them suspect, since skipping them could silently drop a slice at either
    end: a DICOM file (one with the 'DICM' prefix) that cannot be read, a CT file without
    SeriesInstanceUID (truncated?), a file that cannot be opened, and a second, different image with a
    SOPInstanceUID already seen. They are left out of the groups and, with ``problems`` given (a
    multi-patient conversion, which refuses only the series beside them), appended to it as
    ``(file, why)``.

    Raises:
        InputError: naming the file, for the first such file when ``problems`` is None.
    """
    import pydicom
    groups: Dict[str, List[Tuple[Path, object]]] = {}
    seen: Dict[str, Tuple[Path, object]] = {}

    def suspect(f: Path, why: str) -> None:
        if problems is None:
            raise InputError(f"{f}: {why}")
        problems.append((f, why))

    for f in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
        try:
            part10 = _dicom_start(f)
        except OSError as e:
            suspect(f, f"cannot be opened ({e.strerror or e}); a slice could be missing")
            continue
        if part10 is None:
            continue
        try:
            ds = pydicom.dcmread(f, stop_before_pixels=True, force=not part10)
            uid = ds.get("SeriesInstanceUID")
            instance = str(ds.get("SOPInstanceUID", "") or "").strip()
            position = ds.get("ImagePositionPatient")
            sop_class = str(getattr(getattr(ds, "file_meta", None), "MediaStorageSOPClassUID", "")
                            or ds.get("SOPClassUID", "") or "")
        except Exception as e:      # pydicom raises many kinds on damaged files
            if part10:              # without the prefix, the guess 'a data set without preamble' was wrong
                suspect(f, f"a DICOM file that cannot be read ({type(e).__name__}: {e}); remove or replace it")
            continue
        if uid is None:
            if part10 and sop_class != _DIRECTORY and (sop_class in ("", _CT_IMAGE)
                                                       or ds.get("Modality") == "CT"):
                suspect(f, "a DICOM CT file without SeriesInstanceUID (truncated or damaged?); remove or replace it")
            continue
        if instance:
            if instance in seen:
                first, first_ds = seen[instance]
                if (str(first_ds.get("SeriesInstanceUID")) == str(uid)
                        and first_ds.get("ImagePositionPatient") == position):
                    continue                    # the same instance exported twice
                suspect(f, f"a different image with the SOPInstanceUID {instance} of {first} (an anonymiser that "
                           "gives every file the same UID?); the slices cannot be told apart in an RTSTRUCT")
                continue
            seen[instance] = (f, ds)
        groups.setdefault(str(uid), []).append((f, ds))
    return groups


def is_dicom_folder(path: Path) -> bool:
    """True if ``path`` is a folder holding at least one DICOM file (the 'DICM' prefix after the preamble,
    or a data set without one that pydicom reads with a SeriesInstanceUID)."""
    import pydicom
    path = Path(path)
    if not path.is_dir():
        return False
    for f in path.rglob("*"):
        if not f.is_file():
            continue
        try:
            part10 = _dicom_start(f)
            if part10:
                return True
            if part10 is False and "SeriesInstanceUID" in pydicom.dcmread(f, stop_before_pixels=True, force=True):
                return True
        except Exception:           # unreadable here: scan_series names it
            continue
    return False


def _describe(uid: str, items: list) -> str:
    ds = items[0][1]
    why = {_not_a_slice(d) for _, d in items}
    kind = f", {why.pop()}" if len(why) == 1 and None not in why else ""
    return (f"{uid} ({getattr(ds, 'Modality', '?')}{kind}, series number {getattr(ds, 'SeriesNumber', '?')}, "
            f"{len(items)} files, '{getattr(ds, 'SeriesDescription', '')}')")


def _frames(ds) -> int:
    """NumberOfFrames (1 when absent; a malformed value counts as several: it is no plain CT slice)."""
    try:
        return int(getattr(ds, "NumberOfFrames", 1) or 1)
    except (TypeError, ValueError):
        return 2


def is_ct_volume(items: list) -> bool:
    """A series that holds CT slices at two positions at least (not only localizers, secondary captures or
    a bolus-tracking series that images one position again and again)."""
    positions = {tuple(str(v) for v in (ds.get("ImagePositionPatient") or [])) for _, ds in items
                 if getattr(ds, "Modality", None) == "CT" and _not_a_slice(ds) is None}
    return len(positions) >= 2


def _numbers(h, key: str, n: int, where: str) -> np.ndarray:
    """``n`` finite numbers from header attribute ``key``, or an InputError naming the file."""
    name = getattr(h, "filename", None) or "a slice"
    value = getattr(h, key, None)
    if value is None or value == "":
        raise InputError(f"{where}: {name} has no {key}")
    try:
        values = np.array([float(v) for v in (value if isinstance(value, Sequence) and not isinstance(value, str)
                                                else [value])], dtype=float)
    except (TypeError, ValueError):
        raise InputError(f"{where}: {name}: {key} is not {n} numbers ({value!r})") from None
    if len(values) != n or not np.isfinite(values).all():
        raise InputError(f"{where}: {name}: {key} is not {n} numbers ({value!r})")
    return values


def slice_geometry(headers: list, where: str) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sort slices along their normal and check the stack.

    Args:
        headers: pydicom datasets of one series.
        where: what to name in errors (the folder).

    Returns:
        ``(order, direction, spacing_xyz)``: slice order (indices into ``headers``), the 3x3 direction
        (columns: row direction, column direction, normal; SimpleITK x, y, z) and the spacing in mm
        (x = between columns, y = between rows, z = between slices).

    Raises:
        InputError: naming the folder (and file) for a missing or malformed ImageOrientationPatient,
            ImagePositionPatient, PixelSpacing, Rows or Columns; orientations or matrices that differ; fewer
            than two slices; two slices at one position; slices off the line of the stack (gantry tilt, or a
            slice shifted in plane); missing slices and non-uniform spacing.
    """
    if len(headers) < 2:
        name = getattr(headers[0], "filename", None) if headers else None
        raise InputError(f"{where}: {'only one CT slice (' + str(name) + ')' if headers else 'no CT slices'}: a "
                         "volume needs at least two, and the slice spacing is unknown (is this the right series?)")
    iop = np.array([_numbers(h, "ImageOrientationPatient", 6, where) for h in headers])
    if np.abs(iop - iop[0]).max() > 1e-4:
        k = int(np.argmax(np.abs(iop - iop[0]).max(axis=1)))
        raise InputError(f"{where}: slices have different ImageOrientationPatient "
                         f"({getattr(headers[0], 'filename', '?')} and {getattr(headers[k], 'filename', '?')})")
    for key in ("Rows", "Columns"):
        sizes = [int(_numbers(h, key, 1, where)[0]) for h in headers]
        if len(set(sizes)) > 1:
            k = next(i for i, n in enumerate(sizes) if n != sizes[0])
            raise InputError(f"{where}: slices have different {key} ({sorted(set(sizes))}: {sizes[0]} in "
                             f"{getattr(headers[0], 'filename', '?')}, {sizes[k]} in {getattr(headers[k], 'filename', '?')})")
    ps = np.array([_numbers(h, "PixelSpacing", 2, where) for h in headers])
    if np.abs(ps - ps[0]).max() > 1e-4:
        k = int(np.argmax(np.abs(ps - ps[0]).max(axis=1)))
        raise InputError(f"{where}: slices have different PixelSpacing ({ps[0].tolist()} mm in "
                         f"{getattr(headers[0], 'filename', '?')}, {ps[k].tolist()} mm in "
                         f"{getattr(headers[k], 'filename', '?')})")
    if (ps[0] <= 0).any():
        raise InputError(f"{where}: PixelSpacing {ps[0].tolist()} is not positive")
    row_dir, col_dir = iop[0, :3], iop[0, 3:]
    if (abs(np.linalg.norm(row_dir) - 1) > 1e-3 or abs(np.linalg.norm(col_dir) - 1) > 1e-3
            or abs(row_dir @ col_dir) > 1e-3):
        raise InputError(f"{where}: ImageOrientationPatient {iop[0].tolist()} is not two orthogonal unit vectors")
    row_dir, col_dir = row_dir / np.linalg.norm(row_dir), col_dir / np.linalg.norm(col_dir)
    normal = np.cross(row_dir, col_dir)
    normal /= np.linalg.norm(normal)
    ipp = np.array([_numbers(h, "ImagePositionPatient", 3, where) for h in headers])
    order = np.argsort(ipp @ normal, kind="stable")
    ipp = ipp[order]
    files = [getattr(headers[i], "filename", "?") for i in order]
    pos = ipp @ normal
    steps = np.diff(pos)
    if (steps < TOL_MM).any():
        k = int(np.argmax(steps < TOL_MM))
        raise InputError(f"{where}: two slices at one position ({pos[k]:.2f} mm): {files[k]} and {files[k + 1]} "
                         "(a duplicate, or several acquisitions or phases in one series)")
    # every slice's offset across the slice plane from the first: a sheared stack (gantry tilt) or a slice
    # out of line; either would be misplaced on an orthogonal grid. The tilt is judged from the positions:
    # DICOM calls GantryDetectorTilt nominal, and tools that resample a tilted series often leave it set.
    shear = np.linalg.norm((ipp - ipp[0]) - np.outer(pos - pos[0], normal), axis=1)
    if shear.max() > ROUNDING_MM + 0.1 * ps[0].min():
        k = int(np.argmax(shear))
        raise InputError(f"{where}: gantry tilt or an in-plane shift ({files[k]} lies {shear[k]:.2f} mm across the "
                         f"slice plane from the line through {files[0]}, "
                         f"{np.degrees(np.arctan2(shear[k], pos[k] - pos[0])):.1f} degrees); "
                         "resample the series to an orthogonal grid first")
    # dicom2nifti's tolerance (0.1 mm + 5 %): planning systems write positions to 0.1 mm (Elekta XiO: 2.5 mm
    # steps read 2.4-2.6 mm), so a 1 % tolerance refused real exports
    step = float(np.median(steps))
    if np.abs(steps - step).max() > ROUNDING_MM + 0.05 * step:
        k = int(np.argmax(np.abs(steps - step)))
        ratio = steps[k] / step
        what = (f"missing slice(s): a {steps[k]:.2f} mm gap between {files[k]} and {files[k + 1]} "
                f"where the spacing is {step:.2f} mm" if abs(ratio - round(ratio)) < 0.05 and ratio > 1.5
                else f"non-uniform slice spacing ({steps.min():.2f} to {steps.max():.2f} mm; {steps[k]:.2f} mm "
                     f"between {files[k]} ({pos[k]:.2f} mm) and {files[k + 1]} ({pos[k + 1]:.2f} mm) where the "
                     f"median is {step:.2f} mm: two scan ranges or pitches joined?)")
        raise InputError(f"{where}: {what}")
    # a uniform stack's spacing from its end slices: from the median of rounded positions the grid would
    # drift by up to a slice over a long stack
    step = float((pos[-1] - pos[0]) / (len(pos) - 1))
    # steps each within tolerance can still add up (two runs of slightly different spacing): every slice on
    # the grid, within the rounding of the positions
    off = np.abs(pos - (pos[0] + step * np.arange(len(pos))))
    if off.max() > ROUNDING_MM + 0.05 * step:
        k = int(np.argmax(off))
        raise InputError(f"{where}: non-uniform slice spacing: {files[k]} lies {off[k]:.2f} mm off the uniform "
                         f"grid of {step:.3f} mm between the end slices")
    try:
        tilt = float(getattr(headers[0], "GantryDetectorTilt", 0) or 0)
    except (TypeError, ValueError):
        tilt = 0.0
    if abs(tilt) > 1e-3:
        print(f"warning: {where}: GantryDetectorTilt says {tilt:.1f} degrees, but the slices are stacked "
              "orthogonally (a series resampled after a tilted scan?); read as orthogonal")
    direction = np.stack([row_dir, col_dir, normal], axis=1)
    spacing_xyz = np.array([ps[0, 1], ps[0, 0], step])
    return order, direction, spacing_xyz


def read_ct_series(folder: Path, series_uid: Optional[str] = None) -> Tuple[sitk.Image, DicomSeries]:
    """Read one CT series from ``folder`` in HU.

    Args:
        folder: folder with the series' files (searched recursively; other files are ignored).
        series_uid: which series, when the folder holds several CT series. Localizer (scout) and secondary
            capture (dose report) series, and other modalities, are no candidates.

    Returns:
        ``(image, series)``: the CT (origin = first slice's ImagePositionPatient, direction from
        ImageOrientationPatient and the slice normal, spacing in mm) and the sorted :class:`DicomSeries`.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: not a folder")
    damaged: List[Tuple[Path, str]] = []
    groups = scan_series(folder, damaged)
    if not groups:
        raise InputError(f"{folder}: no DICOM files" + (f" that can be read ({damaged[0][0]}: {damaged[0][1]})"
                                                        if damaged else ""))
    if series_uid is None:
        # other objects beside one CT series (an RTSTRUCT, a dose, a scout) do not make the choice ambiguous
        ct = [u for u, items in groups.items() if is_ct_volume(items)]
        if len(ct) > 1:
            listing = "; ".join(_describe(u, groups[u]) for u in ct)
            raise InputError(f"{folder}: {len(ct)} CT series; choose one with --series-uid: {listing}")
        if not ct and len(groups) > 1:
            listing = "; ".join(_describe(u, items) for u, items in groups.items())
            raise InputError(f"{folder}: no CT series among {len(groups)} series: {listing}")
        series_uid = ct[0] if ct else next(iter(groups))
    elif series_uid not in groups:
        listing = "; ".join(_describe(u, items) for u, items in groups.items())
        raise InputError(f"{folder}: no series {series_uid}; found {listing}")
    # a damaged file beside the series' slices may be one of them; elsewhere in the tree it is reported only
    folders = {f.parent for f, _ in groups[series_uid]}
    for f, why in damaged:
        if f.parent in folders:
            raise InputError(f"{f}: {why}")
        print(f"warning: {f}: {why} (not beside the CT's slices; ignored)")
    return ct_from_files(groups[series_uid], str(folder))


def ct_from_files(items: List[Tuple[Path, object]], where: str) -> Tuple[sitk.Image, DicomSeries]:
    """Read one CT series from its ``(file, header)`` pairs (one group of :func:`scan_series`), in HU;
    ``where`` names it in errors. Localizer and secondary capture images in it are left out (they are
    never slices of the volume). Returns what :func:`read_ct_series` returns."""
    folder = Path(where)
    series_uid = str(getattr(items[0][1], "SeriesInstanceUID", ""))
    modality = getattr(items[0][1], "Modality", "?")
    if modality != "CT":
        raise InputError(f"{folder}: series {series_uid} is {modality}, not CT")
    other = [(f, getattr(ds, "Modality", "?")) for f, ds in items if getattr(ds, "Modality", "?") != "CT"]
    if other:
        raise InputError(f"{folder}: series {series_uid} mixes modalities: {other[0][0]} is {other[0][1]}"
                         + (f" (and {len(other) - 1} more)" if len(other) > 1 else ""))
    slices = [(f, ds) for f, ds in items if _not_a_slice(ds) is None]
    if not slices:
        more = f" (and {len(items) - 1} more files)" if len(items) > 1 else ""
        raise InputError(f"{folder}: series {series_uid} holds no CT slices: {items[0][0]} is "
                         f"{_not_a_slice(items[0][1])}{more}")
    items = slices
    multi = [f for f, ds in items if str(getattr(ds, "SOPClassUID", "") or "").startswith(_CT_IMAGE + ".")
             or _frames(ds) > 1]
    if multi:
        raise InputError(f"{folder}: {multi[0]} is a multi-frame (Enhanced CT) image, which is not read; export "
                         "the series as single-frame CT images (CT Image Storage)")
    headers = [ds for _, ds in items]
    for f, ds in items:
        ds.filename = str(f)
        # anonymisers may blank the instance UIDs in the data set but keep them in the file meta header
        for key, meta_key in (("SOPInstanceUID", "MediaStorageSOPInstanceUID"),
                              ("SOPClassUID", "MediaStorageSOPClassUID")):
            meta_uid = str(getattr(getattr(ds, "file_meta", None), meta_key, "") or "")
            if not str(getattr(ds, key, "") or "").strip() and meta_uid.strip():
                setattr(ds, key, meta_uid)
    # CT requires both (type 1): without them stored values would pass for HU, off by the intercept
    for key in ("RescaleIntercept", "RescaleSlope"):
        lacking = [f for f, ds in items if getattr(ds, key, None) is None or str(getattr(ds, key)).strip() == ""]
        if lacking:
            raise InputError(f"{folder}: {key} is missing in {len(lacking)} of {len(items)} files ("
                             f"{', '.join(str(f) for f in lacking[:3])}{', ...' if len(lacking) > 3 else ''}); "
                             "the Hounsfield units are unknown")
    order, direction, spacing = slice_geometry(headers, str(folder))
    files = [items[i][0] for i in order]
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(f) for f in files])
    # the reader takes the pixel type from the first file: slices rescaled differently would be cast to it
    # (fractional HU truncated, or worse); float holds every slice's HU exactly
    encodings = {tuple(float(_numbers(h, k, 1, str(folder))[0]) for k in ("RescaleSlope", "RescaleIntercept"))
                 + tuple(int(getattr(h, k, 0) or 0) for k in ("PixelRepresentation", "BitsStored", "BitsAllocated"))
                 for h in headers}
    if len(encodings) > 1:
        reader.SetOutputPixelType(sitk.sitkFloat32)
    try:
        image = reader.Execute()        # applies RescaleSlope / RescaleIntercept
    except RuntimeError:
        bad = [f for f in files if not _readable(f)]
        named = ", ".join(str(f) for f in bad[:3]) + (f" (and {len(bad) - 3} more)" if len(bad) > 3 else "")
        syntaxes = {str(getattr(getattr(headers[order[files.index(f)]], "file_meta", None), "TransferSyntaxUID", "")
                        or "") for f in bad}
        compressed = sorted(t for t in syntaxes if t and t not in _UNCOMPRESSED)
        if compressed:
            import pydicom.uid
            names = ", ".join(t if pydicom.uid.UID(t).name == t else f"{pydicom.uid.UID(t).name} ({t})"
                              for t in compressed)
            raise InputError(f"{folder}: cannot decode the pixel data of {named or 'the series'}: transfer syntax "
                             f"{names}, which SimpleITK (GDCM) does not decode; export the series uncompressed "
                             "(or JPEG lossless / JPEG 2000)") from None
        raise InputError(f"{folder}: cannot read the pixel data of {named or 'the series'} "
                         "(truncated or damaged?)") from None
    if image.GetSize()[2] != len(files):
        raise InputError(f"{folder}: read {image.GetSize()[2]} slices from {len(files)} files (a multi-frame file?)")
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
