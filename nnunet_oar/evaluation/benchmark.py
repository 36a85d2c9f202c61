"""``nnunet_oar benchmark``: the paper's comparison (Table I, Fig. 3) on one data set, end to end.

Two methods trained on the same training cases and scored on the same held-out cases:

* **baseline** - one stock nnU-Net ``3d_fullres`` multi-label network; organs that a case does not
  annotate are handled with nnU-Net's ignore label (:mod:`nnunet_oar.conversion.ignore`);
* **two_stage** - our localizer (``3d_loc``) + one stock ``3d_fullres`` network per organ on crops,
  merged by maximum probability (``nnunet_oar predict``);
* **two_stage_reference_boxes** - the same organ networks on the method's boxes centred on the
  reference centroids (``nnunet_oar reference-boxes``): the organ stage alone, i.e. what the
  two-stage method gives with a perfect localizer.

Every step is a real command (``nnunet_oar ...`` or ``nnUNetv2_...``) run in a subprocess, so each
stage's wall time and peak memory (the largest resident set of the stage's processes, from ``wait4``)
are measured on their own. A finished stage leaves ``stages/{name}.json``; a rerun skips it, so an
interrupted benchmark resumes and a finished one only re-scores. Everything lives under the work
folder (its own ``nnUNet_raw`` / ``nnUNet_preprocessed`` / ``nnUNet_results``).

Budgets name the trainer classes (iterations are fixed in the class, as nnU-Net does it); the baseline
and every organ network get the same trainer, the localizer its own
(:mod:`nnunet_oar.evaluation.settings`). Stages: :mod:`~nnunet_oar.evaluation.stages`; the baselines
at equal iterations and equal time: :mod:`~nnunet_oar.evaluation.baselines`.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import asdict
from pathlib import Path

from nnunet_oar.evaluation.baselines import train_baselines
from nnunet_oar.evaluation.comparison import write_comparison
from nnunet_oar.evaluation.settings import BUDGETS, Settings
from nnunet_oar.evaluation.stages import StageRunner
from nnunet_oar.io import InputError, read_json, write_json
from nnunet_oar.localization.plans import write_splits
from nnunet_oar.paths import find_dataset, raw_root, use_nnunet_folders


def _prepare_data(s: Settings, work: Path, run: StageRunner) -> None:
    if s.dataset == "phantoms":
        if run.done("data") is None:
            from nnunet_oar.conversion.visceral import convert_visceral
            from nnunet_oar.phantom import write_phantoms
            t0, p = time.perf_counter(), s.phantoms
            write_phantoms(work / "phantoms" / "train", int(p["train"]), int(p["seed"]), p["scale"], s.organs,
                           progress=False)
            # held-out phantoms fully annotated by one annotator, so every organ is scored
            write_phantoms(work / "phantoms" / "test", int(p["test"]), int(p["seed"]) + 1000, p["scale"], s.organs,
                           p_unannotated=0.0, p_second_annotator=0.0, progress=False)
            convert_visceral(work / "phantoms" / "train", s.train_id, organs=s.organs, progress=False)
            convert_visceral(work / "phantoms" / "test", s.test_id, organs=s.organs, progress=False)
            write_json({"wall_s": time.perf_counter() - t0, "commands": ["phantoms + convert-visceral"]},
                       work / "stages" / "data.json")
    elif s.dataset == "openkbp":
        # the tarballs as distributed, or folders of pt_* of the same names (e.g. a subset)
        if not s.openkbp:
            raise InputError("--dataset openkbp needs --openkbp DIR: a folder with openkbp-train.tar.xz and "
                             "openkbp-validation.tar.xz (or folders of those names)")
        src = [Path(s.openkbp) / f"openkbp-{part}.tar.xz" for part in ("train", "validation")]
        src = [f if f.exists() else f.with_name(f.name[:-len(".tar.xz")]) for f in src]
        run.stage("data", [["nnunet_oar", "convert-openkbp", "-i", str(src[0]), "-d", str(s.train_id)],
                           ["nnunet_oar", "convert-openkbp", "-i", str(src[1]), "-d", str(s.test_id)]])
    for dataset_id in (s.train_id, s.test_id):
        if find_dataset(raw_root(), dataset_id) is None:
            raise FileNotFoundError(f"{raw_root()}: no raw data set {dataset_id}")


def run_benchmark(work: Path, settings: Settings, jobs: int = 1) -> dict:
    """Train, predict and score both methods; writes ``report.md``, ``report.json`` and figures into
    ``work``. ``jobs`` trainings run at a time (a GPU has room for several small networks; on a CPU,
    1). Returns the report dict."""
    s = settings
    work = Path(work).resolve()
    use_nnunet_folders(work)
    run = StageRunner(work)
    previous = work / "settings.json"
    # a setting added after a run started takes this run's value (nothing trained so far depended on it)
    if previous.is_file() and {**json.loads(json.dumps(asdict(s))), **read_json(previous)} != json.loads(
            json.dumps(asdict(s))):
        # resuming would mix networks trained under other settings into this report
        raise InputError(f"{work}: holds a benchmark run with other settings ({previous}); use another --work")
    if s.baseline_budget == "time" and s.budget == "full":
        raise InputError("--baseline-budget time needs one of our budget trainers (--budget tiny, demo, cpu or gpu): "
                         "nnU-Net's own trainer has no variant for an arbitrary number of epochs")
    write_json(asdict(s), previous)
    loc_tr, seg_tr = BUDGETS[s.budget]
    dev = ["-device", s.device]
    T, O = str(s.train_id), str(s.first_organ_id)
    organs = ["--organs", *s.organs] if s.organs else []

    _prepare_data(s, work, run)
    test_raw = find_dataset(raw_root(), s.test_id)
    n_proc = os.environ["nnUNet_def_n_proc"]
    plans = {"localizer: plan + preprocess": run.stage("loc_plan", [
        ["nnunet_oar", "plan-localizer", "-d", T, "--spacing", str(s.loc_spacing_mm),
         "--fg-weight", str(s.loc_fg_weight), "-np", n_proc],
        ["nnUNetv2_preprocess", "-d", T, "-c", "3d_loc", "-np", n_proc]])}
    oof = s.organ_boxes == "oof"
    if oof:
        write_splits(s.train_id, s.loc_folds)
    loc_folds = [str(f) for f in range(s.loc_folds)] if oof else ["all"]

    # the trainings are independent; --c: an interrupted one resumes from its latest checkpoint.
    # First the localizer (folds), then the organ networks on its boxes, then the baseline: the two-stage
    # method's measured training time is known before the baseline starts.
    train = {}
    for f in loc_folds:
        train[f"localizer: train fold {f}"] = ("loc_train" if f == "all" else f"loc_train_{f}", [
            ["nnUNetv2_train", T, "3d_loc", f, "-tr", loc_tr, "--c", *dev]])
    records = run.stages(dict(train.values()), jobs)

    if oof:
        boxes = work / "oof_boxes"
        plans["organs: out-of-fold boxes"] = run.stage("loc_cv", [
            ["nnunet_oar", "localize", "--cross-validation", "-d", T, "-tr", loc_tr, "-o", str(boxes),
             "--device", s.device]])
        crop = ["--boxes", str(boxes)]
        margin = ["--margins", str(boxes / "margins.json")]
    else:
        crop = ["--boxes-from-labels", "--margin", str(s.margin_mm), "--shift", str(s.margin_mm)]
        margin = ["--margin", str(s.margin_mm)]
    plans["organs: crops + plan + preprocess"] = run.stage("organ_plan", [
        ["nnunet_oar", "crop-rois", "-d", T, "--first-id", O, *crop, *organs],
        ["nnunet_oar", "plan-organs", "--first-id", O, "--spacing", str(s.organ_spacing_mm), "-np", n_proc]])
    from nnunet_oar.segmentation.planning import organ_dataset_ids_from
    organ_ids = organ_dataset_ids_from(s.first_organ_id)
    organ_train = {}
    if run.done("organ_train"):          # a run recorded before organ networks got one stage each
        organ_train["organs: train"] = ("organ_train", [])
    else:
        for i in organ_ids:
            name = find_dataset(raw_root(), i).name.split("_", 2)[-1]
            organ_train[f"organ network {name}: train"] = (f"organ_train_{i}", [
                ["nnUNetv2_train", str(i), "3d_fullres", "all", "-tr", seg_tr, "--c", *dev]])
    records.update(run.stages(dict(organ_train.values()), jobs))
    train.update(organ_train)

    done = {**plans, **{label: records[name] for label, (name, _) in train.items()}}
    # the report lists the stages in the method's order: localizer, organ networks, then the baselines
    order = ["localizer: plan + preprocess", *(label for label in train if label.startswith("localizer")),
             *(["organs: out-of-fold boxes"] if oof else []), "organs: crops + plan + preprocess", *organ_train]
    stages = {label: done[label] for label in order}

    models = work / "models"
    run.stage("export", [["nnunet_oar", "export-models", "-o", str(models), "--localizer-id", T,
                          "--organ-ids", *map(str, organ_ids), "--localizer-trainer", loc_tr,
                          "--organ-trainer", seg_tr, *margin]])
    # test-time mirroring off unless asked, for both methods (our flag and nnU-Net's are spelt differently)
    tta = [] if s.tta else ["--disable-tta"]
    pred = work / "predictions"
    stages["two-stage: predict held-out"] = run.stage("predict_two_stage", [
        ["nnunet_oar", "predict", "-i", str(test_raw / "imagesTr"), "-o", str(pred / "two_stage"), "-m", str(models),
         "--device", s.device, *tta]])
    # the organ stage alone: the same networks on boxes centred on the reference centroids
    stages["two-stage, reference boxes: predict held-out"] = run.stage("predict_reference_boxes", [
        ["nnunet_oar", "reference-boxes", "-r", str(test_raw / "labelsTr"), "--labels", str(test_raw / "dataset.json"),
         "-m", str(models), "-o", str(work / "reference_boxes")],
        ["nnunet_oar", "predict", "-i", str(test_raw / "imagesTr"), "-o", str(pred / "two_stage_reference_boxes"),
         "-m", str(models), "--boxes", str(work / "reference_boxes"), "--device", s.device,
         *tta]])
    methods = {m: pred / m for m in ("two_stage", "two_stage_reference_boxes")}
    trainers = {"localizer": loc_tr, "networks": seg_tr}
    train_baselines(s, run, stages, methods, trainers, test_raw, pred, organ_ids)
    report = write_comparison(work, test_raw, methods, stages, asdict(s), trainers)
    return report
