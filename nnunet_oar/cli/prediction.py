"""Prediction: the portable models folder, image to labels, and clinical files (RTSTRUCT, SEG, preview)."""
from __future__ import annotations

import argparse
from pathlib import Path

from nnunet_oar.cli.common import fail_on_errors, labels_file
from nnunet_oar.localization.boxes import DEFAULT_READOUT, READOUTS
from nnunet_oar.organs import ROI_NAME_STYLES
from nnunet_oar.segmentation.presets import GRID_FACTOR_FASTEST, PRESETS, TILES


def _export_models(a) -> None:
    from nnunet_oar.models import export_models
    from nnunet_oar.segmentation.planning import organ_dataset_ids_from
    out = export_models(Path(a.output), a.localizer_id, a.organ_ids or organ_dataset_ids_from(a.first_id),
                        localizer_trainer=a.localizer_trainer, organ_trainer=a.organ_trainer,
                        margins=Path(a.margins) if a.margins else a.margin, tau=a.tau, readout=a.readout,
                        organ_configuration=a.configuration, organ_plans=a.plans, organ_checkpoint=a.checkpoint)
    print(f"wrote {out}")
    if a.zip:
        from nnunet_oar.models import write_package
        print(f"wrote {write_package(out, Path(a.zip))}")


def _install_models(a) -> None:
    from nnunet_oar.models import install_package
    print(f"installed {install_package(Path(a.package), Path(a.output))}")


def _predict(a) -> None:
    from nnunet_oar.pipeline import predict
    preset = PRESETS[a.preset]
    fail_on_errors(predict(Path(a.input), Path(a.output), Path(a.models), folds=a.folds, device=a.device,
                           organs=a.organs, tta=preset["tta"] and not a.disable_tta, step_size=a.step_size,
                           series_uid=a.series_uid, tile=a.tile or preset["tile"], one_fold=preset["one_fold"],
                           grid_factor=preset["grid_factor"] if a.grid_factor is None else a.grid_factor,
                           largest_component=a.largest_component, keep_networks=a.keep_networks or None,
                           rtstruct=a.rtstruct, dicom_seg=a.dicom_seg, preview=a.preview,
                           boxes_dir=Path(a.boxes) if a.boxes else None, roi_names=a.roi_names))


def _reference_boxes(a) -> None:
    from nnunet_oar.pipeline import write_reference_boxes
    n = write_reference_boxes(Path(a.reference), labels_file(a.labels), Path(a.models), Path(a.output),
                              margin_mm=a.margin)
    print(f"wrote {n} reference box files to {a.output}")


def _export(a) -> None:
    from nnunet_oar.export import export_label_map
    written = export_label_map(Path(a.input), Path(a.ct), Path(a.output), series_uid=a.series_uid,
                               label_names=labels_file(a.labels) if a.labels else None, rtstruct=a.rtstruct,
                               dicom_seg=a.dicom_seg, preview=a.preview, roi_names=a.roi_names)
    print("wrote " + ", ".join(str(p) for p in written.values()))


def add_clinical_args(s: argparse.ArgumentParser) -> None:
    s.add_argument("--series-uid", help="SeriesInstanceUID, when the DICOM folder holds several series")
    s.add_argument("--rtstruct", action="store_true", help="write {case}_rtstruct.dcm (DICOM input)")
    s.add_argument("--dicom-seg", action="store_true", help="write {case}_seg.dcm (DICOM input)")
    s.add_argument("--preview", action="store_true", help="write {case}_preview.png (three planes per found organ)")
    s.add_argument("--roi-names", choices=ROI_NAME_STYLES, default=ROI_NAME_STYLES[0],
                   help="ROI and segment names in RTSTRUCT / SEG: TG-263 (Kidney_L, the default) or the catalogue's "
                        "(kidney_left)")


