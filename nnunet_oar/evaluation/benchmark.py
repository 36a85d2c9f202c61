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
and every organ network get the same trainer, the localizer its own. See ``BUDGETS``.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from nnunet_oar.evaluation.comparison import write_comparison
from nnunet_oar.io import InputError, read_json, write_json
from nnunet_oar.localization.plans import write_splits
from nnunet_oar.paths import find_dataset, preprocessed_root, raw_root, results_root, use_nnunet_folders

# the project workspace keeps the data beside the checkout; an installed package has no such default
_SHARED_OPENKBP = Path(__file__).resolve().parents[2] / "shared" / "data" / "openkbp"
DEFAULT_OPENKBP = str(_SHARED_OPENKBP) if _SHARED_OPENKBP.is_dir() else None
PHANTOM_ORGANS = ["liver", "spleen", "kidney_right", "kidney_left"]

# trainer class names: (localizer, baseline and organ networks)
BUDGETS = {
    "tiny": ("nnUNetTrainerOARHeatmap_tiny", "nnUNetTrainerOARTiny"),        # tests: 8 iterations each
    "demo": ("nnUNetTrainerOARHeatmap_demo", "nnUNetTrainerOARDemo"),        # 250 / 200 iterations
    "cpu": ("nnUNetTrainerOARHeatmap_cpu", "nnUNetTrainerOARCPU"),           # 1000 / 400 iterations
    "gpu": ("nnUNetTrainerOARHeatmap_gpu", "nnUNetTrainerOARGPU"),           # 2000 / 1000 iterations
    "full": ("nnUNetTrainerOARHeatmap", "nnUNetTrainer"),                    # nnU-Net's 1000 x 250
}


@dataclass
class Settings:
    """What a benchmark run does; written to ``settings.json`` and the report."""
    dataset: str                       # phantoms | openkbp | <raw data set id>
    budget: str = "cpu"
    train_id: int = 100
    test_id: int = 101
    loc_spacing_mm: float = 3.0        # the paper's 3 mm
    loc_fg_weight: float = 0.0         # the paper's plain L2
    organ_spacing_mm: float = 1.0      # the paper's 1 mm; 0 keeps the data's median spacing
    margin_mm: float = 10.0
    baseline_patch: Optional[List[int]] = None   # cap of the baseline's patch (CPU budgets), voxels
    device: str = "cpu"
    tta: bool = False
    organs: Optional[List[str]] = None
    # organ networks' training crops: "oof" (the paper's: out-of-fold localizer boxes with calibrated
    # margins, from loc_folds localizer folds) or "reference" (reference boxes + margin, randomly shifted)
    organ_boxes: str = "oof"
    # "iterations": the baseline gets the organ networks' trainer (equal iterations per network); "time":
    # also a second baseline trained as long as the two-stage method's trainings took (see _equal_time_epochs)
    baseline_budget: str = "iterations"
    # partial contours: one baseline per rule of nnunet_oar.conversion.ignore ("body", "likely")
    baseline_ignore: List[str] = field(default_factory=lambda: ["body"])
    loc_folds: int = 5
    phantoms: Dict[str, float] = field(default_factory=dict)
    openkbp: Optional[str] = DEFAULT_OPENKBP  # folder with openkbp-{train,validation}.tar.xz (or such folders)

    @property
    def baseline_id(self) -> int:
        return self.train_id + 5

    @property
    def first_organ_id(self) -> int:
        return self.train_id + 10


def settings_for(dataset: str, budget: str) -> Settings:
    """Defaults per data set; every deviation from the paper is named here and in the report."""
    s = _settings_for(dataset, budget)
    s.loc_folds = 2 if budget in ("tiny", "demo", "cpu") else 5     # CPU budgets: two localizer folds
    return s


