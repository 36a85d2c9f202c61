"""``nnunet_oar``: one command with subcommands, like git. Each subcommand parses its arguments and
calls one library function; errors in the user's input are printed as one line naming the file."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import List, Optional

from nnunet_oar.io import InputError, read_json
from nnunet_oar.localization.boxes import DEFAULT_READOUT, READOUTS


def _phantom(a):
    from nnunet_oar.phantom import write_phantoms
    stems = write_phantoms(Path(a.output), a.num, seed=a.seed, scale=a.scale, organs=a.organs)
    print(f"wrote {len(stems)} phantoms to {a.output}")


def _convert_visceral(a):
    from nnunet_oar.conversion.visceral import convert_visceral
    out = convert_visceral(Path(a.input), a.dataset_id, modality=a.modality, organs=a.organs,
                           resample_masks=a.resample_masks)
    print(f"wrote {out}")


def _convert_openkbp(a):
    from nnunet_oar.conversion.openkbp import convert_openkbp
    out = convert_openkbp(Path(a.input), a.dataset_id, organs=a.organs)
    print(f"wrote {out}")


def _trainer_path(a):
    from nnunet_oar.paths import trainer_path
    print(trainer_path())


def _plan_localizer(a):
    from nnunet_oar.localization.plans import plan_localizer
    plans = plan_localizer(a.dataset_id, a.spacing, a.sigma2, a.num_processes, fg_weight=a.fg_weight,
                           configuration=a.configuration)
    print(f"added {a.configuration} to {plans}")


def _margins(a):
    """``--margin`` (one value, mm) or ``--margins margins.json`` (per organ, from cross-validation)."""
    if a.margins:
        from nnunet_oar.localization.localize import read_margins
        return read_margins(Path(a.margins))
    return a.margin


def _localize(a):
    from nnunet_oar.localization.cross_validation import localize_cross_validation
    from nnunet_oar.localization.localize import localize
    if a.cross_validation:
        if a.dataset_id is None:
            raise InputError("--cross-validation needs -d DATASET_ID")
        s = localize_cross_validation(a.dataset_id, Path(a.output), a.trainer, a.plans, a.configuration, a.device,
                                      a.tau, a.readout, a.folds, checkpoint=a.checkpoint)
        for organ, m in s["calibrated_margins"].items():
            print(f"{organ}: margin {m['margin_mm']:.0f} mm holds {m['containment']:.3f} of its voxels")
        return
    if a.input is None or a.model is None:
        raise InputError("localize needs -i INPUT and -m MODEL_FOLDER (or --cross-validation -d ID)")
    margin = Path(a.margins) if a.margins else a.margin
    errors = localize(Path(a.input), Path(a.output), Path(a.model), a.folds, a.device, a.save_heatmaps, margin,
                      a.tau, readout=a.readout, checkpoint=a.checkpoint)
    if errors:
        raise InputError(f"{len(errors)} input(s) failed: " + "; ".join(errors.values()))


def _crop_rois(a):
    from nnunet_oar.segmentation.crops import crop_rois
    reports = crop_rois(a.dataset_id, a.first_id, Path(a.boxes) if a.boxes else None, a.organs,
                        a.boxes_from_labels, a.margin, a.shift, a.seed)
    for organ, r in reports.items():
        print(f"Dataset{r['dataset_id']:03d} {organ}: {r['cases']} crops, {len(r['skipped'])} skipped, "
              f"{len(r['cut'])} cut")


def _plan_organs(a):
    from nnunet_oar.segmentation.planning import plan_organs
    ids = plan_organs(a.first_id, None if a.spacing <= 0 else a.spacing, a.num_processes)
    print("planned and preprocessed 3d_fullres for data sets " + ", ".join(map(str, ids)))


def _merge(a):
    from nnunet_oar.segmentation.merge import merge_folders
    print(f"merged {len(merge_folders(a.input, Path(a.output)))} cases into {a.output}")


def _export_models(a):
    from nnunet_oar.models import export_models
    from nnunet_oar.segmentation.planning import organ_dataset_ids_from
    margin = _margins(a)
    ids = a.organ_ids or organ_dataset_ids_from(a.first_id)
    out = export_models(Path(a.output), a.localizer_id, ids, a.localizer_trainer, a.organ_trainer, margins=margin,
                        tau=a.tau, readout=a.readout)
    print(f"wrote {out}")


def _predict(a):
    from nnunet_oar.pipeline import predict
    errors = predict(Path(a.input), Path(a.output), Path(a.models), a.folds, a.device, a.organs, not a.disable_tta,
                     a.step_size, a.series_uid, a.rtstruct, a.dicom_seg, a.preview, a.boxes, a.roi_names)
    if errors:
        raise InputError(f"{len(errors)} input(s) failed: " + "; ".join(errors.values()))


def _labels(path: str) -> dict:
    """The ``labels`` of a dataset.json or a ``{case}.json``."""
    content = read_json(path, "labels file")
    if not isinstance(content, dict) or not isinstance(content.get("labels"), dict):
        raise InputError(f"{path}: no 'labels' mapping (expected nnU-Net's dataset.json or a {{case}}.json)")
    return content["labels"]


def _reference_boxes(a):
    from nnunet_oar.pipeline import write_reference_boxes
    labels = _labels(a.labels)
    n = write_reference_boxes(Path(a.reference), labels, Path(a.models), Path(a.output), a.margin)
    print(f"wrote {n} reference box files to {a.output}")


def _export(a):
    from nnunet_oar.export import export_label_map
    names = _labels(a.labels) if a.labels else None
    written = export_label_map(Path(a.input), Path(a.ct), Path(a.output), a.series_uid, names, a.rtstruct,
                               a.dicom_seg, a.preview, a.roi_names)
    print("wrote " + ", ".join(str(p) for p in written.values()))


def _ignore_label(a):
    from nnunet_oar.conversion.ignore import with_ignore_label
    print(f"wrote {with_ignore_label(a.dataset_id, a.target_id, a.body_hu)}")


def _evaluate(a):
    from nnunet_oar.evaluation import evaluate_folders, write_metrics
    annotations = read_json(Path(a.annotations)) if a.annotations else None
    ref_labels = _labels(a.labels) if a.labels else None
    result = evaluate_folders(Path(a.reference), Path(a.prediction), annotations, a.tolerance_mm, ref_labels)
    write_metrics(result, Path(a.output))
    for organ, m in result["per_organ"].items():
        d, h, n = m["dice"], m["hd95_mm"], m["nsd"]
        print(f"{organ:16s} Dice {d['mean'] or 0:.3f} ± {d['std'] or 0:.3f}  HD95 {h['mean'] or 0:6.1f} mm  "
              f"NSD {n['mean'] or 0:.3f}  (n={d['n']})")
    o = result["overall"]["dice"]
    print(f"overall Dice {o['mean'] or 0:.3f} ± {o['std'] or 0:.3f} over {o['n']} (case, organ) pairs; "
          f"wrote {a.output} and {Path(a.output).with_suffix('.csv')}")


def _benchmark(a):
    from nnunet_oar.benchmark import run_benchmark, settings_for
    s = settings_for(a.dataset, a.budget)
    s.device = a.device
    if a.test_id:
        s.test_id = a.test_id
    if a.phantoms:
        s.phantoms.update(train=a.phantoms[0], test=a.phantoms[1])
    if a.organs:
        s.organs = a.organs
    if a.openkbp:
        s.openkbp = a.openkbp
    if a.organ_boxes:
        s.organ_boxes = a.organ_boxes
    r = run_benchmark(Path(a.work), s, a.jobs)
    for method, o in r["overall"].items():
        print(f"{method:10s} Dice {o['dice']['mean']:.3f} ± {o['dice']['std']:.3f}")
    print(f"see {Path(a.work) / 'report.md'}")


def _demo(a):
    from nnunet_oar.demo import run_demo
    r = run_demo(Path(a.output), a.train, a.test, a.seed)
    for method, o in r["overall"].items():
        print(f"{method:10s} Dice {o['dice']['mean']:.3f} ± {o['dice']['std']:.3f}")
    print(f"see {Path(a.output) / 'report.md'} and {Path(a.output) / 'preview.png'}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nnunet_oar", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("phantom", help="write synthetic CT phantoms in VISCERAL layout")
    s.add_argument("-o", "--output", required=True)
    s.add_argument("-n", "--num", type=int, default=10)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--scale", type=float, default=0.5, help="anatomy size relative to an adult (default 0.5)")
    s.add_argument("--organs", nargs="+", help="structures to annotate (default: all painted)")
    s.set_defaults(func=_phantom)

    s = sub.add_parser("convert-visceral", help="VISCERAL folder -> nnU-Net raw data set")
    add_visceral_args(s)
    s.set_defaults(func=_convert_visceral)

    s = sub.add_parser("convert-openkbp", help="OpenKBP folder or tarball -> nnU-Net raw data set")
    add_openkbp_args(s)
    s.set_defaults(func=_convert_openkbp)

    s = sub.add_parser("plan-localizer", help="add the 3d_loc configuration to nnUNetPlans.json")
    s.add_argument("-d", "--dataset-id", type=int, required=True)
    s.add_argument("--spacing", type=float, default=3.0, help="isotropic spacing in mm (default 3)")
    s.add_argument("--sigma2", type=float, default=150.0, help="heat-map variance in mm^2 (default 150)")
    s.add_argument("--fg-weight", type=float, default=0.0,
                   help="loss weight 1 + a*target on blob voxels; 0 (default) is the paper's plain L2")
    s.add_argument("-np", "--num-processes", type=int, default=2)
    s.add_argument("-c", "--configuration", default="3d_loc", help="configuration name (default 3d_loc)")
    s.set_defaults(func=_plan_localizer)

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
    s.add_argument("-d", "--dataset-id", type=int)
    s.add_argument("-tr", "--trainer", default="nnUNetTrainerOARHeatmap")
    s.add_argument("-p", "--plans", default="nnUNetPlans")
    s.add_argument("-c", "--configuration", default="3d_loc")
    s.set_defaults(func=_localize)

    s = sub.add_parser("crop-rois", help="one cropped nnU-Net data set per organ")
    add_crop_args(s)
    s.set_defaults(func=_crop_rois)

    s = sub.add_parser("plan-organs", help="nnU-Net planning + 3d_fullres preprocessing of every organ data set")
    s.add_argument("--first-id", type=int, required=True)
    s.add_argument("--spacing", type=float, default=1.0,
                   help="isotropic target spacing in mm (default 1, the paper's); 0 keeps nnU-Net's median spacing")
    s.add_argument("-np", "--num-processes", type=int, default=2)
    s.set_defaults(func=_plan_organs)

    s = sub.add_parser("merge", help="merge per-organ crop predictions (nnU-Net output folders) into label maps")
    s.add_argument("-i", "--input", nargs="+", required=True,
                   help="one folder per organ: nnUNetv2_predict --save_probabilities output + crops.json")
    s.add_argument("-o", "--output", required=True)
    s.set_defaults(func=_merge)

    s = sub.add_parser("export-models", help="copy trained networks into a models folder with models.json")
    s.add_argument("-o", "--output", required=True)
    s.add_argument("--localizer-id", type=int, required=True)
    s.add_argument("--first-id", type=int, help="first organ data set id (the following ones are found)")
    s.add_argument("--organ-ids", type=int, nargs="+")
    s.add_argument("--localizer-trainer", default="nnUNetTrainerOARHeatmap")
    s.add_argument("--organ-trainer", default="nnUNetTrainer")
    s.add_argument("--margin", type=float, default=10.0)
    s.add_argument("--margins", help="per-organ margins.json from localize --cross-validation")
    s.add_argument("--tau", type=float, default=0.1, help="the localizer's detection threshold (default 0.1)")
    s.add_argument("--readout", choices=READOUTS, default=DEFAULT_READOUT, help="the localizer's centroid read-out")
    s.set_defaults(func=_export_models)

    s = sub.add_parser("predict", help="CT file, folder or DICOM series -> organ label maps (localize, crop, "
                                       "segment, merge)")
    s.add_argument("-i", "--input", required=True, help="CT image file, folder of images, or DICOM CT series folder")
    s.add_argument("-o", "--output", required=True)
    s.add_argument("-m", "--models", required=True, help="models folder (models.json)")
    s.add_argument("-f", "--folds", nargs="+")
    s.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    s.add_argument("--organs", nargs="+")
    s.add_argument("--disable-tta", action="store_true", help="no test-time mirroring in the organ networks")
    s.add_argument("--step-size", type=float, default=0.5,
                   help="sliding-window step of the organ networks, fraction of the patch (nnU-Net's default 0.5)")
    s.add_argument("--boxes", help="folder of {case}_boxes.json to use instead of the localizer "
                                   "(e.g. from `nnunet_oar reference-boxes`)")
    add_clinical_args(s)
    s.set_defaults(func=_predict)

    s = sub.add_parser("reference-boxes", help="the method's boxes centred on reference centroids (oracle "
                                               "localization, to measure the organ stage alone)")
    s.add_argument("-r", "--reference", required=True, help="folder of reference label maps ({case}.nii.gz)")
    s.add_argument("--labels", required=True, help="dataset.json naming the reference labels")
    s.add_argument("-m", "--models", required=True, help="models folder (box sizes and margin of its localizer)")
    s.add_argument("--margin", type=float, help="margin v in mm (default: the models folder's)")
    s.add_argument("-o", "--output", required=True)
    s.set_defaults(func=_reference_boxes)

    s = sub.add_parser("export", help="existing label map -> statistics, RTSTRUCT, DICOM SEG, preview")
    s.add_argument("-i", "--input", required=True, help="label map ({case}.nii.gz; names from {case}.json beside it)")
    s.add_argument("--ct", required=True, help="the CT it belongs to: DICOM series folder (for RTSTRUCT/SEG) or image")
    s.add_argument("-o", "--output", required=True)
    s.add_argument("--labels", help="dataset.json or {case}.json naming the labels")
    add_clinical_args(s)
    s.set_defaults(func=_export)

    s = sub.add_parser("ignore-label", help="partially annotated data set -> copy with nnU-Net's ignore label "
                                           "(for a single multi-organ network)")
    s.add_argument("-d", "--dataset-id", type=int, required=True, help="source raw data set (with annotations.json)")
    s.add_argument("-t", "--target-id", type=int, required=True, help="id of the data set to write")
    s.add_argument("--body-hu", type=float, default=-500.0,
                   help="voxels above this HU are body; in-body background of partial cases is ignored (default -500)")
    s.set_defaults(func=_ignore_label)

    s = sub.add_parser("evaluate", help="Dice, HD95, NSD, volume difference (+ localization) per case and organ")
    s.add_argument("-r", "--reference", required=True, help="folder of reference label maps")
    s.add_argument("-p", "--prediction", required=True, help="folder of predicted label maps (same names and grids)")
    s.add_argument("--annotations", help="annotations.json: organs annotated per case (others are skipped)")
    s.add_argument("--labels", help="dataset.json naming the reference labels (default: beside or above -r)")
    s.add_argument("--tolerance-mm", type=float, default=2.0, help="NSD tolerance in mm (default 2)")
    s.add_argument("-o", "--output", required=True,
                   help="metrics JSON; NAME.csv (per case and organ) and NAME_summary.csv are written beside it")
    s.set_defaults(func=_evaluate)

    s = sub.add_parser("benchmark", help="train + score the single-network baseline and the two-stage method")
    s.add_argument("--dataset", required=True, help="phantoms, openkbp, or the id of a converted raw data set "
                                                    "(held-out cases: id + 1, or --test-id)")
    s.add_argument("--work", required=True, help="work folder (own nnU-Net folders); a rerun resumes")
    s.add_argument("--budget", default="cpu", choices=["tiny", "demo", "cpu", "gpu", "full"])
    s.add_argument("--test-id", type=int)
    s.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    s.add_argument("--jobs", type=int, default=1,
                   help="trainings at a time, sharing the data-augmentation workers (default 1; a GPU fits several)")
    s.add_argument("--phantoms", type=int, nargs=2, metavar=("TRAIN", "TEST"),
                   help="number of training and held-out phantoms (default 30 3)")
    s.add_argument("--organs", nargs="+", help="organs to train and score (default: the data set's)")
    s.add_argument("--openkbp", help="folder with openkbp-train.tar.xz and openkbp-validation.tar.xz "
                                     "(needed, except in the project's workspace checkout)")
    s.add_argument("--organ-boxes", choices=["oof", "reference"],
                   help="the organ networks' training crops: out-of-fold localizer boxes with calibrated margins "
                        "(oof, the paper's; default) or shifted reference boxes (reference)")
    s.set_defaults(func=_benchmark)

    s = sub.add_parser("demo", help="benchmark on phantoms: two-stage vs one network, trained briefly on CPU")
    s.add_argument("-o", "--output", required=True)
    s.add_argument("--train", type=int, default=20, help="training phantoms (default 20)")
    s.add_argument("--test", type=int, default=3, help="held-out phantoms (default 3)")
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=_demo)

    s = sub.add_parser("trainer-path", help="print the folder to put in nnUNet_extTrainer")
    s.set_defaults(func=_trainer_path)
    return p


def add_clinical_args(s: argparse.ArgumentParser) -> None:
    s.add_argument("--series-uid", help="SeriesInstanceUID, when the DICOM folder holds several series")
    s.add_argument("--rtstruct", action="store_true", help="write {case}_rtstruct.dcm (DICOM input)")
    s.add_argument("--dicom-seg", action="store_true", help="write {case}_seg.dcm (DICOM input)")
    s.add_argument("--preview", action="store_true", help="write {case}_preview.png (three planes per found organ)")
    s.add_argument("--roi-names", choices=("tg263", "catalogue"), default="tg263",
                   help="ROI and segment names in RTSTRUCT / SEG: TG-263 (Kidney_L, the default) or the catalogue's "
                        "(kidney_left)")


def add_visceral_args(s: argparse.ArgumentParser) -> None:
    s.add_argument("-i", "--input", required=True, help="VISCERAL folder")
    s.add_argument("-d", "--dataset-id", type=int, required=True)
    s.add_argument("--modality", default="CTce_ThAb", help="{modality}_{region} to convert (default CTce_ThAb)")
    s.add_argument("--organs", nargs="+", help="canonical names to keep (default: all found)")
    s.add_argument("--resample-masks", action="store_true",
                   help="resample masks whose grid differs from their volume instead of failing")


def add_openkbp_args(s: argparse.ArgumentParser) -> None:
    s.add_argument("-i", "--input", required=True, help="folder of pt_* folders, or the .tar.xz")
    s.add_argument("-d", "--dataset-id", type=int, required=True)
    s.add_argument("--organs", nargs="+", help="canonical names to keep (default: all seven)")


def add_crop_args(s: argparse.ArgumentParser) -> None:
    s.add_argument("-d", "--dataset-id", type=int, required=True, help="source (full image) data set id")
    s.add_argument("--boxes", help="folder of out-of-fold {case}_boxes.json (localize --cross-validation)")
    s.add_argument("--boxes-from-labels", action="store_true", help="boxes from the reference labels instead")
    s.add_argument("--organs", nargs="+")
    s.add_argument("--first-id", type=int, required=True, help="id of the first organ data set")
    s.add_argument("--margin", type=float, default=10.0, help="margin in mm around label boxes (default 10)")
    s.add_argument("--shift", type=float, default=0.0, help="random shift of label boxes, mm per axis")
    s.add_argument("--seed", type=int, default=0)


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (InputError, OSError) as e:         # anything else is a bug: its traceback shows
        print(f"nnunet_oar {args.command}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