def register(sub) -> None:
    s = sub.add_parser("export-models", help="copy trained networks into a models folder with models.json")
    s.add_argument("-o", "--output", required=True)
    s.add_argument("--localizer-id", type=int, required=True)
    s.add_argument("--first-id", type=int, help="first organ data set id (the following ones are found)")
    s.add_argument("--organ-ids", type=int, nargs="+")
    s.add_argument("--localizer-trainer", default="nnUNetTrainerOARHeatmap")
    s.add_argument("-tr", "--organ-trainer", default="nnUNetTrainer", help="the organ networks' trainer (default nnUNetTrainer)")
    s.add_argument("-c", "--configuration", default="3d_fullres",
                   help="the organ networks' nnU-Net configuration (default 3d_fullres; 2d, 3d_lowres, ...)")
    s.add_argument("-p", "--plans", help="the organ networks' plans identifier (default nnUNetPlans; e.g. "
                   "nnUNetResEncUNetMPlans)")
    s.add_argument("--checkpoint", default="checkpoint_final.pth", choices=["checkpoint_final.pth", "checkpoint_best.pth"],
                   help="the organ networks' checkpoint (default checkpoint_final.pth)")
    s.add_argument("--margin", type=float, default=10.0)
    s.add_argument("--margins", help="per-organ margins.json from localize --cross-validation")
    s.add_argument("--tau", type=float, default=0.1, help="the localizer's detection threshold (default 0.1)")
    s.add_argument("--readout", choices=READOUTS, default=DEFAULT_READOUT, help="the localizer's centroid read-out")
    s.add_argument("--zip", help="also write the models folder as one zip (checksums, versions, catalogue)")
    s.set_defaults(func=_export_models)

    s = sub.add_parser("install-models", help="unpack a models zip (from export-models --zip) after checking it")
    s.add_argument("package", help="the models zip")
    s.add_argument("-o", "--output", required=True, help="models folder to write (replaced)")
    s.set_defaults(func=_install_models)

    s = sub.add_parser("predict", help="CT file, folder or DICOM series -> organ label maps (localize, crop, "
                                       "segment, merge)")
    s.add_argument("-i", "--input", required=True, help="CT image file, folder of images, or DICOM CT series folder")
    s.add_argument("-o", "--output", required=True)
    s.add_argument("-m", "--models", required=True, help="models folder (models.json) or models zip (export-models --zip)")
    s.add_argument("-f", "--folds", nargs="+")
    s.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    s.add_argument("--organs", nargs="+")
    s.add_argument("--disable-tta", action="store_true", help="no test-time mirroring in the organ networks")
    s.add_argument("--preset", choices=list(PRESETS), default="accurate",
                   help="accurate: every fold of each network, test-time mirroring (nnU-Net's defaults); fast: "
                        "each network's first fold, no mirroring; fastest: fast with --tile crop and the organ "
                        f"networks on a {GRID_FACTOR_FASTEST:g}x coarser grid (costs Dice). --folds, --disable-tta, "
                        "--tile and --grid-factor override it")
    s.add_argument("--grid-factor", type=float, metavar="F",
                   help="run the organ networks on a grid F >= 1 times coarser than they were trained on (their "
                        "patch keeps its size in mm, rounded up to the network's stride: up to F^3 fewer voxels; "
                        f"default: the preset's, 1 or {GRID_FACTOR_FASTEST:g})")
    s.add_argument("--tile", choices=list(TILES),
                   help="organ networks: nnU-Net's sliding window with the trained patch (the default but for "
                        "--preset fastest), or each crop with its own tile where that needs fewer network passes, "
                        "holding at most the trained patch's voxels (so no more memory)")
    s.add_argument("--largest-component", nargs="+", default=[], metavar="ORGAN",
                   help="keep only the largest connected component of these organs (where their network has "
                   "no nnU-Net postprocessing.pkl, which is always applied)")
    s.add_argument("--keep-networks", type=int, default=1, metavar="N",
                   help="organ networks kept loaded at once (default 1: least memory, each loaded when its crop "
                        "comes; 0: all, fastest over many cases)")
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
