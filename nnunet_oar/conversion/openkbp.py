"""OpenKBP CSV layout -> nnU-Net raw data set.

Published layout (one folder per patient, ``pt_N/``): ``ct.csv`` is a sparse 128^3 CT (``flat_index,value``
rows, numpy C-order flat indices, values = HU + 1024), ``<ROI>.csv`` lists the flat indices inside a
structure, ``voxel_dimensions.csv`` gives the voxel size in mm of array axes 0, 1, 2. A missing ROI file
means *not contoured*, which annotations.json records; it does not mean absent.

Array axes, checked against anatomy on the sample patients (see README): axis 0 runs anterior ->
posterior, axis 1 patient right -> left, axis 2 superior -> inferior. In the LPS world frame that is
x = axis 1, y = axis 0, z = -axis 2, so the image is written with the array re-ordered to (z, y, x) =
(axis 2, axis 0, axis 1) and direction diag(1, 1, -1): no voxel is resampled or flipped. OpenKBP gives
no origin; the grid is centred on world (0, 0, 0).
"""
from __future__ import annotations

import io
import re
import tarfile
import warnings
from pathlib import Path
from typing import Dict, Iterator, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk
from tqdm import tqdm

from nnunet_oar import organs as catalogue
from nnunet_oar.conversion.dataset import build_dataset
from nnunet_oar.io import InputError

GRID = (128, 128, 128)
HU_OFFSET = 1024
_PATIENT = re.compile(r"^pt_\d+$")


def _has_header(data: bytes) -> bool:
    """OpenKBP's files start with a header line (``,data``); one that starts with a number has none, and
    skipping its first line would drop a voxel or a whole one-row contour."""
    first = data.split(b"\n", 1)[0].split(b",", 1)[0].strip()
    try:
        float(first)
    except ValueError:
        return True
    return False


def _read_csv(data: bytes, source: str, with_values: bool) -> np.ndarray:
    skip = 1 if _has_header(data) else 0
    if not skip:
        warnings.warn(f"{source}: no header line; its first line is read as data")
    try:
        if with_values:
            rows = np.loadtxt(io.BytesIO(data), delimiter=",", skiprows=skip, ndmin=2)
        else:
            rows = np.loadtxt(io.BytesIO(data), delimiter=",", skiprows=skip, usecols=0, ndmin=1)
    except ValueError as e:
        raise InputError(f"{source}: not an OpenKBP sparse CSV ({e})") from None
    if rows.size and not np.isfinite(rows).all():
        raise InputError(f"{source}: holds NaN or infinite values")
    index = rows[:, 0] if with_values else rows
    if index.size and (index.min() < 0 or index.max() >= np.prod(GRID) or (index % 1).any()):
        raise InputError(f"{source}: flat indices must be integers in [0, {np.prod(GRID)})")
    return rows


def patient_to_images(files: Dict[str, bytes], source: str) -> Tuple[sitk.Image, Dict[str, np.ndarray]]:
    """One patient's CSV files -> (CT image in HU, ``{organ: bool mask (z, y, x)}`` for contoured ROIs).

    Args:
        files: ``{file name: bytes}`` of one patient folder.
        source: the folder's name or path, for error messages.
    """
    for needed in ("ct.csv", "voxel_dimensions.csv"):
        if needed not in files:
            raise InputError(f"{source}/{needed}: missing")
    try:
        spacing = np.loadtxt(io.BytesIO(files["voxel_dimensions.csv"]), ndmin=1).astype(float)
    except ValueError as e:
        raise InputError(f"{source}/voxel_dimensions.csv: unreadable ({e})") from None
    if spacing.shape != (3,) or not np.isfinite(spacing).all() or (spacing <= 0).any():
        raise InputError(f"{source}/voxel_dimensions.csv: expected three positive voxel sizes, got {spacing}")
    rows = _read_csv(files["ct.csv"], f"{source}/ct.csv", with_values=True)
    if rows.shape[0] == 0:
        raise InputError(f"{source}/ct.csv: empty CT (no non-zero voxels)")
    # HU = value - 1024 is stored as int16: values beyond its range would wrap (99999 -> -32097 HU)
    lo, hi = np.iinfo(np.int16).min + HU_OFFSET, np.iinfo(np.int16).max + HU_OFFSET
    out_of_range = int(((rows[:, 1] < lo) | (rows[:, 1] > hi)).sum())
    if out_of_range:
        warnings.warn(f"{source}/ct.csv: {out_of_range} voxel values outside [{lo}, {hi}] (HU + {HU_OFFSET}) "
                      "clipped to that range")
    flat = np.zeros(np.prod(GRID), dtype=np.int32)
    flat[rows[:, 0].astype(np.int64)] = np.clip(rows[:, 1], lo, hi)
    ct_zyx = np.ascontiguousarray((flat.reshape(GRID) - HU_OFFSET).transpose(2, 0, 1))
    spacing_xyz = (spacing[1], spacing[0], spacing[2])
    ct = sitk.GetImageFromArray(ct_zyx.astype(np.int16))
    ct.SetSpacing(spacing_xyz)
    ct.SetDirection((1, 0, 0, 0, 1, 0, 0, 0, -1))
    half = (np.array(GRID) - 1) / 2 * np.array(spacing_xyz)
    ct.SetOrigin((-half[0], -half[1], half[2]))
    masks = {}
    for roi, organ in catalogue.BY_OPENKBP_ROI.items():
        if f"{roi}.csv" not in files:
            continue
        index = _read_csv(files[f"{roi}.csv"], f"{source}/{roi}.csv", with_values=False).astype(np.int64)
        m = np.zeros(np.prod(GRID), dtype=bool)
        m[index] = True
        masks[organ.name] = np.ascontiguousarray(m.reshape(GRID).transpose(2, 0, 1))
    return ct, masks


