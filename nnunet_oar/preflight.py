"""Checks before long work starts: the output folder can be written, and the machine has the memory an
input needs (from its header alone). Both refuse with an :class:`~nnunet_oar.io.InputError` naming the
folder or file, before any model is loaded."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from nnunet_oar.io import InputError, PathLike


def check_writable(folder: PathLike) -> Path:
    """Create ``folder`` if needed and make sure files can be written there, before any long work starts.

    Raises:
        InputError: naming the folder when it cannot be created or written.
    """
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        raise InputError(f"{folder}: output folder is not writable ({e.strerror or e})") from None
    return folder


def check_memory(path: PathLike, bytes_per_voxel: float, what: str = "image") -> None:
    """Refuse an image whose processing needs more memory than the machine has available, from its
    header alone (before any reading or resampling).

    Args:
        path: image file (a folder, e.g. a DICOM series, is not checked).
        bytes_per_voxel: peak memory of the processing per input voxel, bytes.

    Raises:
        InputError: naming the file, the estimate and the available memory (GB).
    """
    path = Path(path)
    if not path.is_file() or not hasattr(os, "sysconf"):
        return
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return                               # read_image names what is wrong with the file
    need = float(np.prod(reader.GetSize(), dtype=np.float64)) * bytes_per_voxel
    available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    if need > available:
        raise InputError(f"{path}: {what} of {' x '.join(map(str, reader.GetSize()))} voxels needs about "
                         f"{need / 1e9:.1f} GB to process, {available / 1e9:.1f} GB are available")
