"""``nnunet_oar demo``: the whole method on synthetic phantoms, small enough for 2 CPU cores.

Generates phantoms, converts them, plans and trains the localizer and one organ network per organ
briefly with the stock nnU-Net commands, predicts held-out phantoms end to end, evaluates them and
writes ``report.md``, ``report.json`` and ``preview.png``. Everything lives under the output folder
(its own nnUNet_raw / nnUNet_preprocessed / nnUNet_results), so the user's nnU-Net folders are untouched.

CPU shortcuts, all documented in the report: the localizer works on a 4 mm grid with a foreground-weighted
L2 (``fg_weight``; plain L2 needs far more iterations than a demo has) and is trained on all
training cases ("all" fold), so the organ crops are taken from the reference boxes with a random shift
(``--boxes-from-labels``) instead of out-of-fold localizer boxes; the organ networks work at 2 mm
instead of the paper's 1 mm.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Dict, List

import numpy as np
import SimpleITK as sitk

from nnunet_oar.io import atomic_path, geometry, write_json
from nnunet_oar.metrics import dice, localization_metrics, summarize_localization
from nnunet_oar.paths import use_nnunet_folders

DEMO_ORGANS = ["liver", "spleen", "kidney_right", "kidney_left"]
SOURCE_ID, TEST_ID, FIRST_ORGAN_ID = 901, 902, 911
LOC_TRAINER, ORGAN_TRAINER = "nnUNetTrainerOARHeatmap_demo", "nnUNetTrainerOARDemo"


class _Stages:
    """Wall time per stage, printed as it goes."""

    def __init__(self, n: int):
        self.n, self.k, self.times = n, 0, {}

    @contextmanager
    def __call__(self, name: str):
        self.k += 1
        print(f"[{self.k}/{self.n}] {name} ...", flush=True)
        t = time.perf_counter()
        yield
        self.times[name] = time.perf_counter() - t
        print(f"[{self.k}/{self.n}] {name}: {self.times[name]:.0f} s", flush=True)


@contextmanager
def _quiet(log: Path):
    """Send what nnU-Net's in-process API prints to the demo's log."""
    with open(log, "a") as fh, redirect_stdout(fh), redirect_stderr(fh):
        yield


def _nnunet(cmd: List[str], log: Path) -> None:
    """Run a stock nnU-Net command, its output to ``log``; fail with the log's end."""
    with open(log, "a") as fh:
        r = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT)
    if r.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed; see {log}:\n" + log.read_text()[-2000:])


def run_demo(output: Path, n_train: int = 30, n_test: int = 3, seed: int = 0, scale: float = 0.4,
             organs: List[str] = DEMO_ORGANS, loc_spacing_mm: float = 4.0, margin_mm: float = 10.0,
             fg_weight: float = 20.0, organ_spacing_mm: float = 2.0) -> dict:
    """Run the demo into ``output``; returns the report dict (also written as report.json)."""
    from nnunet_oar.conversion.visceral import convert_visceral
    from nnunet_oar.localization.plans import plan_localizer
    from nnunet_oar.phantom import write_phantoms
    from nnunet_oar.pipeline import export_models, predict
    from nnunet_oar.report import preview_png
    from nnunet_oar.segmentation.crops import crop_rois
    from nnunet_oar.segmentation.organs import plan_organs

    output = Path(output).resolve()
    use_nnunet_folders(output)
    log = output / "nnunet.log"
    log.write_text("")
    bin_dir = Path(sys.executable).parent
    stage = _Stages(9)
    t0 = time.perf_counter()

    with stage("phantoms"):
        write_phantoms(output / "phantoms" / "train", n_train, seed, scale, organs, progress=False)
        write_phantoms(output / "phantoms" / "test", n_test, seed + 1000, scale, organs, p_unannotated=0.0,
                       p_second_annotator=0.0, progress=False)
    with stage("conversion"):
        convert_visceral(output / "phantoms" / "train", SOURCE_ID, organs=organs, progress=False)
        test_raw = convert_visceral(output / "phantoms" / "test", TEST_ID, organs=organs, progress=False)
    with stage("localizer planning + preprocessing"), _quiet(log):
        plan_localizer(SOURCE_ID, loc_spacing_mm, progress=False, fg_weight=fg_weight)
        _nnunet([str(bin_dir / "nnUNetv2_preprocess"), "-d", str(SOURCE_ID), "-c", "3d_loc", "-np", "2"], log)
    with stage("localizer training"):
        _nnunet([str(bin_dir / "nnUNetv2_train"), str(SOURCE_ID), "3d_loc", "all", "-tr", LOC_TRAINER,
                 "-device", "cpu"], log)
    with stage("organ crops + planning"), _quiet(log):
        crop_rois(SOURCE_ID, FIRST_ORGAN_ID, organs=organs, boxes_from_labels=True, margin_mm=margin_mm,
                  shift_mm=margin_mm, seed=seed, progress=False)
        organ_ids = plan_organs(FIRST_ORGAN_ID, spacing_mm=organ_spacing_mm)
    with stage("organ networks training"):
        for dataset_id in organ_ids:
            _nnunet([str(bin_dir / "nnUNetv2_train"), str(dataset_id), "3d_fullres", "all", "-tr", ORGAN_TRAINER,
                     "-device", "cpu"], log)
    with stage("export models"):
        export_models(output / "models", SOURCE_ID, organ_ids, LOC_TRAINER, ORGAN_TRAINER, margins=margin_mm)
    with stage("prediction of held-out phantoms"):
        predict(test_raw / "imagesTr", output / "predictions", output / "models", tta=False)
    with stage("evaluation + report"):
        report = _evaluate(test_raw, output / "predictions", organs)
        report["time_s"] = {**stage.times, "total": time.perf_counter() - t0}
        report["settings"] = {"train_cases": n_train, "test_cases": n_test, "seed": seed, "phantom_scale": scale,
                              "localizer_spacing_mm": loc_spacing_mm, "margin_mm": margin_mm,
                              "localizer_fg_weight": fg_weight, "organ_spacing_mm": organ_spacing_mm,
                              "localizer_trainer": LOC_TRAINER, "organ_trainer": ORGAN_TRAINER,
                              "organ_crops": "reference boxes + margin, random shift up to the margin (demo shortcut)"}
        case = sorted(report["dice"])[0]
        ct = sitk.ReadImage(str(test_raw / "imagesTr" / f"{case}_0000.nii.gz"))
        seg = sitk.ReadImage(str(output / "predictions" / f"{case}.nii.gz"))
        names = json.loads((output / "predictions" / f"{case}.json").read_text())["labels"]
        boxes = json.loads((output / "predictions" / f"{case}_boxes.json").read_text())
        preview_png(ct, seg, names, boxes, output / "preview.png", title=f"held-out phantom {case}")
        write_json(report, output / "report.json")
        _write_markdown(report, output / "report.md")
    return report


