"""The single-network baselines of the benchmark (Table I): one stock nnU-Net ``3d_fullres`` network per
partial-contour rule (:mod:`nnunet_oar.conversion.ignore`), at equal iterations per network and at
equal total training time with the two-stage method."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np

from nnunet_oar.evaluation.settings import BUDGETS, Settings
from nnunet_oar.evaluation.stages import Plan, epoch_seconds
from nnunet_oar.io import InputError, read_json, write_json
from nnunet_oar.paths import find_dataset, preprocessed_root, results_root


# where an equal-time baseline's stage puts its trainer, known only when the stage starts
TRAINER = "{equal_time_trainer}"


def capped_configuration(patch: List[int]) -> str:
    """The name :func:`cap_patch` gives the configuration with its patch capped at ``patch``."""
    return f"3d_fullres_p{max(patch)}"


def cap_patch(dataset_id: int, patch: List[int]) -> str:
    """Add configuration ``3d_fullres_p{N}`` = nnU-Net's 3d_fullres with its patch capped at ``patch``
    (same preprocessed data; nnU-Net's own ``inherits_from``). Returns its name."""
    plans_file = find_dataset(preprocessed_root(), dataset_id) / "nnUNetPlans.json"
    plans = read_json(plans_file)
    full = plans["configurations"]["3d_fullres"]
    name = capped_configuration(patch)
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


def plan_baselines(s: Settings, plan: Plan, methods: Dict[str, Path], trainers: dict, test_raw: Path, pred: Path,
                   organ_ids: List[int]) -> None:
    """Add the single-network baselines to ``plan``, one per partial-contour rule in ``s.baseline_ignore``
    (data set ``baseline_id + k``). The first rule also trains the equal-iterations baseline
    (``baseline``), whose time per epoch the equal-time rule uses; an equal-time baseline waits for every
    two-stage training, whose logged epoch times set its epochs (:func:`equal_time_epochs`, run by the
    stage itself: ``python -m nnunet_oar.evaluation.baselines``). Adds their prediction folders and
    trainers in place."""
    seg_tr = BUDGETS[s.budget][1]
    dev, n_proc = ["-device", s.device], os.environ["nnUNet_def_n_proc"]
    nnunet_tta = [] if s.tta else ["--disable_tta"]
    two_stage = [n for n in plan.steps if n.startswith(("loc_train", "organ_train_"))]
    loc_folds = [str(f) for f in range(s.loc_folds)] if s.organ_boxes == "oof" else ["all"]

    def train_and_predict(method: str, dataset_id: str, config: str, trainer: str, after: List[str],
                          wrap: List[str] = ()) -> None:
        label = method.replace("_equal_time", ", equal time")
        plan.add(f"{method}_train", [[*wrap, "nnUNetv2_train", dataset_id, config, "all", "-tr", trainer, "--c", *dev]],
                 after, gpu=True, label=f"{label}: train")
        plan.add(f"predict_{method}", [[*wrap, "nnUNetv2_predict", "-i", test_raw / "imagesTr", "-o", pred / method, "-d",
                                        dataset_id, "-c", config, "-f", "all", "-tr", trainer, "-npp", "1", "-nps", "1",
                                        *nnunet_tta, *dev]], [f"{method}_train"], gpu=True,
                 label=f"{label}: predict held-out")
        methods[method] = pred / method

    first = None
    for k, rule in enumerate(s.baseline_ignore):
        tag, B = ("baseline" if rule == "body" else f"baseline_{rule}"), str(s.baseline_id + k)
        config = capped_configuration(s.baseline_patch) if s.baseline_patch else "3d_fullres"
        plan.add(f"{tag}_plan", [
            ["nnunet_oar", "ignore-label", "-d", s.train_id, "-t", B, "--region", rule],
            ["nnUNetv2_plan_and_preprocess", "-d", B, "-c", "3d_fullres", "-np", n_proc, "--verify_dataset_integrity",
             *(["-overwrite_target_spacing", *[str(s.baseline_spacing_mm)] * 3] if s.baseline_spacing_mm else [])],
            *([[sys.executable, "-m", "nnunet_oar.evaluation.baselines", "cap-patch", B, *s.baseline_patch]]
              if s.baseline_patch else [])], label=f"{tag}: ignore label + plan + preprocess")
        trainers["baseline_config"] = config
        if first is None or s.baseline_budget == "iterations":
            # equal iterations per network; after the two-stage trainings, so that each trains alone on one core
            train_and_predict(tag, B, config, seg_tr, [f"{tag}_plan", *two_stage])
            first = first or (tag, B)
        if s.baseline_budget == "time":
            # its trainer is known only when it starts: the stage fixes it (equal_time.json) and fills it in
            wrap = [sys.executable, "-m", "nnunet_oar.evaluation.baselines", "equal-time", plan.work, s.train_id,
                    BUDGETS[s.budget][0], ",".join(loc_folds), seg_tr, ",".join(map(str, organ_ids)), first[1], config,
                    "--"]
            train_and_predict(f"{tag}_equal_time", B, config, TRAINER, [f"{tag}_plan", f"{first[0]}_train", *two_stage],
                              wrap)


def equal_time_run(work: Path, train_id: str, loc_tr: str, loc_folds: str, seg_tr: str, organ_ids: str,
                   first_id: str, config: str, command: List[str]) -> None:
    """An equal-time baseline's stage: fix its trainer by :func:`equal_time_epochs` (once, in
    ``equal_time.json``: a resumed run and the prediction read it again), put it in place of
    :data:`TRAINER` in ``command`` (nnU-Net's ``nnUNetv2_train`` or ``nnUNetv2_predict``) and run it."""
    record = work / "equal_time.json"
    if not record.is_file():
        epochs, seconds, rule = equal_time_epochs((train_id, loc_tr, loc_folds.split(",")),
                                                  (seg_tr, [int(i) for i in organ_ids.split(",")]),
                                                  (int(first_id), config, seg_tr))
        write_json({"trainer": f"{seg_tr}_{epochs}epochs", "two_stage_training_s": seconds, "rule": rule}, record)
    trainer = read_json(record)["trainer"]
    subprocess.run([trainer if a == TRAINER else a for a in command], check=True)


def equal_time_record(s: Settings, work: Path, trainers: dict, jobs: int = 1) -> None:
    """After the run: the equal-time rule with its numbers, and each equal-time baseline's training
    seconds by the same measure, into ``trainers`` (for the report). ``jobs``: the trainings this run
    let side by side (0: only scoring), kept in the record as the most of any run in this folder."""
    record = work / "equal_time.json"
    if s.baseline_budget != "time" or not record.is_file():
        return
    r = read_json(record)
    if jobs > r.get("jobs", 1):
        r["jobs"] = jobs
        write_json(r, record)
    text = r["rule"]
    if r.get("jobs", 1) > 1:
        # a training that shares the device for all its epochs is slower in every epoch: the 10th
        # percentile cannot remove that, and each side may have shared it with a different neighbour
        text += (f"; trainings ran up to {r['jobs']} at a time (--jobs), so these times include their "
                 f"neighbours' share of the device: compare the two sides with --jobs 1")
    trainers.update(baseline_equal_time=r["trainer"], two_stage_training_s=r["two_stage_training_s"],
                    baseline_equal_time_rule=text)
    for k, rule in enumerate(s.baseline_ignore):
        tag = "baseline" if rule == "body" else f"baseline_{rule}"
        if not (work / "stages" / f"{tag}_equal_time_train.done").is_file():    # a partial report
            continue
        folder = (find_dataset(results_root(), s.baseline_id + k) /
                  f"{r['trainer']}__nnUNetPlans__{trainers['baseline_config']}" / "fold_all")
        trainers[f"{tag}_equal_time_training_s"] = training_seconds(epoch_seconds(folder))


if __name__ == "__main__":
    # the stages' own steps (see plan_baselines): cap-patch ID N N N | equal-time ARGS -- COMMAND
    step, args = sys.argv[1], sys.argv[2:]
    if step == "cap-patch":
        cap_patch(int(args[0]), [int(a) for a in args[1:]])
    else:
        k = args.index("--")
        equal_time_run(Path(args[0]), *args[1:k], command=args[k + 1:])
