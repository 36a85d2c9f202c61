"""``nnunet_oar benchmark``: the paper's comparison (Table I, Fig. 3) on one data set, end to end.

Two methods trained on the same training cases and scored on the same held-out cases:

* **baseline** - one stock nnU-Net ``3d_fullres`` multi-label network; organs that a case does not
  annotate are handled with nnU-Net's ignore label (:mod:`nnunet_oar.conversion.ignore`);
* **two_stage** - our localizer (``3d_loc``) + one stock ``3d_fullres`` network per organ on crops,
  merged by maximum probability (``nnunet_oar predict``);
* **two_stage_reference_boxes** - the same organ networks on the method's boxes centred on the
  reference centroids (``nnunet_oar reference-boxes``): the organ stage alone, i.e. what the
  two-stage method gives with a perfect localizer.

Every step is a real command (``nnunet_oar ...`` or ``nnUNetv2_...``); the stages run as Snakemake jobs
(:mod:`~nnunet_oar.evaluation.stages`), which measures each one's wall time and peak memory on its own.
A finished stage leaves ``stages/{name}.done``; a rerun skips it, so an interrupted benchmark resumes and
a finished one only re-scores. Everything lives under the work folder (its own ``nnUNet_raw`` /
``nnUNet_preprocessed`` / ``nnUNet_results``).

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

from nnunet_oar.evaluation.baselines import equal_time_record, plan_baselines
from nnunet_oar.evaluation.comparison import write_comparison
from nnunet_oar.evaluation.settings import BUDGETS, Settings
from nnunet_oar.evaluation.stages import Plan
from nnunet_oar.io import InputError, read_json, write_json
from nnunet_oar.paths import find_dataset, raw_root, use_nnunet_folders


def _prepare_data(s: Settings, work: Path) -> None:
    """The training and held-out raw data sets (once: a rerun finds them)."""
    done = [find_dataset(raw_root(), i) is not None for i in (s.train_id, s.test_id)]
    if all(done):
        return
    t0 = time.perf_counter()
    if s.dataset == "phantoms":
        from nnunet_oar.conversion.visceral import convert_visceral
        from nnunet_oar.phantom import write_phantoms
        p = s.phantoms
        write_phantoms(work / "phantoms" / "train", int(p["train"]), int(p["seed"]), p["scale"], s.organs, progress=False)
        # held-out phantoms fully annotated by one annotator, so every organ is scored
        write_phantoms(work / "phantoms" / "test", int(p["test"]), int(p["seed"]) + 1000, p["scale"], s.organs,
                       p_unannotated=0.0, p_second_annotator=0.0, progress=False)
        convert_visceral(work / "phantoms" / "train", s.train_id, organs=s.organs, progress=False)
        convert_visceral(work / "phantoms" / "test", s.test_id, organs=s.organs, progress=False)
    elif s.dataset == "openkbp":
        # the tarballs as distributed, or folders of pt_* of the same names (e.g. a subset)
        from nnunet_oar.conversion.openkbp import convert_openkbp
        if not s.openkbp:
            raise InputError("--dataset openkbp needs --openkbp DIR: a folder with openkbp-train.tar.xz and "
                             "openkbp-validation.tar.xz (or folders of those names)")
        src = [Path(s.openkbp) / f"openkbp-{part}.tar.xz" for part in ("train", "validation")]
        src = [f if f.exists() else f.with_name(f.name[:-len(".tar.xz")]) for f in src]
        convert_openkbp(src[0], s.train_id, progress=False)
        convert_openkbp(src[1], s.test_id, progress=False)
    for dataset_id in (s.train_id, s.test_id):
        if find_dataset(raw_root(), dataset_id) is None:
            raise FileNotFoundError(f"{raw_root()}: no raw data set {dataset_id}")
    write_json({"wall_s": time.perf_counter() - t0}, work / "stages" / "data.json")


def run_benchmark(work: Path, settings: Settings, jobs: int = 1, report_only: bool = False) -> dict:
    """Train, predict and score both methods; writes ``report.md``, ``report.json`` and figures into
    ``work``. ``jobs`` trainings run at a time (a GPU has room for several small networks; on a CPU,
    1). ``report_only``: run nothing, score the methods whose held-out predictions have finished and
    name the stages that have not (a run stopped by a time cap, or one still under way). Returns the
    report dict."""
    s = settings
    work = Path(work).resolve()
    use_nnunet_folders(work)
    (work / "stages").mkdir(parents=True, exist_ok=True)
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
    if not report_only:
        _prepare_data(s, work)
    elif any(find_dataset(raw_root(), i) is None for i in (s.train_id, s.test_id)):
        raise InputError(f"{work}: the data are not converted yet; nothing to score")
    plan = Plan(work)
    methods, trainers, organ_ids = two_stage_plan(s, work, plan)
    two_stage = [f"predict_{m}" for m in methods]
    test_raw = find_dataset(raw_root(), s.test_id)
    plan_baselines(s, plan, methods, trainers, test_raw, work / "predictions", organ_ids)
    if report_only:
        methods = {m: folder for m, folder in methods.items() if plan.done(f"predict_{m}")}
        if not methods:
            raise InputError(f"{work}: no method has finished its held-out predictions yet; nothing to score")
        unfinished = [label for name, label in plan.labels.items() if not plan.done(name)]
    else:
        # the trainings share out nnU-Net's data-augmentation workers
        if jobs > 1:
            os.environ["nnUNet_n_proc_DA"] = str(max(1, (os.cpu_count() or 1) // jobs))
        # the two-stage method first: on 2 CPU cores the equal-time baselines take most of a day
        plan.run(cores=jobs, gpus=jobs, first=two_stage)
        unfinished = []
    equal_time_record(s, work, trainers, jobs=0 if report_only else jobs)
    trainers["network_sizes"] = _network_sizes(s, work, trainers)
    return write_comparison(work, test_raw, methods, plan.records(finished_only=report_only), asdict(s), trainers,
                            unfinished=unfinished)


def _network_sizes(s: Settings, work: Path, trainers: dict) -> dict:
    """The networks each method trained, as their checkpoints hold them (a budget trainer may build a
    narrower network than its plans say): ``{"localizer" | "organ networks" | "baseline": {name: size}}``
    (:func:`nnunet_oar.training.network_size`; the localizer's first fold, each organ's network, the
    baseline trained at equal iterations, else at equal time); a network not trained yet is left out, and
    one whose checkpoint cannot be read is named with the reason instead of a size."""
    from nnunet_oar.models import read_manifest
    from nnunet_oar.paths import results_root
    from nnunet_oar.safe_load import load_checkpoint
    from nnunet_oar.training import network_size
    paths = {}
    models = work / "models"
    if (models / "models.json").is_file():
        m = read_manifest(models)
        loc = m["localizer"]
        fold = f"fold_{loc['folds'][0]}"
        paths["localizer"] = {fold: models / loc["results_folder"] / fold / "checkpoint_final.pth"}
        paths["organ networks"] = {organ: models / e["results_folder"] / f"fold_{e['folds'][0]}" / e["checkpoint"]
                                   for organ, e in m["organs"].items()}
    baseline = find_dataset(results_root(), s.baseline_id)
    for trainer in (trainers["networks"], trainers.get("baseline_equal_time")):
        path = baseline and baseline / f"{trainer}__nnUNetPlans__{trainers['baseline_config']}" / "fold_all" / \
            "checkpoint_final.pth"
        if trainer and path and path.is_file():
            paths["baseline"] = {trainer: path}
            break
    out = {}
    for role, named in paths.items():
        for name, path in named.items():
            try:
                out.setdefault(role, {})[name] = network_size(load_checkpoint(path)["network_weights"])
            except InputError as e:         # the scores stand without it
                out.setdefault(role, {})[name] = {"unreadable": str(e)}
    return out


def two_stage_plan(s: Settings, work: Path, plan: Plan):
    """The two-stage method's stages: localizer (folds), out-of-fold boxes, crops, organ networks, export,
    predictions with its own and with reference boxes. Returns (prediction folders by method, trainer
    names, organ data set ids)."""
    from nnunet_oar import organs as catalogue
    from nnunet_oar.segmentation.crops import organ_dataset_ids
    loc_tr, seg_tr = BUDGETS[s.budget]
    dev = ["-device", s.device]
    T, O, n_proc = str(s.train_id), str(s.first_organ_id), os.environ["nnUNet_def_n_proc"]
    train_raw, test_raw = find_dataset(raw_root(), s.train_id), find_dataset(raw_root(), s.test_id)
    labels = read_json(train_raw / "dataset.json")["labels"]
    organs = [o for o in catalogue.ORGANS if o in labels and (not s.organs or o in s.organs)]
    organ_ids = organ_dataset_ids(s.first_organ_id, organs)
    oof = s.organ_boxes == "oof"
    loc_folds = [str(f) for f in range(s.loc_folds)] if oof else ["all"]
    plan.add("loc_plan", [["nnunet_oar", "plan-localizer", "-d", T, "--spacing", s.loc_spacing_mm,
                           "--fg-weight", s.loc_fg_weight, "-np", n_proc],
                          ["nnUNetv2_preprocess", "-d", T, "-c", "3d_loc", "-np", n_proc],
                          *([["nnunet_oar", "split", "-d", T, "-k", s.loc_folds]] if oof else [])],
             label="localizer: plan + preprocess")
    # --c: an interrupted training resumes from its latest checkpoint
    loc = [plan.add("loc_train" if f == "all" else f"loc_train_{f}",
                    [["nnUNetv2_train", T, "3d_loc", f, "-tr", loc_tr, "--c", *dev]], ["loc_plan"], gpu=True,
                    label=f"localizer: train fold {f}") for f in loc_folds]
    if oof:
        boxes = work / "oof_boxes"
        plan.add("loc_cv", [["nnunet_oar", "localize", "--cross-validation", "-d", T, "-tr", loc_tr, "-o", boxes,
                             "--device", s.device]], loc, gpu=True, label="organs: out-of-fold boxes")
        crop, margin, before = ["--boxes", boxes], ["--margins", boxes / "margins.json"], ["loc_cv"]
    else:
        crop = ["--boxes-from-labels", "--margin", s.margin_mm, "--shift", s.margin_mm]
        margin, before = ["--margin", s.margin_mm], ["loc_plan"]
    plan.add("organ_crops", [["nnunet_oar", "crop-rois", "-d", T, "--first-id", O, *crop, "--organs", *organs]],
             before, label="organs: crops")
    # one stage per organ data set: nnU-Net plans and preprocesses one data set at a time, so on many
    # cores the organs go side by side, and each network trains as soon as its own data set is ready
    nets = []
    for o in organs:
        i = organ_ids[o]
        plan.add(f"organ_plan_{i}", [["nnunet_oar", "plan-organs", "--first-id", O, "--ids", i, "--spacing",
                                      s.organ_spacing_mm, "-np", n_proc]], ["organ_crops"],
                 label=f"organ network {o}: plan + preprocess")
        nets.append(plan.add(f"organ_train_{i}", [["nnUNetv2_train", i, "3d_fullres", "all", "-tr", seg_tr, "--c", *dev]],
                             [f"organ_plan_{i}"], gpu=True, label=f"organ network {o}: train"))
    models = work / "models"
    plan.add("export", [["nnunet_oar", "export-models", "-o", models, "--localizer-id", T, "--organ-ids",
                         *(organ_ids[o] for o in organs), "--localizer-trainer", loc_tr, "--organ-trainer", seg_tr,
                         *margin]], [*loc, *nets])
    # test-time mirroring off unless asked, for both methods (our flag and nnU-Net's are spelt differently)
    tta = [] if s.tta else ["--disable-tta"]
    pred = work / "predictions"
    plan.add("predict_two_stage", [["nnunet_oar", "predict", "-i", test_raw / "imagesTr", "-o", pred / "two_stage",
                                    "-m", models, "--device", s.device, *tta]], ["export"], gpu=True,
             label="two-stage: predict held-out")
    # the organ stage alone: the same networks on boxes centred on the reference centroids
    plan.add("predict_two_stage_reference_boxes", [
        ["nnunet_oar", "reference-boxes", "-r", test_raw / "labelsTr", "--labels", test_raw / "dataset.json",
         "-m", models, "-o", work / "reference_boxes"],
        ["nnunet_oar", "predict", "-i", test_raw / "imagesTr", "-o", pred / "two_stage_reference_boxes",
         "-m", models, "--boxes", work / "reference_boxes", "--device", s.device, *tta]], ["export"], gpu=True,
        label="two-stage, reference boxes: predict held-out")
    methods = {m: pred / m for m in ("two_stage", "two_stage_reference_boxes")}
    return methods, {"localizer": loc_tr, "networks": seg_tr}, [organ_ids[o] for o in organs]
