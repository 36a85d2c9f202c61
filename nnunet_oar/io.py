"""File I/O at the edges: image reading with clear errors, atomic writes, geometry records.

Every output of nnunet_oar is written to a temporary name in its destination folder and renamed into
place, so an interrupted run never leaves a half-written file or data set behind, and a rerun simply
replaces what was there.
"""
from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import os
import shutil
import tempfile
import zlib
from pathlib import Path
from typing import Any, Dict, Iterator, List, Union

import numpy as np
import SimpleITK as sitk

PathLike = Union[str, os.PathLike]


# image files every command reads (a folder of them, or one)
IMAGE_SUFFIXES = (".nii.gz", ".nii", ".mha", ".nrrd")


class InputError(ValueError):
    """Bad input data. The message always names the offending file and what is wrong with it."""


def _split_suffix(name: str) -> tuple:
    for suffix in (".nii.gz", ".tar.xz", ".json", ".csv", ".npz", ".png", ".md"):
        if name.endswith(suffix):
            return name[: -len(suffix)], suffix
    stem, dot, ext = name.rpartition(".")
    return (stem, dot + ext) if dot else (name, "")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(dst: PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``dst`` (same suffix, so writers pick the right format); on success
    it is renamed onto ``dst``, on failure removed."""
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    stem, suffix = _split_suffix(dst.name)
    fd, tmp = tempfile.mkstemp(prefix=f".{stem}.", suffix=f".tmp{suffix}", dir=dst.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())      # mkstemp makes 0600; outputs get the usual permissions
        os.replace(tmp, dst)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def atomic_dir(dst: PathLike) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``dst``; on success it replaces ``dst`` (an existing
    ``dst`` is removed only after the new one is complete), on failure it is removed."""
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", suffix=".tmp", dir=dst.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())
        if dst.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", suffix=".old", dir=dst.parent))
            os.replace(dst, old / dst.name)
            os.replace(tmp, dst)
            shutil.rmtree(old)
        else:
            os.replace(tmp, dst)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def case_id(image_file: PathLike) -> str:
    """Case id of an image file: its name without ``.nii.gz`` and without nnU-Net's ``_0000`` channel suffix."""
    name = Path(image_file).name
    for suffix in IMAGE_SUFFIXES:
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    return name[:-5] if len(name) > 5 and name[-5:-4] == "_" and name[-4:].isdigit() else name


def list_images(path: PathLike) -> List[Path]:
    """One image file, or the images of a folder (``*.nii.gz``, ``*.nii``, ``*.mha``, ``*.nrrd``).

    Raises:
        InputError: naming the files where two of them are one case (:func:`case_id`: ``x.nii.gz`` and
            ``x.nrrd``, or nnU-Net's channels ``x_0000`` and ``x_0001``): their outputs would overwrite
            each other.
    """
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise InputError(f"{path}: no such file or folder")
    files = sorted(f for f in path.iterdir() if f.name.endswith(IMAGE_SUFFIXES))
    if not files:
        raise InputError(f"{path}: no images ({', '.join('*' + s for s in IMAGE_SUFFIXES)})")
    first: Dict[str, Path] = {}
    for f in files:
        if case_id(f) in first:
            raise InputError(f"{first[case_id(f)]} and {f.name}: both are case {case_id(f)!r}, and their outputs would "
                             "overwrite each other (one CT per case: rename or move one; a CT has one channel)")
        first[case_id(f)] = f
    return files


def write_json(obj: Any, dst: PathLike) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    with atomic_path(dst) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, default=_json_default) + "\n")


