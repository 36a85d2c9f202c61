"""Loading files that could carry code: nnU-Net checkpoints and pickles.

A pickle runs whatever its author put in it, and nnU-Net's predictor loads checkpoints with
``torch.load(weights_only=False)``. Before nnU-Net's own loader sees a checkpoint, it is therefore read
once with ``weights_only=True`` and an allow-list of the few types nnU-Net stores (numpy scalars and
dtypes); a file that holds anything else, or is truncated, is refused naming the file. Pickles that
nnU-Net writes beside its probabilities are read with an unpickler that only builds plain containers
and numpy values. The trust model is in README ("Models are code").
"""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nnunet_oar.io import InputError

# what nnU-Net's checkpoints hold besides tensors and plain containers: numpy scalars in the training log
_CHECKPOINT_GLOBALS = [np._core.multiarray.scalar, np.dtype,
                       *{type(np.dtype(t)) for t in (np.float16, np.float32, np.float64, np.int32, np.int64, np.bool_)}]

_PICKLE_GLOBALS = {("builtins", n) for n in ("tuple", "list", "dict", "set", "frozenset", "slice", "complex")} | {
    ("collections", "OrderedDict"), ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy._core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "scalar"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy.core.multiarray", "scalar"),
    *(("numpy.dtypes", type(np.dtype(t)).__name__) for t in (np.float16, np.float32, np.float64, np.int8, np.int16,
                                                              np.int32, np.int64, np.uint8, np.uint16, np.bool_))}


def load_checkpoint(path: Path) -> dict:
    """An nnU-Net checkpoint's content, loaded without running code (tensors on the CPU).

    Raises:
        InputError: naming ``path`` where it is not a plain nnU-Net checkpoint (code, unknown types) or is
            damaged.
    """
    try:
        with torch.serialization.safe_globals(_CHECKPOINT_GLOBALS):
            content = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise InputError(f"{path}: checkpoint does not exist") from None
    except pickle.UnpicklingError as e:
        reason = next((line.strip() for line in str(e).splitlines() if "Unsupported global" in line), str(e)[:200])
        raise InputError(f"{path}: refused, it holds more than an nnU-Net checkpoint may ({reason}); load it "
                         "only if you trust its source (README, 'Models are code')") from None
    except (RuntimeError, EOFError, OSError) as e:
        raise InputError(f"{path}: checkpoint is truncated or damaged ({str(e).splitlines()[0][:200]})") from None
    if not isinstance(content, dict) or "network_weights" not in content or "trainer_name" not in content:
        raise InputError(f"{path}: not an nnU-Net checkpoint (no network_weights or trainer_name)")
    return content


def check_checkpoint(path: Path) -> str:
    """Refuse a checkpoint that is not a plain nnU-Net checkpoint (:func:`load_checkpoint`).

    Returns:
        the name of the trainer class that wrote it (nnU-Net's ``trainer_name``).
    """
    return load_checkpoint(path)["trainer_name"]


# nnU-Net's postprocessing.pkl: ([functions], [kwargs]); the only function nnU-Net's search ever chooses
_POSTPROCESSING_GLOBALS = {("nnunetv2.postprocessing.remove_connected_components",
                            "remove_all_but_largest_component_from_segmentation")}


class _PlainUnpickler(pickle.Unpickler):
    allowed = _PICKLE_GLOBALS

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.allowed:
            raise pickle.UnpicklingError(f"{module}.{name} is not allowed")
        return super().find_class(module, name)


class _PostprocessingUnpickler(_PlainUnpickler):
    allowed = _PICKLE_GLOBALS | _POSTPROCESSING_GLOBALS


def load_pickle(path: Path, postprocessing: bool = False) -> Any:
    """Read a pickle of plain containers and numpy values (nnU-Net's properties files; with
    ``postprocessing``, also the function references of nnU-Net's ``postprocessing.pkl``); anything
    else that would import code is refused, naming the file."""
    try:
        with open(path, "rb") as fh:
            return (_PostprocessingUnpickler if postprocessing else _PlainUnpickler)(fh).load()
    except FileNotFoundError:
        raise InputError(f"{path}: missing") from None
    except (pickle.UnpicklingError, EOFError, AttributeError, ValueError) as e:
        raise InputError(f"{path}: refused or damaged pickle ({e})") from None
