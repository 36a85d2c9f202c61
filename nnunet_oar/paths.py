"""nnU-Net folder lookup with clear errors (the variables are read when called, not at import)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from nnunet_oar.io import InputError



def _env_folder(name: str) -> Path:
    value = os.environ.get(name)
    if not value:
        raise OSError(f"environment variable {name} is not set; nnU-Net needs nnUNet_raw, nnUNet_preprocessed "
                      "and nnUNet_results (see README)")
    return Path(value)


def raw_root() -> Path:
    """``$nnUNet_raw``."""
    return _env_folder("nnUNet_raw")


def preprocessed_root() -> Path:
    """``$nnUNet_preprocessed``."""
    return _env_folder("nnUNet_preprocessed")


def results_root() -> Path:
    """``$nnUNet_results``."""
    return _env_folder("nnUNet_results")


def find_dataset(root: Path, dataset_id: int) -> Optional[Path]:
    """The folder ``Dataset{ID:03d}_*`` under ``root``, or ``None``; two such folders are an error."""
    hits = sorted(root.glob(f"Dataset{dataset_id:03d}_*")) if root.is_dir() else []
    if len(hits) > 1:
        raise InputError(f"{root}: several folders for dataset id {dataset_id}: {[h.name for h in hits]}")
    return hits[0] if hits else None


def dataset_folder_name(dataset_id: int, name: str) -> str:
    """nnU-Net's folder name for a data set: ``Dataset{ID:03d}_{name}``."""
    if not 1 <= dataset_id <= 999:
        raise InputError(f"dataset id must be 1..999, got {dataset_id}")
    return f"Dataset{dataset_id:03d}_{name}"


def trainer_path() -> Path:
    """The folder holding only our trainer modules; put it in ``nnUNet_extTrainer``."""
    return Path(__file__).resolve().parent / "trainers"


def ensure_trainer_path() -> None:
    """Add :func:`trainer_path` to ``nnUNet_extTrainer`` in this process (for nnU-Net calls we make)."""
    current = os.environ.get("nnUNet_extTrainer", "")
    parts = [p for p in current.split(os.pathsep) if p]
    if str(trainer_path()) not in parts:
        os.environ["nnUNet_extTrainer"] = os.pathsep.join(parts + [str(trainer_path())])


# nnU-Net settings for a small CPU machine (2 processes, one augmentation worker, no torch.compile); the
# benchmark, the demo and the tests use them unless the environment says otherwise
CPU_DEFAULTS = {"nnUNet_def_n_proc": "2", "nnUNet_n_proc_DA": "1", "nnUNet_compile": "f"}


def use_nnunet_folders(root: Path) -> None:
    """Point nnU-Net's three folders at ``root/nnUNet_*`` (created) in this process, add our trainers, and
    set the CPU-friendly defaults where the user has not chosen otherwise."""
    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        (Path(root) / name).mkdir(parents=True, exist_ok=True)
        os.environ[name] = str(Path(root) / name)
    for name, value in CPU_DEFAULTS.items():
        os.environ.setdefault(name, value)
    ensure_trainer_path()
