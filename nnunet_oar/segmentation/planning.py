"""plan-organs: nnU-Net planning and preprocessing of every per-organ ROI data set.

The organ networks are stock nnU-Net ``3d_fullres``; the only thing we set is the target spacing
(the paper's 1 mm isotropic for CT by default). On a coarse grid such as OpenKBP's 3.9 x 3.9 x 2.5 mm,
pass the data's own spacing instead (``spacing=None`` keeps nnU-Net's choice, the median spacing),
since resampling to 1 mm would only interpolate.

Planner: nnU-Net's own ``nnUNetPlanner_torchres`` (trilinear torch resampling of images, labels and
exported probabilities, as the localizer's plans) under the usual plans name ``nnUNetPlans``, so that
``nnUNetv2_train ID 3d_fullres FOLD`` needs no ``-p``. Every organ crop is resampled to its network's
grid and back at inference; nnU-Net's default cubic spline runs on one core. On a clinical CT (2 cores)
the two-stage prediction spent 23.4 s outside its networks with the spline and 11.3 s with torch
(``benchmarks/inference_two_stage_vs_fullres.py``, docs/results/inference_benchmark.md); Dice:
``benchmarks/organ_planner.py``. ``planner="ExperimentPlanner"`` gives nnU-Net's default.
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Sequence

from tqdm import tqdm

from nnunet_oar.io import InputError
from nnunet_oar.paths import raw_root


def organ_dataset_ids_from(first_id: int) -> List[int]:
    """Consecutive ids from ``first_id`` that exist as raw data sets with a ``crops.json``."""
    ids, k = [], first_id
    while True:
        hits = sorted(raw_root().glob(f"Dataset{k:03d}_*"))
        if not hits or not (hits[0] / "crops.json").is_file():
            return ids
        ids.append(k)
        k += 1


ORGAN_PLANNER = "nnUNetPlanner_torchres"


def plan_organs(first_id: int, spacing_mm: Optional[float] = 1.0, num_processes: int = 2,
                dataset_ids: Optional[Sequence[int]] = None, configurations: Sequence[str] = ("3d_fullres",),
                planner: str = ORGAN_PLANNER) -> List[int]:
    """Fingerprint, plan (``3d_fullres`` at ``spacing_mm`` isotropic) and preprocess every organ data set
    for ``configurations`` (nnU-Net plans ``2d`` too, at the data's own in-plane spacing). ``planner``: an
    nnU-Net experiment planner class; its plans are written as ``nnUNetPlans``.

    Returns:
        The data set ids that were planned.
    """
    from nnunetv2.experiment_planning.plan_and_preprocess_api import (extract_fingerprints, plan_experiments,
                                                                      preprocess)
    import nnunetv2
    from nnunetv2.utilities.find_class_by_name import recursive_find_python_class
    if recursive_find_python_class(str(Path(nnunetv2.__path__[0]) / "experiment_planning"), planner,
                                   "nnunetv2.experiment_planning") is None:
        raise InputError(f"no nnU-Net experiment planner named {planner!r} (e.g. {ORGAN_PLANNER}, ExperimentPlanner)")
    ids = list(dataset_ids) if dataset_ids else organ_dataset_ids_from(first_id)
    if not ids:
        raise FileNotFoundError(f"{raw_root()}: no organ data sets (with crops.json) from id {first_id}")
    spacing = None if spacing_mm is None else (float(spacing_mm),) * 3
    for dataset_id in tqdm(ids, desc="plan organs"):
        extract_fingerprints([dataset_id], num_processes=num_processes, check_dataset_integrity=True,
                             show_progress_bar=False)
        plan_experiments([dataset_id], planner, overwrite_target_spacing=spacing, overwrite_plans_name="nnUNetPlans")
        preprocess([dataset_id], configurations=list(configurations), num_processes=[num_processes] * len(configurations),
                   show_progress_bar=False)
    return ids