def read_json(path: PathLike, what: str = "JSON file") -> Any:
    """Read a JSON file; a missing or broken file raises :class:`InputError` naming it (and the line)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: {what} does not exist")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: {what} is not valid JSON ({e})") from None


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"cannot serialise {type(o).__name__}")


def write_image(image: sitk.Image, dst: PathLike) -> None:
    """Write a SimpleITK image (compressed), atomically."""
    with atomic_path(dst) as tmp:
        sitk.WriteImage(image, str(tmp), useCompression=True)


def read_image(path: PathLike, what: str = "image") -> sitk.Image:
    """Read an image and check that it is usable.

    Raises:
        InputError: naming ``path`` when the file is missing, unreadable, empty, not 3D, on a sheared grid
            (a direction matrix that is not orthonormal), or holds NaN/inf.
    """
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path}: is a folder, expected a {what} file")
    if not path.is_file():
        raise InputError(f"{path}: {what} file does not exist")
    _check_complete(path, what)
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as e:
        first = str(e).strip().splitlines()[-1] if str(e).strip() else "unknown reader error"
        if "No such file" in first:     # ITK's MetaImage reader says so of a file it could not read whole
            first = "the reader stopped short: truncated, or not the format its name says"
        raise InputError(f"{path}: cannot read {what} ({first})") from None
    if image.GetDimension() != 3:
        raise InputError(f"{path}: {what} is {image.GetDimension()}D, expected 3D")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"{path}: {what} has {image.GetNumberOfComponentsPerPixel()} components per voxel")
    if 0 in image.GetSize():
        raise InputError(f"{path}: {what} is empty (size {image.GetSize()})")
    direction = np.array(image.GetDirection()).reshape(3, 3)
    if np.abs(direction.T @ direction - np.eye(3)).max() > 1e-4:
        # a sheared or scaled direction: NIfTI (our outputs) cannot hold it, so the labels would not overlay
        raise InputError(f"{path}: {what}'s direction matrix {np.round(direction, 4).tolist()} is not orthonormal "
                         "(sheared or scaled axes); resample it to an orthogonal grid first")
    array = sitk.GetArrayViewFromImage(image)
    if array.dtype.kind == "f" and (not np.isfinite(array).all() or _nifti_has_nan(path)):
        raise InputError(f"{path}: {what} holds NaN or infinite values")
    return image


def _check_complete(path: Path, what: str) -> None:
    """ITK reads a truncated ``.nii.gz`` (or ``.nii``) without complaint and fills the missing voxels with
    zeros, so the whole stream is decompressed and its length compared with what the header promises."""
    name = path.name.lower()
    size = None
    if name.endswith(".gz"):
        try:
            with gzip.open(path, "rb") as fh:
                size = 0
                while chunk := fh.read(1 << 24):
                    size += len(chunk)
        except (EOFError, OSError, zlib.error) as e:
            raise InputError(f"{path}: {what} file is truncated or corrupt ({e})") from None
    elif name.endswith(".nii"):
        size = path.stat().st_size
    if name.endswith((".nii", ".nii.gz")):
        import nibabel
        try:
            header = nibabel.load(str(path)).header
        except Exception as e:        # nibabel raises several types for a broken header
            raise InputError(f"{path}: {what} has no valid NIfTI header ({e})") from None
        expected = int(header["vox_offset"]) + int(np.prod(header.get_data_shape())) * header.get_data_dtype().itemsize
        if size < expected:
            raise InputError(f"{path}: {what} file is truncated: {size} bytes of the {expected} its header "
                             "announces")


def _nifti_has_nan(path: Path) -> bool:
    """ITK's NIfTI reader turns NaN into 0, so float NIfTI files are checked once more with nibabel."""
    if not path.name.endswith((".nii", ".nii.gz")):
        return False
    import nibabel
    return not np.isfinite(np.asanyarray(nibabel.load(str(path)).dataobj)).all()


def geometry(image: sitk.Image) -> Dict[str, list]:
    """Geometry record used in every JSON contract: size, spacing (mm) and origin (mm) in SimpleITK
    x,y,z order, and the 3x3 direction matrix row-major."""
    return {
        "size_xyz": list(image.GetSize()),
        "spacing_xyz": list(image.GetSpacing()),
        "origin_xyz": list(image.GetOrigin()),
        "direction": list(image.GetDirection()),
    }


def same_geometry(a: sitk.Image, b: sitk.Image, tol_mm: float = 1e-3) -> bool:
    """True when two images share size, spacing, origin and direction (within ``tol_mm`` / 1e-4)."""
    return (
        a.GetSize() == b.GetSize()
        and np.allclose(a.GetSpacing(), b.GetSpacing(), atol=1e-4)
        and np.allclose(a.GetOrigin(), b.GetOrigin(), atol=tol_mm)
        and np.allclose(a.GetDirection(), b.GetDirection(), atol=1e-4)
    )


def image_from_geometry(array_zyx: np.ndarray, geom: Dict[str, list]) -> sitk.Image:
    """Build an image from a numpy array (z,y,x) and a :func:`geometry` record."""
    image = sitk.GetImageFromArray(array_zyx)
    if tuple(image.GetSize()) != tuple(geom["size_xyz"]):
        raise ValueError(f"array shape (z,y,x) {array_zyx.shape} does not match size_xyz {geom['size_xyz']}")
    image.SetSpacing([float(v) for v in geom["spacing_xyz"]])
    image.SetOrigin([float(v) for v in geom["origin_xyz"]])
    image.SetDirection([float(v) for v in geom["direction"]])
    return image


def sha256_file(path: PathLike) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
