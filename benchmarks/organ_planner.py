"""Organ networks planned by nnU-Net's ``nnUNetPlanner_torchres`` (``plan-organs``' default: trilinear
torch resampling) against its default ``ExperimentPlanner`` (cubic spline): the same phantom crops, the
same trainer and seed, Dice on held-out crops, and the wall time of planning + preprocessing, training
and nnU-Net's prediction of the held-out crops (preprocessing, network, export).

Training crops: reference boxes + 10 mm, shifted at random up to 10 mm (seeded; identical for both
planners); held-out crops: reference boxes + 10 mm. The organ networks are trained with
``nnUNetTrainerOARDemo`` (the demo's budget; at half nnU-Net's width since 2026-12-06, so a rerun
differs from the committed results, trained at full width) on fold ``all`` and predicted with nnU-Net's predictor (one
fold, no mirroring). The Dice difference is paired over the (case, organ) pairs (mean, BCa bootstrap
95 % interval, Wilcoxon signed-rank p). Each planner's record is written once all its networks are
trained and scored; an interrupted planner starts again from its planning (its times would otherwise
describe a part of the work).

    python benchmarks/organ_planner.py --work /tmp/organ_planner --out docs/results/organ_planner.json
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

PLANNERS = {"torchres": "nnUNetPlanner_torchres", "default": "ExperimentPlanner"}
ORGANS = ["liver", "spleen", "kidney_right", "kidney_left"]
TRAIN_ID, TEST_ID, FIRST_ID = 931, 932, {"torchres": 941, "default": 951}
TEST_CROPS_ID = 961
TRAINER = "nnUNetTrainerOARDemo"


def _predict(folder: Path, images: Path, out: Path) -> float:
    """nnU-Net's predictor on every held-out crop; returns its wall time (s)."""
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    p = nnUNetPredictor(tile_step_size=0.5, use_mirroring=False, device=torch.device("cpu"), allow_tqdm=False)
    p.initialize_from_trained_model_folder(str(folder), ["all"])
    t0 = time.perf_counter()
    p.predict_from_files(str(images), str(out), save_probabilities=False, overwrite=True,
                         num_processes_preprocessing=1, num_processes_segmentation_export=1)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", required=True)
    ap.add_argument("--out", required=True, help="JSON to write; the Markdown table goes beside it")
    ap.add_argument("--spacing", type=float, default=2.0, help="the organ networks' grid, mm (default 2.0)")
    ap.add_argument("--train", type=int, default=20, help="training phantoms (default 20, as the demo)")
    ap.add_argument("--test", type=int, default=10, help="held-out phantoms (default 10)")
    a = ap.parse_args()
    from nnunet_oar.conversion.visceral import convert_visceral
    from nnunet_oar.evaluation.metrics import dice
    from nnunet_oar.evaluation.statistics import compare_methods
    from nnunet_oar.io import read_json, write_json
    from nnunet_oar.paths import find_dataset, raw_root, use_nnunet_folders
    from nnunet_oar.phantom import write_phantoms
    from nnunet_oar.segmentation.crops import crop_rois, organ_dataset_ids
    from nnunet_oar.segmentation.planning import plan_organs
    work = Path(a.work).resolve()
    use_nnunet_folders(work)
    os.environ.setdefault("nnUNet_oar_seed", "0")
    done = work / "steps"
    done.mkdir(parents=True, exist_ok=True)
    test_ids = organ_dataset_ids(TEST_CROPS_ID, ORGANS)
    if find_dataset(raw_root(), test_ids[ORGANS[-1]]) is None:      # the last data set this block writes
        for sub in ("train", "test", "nnUNet_raw"):
            shutil.rmtree(work / sub, ignore_errors=True)
        write_phantoms(work / "train", a.train, 0, 0.4, ORGANS, progress=False)
        write_phantoms(work / "test", a.test, 1000, 0.4, ORGANS, p_unannotated=0.0, p_second_annotator=0.0,
                       progress=False)
        convert_visceral(work / "train", TRAIN_ID, organs=ORGANS, progress=False)
        convert_visceral(work / "test", TEST_ID, organs=ORGANS, progress=False)
        crop_rois(TEST_ID, TEST_CROPS_ID, boxes_from_labels=True, margin_mm=10.0, progress=False)
    result = {"command": "python benchmarks/organ_planner.py " + " ".join(sys.argv[1:]),
              "machine": f"{len(os.sched_getaffinity(0))} CPU cores ({platform.machine()})",
              "spacing_mm": a.spacing, "trainer": TRAINER, "planners": PLANNERS, "runs": {}}
    per_case = {}
    for name, planner in PLANNERS.items():
        step = done / f"{name}.json"          # a rerun resumes: finished planners are read back
        if not step.is_file():
            ids = organ_dataset_ids(FIRST_ID[name], ORGANS)
            for i in ids.values():              # a planner interrupted earlier starts again
                for root in (raw_root(), work / "nnUNet_preprocessed", work / "nnUNet_results"):
                    for d in root.glob(f"Dataset{i:03d}_*"):
                        shutil.rmtree(d)
            crop_rois(TRAIN_ID, FIRST_ID[name], organs=ORGANS, boxes_from_labels=True, margin_mm=10.0,
                      shift_mm=10.0, seed=0, progress=False)
            t0 = time.perf_counter()
            plan_organs(FIRST_ID[name], spacing_mm=a.spacing, num_processes=2, planner=planner)
            run = {"plan_preprocess_s": time.perf_counter() - t0, "train_s": {}, "predict_s": {}}
            scores: dict = {}
            for organ in ORGANS:
                t0 = time.perf_counter()
                subprocess.run([str(Path(sys.executable).parent / "nnUNetv2_train"), str(ids[organ]), "3d_fullres",
                                "all", "-tr", TRAINER, "-device", "cpu"], check=True, stdout=subprocess.DEVNULL)
                run["train_s"][organ] = time.perf_counter() - t0
                folder = next((work / "nnUNet_results").glob(f"Dataset{ids[organ]:03d}_*")) / \
                    f"{TRAINER}__nnUNetPlans__3d_fullres"
                test = find_dataset(raw_root(), test_ids[organ])
                out = work / "predictions" / name / organ
                run["predict_s"][organ] = _predict(folder, test / "imagesTr", out)
                for f in sorted((test / "labelsTr").glob("*.nii.gz")):
                    source = read_json(test / "crops.json")[f.name[:-len(".nii.gz")]]["source_case"]
                    ref = sitk.GetArrayFromImage(sitk.ReadImage(str(f))) == 1
                    pred = sitk.GetArrayFromImage(sitk.ReadImage(str(out / f.name))) == 1
                    scores.setdefault(source, {})[organ] = {"dice": dice(ref, pred)}
            write_json({"run": run, "per_case": scores}, step)
        record = read_json(step)
        result["runs"][name], per_case[name] = record["run"], record["per_case"]
        result["runs"][name]["dice_mean"] = float(np.mean([v["dice"] for c in record["per_case"].values()
                                                           for v in c.values()]))
    result["paired_torchres_minus_default"] = compare_methods(per_case["torchres"], per_case["default"])
    write_json(result, Path(a.out))
    Path(a.out).with_suffix(".md").write_text(markdown(result))
    print(Path(a.out).with_suffix(".md").read_text())


