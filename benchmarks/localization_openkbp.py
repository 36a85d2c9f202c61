"""Localization on real head-and-neck CT (OpenKBP) after a CPU-feasible training.

Converts the OpenKBP train and validation tarballs, plans the localizer, trains it on all 170 training
patients for a fixed small budget (trainer ``nnUNetTrainerOARHeatmap_250it``: 250 iterations), localizes
the 33 validation patients with ``nnunet_oar localize`` and scores them against their contours
(organs that were not contoured are skipped). Writes docs/results/localization_openkbp.json.

    python benchmarks/localization_openkbp.py [--work /tmp/kbp_loc] [--spacing 6] [--fg-weight 20]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import SimpleITK as sitk

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "openkbp"
TRAINER = "nnUNetTrainerOARHeatmap_250it"


def sh(cmd, log):
    with open(log, "a") as fh:
        subprocess.run(cmd, check=True, stdout=fh, stderr=subprocess.STDOUT)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default="/tmp/kbp_loc")
    ap.add_argument("--spacing", type=float, default=6.0)
    ap.add_argument("--fg-weight", type=float, default=20.0)
    ap.add_argument("--out", default=str(REPO / "docs" / "results" / "localization_openkbp.json"))
    a = ap.parse_args()
    work = Path(a.work)
    from nnunet_oar.io import geometry
    from nnunet_oar.metrics import localization_metrics, summarize_localization
    from nnunet_oar.paths import use_nnunet_folders
    use_nnunet_folders(work)
    b = Path(sys.executable).parent
    log = work / "log.txt"
    times = {}
    t = time.perf_counter()
    sh([str(b / "nnunet_oar"), "convert-openkbp", "-i", str(DATA / "openkbp-train.tar.xz"), "-d", "100"], log)
    sh([str(b / "nnunet_oar"), "convert-openkbp", "-i", str(DATA / "openkbp-validation.tar.xz"), "-d", "101"], log)
    times["convert_s"] = time.perf_counter() - t
    t = time.perf_counter()
    sh([str(b / "nnunet_oar"), "plan-localizer", "-d", "100", "--spacing", str(a.spacing),
        "--fg-weight", str(a.fg_weight)], log)
    sh([str(b / "nnUNetv2_preprocess"), "-d", "100", "-c", "3d_loc", "-np", "2"], log)
    times["plan_preprocess_s"] = time.perf_counter() - t
    t = time.perf_counter()
    sh([str(b / "nnUNetv2_train"), "100", "3d_loc", "all", "-tr", TRAINER, "-device", "cpu"], log)
    times["train_s"] = time.perf_counter() - t
    model = work / "nnUNet_results" / "Dataset100_OpenKBP" / f"{TRAINER}__nnUNetPlans__3d_loc"
    val = work / "nnUNet_raw" / "Dataset101_OpenKBP"
    t = time.perf_counter()
    sh([str(b / "nnunet_oar"), "localize", "-i", str(val / "imagesTr"), "-o", str(work / "boxes"), "-m", str(model)],
       log)
    times["localize_33_s"] = time.perf_counter() - t
    labels = json.loads((val / "dataset.json").read_text())["labels"]
    annotations = json.loads((val / "annotations.json").read_text())
    per_case = {}
    for case, organs in annotations.items():
        ref = sitk.ReadImage(str(val / "labelsTr" / f"{case}.nii.gz"))
        arr, geom = sitk.GetArrayFromImage(ref), geometry(ref)
        boxes = json.loads((work / "boxes" / f"{case}_boxes.json").read_text())
        per_case[case] = {o: localization_metrics(arr == labels[o], geom, boxes["organs"][o]) for o in organs}
    plans = json.loads((work / "nnUNet_preprocessed" / "Dataset100_OpenKBP" / "nnUNetPlans.json").read_text())
    result = {"machine": f"{os.cpu_count()} CPU cores", "trainer": TRAINER, "spacing_mm": a.spacing,
              "fg_weight": a.fg_weight, "patch_size": plans["configurations"]["3d_loc"]["patch_size"],
              "times": times, "per_organ": summarize_localization(per_case), "per_case": per_case}
    Path(a.out).write_text(json.dumps(result, indent=2) + "\n")
    for organ, s in result["per_organ"].items():
        print(organ, json.dumps({k: v for k, v in s.items()}))


if __name__ == "__main__":
    main()