def _evaluate(test_raw: Path, predictions: Path, organs: List[str]) -> dict:
    """Dice and localization metrics of the held-out predictions against their reference labels."""
    labels = json.loads((test_raw / "dataset.json").read_text())["labels"]
    annotations = json.loads((test_raw / "annotations.json").read_text())
    per_case_dice: Dict[str, Dict[str, float]] = {}
    per_case_loc = {}
    for case in sorted(annotations):
        ref_img = sitk.ReadImage(str(test_raw / "labelsTr" / f"{case}.nii.gz"))
        ref, geom = sitk.GetArrayFromImage(ref_img), geometry(ref_img)
        pred = sitk.GetArrayFromImage(sitk.ReadImage(str(predictions / f"{case}.nii.gz")))
        pred_labels = json.loads((predictions / f"{case}.json").read_text())["labels"]
        boxes = json.loads((predictions / f"{case}_boxes.json").read_text())
        per_case_dice[case], per_case_loc[case] = {}, {}
        for organ in organs:
            if organ not in annotations[case]:
                continue
            r = ref == labels[organ]
            d = dice(r, pred == pred_labels[organ])
            if not np.isnan(d):
                per_case_dice[case][organ] = d
            per_case_loc[case][organ] = localization_metrics(r, geom, boxes["organs"].get(organ))
    per_organ = {o: float(np.mean([c[o] for c in per_case_dice.values() if o in c]))
                 for o in organs if any(o in c for c in per_case_dice.values())}
    loc = summarize_localization(per_case_loc)
    return {"dice": per_case_dice, "dice_per_organ": per_organ, "mean_dice": float(np.mean(list(per_organ.values()))),
            "localization": loc,
            "min_containment": float(min(s["containment"]["min"] for s in loc.values() if "containment" in s))}


def _write_markdown(report: dict, dst: Path) -> None:
    lines = ["# nnunet_oar demo report", "",
             f"Held-out phantoms: {report['settings']['test_cases']}; training phantoms: "
             f"{report['settings']['train_cases']}.", "",
             "| organ | Dice (mean) | containment (mean / min) | centroid error mm (median) | detection tp/fn/fp/tn |",
             "|---|---|---|---|---|"]
    for organ, d in report["dice_per_organ"].items():
        s = report["localization"].get(organ, {})
        c = s.get("containment", {})
        det = s.get("detection", {})
        ce = s.get("centroid_error_mm", {}).get("median", float("nan"))
        lines.append(f"| {organ} | {d:.3f} | {c.get('mean', float('nan')):.3f} / {c.get('min', float('nan')):.3f} | "
                     f"{ce:.1f} | {det.get('tp', 0)}/{det.get('fn', 0)}/{det.get('fp', 0)}/{det.get('tn', 0)} |")
    lines += ["", f"**Mean Dice {report['mean_dice']:.3f}**, lowest containment {report['min_containment']:.3f}.", "",
              "## Time per stage (s)", "", "| stage | s |", "|---|---|"]
    lines += [f"| {k} | {v:.0f} |" for k, v in report["time_s"].items()]
    lines += ["", "## Settings", "", "```json", json.dumps(report["settings"], indent=2), "```", "",
              "![preview](preview.png)", ""]
    with atomic_path(dst) as tmp:
        tmp.write_text("\n".join(lines))
