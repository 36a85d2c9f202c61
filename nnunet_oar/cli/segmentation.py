"""Segmentation (stage 2): one cropped data set per organ, its nnU-Net planning, and the merge of the
organ networks' predictions on crops."""
from __future__ import annotations

import argparse
from pathlib import Path


def _crop_rois(a) -> None:
    from nnunet_oar.segmentation.crops import crop_rois
    reports = crop_rois(a.dataset_id, a.first_id, boxes_dir=Path(a.boxes) if a.boxes else None, organs=a.organs,
                        boxes_from_labels=a.boxes_from_labels, margin_mm=a.margin, shift_mm=a.shift, seed=a.seed)
    for organ, r in reports.items():
        print(f"Dataset{r['dataset_id']:03d} {organ}: {r['cases']} crops, {len(r['skipped'])} skipped, "
              f"{len(r['cut'])} cut")


def _plan_organs(a) -> None:
    from nnunet_oar.segmentation.planning import plan_organs
    ids = plan_organs(a.first_id, spacing_mm=None if a.spacing <= 0 else a.spacing, num_processes=a.num_processes,
                      dataset_ids=a.ids, configurations=a.configurations, planner=a.planner)
    print(f"planned and preprocessed {', '.join(a.configurations)} for data sets " + ", ".join(map(str, ids)))


def _merge(a) -> None:
    from nnunet_oar.segmentation.merge import merge_folders
    print(f"merged {len(merge_folders(a.input, Path(a.output)))} cases into {a.output}")


def add_crop_args(s: argparse.ArgumentParser) -> None:
    s.add_argument("-d", "--dataset-id", type=int, required=True, help="source (full image) data set id")
    s.add_argument("--boxes", help="folder of out-of-fold {case}_boxes.json (localize --cross-validation)")
    s.add_argument("--boxes-from-labels", action="store_true", help="boxes from the reference labels instead")
    s.add_argument("--organs", nargs="+")
    s.add_argument("--first-id", type=int, required=True, help="id of the first organ data set")
    s.add_argument("--margin", type=float, default=10.0, help="margin in mm around label boxes (default 10)")
    s.add_argument("--shift", type=float, default=0.0, help="random shift of label boxes, mm per axis")
    s.add_argument("--seed", type=int, default=0)


def register(sub) -> None:
    from nnunet_oar.segmentation.planning import ORGAN_PLANNER
    s = sub.add_parser("crop-rois", help="one cropped nnU-Net data set per organ")
    add_crop_args(s)
    s.set_defaults(func=_crop_rois)

    s = sub.add_parser("plan-organs", help="nnU-Net planning + preprocessing (3d_fullres; -c for others) of every organ data set")
    s.add_argument("--first-id", type=int, required=True)
    s.add_argument("--ids", type=int, nargs="+",
                   help="only these organ data sets (default: every one from --first-id); several plan-organs "
                        "side by side use more cores than one")
    s.add_argument("--spacing", type=float, default=1.0,
                   help="isotropic target spacing in mm (default 1, the paper's); 0 keeps nnU-Net's median spacing")
    s.add_argument("-np", "--num-processes", type=int, default=2)
    s.add_argument("-c", "--configurations", nargs="+", default=["3d_fullres"],
                   help="nnU-Net configurations to preprocess (default 3d_fullres; add 2d for 2D organ networks)")
    s.add_argument("--planner", default=ORGAN_PLANNER,
                   help="nnU-Net experiment planner (default nnUNetPlanner_torchres: torch resampling, fast at "
                        "inference; ExperimentPlanner: nnU-Net's default cubic spline); plans are named nnUNetPlans")
    s.set_defaults(func=_plan_organs)

    s = sub.add_parser("merge", help="merge per-organ crop predictions (nnU-Net output folders) into label maps")
    s.add_argument("-i", "--input", nargs="+", required=True,
                   help="one folder per organ: nnUNetv2_predict --save_probabilities output + crops.json")
    s.add_argument("-o", "--output", required=True)
    s.set_defaults(func=_merge)