def markdown(r: dict) -> str:
    p = r["paired_torchres_minus_default"]

    from nnunet_oar.evaluation.statistics import format_difference as diff
    t, d = r["runs"]["torchres"], r["runs"]["default"]
    lines = ["# Organ networks: nnU-Net's torch-resampling planner vs its default (cubic spline)", "",
             f"Generated by `{r['command']}` on {r['machine']}. Phantoms (demo generator), organ networks at "
             f"{r['spacing_mm']} mm, trainer `{r['trainer']}` (fold `all`, seeded), held-out crops on reference "
             "boxes + 10 mm, nnU-Net's predictor (no mirroring).", "",
             "| organ | pairs | Dice, `ExperimentPlanner` | Dice, `nnUNetPlanner_torchres` | Δ Dice torchres − default [95 % CI], p |",
             "|---|---|---|---|---|"]
    for organ, v in p["per_organ"].items():
        lines.append(f"| {organ} | {v['n']} | {v['mean_b']:.3f} | {v['mean_a']:.3f} | {diff(v)} |")
    o = p["overall"]
    lines.append(f"| all | {o['n']} | {o['mean_b']:.3f} | {o['mean_a']:.3f} | {diff(o)} |")
    lines += ["", "| planner | plan + preprocess s | training s (sum) | held-out prediction s (sum) |", "|---|---|---|---|"]
    for name, run in (("`nnUNetPlanner_torchres`", t), ("`ExperimentPlanner`", d)):
        lines.append(f"| {name} | {run['plan_preprocess_s']:.0f} | {sum(run['train_s'].values()):.0f} | "
                     f"{sum(run['predict_s'].values()):.1f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