def _settings_for(dataset: str, budget: str) -> Settings:
    if dataset == "phantoms":
        # CPU shortcuts of the demo: coarser grids, foreground-weighted L2. The demo budget must finish in
        # 15 min on 2 cores: 20 training phantoms, organ networks at 2.5 mm, the baseline's patch capped
        # at 48^3 voxels (its uncapped 80 x 80 x 96 patch took 39 of the old demo's 54 minutes).
        demo = budget == "demo"
        return Settings("phantoms", budget, 901, 902, loc_spacing_mm=4.0, loc_fg_weight=20.0,
                        organ_spacing_mm=2.5 if demo else 2.0, baseline_patch=[48, 48, 48] if demo else None,
                        organs=PHANTOM_ORGANS, phantoms={"train": 20 if demo else 30, "test": 3, "seed": 0,
                                                         "scale": 0.4})
    if dataset == "openkbp":
        # OpenKBP CT is 3.9 x 3.9 x 2.5 mm: organ networks on the native grid; on CPU the localizer
        # works on an 8 mm grid (margin 20 mm, chosen before any run) and the baseline patch is capped.
        # The GPU budget keeps these settings, so that it differs from the CPU run in the schedule alone.
        small = budget in ("tiny", "demo", "cpu", "gpu")
        return Settings("openkbp", budget, 100, 101, loc_spacing_mm=8.0 if small else 3.0,
                        loc_fg_weight=20.0 if small else 0.0, organ_spacing_mm=0.0,
                        margin_mm=20.0 if small else 10.0, baseline_patch=[64, 64, 64] if small else None,
                        baseline_budget="time", baseline_ignore=["body", "likely"])
    train_id = int(dataset)
    return Settings(dataset, budget, train_id, train_id + 1)


class StageFailed(InputError):
    """A stage's command failed; the message names its log and ends with the log's last lines."""


