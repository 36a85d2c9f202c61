"""Localization (stage 1): the ``3d_loc`` plans and heat-map boxes, for new CTs or out of fold."""
from __future__ import annotations

from pathlib import Path

from nnunet_oar.cli.common import fail_on_errors
from nnunet_oar.io import InputError
from nnunet_oar.localization.boxes import DEFAULT_READOUT, READOUTS


def _plan_localizer(a) -> None:
    from nnunet_oar.localization.plans import plan_localizer
    plans = plan_localizer(a.dataset_id, spacing_mm=a.spacing, sigma2_mm2=a.sigma2, num_processes=a.num_processes,
                           fg_weight=a.fg_weight, configuration=a.configuration, base_features=a.base_features)
    print(f"added {a.configuration} to {plans}")


def _split(a) -> None:
    from nnunet_oar.localization.plans import write_splits
    print(f"wrote {write_splits(a.dataset_id, a.folds)}")


def _localize(a) -> None:
    if a.cross_validation:
        from nnunet_oar.localization.cross_validation import localize_cross_validation
        if a.dataset_id is None:
            raise InputError("--cross-validation needs -d DATASET_ID")
        s = localize_cross_validation(a.dataset_id, Path(a.output), trainer=a.trainer, plans=a.plans,
                                      configuration=a.configuration, device=a.device, tau=a.tau, readout=a.readout,
                                      folds=a.folds, checkpoint=a.checkpoint,
                                      exclude_far_misses=not a.keep_far_misses)
        for move in s["positions_moved"]:
            print(f"{move['case']}: {move['organ']} moved {move['distance_mm']:.0f} mm to where "
                  f"{', '.join(move['anchors'])} put it (anatomical consistency)")
        for organ, m in s["calibrated_margins"].items():
            if m.get("containment") is not None:
                print(f"{organ}: margin {m['margin_mm']:.0f} mm holds {m['containment']:.3f} of its voxels")
            elif "n_cases" in m:
                print(f"{organ}: margin {m['margin_mm']:.0f} mm (no calibration case left: the default)")
            for f in m.get("failures", {}).get("cases", []):
                print(f"  {organ}: {f['case']} " + ("pooled, though " if f.get("pooled") else "left out of the "
                      "calibration, ") + (f"found {f['error_mm']:.0f} mm away, beyond the "
                                          f"{m['failures']['fence_mm']:.0f} mm fence" if f["status"] == "far_miss"
                                          else "not found"))
            if "z_extent" in m:
                e, err = m["z_extent"], m["z_extent"]["median_z_error_mm"]
                floor = err.get("learned_extent_exact_anchors")
                print(f"  {organ}: box along z from {e['bottom']['anchor']} to {e['top']['anchor']} (learned extent; "
                      f"median z error {err['learned_extent']:.1f} mm against {err['mean_size_box']:.1f} mm with "
                      "the mean-size box" + ("" if floor is None else
                                              f"; {floor:.1f} mm with the anchors where the contours put them") + ")")
        return
    from nnunet_oar.localization.localize import localize
    if a.input is None or a.model is None:
        raise InputError("localize needs -i INPUT and -m MODEL_FOLDER (or --cross-validation -d ID)")
    fail_on_errors(localize(Path(a.input), Path(a.output), Path(a.model), folds=a.folds, device=a.device,
                            save_heatmaps=a.save_heatmaps, margin_mm=Path(a.margins) if a.margins else a.margin,
                            tau=a.tau, readout=a.readout, checkpoint=a.checkpoint))


def register(sub) -> None:
    s = sub.add_parser("plan-localizer", help="add the 3d_loc configuration to nnUNetPlans.json")
    s.add_argument("-d", "--dataset-id", type=int, required=True)
    s.add_argument("--spacing", type=float, default=3.0, help="isotropic spacing in mm (default 3)")
    s.add_argument("--sigma2", type=float, default=150.0, help="heat-map variance in mm^2 (default 150)")
    s.add_argument("--fg-weight", type=float, default=0.0,
                   help="loss weight 1 + a*target on blob voxels; 0 (default) is the paper's plain L2")
    s.add_argument("-np", "--num-processes", type=int, default=2)
    s.add_argument("-c", "--configuration", default="3d_loc", help="configuration name (default 3d_loc)")
    s.add_argument("--base-features", type=int, default=32,
                   help="features of the first U-Net stage, doubling per stage up to 10x (default 32, nnU-Net's)")
    s.set_defaults(func=_plan_localizer)

    s = sub.add_parser("split", help="nnU-Net's seeded 5-fold split (splits_final.json), written once before "
                                     "folds train side by side")
    s.add_argument("-d", "--dataset-id", type=int, required=True)
    s.add_argument("-k", "--folds", type=int, default=5)
    s.set_defaults(func=_split)

    s = sub.add_parser("localize", help="CT(s) -> {case}_boxes.json with a trained localizer")
    s.add_argument("-i", "--input", help="CT file or folder")
    s.add_argument("-o", "--output", required=True)
    s.add_argument("-m", "--model", help="results folder of the localizer (…__3d_loc)")
    s.add_argument("-f", "--folds", nargs="+", help="folds to ensemble (default: all trained); with "
                   "--cross-validation, the folds whose validation cases get boxes (default: every fold)")
    s.add_argument("--device", default="cpu")
    s.add_argument("--readout", choices=READOUTS, default=DEFAULT_READOUT,
                   help="centroid of the region above tau: bounding-box mid-point (the paper's) or heat-map "
                        f"weighted mean (default {DEFAULT_READOUT})")
    s.add_argument("-chk", "--checkpoint", default="checkpoint_final.pth",
                   help="checkpoint file of each fold (default checkpoint_final.pth)")
    s.add_argument("--save-heatmaps", action="store_true", help="also write heat maps on the original grid")
    s.add_argument("--margin", type=float, default=10.0, help="margin v in mm on every side (default 10)")
    s.add_argument("--margins", help="margins.json from --cross-validation (per-organ margins)")
    s.add_argument("--tau", type=float, default=0.1, help="detection threshold (default 0.1)")
    s.add_argument("--cross-validation", action="store_true",
                   help="out-of-fold boxes for every training case of -d, each from the fold that did not train on it")
    s.add_argument("--keep-far-misses", action="store_true",
                   help="with --cross-validation, size the margins to hold far misses too (boxes beyond Tukey's "
                        "far-out fence of the organ's centroid errors, at least 20 mm; default: left out and listed)")
    s.add_argument("-d", "--dataset-id", type=int)
    s.add_argument("-tr", "--trainer", default="nnUNetTrainerOARHeatmap")
    s.add_argument("-p", "--plans", default="nnUNetPlans")
    s.add_argument("-c", "--configuration", default="3d_loc")
    s.set_defaults(func=_localize)