def iter_patients(source: Path) -> Iterator[Tuple[str, Dict[str, bytes], str]]:
    """Yield ``(patient id, {file name: bytes}, where)`` from a folder of ``pt_*`` folders (searched
    recursively) or from a ``.tar.xz`` / ``.tar.gz`` / ``.tar`` of one, read as a stream."""
    source = Path(source)
    if source.is_dir():
        folders = sorted((p for p in source.rglob("pt_*") if p.is_dir() and _PATIENT.match(p.name)),
                         key=lambda p: int(p.name[3:]))
        if not folders:
            raise InputError(f"{source}: no OpenKBP patient folders (pt_*)")
        for p in folders:
            yield p.name, {f.name: f.read_bytes() for f in p.glob("*.csv")}, str(p)
        return
    if not source.is_file():
        raise InputError(f"{source}: does not exist")
    try:
        tar = tarfile.open(source, mode="r:*")
    except (tarfile.TarError, OSError) as e:
        raise InputError(f"{source}: not a readable tar archive ({e})") from None
    current, files = None, {}
    with tar:
        try:
            for member in tar:
                parts = Path(member.name).parts
                if not member.isfile() or len(parts) < 2 or not _PATIENT.match(parts[-2]):
                    continue
                if parts[-2] != current:
                    if current is not None:
                        yield current, files, f"{source}:{current}"
                    current, files = parts[-2], {}
                files[parts[-1]] = tar.extractfile(member).read()
        except (tarfile.TarError, EOFError, OSError) as e:
            raise InputError(f"{source}: archive is damaged ({e})") from None
    if current is None:
        raise InputError(f"{source}: no OpenKBP patient folders (pt_*) in the archive")
    yield current, files, f"{source}:{current}"


def convert_openkbp(source: Path, dataset_id: int, organs: Optional[Sequence[str]] = None,
                    raw: Optional[Path] = None, progress: bool = True) -> Path:
    """Convert OpenKBP patients (folder or tarball) to ``$nnUNet_raw/Dataset{ID}_OpenKBP``.

    Args:
        source: folder holding ``pt_*`` folders, or the published ``.tar.xz``.
        dataset_id: nnU-Net data set id.
        organs: canonical names to keep; default all seven OpenKBP OARs.
        raw: nnU-Net raw root (default ``$nnUNet_raw``).

    Returns:
        The data set folder.
    """
    organs = list(organs) if organs is not None else catalogue.organ_set("openkbp")
    for n in organs:
        if catalogue.get(n).openkbp_roi is None:
            raise InputError(f"{n} is not an OpenKBP structure")
    with build_dataset(dataset_id, "OpenKBP", organs, f"OpenKBP head-and-neck OARs from {Path(source).name}",
                       raw) as builder:
        seen = set()
        for patient, files, where in tqdm(iter_patients(source), desc="convert OpenKBP", disable=not progress):
            if patient in seen:
                raise InputError(f"{where}: patient {patient} appears twice")
            seen.add(patient)
            ct, masks = patient_to_images(files, where)
            builder.add_case(patient, ct, masks, {"source": where})
    return builder.destination
