"""The single-network baselines of the benchmark (Table I): one stock nnU-Net ``3d_fullres`` network per
partial-contour rule (:mod:`nnunet_oar.conversion.ignore`), at equal iterations per network and at
equal total training time with the two-stage method."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np

from nnunet_oar.evaluation.settings import BUDGETS, Settings
from nnunet_oar.evaluation.stages import StageRunner, epoch_seconds
from nnunet_oar.io import InputError, read_json, write_json
from nnunet_oar.paths import find_dataset, preprocessed_root, results_root


def cap_patch(dataset_id: int, patch: List[int]) -> str:
    """Add configuration ``3d_fullres_p{N}`` = nnU-Net's 3d_fullres with its patch capped at ``patch``
    (same preprocessed data; nnU-Net's own ``inherits_from``). Returns its name."""
    plans_file = find_dataset(preprocessed_root(), dataset_id) / "nnUNetPlans.json"
    plans = read_json(plans_file)
    full = plans["configurations"]["3d_fullres"]
    name = f"3d_fullres_p{max(patch)}"
    plans["configurations"][name] = {"inherits_from": "3d_fullres",
                                     "patch_size": [min(a, b) for a, b in zip(full["patch_size"], patch)]}
    write_json(plans, plans_file)
    return name


def training_seconds(epoch_times: Sequence[float]) -> float:
    """A training's compute in seconds, robust to shared cores: its epoch count times its 10th-percentile
    epoch time. Every epoch does the same work (same iterations, same patch), so the fastest epochs are
    the training alone; a development job or test run beside it only lengthens some epochs."""
    return len(epoch_times) * float(np.percentile(epoch_times, 10)) if len(epoch_times) else 0.0


def equal_time_epochs(loc: Tuple[str, str, List[str]], organs: Tuple[str, List[int]], baseline: Tuple[int, str, str]):
    """Epochs E of the equal-time baseline, fixed before it trains: the two-stage method's training time
    (:func:`training_seconds` of every localizer fold and organ network, from the epoch times nnU-Net
    logged, so an interrupted and resumed training counts what it trained and start-up is left out on
    both sides) divided by the equal-iterations baseline's 10th-percentile epoch time.

    Args:
        loc: (train data set id, localizer trainer, folds); organs: (organ trainer, organ data set ids);
        baseline: (data set id, configuration, trainer) of the equal-iterations baseline.

    Returns:
        ``(E, the two-stage training seconds, the rule with its numbers)``.
    """
    results = results_root()
    train_id, loc_tr, folds = loc
    loc_dir = find_dataset(results, int(train_id)) / f"{loc_tr}__nnUNetPlans__3d_loc"
    runs = [epoch_seconds(loc_dir / f"fold_{f}") for f in folds]
    runs += [epoch_seconds(find_dataset(results, i) / f"{organs[0]}__nnUNetPlans__3d_fullres" / "fold_all")
             for i in organs[1]]
    b_id, config, trainer = baseline
    per_epoch = epoch_seconds(find_dataset(results, b_id) / f"{trainer}__nnUNetPlans__{config}" / "fold_all")
    if not all(runs) or not per_epoch:
        raise InputError(f"{results}: a training without epoch times in its logs; cannot size the equal-time baseline")
    two_stage, raw = sum(training_seconds(r) for r in runs), sum(sum(r) for r in runs)
    per = float(np.percentile(per_epoch, 10))
    epochs = max(1, round(two_stage / per))
    return epochs, two_stage, (f"{epochs} epochs = round(two-stage training {two_stage:.0f} s / {per:.1f} s per epoch of the "
                    f"equal-iterations baseline), each training's epochs x its 10th-percentile epoch time from "
                    f"nnU-Net's logs (logged total {raw:.0f} s, longer where cores were shared)")


def train_baselines(s: Settings, run: StageRunner, stages: Dict[str, dict], methods: Dict[str, Path], trainers: dict,
                    test_raw: Path, pred: Path, organ_ids: List[int]) -> None:
    """Train and predict the single-network baselines, one per partial-contour rule in
    ``s.baseline_ignore`` (data set ``baseline_id + k``), after the two-stage method so that its measured
    training time can set the equal-time budget. The first rule also trains the equal-iterations baseline
    (``baseline``), whose time per epoch the equal-time rule uses. Adds their stages, prediction folders
    and trainers in place."""
    seg_tr = BUDGETS[s.budget][1]
    dev, n_proc = ["-device", s.device], os.environ["nnUNet_def_n_proc"]
    nnunet_tta = [] if s.tta else ["--disable_tta"]

    def train_and_predict(method: str, dataset_id: str, config: str, trainer: str) -> None:
        label = method.replace("_equal_time", ", equal time")
        # alone, not beside other trainings: its wall time is its own
        stages[f"{label}: train"] = run.stage(f"{method}_train", [
            ["nnUNetv2_train", dataset_id, config, "all", "-tr", trainer, "--c", *dev]])
        stages[f"{label}: predict held-out"] = run.stage(f"predict_{method}", [
            ["nnUNetv2_predict", "-i", str(test_raw / "imagesTr"), "-o", str(pred / method), "-d", dataset_id,
             "-c", config, "-f", "all", "-tr", trainer, "-npp", "1", "-nps", "1", *nnunet_tta, *dev]])
        methods[method] = pred / method

    first = None
    for k, rule in enumerate(s.baseline_ignore):
        tag, B = ("baseline" if rule == "body" else f"baseline_{rule}"), str(s.baseline_id + k)
        stages[f"{tag}: ignore label + plan + preprocess"] = run.stage(f"{tag}_plan", [
            ["nnunet_oar", "ignore-label", "-d", str(s.train_id), "-t", B, "--region", rule],
            ["nnUNetv2_plan_and_preprocess", "-d", B, "-c", "3d_fullres", "-np", n_proc,
             "--verify_dataset_integrity"]])
        config = cap_patch(int(B), s.baseline_patch) if s.baseline_patch else "3d_fullres"
        trainers["baseline_config"] = config
        if first is None or s.baseline_budget == "iterations":
            train_and_predict(tag, B, config, seg_tr)                           # equal iterations per network
            first = first or (tag, B)
        if s.baseline_budget == "time":
            if "baseline_equal_time" not in trainers:
                loc_folds = [str(f) for f in range(s.loc_folds)] if s.organ_boxes == "oof" else ["all"]
                epochs, trainers["two_stage_training_s"], trainers["baseline_equal_time_rule"] = equal_time_epochs(
                    (str(s.train_id), BUDGETS[s.budget][0], loc_folds), (seg_tr, organ_ids),
                    (int(first[1]), config, seg_tr))
                trainers["baseline_equal_time"] = f"{seg_tr}_{epochs}epochs"
            train_and_predict(f"{tag}_equal_time", B, config, trainers["baseline_equal_time"])
            folder = find_dataset(results_root(), int(B)) / f"{trainers['baseline_equal_time']}__nnUNetPlans__{config}"
            trainers[f"{tag}_equal_time_training_s"] = training_seconds(epoch_seconds(folder / "fold_all"))
