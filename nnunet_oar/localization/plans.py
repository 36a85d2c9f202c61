"""The ``3d_loc`` configuration: the localizer's entry in ``nnUNetPlans.json``.

It is planned by nnU-Net's own ExperimentPlanner at an isotropic target spacing (3 mm, the paper's),
with a patch that covers the whole median volume at that spacing (the planner's memory budget is
lifted so it does not shrink the patch) and batch size 1 (the paper's). It resamples with nnU-Net's
torch resampling (trilinear, as nnU-Net's ``*_torchres`` planners): the localizer brings a whole CT to
3 mm; for a clinical CT that took nnU-Net's default cubic spline 2.3 s and torch 0.011 s, and the whole
preprocessing 5.5 s against 2.3 s (``benchmarks/localizer_resampling.py``). The heat-map variance is
stored in the configuration, so it travels with the trained model's plans.json.

``nnunet_oar plan-localizer`` also writes, beside the plans, ``annotations.json`` (copied from the raw
data set, so training knows which organs were annotated), ``box_sizes.json`` (each case's organ
box sizes in world mm, from which a trainer averages the box size over its own training cases) and
``centroid_offsets.json`` (each organ's centroid relative to the image centre, mm: the constant guess
every localization report compares with).
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Tuple

import numpy as np
import SimpleITK as sitk
from tqdm import tqdm

from nnunet_oar.io import InputError, geometry, read_json, write_json
from nnunet_oar.localization.boxes import box_sizes_mm, centroid_offsets_mm
from nnunet_oar.localization.heatmaps import DEFAULT_SIGMA2_MM2
from nnunet_oar.paths import find_dataset, preprocessed_root, raw_root

CONFIGURATION = "3d_loc"
PLANS = "nnUNetPlans"


def plan_localizer(dataset_id: int, spacing_mm: float = 3.0, sigma2_mm2: float = DEFAULT_SIGMA2_MM2,
                   num_processes: int = 2, progress: bool = True, fg_weight: float = 0.0,
                   configuration: str = CONFIGURATION, base_features: int = 32) -> Path:
    """Add (or replace) the ``3d_loc`` configuration in ``nnUNetPlans.json`` of a data set.

    Runs nnU-Net's fingerprint extraction and default planning first if they have not been run.
    Idempotent: other configurations are kept, ``3d_loc`` is rewritten.

    Args:
        dataset_id: nnU-Net data set id (raw data set must exist).
        spacing_mm: isotropic target spacing of the localizer, mm.
        sigma2_mm2: heat-map variance sigma^2, mm^2.
        num_processes: processes for nnU-Net's fingerprint extraction.
        fg_weight: foreground weight of the loss (0 = the paper's plain L2; see ``masked_l2``).
        configuration: the configuration's name (several localizer settings can live side by side).
        base_features: features of the U-Net's first stage, doubling per stage up to 10 times this
            (nnU-Net's 32 and 320); fewer make a slimmer, faster network.

    Returns:
        Path of the updated plans file.
    """
    from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import ExperimentPlanner
    from nnunetv2.experiment_planning.plan_and_preprocess_api import extract_fingerprints, plan_experiments
    from nnunetv2.preprocessing.resampling.default_resampling import compute_new_shape
    from nnunetv2.preprocessing.resampling.resample_torch import resample_torch_fornnunet

    class TorchResamplingPlanner(ExperimentPlanner):
        # the choice of nnU-Net's *_torchres planners, for data, labels and (heat-map) export
        def determine_resampling(self, *args, **kwargs):
            kw = {"is_seg": False, "force_separate_z": False, "memefficient_seg_resampling": False}
            return resample_torch_fornnunet, kw, resample_torch_fornnunet, {**kw, "is_seg": True}

        def determine_segmentation_softmax_export_fn(self, *args, **kwargs):
            return resample_torch_fornnunet, {"is_seg": False, "force_separate_z": False,
                                              "memefficient_seg_resampling": False}

    if base_features < 1:
        raise InputError(f"--base-features must be at least 1, not {base_features}")
    raw = find_dataset(raw_root(), dataset_id)
    if raw is None:
        raise FileNotFoundError(f"{raw_root()}: no raw data set with id {dataset_id}")
    pre = preprocessed_root() / raw.name
    if not (pre / "dataset_fingerprint.json").is_file():
        extract_fingerprints([dataset_id], num_processes=num_processes, check_dataset_integrity=True)
    plans_file = pre / f"{PLANS}.json"
    if not plans_file.is_file():
        plan_experiments([dataset_id])
    plans = read_json(plans_file)

    # a memory target far above any card, so that the planner keeps the whole-volume patch
    planner = TorchResamplingPlanner(dataset_id, gpu_memory_target_in_gb=1e4, plans_name=PLANS)
    planner.UNet_base_num_features, planner.UNet_max_features_3d = base_features, 10 * base_features
    fingerprint = planner.dataset_fingerprint
    tf = plans["transpose_forward"]
    target = np.array([spacing_mm] * 3, float)
    shapes = [compute_new_shape(shape, spacing, target)
              for spacing, shape in zip(fingerprint["spacings"], fingerprint["shapes_after_crop"])]
    median = np.median(shapes, 0)[tf]
    config = planner.get_plans_for_configuration(target[tf], median, f"{PLANS}_{configuration}",
                                                 float(np.prod(median) * len(shapes)), {})
    config["batch_size"] = 1
    config["heatmap_sigma2_mm2"] = float(sigma2_mm2)
    config["heatmap_fg_weight"] = float(fg_weight)
    plans["configurations"][configuration] = config
    write_json(plans, plans_file)

    annotations = raw / "annotations.json"
    if annotations.is_file():
        shutil.copyfile(annotations, pre / "annotations.json")
    sizes, offsets = case_box_sizes(raw, progress)
    write_json(sizes, pre / "box_sizes.json")
    write_json(offsets, pre / "centroid_offsets.json")
    return plans_file


def case_box_sizes(raw: Path, progress: bool = True) -> Tuple[dict, dict]:
    """``({case: {organ: box size [x, y, z] mm}}, {case: {organ: centroid offset [x, y, z] mm}})`` from the
    raw labels (:func:`box_sizes_mm`, :func:`centroid_offsets_mm`); organs not annotated in a case are left out."""
    dataset = read_json(raw / "dataset.json")
    labels = {k: v for k, v in dataset["labels"].items() if k != "background"}
    annotations_file = raw / "annotations.json"
    annotations = read_json(annotations_file) if annotations_file.is_file() else None
    sizes, offsets = {}, {}
    files = sorted((raw / "labelsTr").glob(f"*{dataset['file_ending']}"))
    for f in tqdm(files, desc="box sizes", disable=not progress):
        case = f.name[: -len(dataset["file_ending"])]
        seg = sitk.ReadImage(str(f))
        wanted = {k: v for k, v in labels.items() if annotations is None or k in annotations.get(case, [])}
        arr, geom = sitk.GetArrayViewFromImage(seg), geometry(seg)
        sizes[case], offsets[case] = box_sizes_mm(arr, geom, wanted), centroid_offsets_mm(arr, geom, wanted)
    return sizes, offsets


def write_splits(dataset_id: int, folds: int = 5) -> Path:
    """nnU-Net's own seeded split of the training cases into ``folds`` folds (``splits_final.json``, what
    ``nnUNetv2_train`` would write on its first run), unless the data set has one: written once before
    folds train side by side. Needs ``plan-localizer`` first (its ``box_sizes.json`` lists the cases)."""
    from nnunetv2.utilities.crossval_split import generate_crossval_split
    pre = find_dataset(preprocessed_root(), dataset_id)
    if pre is None or not (pre / "box_sizes.json").is_file():
        raise InputError(f"{preprocessed_root()}: data set {dataset_id} is not planned (run plan-localizer first)")
    if not (pre / "splits_final.json").is_file():
        cases = sorted(read_json(pre / "box_sizes.json"))
        write_json(generate_crossval_split(cases, seed=12345, n_splits=folds), pre / "splits_final.json")
    return pre / "splits_final.json"