class _Runner:
    """Runs the stages' commands, logs their output, and records wall time and peak memory."""

    def __init__(self, work: Path):
        self.work, self.log = work, work / "benchmark.log"
        (work / "stages").mkdir(parents=True, exist_ok=True)
        self.bin = Path(sys.executable).parent

    def done(self, stage: str) -> Optional[dict]:
        f = self.work / "stages" / f"{stage}.json"
        return read_json(f) if f.is_file() else None

    def stage(self, name: str, commands: List[List[str]], env: Optional[Dict[str, str]] = None,
              jobs: int = 1) -> dict:
        """Run ``commands`` in order unless the stage is already done; returns its record. Beside other
        stages (``jobs`` > 1) it logs to ``stages/{name}.log`` and records that it shared the machine."""
        rec = self.done(name)
        if rec is not None:
            print(f"[{name}] done before ({rec['wall_s']:.0f} s)", flush=True)
            return rec
        print(f"[{name}] ...", flush=True)
        log = self.log if jobs == 1 else self.work / "stages" / f"{name}.log"
        # an earlier attempt that never finished left this mark: the record will time this attempt only
        started = self.work / "stages" / f"{name}.started"
        resumed = started.is_file()
        started.write_text(time.strftime("%Y-%m-%dT%H:%M:%S\n"))
        t0, peak = time.perf_counter(), 0
        for cmd in commands:
            exe = str(self.bin / cmd[0]) if (self.bin / cmd[0]).exists() else cmd[0]
            with open(log, "a") as fh:
                fh.write(f"\n$ {' '.join(cmd)}\n")
                fh.flush()
                p = subprocess.Popen([exe, *cmd[1:]], stdout=fh, stderr=subprocess.STDOUT,
                                     env={**os.environ, **(env or {})})
                _, status, usage = os.wait4(p.pid, 0)
                p.returncode = os.waitstatus_to_exitcode(status)
            peak = max(peak, usage.ru_maxrss)         # kB on Linux
            if p.returncode:
                # the command's own message (a bad input, a missing file) is at the end of its log
                raise StageFailed(f"{log}: stage {name} failed: {' '.join(cmd)} exited with {p.returncode}:\n"
                                  + log.read_text()[-3000:])
        rec = {"wall_s": time.perf_counter() - t0, "peak_rss_gb": peak / 1024 ** 2,
               "commands": [" ".join(c) for c in commands]}
        notes = [f"ran beside other trainings, {jobs} at a time"] if jobs > 1 else []
        if resumed:
            notes.append("resumed after an interruption: wall_s and peak_rss_gb cover the last attempt only")
        if notes:
            rec["note"] = "; ".join(notes)
        write_json(rec, self.work / "stages" / f"{name}.json")
        started.unlink()
        print(f"[{name}] {rec['wall_s']:.0f} s, peak {rec['peak_rss_gb']:.1f} GB", flush=True)
        return rec

    def stages(self, stages: Dict[str, List[List[str]]], jobs: int = 1) -> Dict[str, dict]:
        """Run independent stages ``jobs`` at a time, started in the given order (longest first), with
        nnU-Net's data-augmentation workers shared out between them; returns their records by name."""
        if jobs <= 1:
            return {name: self.stage(name, commands) for name, commands in stages.items()}
        from concurrent.futures import ThreadPoolExecutor
        env = {"nnUNet_n_proc_DA": str(max(1, (os.cpu_count() or 1) // jobs))}
        with ThreadPoolExecutor(jobs) as pool:
            futures = {name: pool.submit(self.stage, name, commands, env, jobs) for name, commands in stages.items()}
            return {name: f.result() for name, f in futures.items()}


def _prepare_data(s: Settings, work: Path, run: _Runner) -> None:
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


def _cap_patch(dataset_id: int, patch: List[int]) -> str:
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


def epoch_seconds(fold_dir: Path) -> List[float]:
    """The training time of each epoch nnU-Net logged in a fold folder (``Epoch time: X s`` in its
    ``training_log_*.txt``, all attempts of a resumed training), in seconds."""
    import re
    return [float(m) for log in sorted(Path(fold_dir).glob("training_log_*.txt"))
            for m in re.findall(r"Epoch time: ([0-9.]+) s", log.read_text())]


def _equal_time_epochs(loc: Tuple[str, str, List[str]], organs: Tuple[str, List[int]], baseline: Tuple[int, str, str]):
    """Epochs E of the equal-time baseline, fixed before it trains: the two-stage method's training time
    (the epoch times nnU-Net logged for every localizer fold and organ network, so an interrupted and
    resumed training counts what it trained, and start-up is left out on both sides) divided by the mean
    epoch time of the equal-iterations baseline.

    Args:
        loc: (train data set id, localizer trainer, folds); organs: (organ trainer, organ data set ids);
        baseline: (data set id, configuration, trainer) of the equal-iterations baseline.

    Returns:
        ``(E, the rule with its numbers)``.
    """
    results = results_root()
    train_id, loc_tr, folds = loc
    loc_dir = find_dataset(results, int(train_id)) / f"{loc_tr}__nnUNetPlans__3d_loc"
    times = [t for f in folds for t in epoch_seconds(loc_dir / f"fold_{f}")]
    for i in organs[1]:
        times += epoch_seconds(find_dataset(results, i) / f"{organs[0]}__nnUNetPlans__3d_fullres" / "fold_all")
    b_id, config, trainer = baseline
    per_epoch = epoch_seconds(find_dataset(results, b_id) / f"{trainer}__nnUNetPlans__{config}" / "fold_all")
    if not times or not per_epoch:
        raise InputError(f"{results}: no epoch times in the training logs; cannot size the equal-time baseline")
    two_stage, per = sum(times), sum(per_epoch) / len(per_epoch)
    epochs = max(1, round(two_stage / per))
    return epochs, (f"{epochs} epochs = round(two-stage training {two_stage:.0f} s / {per:.1f} s per epoch of the "
                    f"equal-iterations baseline), epoch times from nnU-Net's training logs")


def _baselines(s: Settings, run: _Runner, records: Dict[str, dict], stages: Dict[str, dict],
               methods: Dict[str, Path], trainers: dict, test_raw: Path, pred: Path, organ_ids: List[int]) -> None:
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
        stages[f"{label}: train"] = records[f"{method}_train"] = run.stage(f"{method}_train", [
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
        config = _cap_patch(int(B), s.baseline_patch) if s.baseline_patch else "3d_fullres"
        trainers["baseline_config"] = config
        if first is None or s.baseline_budget == "iterations":
            train_and_predict(tag, B, config, seg_tr)                           # equal iterations per network
            first = first or (tag, B)
        if s.baseline_budget == "time":
            if "baseline_equal_time" not in trainers:
                loc_folds = [str(f) for f in range(s.loc_folds)] if s.organ_boxes == "oof" else ["all"]
                epochs, trainers["baseline_equal_time_rule"] = _equal_time_epochs(
                    (str(s.train_id), BUDGETS[s.budget][0], loc_folds), (seg_tr, organ_ids),
                    (int(first[1]), config, seg_tr))
                trainers["baseline_equal_time"] = f"{seg_tr}_{epochs}epochs"
            train_and_predict(f"{tag}_equal_time", B, config, trainers["baseline_equal_time"])


def run_benchmark(work: Path, settings: Settings, jobs: int = 1) -> dict:
    """Train, predict and score both methods; writes ``report.md``, ``report.json`` and figures into
    ``work``. ``jobs`` trainings run at a time (a GPU has room for several small networks; on a CPU,
    1). Returns the report dict."""
    s = settings
    work = Path(work).resolve()
    use_nnunet_folders(work)
    run = _Runner(work)
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
    _baselines(s, run, records, stages, methods, trainers, test_raw, pred, organ_ids)
    report = write_comparison(work, test_raw, methods, stages, asdict(s), trainers)
    return report
