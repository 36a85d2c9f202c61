"""The localizer on real head-and-neck CT (OpenKBP): train on one tarball, score on the other.

    python benchmarks/localization_openkbp.py --openkbp DIR --work WORK [--device cpu]

``DIR`` holds ``openkbp-train.tar.xz`` and ``openkbp-validation.tar.xz`` (or any second split in the same
layout). Every step is a real command, and a rerun resumes after the last finished step:

1. ``nnunet_oar convert-openkbp`` -> ``WORK/nnUNet_raw/Dataset100_OpenKBP`` (train) and
   ``Dataset101_OpenKBP`` (held out);
2. ``nnunet_oar plan-localizer`` + ``nnUNetv2_preprocess -c 3d_loc`` (the recommended CPU settings:
   8 mm grid, sigma^2 = 150 mm^2, foreground weight 20);
3. ``nnUNetv2_train 100 3d_loc 0 -tr nnUNetTrainerOARHeatmap_cpu`` (fold 0 of nnU-Net's 5-fold split:
   136 patients; the other 34 are the calibration cases);
4. ``nnunet_oar localize --cross-validation --folds 0`` on those 34 -> ``WORK/margins.json`` (per organ,
   the smallest margin that holds 99 % of its voxels out of fold, failures left out and listed);
5. ``nnunet_oar localize -m MODEL --margins WORK/margins.json`` on the held-out split (with each centroid
   read-out), scored against its contours (organs that were not contoured are skipped), beside the
   **constant guess**: each organ's mean position relative to the image centre over the trained fold's
   patients, boxed the same way; and, for the same boxes at margins of 10-60 mm, the lowest containment
   on the calibration fold and on the held-out patients (what a per-patient floor would cost).

Writes the Markdown report (``--out``, default ``docs/results/localization_openkbp.md``) and its JSON beside
it, with the command, the machine and the times.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

from nnunet_oar.localization.boxes import DEFAULT_READOUT, READOUTS
from nnunet_oar.plausibility import volume_fences

REPO = Path(__file__).resolve().parents[1]
TRAINER = "nnUNetTrainerOARHeatmap_cpu"


def run(cmd, log: Path, timeout_s: float = None) -> None:
    """Run one command, its output appended to ``log``; after ``timeout_s`` its whole process group is
    stopped (nnU-Net's data-loading workers included) and the step counts as done."""
    exe = Path(sys.executable).parent / cmd[0]
    cmd = [str(exe) if exe.exists() else cmd[0], *cmd[1:]]
    with open(log, "a") as fh:
        fh.write(f"\n$ {' '.join(cmd)}\n")
        fh.flush()
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait()
            fh.write(f"\n[stopped after {timeout_s:.0f} s]\n")
            return
    if rc:
        raise subprocess.CalledProcessError(rc, cmd)


def step(name: str, work: Path, times: dict, fn) -> None:
    """Run ``fn`` once: a finished step leaves ``WORK/steps/{name}.json`` (its wall time)."""
    rec = work / "steps" / f"{name}.json"
    if rec.is_file():
        times[name] = json.loads(rec.read_text())["wall_s"]
        print(f"[{name}] done before ({times[name]:.0f} s)", flush=True)
        return
    print(f"[{name}] ...", flush=True)
    t = time.perf_counter()
    fn()
    times[name] = time.perf_counter() - t
    rec.parent.mkdir(parents=True, exist_ok=True)
    rec.write_text(json.dumps({"wall_s": times[name]}))
    print(f"[{name}] {times[name]:.0f} s", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--openkbp", required=True, help="folder with openkbp-train.tar.xz and openkbp-validation.tar.xz")
    ap.add_argument("--work", required=True)
    ap.add_argument("--trainer", default=TRAINER)
    ap.add_argument("--spacing", type=float, default=8.0, help="localizer grid, mm (default 8)")
    ap.add_argument("--sigma2", type=float, default=150.0, help="heat-map variance, mm^2 (default 150)")
    ap.add_argument("--fg-weight", type=float, default=20.0, help="loss foreground weight (default 20)")
    ap.add_argument("--base-features", type=int, default=32,
                    help="features of the localizer's first stage, doubling up to 10x (default 32, nnU-Net's)")
    ap.add_argument("--fold", default="0", help="the trained fold; its validation cases calibrate the margins")
    ap.add_argument("-c", "--configuration", default="3d_loc", help="name of the localizer's configuration")
    ap.add_argument("--max-train-s", type=float, help="stop the training after this many seconds and score its "
                    "last epoch (a time-capped run; the report says so)")
    ap.add_argument("--stop-after-preprocessing", action="store_true")
    ap.add_argument("--stop-after-training", action="store_true", help="a rerun without it scores the model")
    ap.add_argument("--readouts", nargs="+", choices=READOUTS, default=list(READOUTS),
                    help="centroid read-outs to score (default all; the first one leads the report)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--train-split", default="openkbp-train", help="file stem of the training tarball or folder")
    ap.add_argument("--test-split", default="openkbp-validation", help="file stem of the held-out tarball or folder")
    ap.add_argument("--out", default=str(REPO / "docs" / "results" / "localization_openkbp.md"))
    a = ap.parse_args()

    from nnunet_oar.paths import use_nnunet_folders
    work = Path(a.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    use_nnunet_folders(work)
    log, times = work / "log.txt", {}
    src = Path(a.openkbp)

    def source(stem: str) -> str:
        for p in (src / f"{stem}.tar.xz", src / stem):
            if p.exists():
                return str(p)
        raise SystemExit(f"{src}: neither {stem}.tar.xz nor {stem}/")

    step("convert", work, times, lambda: (
        run(["nnunet_oar", "convert-openkbp", "-i", source(a.train_split), "-d", "100"], log),
        run(["nnunet_oar", "convert-openkbp", "-i", source(a.test_split), "-d", "101"], log)))
    step(f"plan_preprocess_{a.configuration}", work, times, lambda: (
        run(["nnunet_oar", "plan-localizer", "-d", "100", "-c", a.configuration, "--spacing", str(a.spacing),
             "--sigma2", str(a.sigma2), "--fg-weight", str(a.fg_weight), "--base-features", str(a.base_features),
             "-np", str(os.cpu_count())], log),
        run(["nnUNetv2_preprocess", "-d", "100", "-c", a.configuration, "-np", str(os.cpu_count())], log)))
    if a.stop_after_preprocessing:
        return
    tag = f"{a.trainer}__{a.configuration}"       # several localizers can share one work folder
    model = work / "nnUNet_results" / "Dataset100_OpenKBP" / f"{a.trainer}__nnUNetPlans__{a.configuration}"
    fold_dir = model / f"fold_{a.fold}"
    resume = ["--c"] if (fold_dir / "checkpoint_latest.pth").is_file() else []
    # a finished training is never started over (nnUNetv2_train without --c would)
    step(f"train_{tag}", work, times, lambda: None if (fold_dir / "checkpoint_final.pth").is_file() else run(
        ["nnUNetv2_train", "100", a.configuration, a.fold, "-tr", a.trainer, "-device", a.device, *resume], log,
        a.max_train_s))
    if a.stop_after_training:
        return
    # a training cut by --max-train-s is scored from its last epoch (and says so)
    checkpoint = "checkpoint_final.pth" if (fold_dir / "checkpoint_final.pth").is_file() else "checkpoint_latest.pth"
    if not (fold_dir / checkpoint).is_file():
        raise SystemExit(f"{fold_dir}: no checkpoint (the training stopped before its first epoch ended)")
    chk = ["-chk", checkpoint]
    step(f"margins_{tag}", work, times, lambda: run(
        ["nnunet_oar", "localize", "--cross-validation", "-d", "100", "-tr", a.trainer, "-c", a.configuration,
         "--folds", a.fold, "-o", str(work / tag / "calibration"), "--device", a.device, *chk], log))
    margins = work / tag / "margins.json"
    margins.write_bytes((work / tag / "calibration" / "margins.json").read_bytes())
    test = work / "nnUNet_raw" / "Dataset101_OpenKBP"
    for readout in a.readouts:        # the paper's read-out and the weighted one (the default), side by side
        step(f"localize_test_{readout}_{tag}", work, times, lambda: run(
            ["nnunet_oar", "localize", "-i", str(test / "imagesTr"), "-o", str(work / tag / f"boxes_{readout}"),
             "-m", str(model), "--margins", str(margins), "--readout", readout, "--device", a.device, *chk], log))

    calibration = json.loads((work / tag / "calibration" / "localization_summary.json").read_text())
    result = {"summary": {r: score(test, work / tag / f"boxes_{r}", model, a.fold, margins) for r in a.readouts},
              "margins": json.loads(margins.read_text()), "checkpoint": checkpoint,
              "calibration_positions_moved": calibration.get("positions_moved", []),
              "calibration_offset_xyz_mm": {o: m["centroid_offset_xyz_mm"]["median"]
                                            for o, m in calibration["per_organ"].items() if "centroid_offset_xyz_mm" in m},
              **_checkpoint_facts(fold_dir / checkpoint)}
    lead = DEFAULT_READOUT if DEFAULT_READOUT in a.readouts else a.readouts[0]
    # every contour's volume, as the conversion recorded it; the training contours' fences judge both groups
    volumes = {group: {case: r["volume_ml"] for case, r in json.loads(
        (work / "nnUNet_raw" / dataset / "conversion_report.json").read_text())["cases"].items()}
        for group, dataset in (("training", "Dataset100_OpenKBP"), ("held_out", "Dataset101_OpenKBP"))}
    result["reference_volume_fences"] = volume_fences(volumes["training"], min_cases=1)
    result["below_floor"] = {
        "calibration": below_floor(calibration["per_case"], result["margins"], volumes["training"],
                                   result["reference_volume_fences"]),
        "held_out": below_floor(result["summary"][lead]["per_case"], None, volumes["held_out"],
                                result["reference_volume_fences"])}
    result["margin_sweep"] = margin_sweep(
        {"calibration": (work / tag / "calibration", work / "nnUNet_preprocessed" / "Dataset100_OpenKBP",
                         "gt_segmentations"),
         "held_out": (work / tag / f"boxes_{lead}", test, "labelsTr")}, model, a.fold)
    plans = json.loads((model / "plans.json").read_text())["configurations"][a.configuration]
    result["settings"] = {"trainer": a.trainer, "fold": a.fold, "spacing_mm": a.spacing, "sigma2_mm2": a.sigma2,
                          "fg_weight": a.fg_weight, "patch_size": plans["patch_size"], "device": a.device,
                          "features_per_stage": plans["architecture"]["arch_kwargs"]["features_per_stage"],
                          "parameters": result.pop("parameters"), "configuration": a.configuration,
                          "default_readout": lead}
    result["times_s"] = times
    result["machine"] = f"{os.cpu_count()} CPU cores ({platform.machine()}), torch device {a.device}"
    result["command"] = "python benchmarks/localization_openkbp.py " + " ".join(sys.argv[1:])
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    out.write_text(markdown(result, out.with_suffix(".json").name))
    print(out.read_text())


def score(test: Path, boxes_dir: Path, model: Path, fold: str, margins_file: Path) -> dict:
    """The held-out patients' boxes against their contours, beside the constant guess of the trained fold."""
    import SimpleITK as sitk
    from nnunet_oar.localization.localize import load_box_stats
    from nnunet_oar.localization.margins import read_margins
    from nnunet_oar.localization.report import score_folder, summarize
    labels = json.loads((test / "dataset.json").read_text())["labels"]
    box_stats = load_box_stats(model, [int(fold) if fold.isdigit() else fold])
    import numpy as np
    from nnunet_oar.geometry import centroid_mm
    per_case, per_case_guess, beyond, moved = {}, {}, {}, []
    for case, boxes, label, per_case[case], per_case_guess[case] in score_folder(test, boxes_dir, box_stats,
                                                                                 read_margins(margins_file)):
        ct = sitk.GetArrayFromImage(sitk.ReadImage(str(test / "imagesTr" / f"{case}_0000.nii.gz")))
        beyond[case] = contour_beyond_ct(label, ct, {o: labels[o] for o in per_case[case]})
        for organ, entry in boxes["organs"].items():      # organs moved by anatomical consistency
            if "position_check" in entry:
                move = {"case": case, "organ": organ, "peak": entry["peak"], **entry["position_check"]}
                if organ in per_case[case]:
                    truth = centroid_mm(boxes["image"], label == labels[organ])
                    move["error_mm"] = [float(np.linalg.norm(np.subtract(c, truth))) for c in
                                        (entry["position_check"]["heatmap_centroid_mm"], entry["centroid_mm"])]
                moved.append(move)
    return {**summarize(per_case, per_case_guess), "contour_beyond_ct": beyond, "positions_moved": moved}


SWEEP_MM = (10, 20, 30, 40, 50, 60)
FLOOR = 0.95            # the per-patient containment floor
# the walls of a box in ITK's LPS world, as spill_mm lists them (min x, y, z; max x, y, z)
WALLS = (("right", "anterior", "inferior"), ("left", "posterior", "superior"))


def below_floor(per_case: dict, margins: dict = None, volumes: dict = None, fences: dict = None) -> list:
    """The (patient, organ) pairs whose box holds less than ``FLOOR`` of the contour: containment, centroid
    error and the walls the contour crosses (world mm beyond each, from ``spill_mm``); on the calibration fold,
    whether margin calibration left the pair out as a failure; the contour's volume (mL) and whether it lies
    outside the training contours' fences (``nnunet_oar.plausibility.volume_fences``)."""
    left_out = {(c["case"], organ) for organ, m in (margins or {}).items() for c in m.get("failures", {}).get("cases", [])}
    rows = []
    for case, organs in sorted(per_case.items()):
        for organ, m in organs.items():
            if m.get("containment", 1.0) >= FLOOR:
                continue
            spill = {WALLS[side][axis]: round(mm, 1) for side, key in enumerate(("min", "max"))
                     for axis, mm in enumerate(m.get("spill_mm", {}).get(key, [])) if mm > 0}
            volume = (volumes or {}).get(case, {}).get(organ)
            fence = (fences or {}).get(organ)
            rows.append({"case": case, "organ": organ, "containment": round(m["containment"], 3),
                         "centroid_error_mm": round(m["centroid_error_mm"], 1) if "centroid_error_mm" in m else None,
                         "spill_mm": spill, "left_out": (case, organ) in left_out, "volume_ml": volume,
                         "volume_outside_training": None if volume is None or fence is None else
                         not fence["fences_ml"][0] <= volume <= fence["fences_ml"][1]})
    return rows


def margin_sweep(groups: dict, model: Path, fold: str) -> dict:
    """Per organ, the containment of its boxes at each margin of ``SWEEP_MM`` (same centroids, box sizes and
    learned extents as the boxes files; only the margin varies): the lowest and pooled containment over
    each group's patients, and the boxes' mean volume. What a per-patient containment floor would cost.

    Args:
        groups: ``{name: (boxes folder, data set folder with dataset.json, label subfolder)}``.
    """
    import numpy as np
    import SimpleITK as sitk
    from nnunet_oar.contracts import read_boxes
    from nnunet_oar.io import geometry
    from nnunet_oar.localization.localize import load_box_stats
    from nnunet_oar.localization.margins import inside_counts
    sizes = {o: st["mean_size_mm"] for o, st in load_box_stats(model, [int(fold) if fold.isdigit() else fold]).items()}
    out: dict = {}
    for name, (boxes_dir, dataset, sub) in groups.items():
        dataset_json = json.loads((dataset / "dataset.json").read_text())
        labels, ending = dataset_json["labels"], dataset_json["file_ending"]
        ann = dataset / "annotations.json"
        annotated = json.loads(ann.read_text()) if ann.is_file() else None
        for f in sorted(Path(boxes_dir).glob("*_boxes.json")):
            case = f.name[:-len("_boxes.json")]
            boxes = read_boxes(boxes_dir, case)
            gt = sitk.ReadImage(str(dataset / sub / f"{case}{ending}"))
            label, geom = sitk.GetArrayViewFromImage(gt), geometry(gt)
            for organ, entry in boxes["organs"].items():
                if organ not in labels or (annotated is not None and organ not in annotated.get(case, [])):
                    continue
                mask = label == labels[organ]
                if not mask.any():
                    continue
                acc = out.setdefault(organ, {}).setdefault(name, {"inside": np.zeros(len(SWEEP_MM)), "total": 0,
                                                                  "fractions": [], "volume_ml": []})
                size = entry.get("size_mm", sizes[organ])
                inside = inside_counts(mask, geom, entry["centroid_mm"], size, SWEEP_MM) \
                    if entry["status"] == "found" else np.zeros(len(SWEEP_MM))
                acc["inside"] += inside
                acc["total"] += int(mask.sum())
                acc["fractions"].append(inside / mask.sum())
                acc["volume_ml"].append([float(np.prod(np.add(size, 2 * v))) / 1000 for v in SWEEP_MM])
    return {organ: {"margins_mm": list(SWEEP_MM), **{name: {
        "n": len(acc["fractions"]), "pooled": (acc["inside"] / max(acc["total"], 1)).round(4).tolist(),
        "min": np.min(acc["fractions"], axis=0).round(3).tolist(),
        "mean_box_ml": np.mean(acc["volume_ml"], axis=0).round(0).tolist()} for name, acc in groups_.items()}}
        for organ, groups_ in out.items()}


def contour_beyond_ct(label_zyx, ct_zyx, labels: dict) -> dict:
    """Per organ, the fraction of its contoured slices that hold no CT data. OpenKBP's CTs hold anatomy
    on a slab of slices (the rest is -1024) while some contours run on beyond it; there the image cannot
    tell where the organ ends. A slice holds data when 1 % of its voxels are above -500 HU."""
    has_data = (ct_zyx > -500).mean(axis=(1, 2)) >= 0.01
    out = {}
    for organ, value in labels.items():
        slices = (label_zyx == value).any(axis=(1, 2))
        if slices.any():
            out[organ] = float((slices & ~has_data).sum() / slices.sum())
    return out


def markdown(result: dict, json_name: str) -> str:
    from nnunet_oar.localization.report import markdown_table
    st, t = result["settings"], result["times_s"]
    main_summary = result["summary"][st["default_readout"]]
    lines = [
        "# The localizer on OpenKBP (real head-and-neck CT)", "",
        f"Generated by `{result['command']}` on {result['machine']}. Raw numbers: `{json_name}`. "
        "Data: OpenKBP (Babier et al., Med. Phys. 48:5549, 2021); trained on fold "
        f"{st['fold']} of nnU-Net's 5-fold split of the training tarball, margins calibrated on that fold's "
        "validation patients, scored on the held-out tarball (organs that were not contoured are skipped). "
        "Nothing was tuned on the held-out patients.", "",
        f"Settings: trainer `{st['trainer']}`, {st['spacing_mm']:g} mm grid, sigma^2 = {st['sigma2_mm2']:g} mm^2, "
        f"foreground weight {st['fg_weight']:g}, patch {st['patch_size']}, nnU-Net PlainConvUNet with "
        f"{st['features_per_stage']} features per stage ({st['parameters'] / 1e6:.1f} M parameters), "
        f"read-out `{st['default_readout']}`.", "",
        "Times (s): " + ", ".join(f"{k} {v:.0f}" for k, v in t.items()) + ".", "",
        *_epoch_lines(result), 
        "## Held-out patients, beside the constant guess", "",
        "The constant guess puts each organ at its mean position relative to the image centre over the "
        "trained fold's patients, with the same box size and margin. Ratio = localizer / guess (median "
        "centroid errors).", "",
        markdown_table(main_summary, result["margins"]),
        *_extent_lines(result["margins"]),
        *_moved_lines(result.get("calibration_positions_moved", []), main_summary.get("positions_moved", [])),
        *_failure_lines(result["margins"]),
        *_sweep_lines(result.get("margin_sweep"), result["margins"]),
        *_below_floor_lines(result.get("below_floor"), result.get("reference_volume_fences")),
        "## Centroid read-out", "",
        "| organ | " + " | ".join(f"median error mm, `{r}`" for r in result["summary"]) + " |",
        "|---|" + "---|" * len(result["summary"]),
    ]
    for organ in main_summary["per_organ"]:
        lines.append(f"| {organ} | " + " | ".join(
            f"{s['per_organ'][organ].get('centroid_error_mm', {}).get('median', float('nan')):.1f}"
            for s in result["summary"].values()) + " |")
    lines += ["", "## Where the error lies", "",
              f"Read-out `{st['default_readout']}`: median absolute centroid error along each world axis (OpenKBP "
              "grids are axial: x left-right, y front-back, z head-foot), the median signed offset along z "
              "(predicted minus contour, world z) on the calibration fold and on the held-out patients (with "
              "many patients, a large difference between the two points to a difference between the "
              "populations, which no rule fitted on training patients can know), and the patient with the "
              "lowest containment.", "",
              "| organ | x mm | y mm | z mm | z offset mm, calibration / held-out | lowest containment (patient) |",
              "|---|---|---|---|---|---|"]
    nan3 = [float("nan")] * 3
    for organ, s in main_summary["per_organ"].items():
        xyz = s.get("centroid_error_xyz_mm", {}).get("median", nan3)
        z_cal = result.get("calibration_offset_xyz_mm", {}).get(organ, nan3)[2]
        z_held = s.get("centroid_offset_xyz_mm", {}).get("median", nan3)[2]
        c = s.get("containment", {})
        lines.append(f"| {organ} | " + " | ".join(f"{v:.1f}" for v in xyz) + f" | {z_cal:+.1f} / {z_held:+.1f} "
                     f"| {c.get('min', float('nan')):.3f} ({c.get('min_case', '-')}) |")
    lines += ["", "## Contours beyond the CT data", "",
              "In some OpenKBP patients the CT holds anatomy on a slab of slices only (the rest is -1024) while a "
              "contour runs on beyond it, so the image cannot tell where the organ ends and the contour's "
              "centroid is partly unobservable. Patients with more than 5 % of an organ's contoured slices "
              "outside the CT data, and the median centroid error with and without them:", "",
              "| organ | patients beyond the CT data | median error mm, these | median error mm, the others |",
              "|---|---|---|---|"]
    beyond = main_summary["contour_beyond_ct"]
    for organ in main_summary["per_organ"]:
        err = {case: m[organ]["centroid_error_mm"] for case, m in main_summary["per_case"].items()
               if "centroid_error_mm" in m.get(organ, {})}
        out = [c for c in err if beyond[c].get(organ, 0) > 0.05]
        med = [statistics.median([err[c] for c in group]) if group else float("nan")
               for group in (out, [c for c in err if c not in out])]
        lines.append(f"| {organ} | {len(out)} / {len(err)} | {med[0]:.1f} | {med[1]:.1f} |")
    return "\n".join(lines) + "\n"


def _extent_lines(margins: dict) -> list:
    """The organs whose box spans a learned extent along z (chosen on the calibration fold)."""
    chosen = {o: m["z_extent"] for o, m in margins.items() if m.get("z_extent")}
    if not chosen:
        return ["No organ's learned extent along z beat its mean-size box on the calibration fold.", ""]
    lines = ["## Learned extent along the body axis", "",
             "These organs' boxes span their learned extent along z (`nnunet_oar/localization/extent.py`): each "
             "end at the anchor whose offset varies least over the training patients (the rule below, fitted on "
             "all of them, is the one used here). The organ got it because the rule fitted on the trained fold's "
             "patients lowered the median z error of the centroid on the calibration fold (last column); the two "
             "fits may pick different anchors where two vary about as little. The rule's floor is its error with "
             "every other anchor where the contours put it and the true scanned extent: what is left is how far "
             "the contours' ends vary about their anchors (where the clinic stopped contouring, where it put the "
             "brainstem's lower end). It is the best a localizer that places these ends by these anchors can expect "
             "(its errors in finding the anchors come on top), and the error along z is part of the 3D error.", "",
             "| organ | bottom: anchor, offset mm | top: anchor, offset mm | calibration z error mm: mean-size box "
             "/ learned extent | the rule's floor, mm |", "|---|---|---|---|---|"]
    for organ, rule in chosen.items():
        err = rule["median_z_error_mm"]
        floor = err.get("learned_extent_exact_anchors")
        lines.append(f"| {organ} | {rule['bottom']['anchor']}, {rule['bottom']['offset_mm']:+.1f} | "
                     f"{rule['top']['anchor']}, {rule['top']['offset_mm']:+.1f} | "
                     f"{err['mean_size_box']:.1f} / {err['learned_extent']:.1f} | "
                     f"{'-' if floor is None else f'{floor:.1f}'} |")
    return lines + [""]


def _failure_lines(margins: dict) -> list:
    """The calibration fold's failures that the margins were not sized for."""
    lines = ["## Margin calibration: failures left out", "",
             "Each margin is the smallest that holds 99 % of its organ's voxels, pooled over the calibration fold's "
             "patients, less the failures no margin should be sized for: an organ not found where it was "
             "contoured, and a far miss, found beyond Tukey's far-out fence of that organ's centroid errors "
             "(Q3 + 3 IQR, at least 20 mm; `nnunet_oar/localization/margins.py`). They still count in the "
             "calibration run's own scores (`localization_summary.json`) and in the \"min cal.\" column below.", "", "| organ | fence mm | left out (patient: error mm) | margin mm |", "|---|---|---|---|"]
    for organ, m in margins.items():
        f = m.get("failures", {})
        cases = ", ".join(f"{c['case']}: " + (f"{c['error_mm']:.0f}" if c["status"] == "far_miss" else "not found")
                          for c in f.get("cases", [])) or "none"
        fence = f"{f['fence_mm']:.0f}" if f.get("fence_mm") is not None else "-"
        lines.append(f"| {organ} | {fence} | {cases} | {m['margin_mm']:.0f} |")
    return lines + [""]


def _sweep_lines(sweep: dict, margins: dict) -> list:
    """Containment against the margin: what the calibrated margin holds and what a per-patient floor costs."""
    if not sweep:
        return []
    vs = next(iter(sweep.values()))["margins_mm"]
    lines = ["## Containment against the margin", "",
             "The same boxes (centroids, sizes, learned extents) with only the margin changed: the lowest "
             "containment over the calibration fold's patients / over the held-out patients, and the held-out "
             "boxes' mean volume. The calibrated margin (pooled 99 % of the calibration fold's voxels, failures "
             "left out) is the one in use; the calibration minimum here includes the failures, so an organ with "
             "a far miss reads low at every margin. The columns show what a per-patient floor (say, every "
             "patient >= 0.95) would have needed and cost; they are read after the fact and choose nothing.", "",
             "| organ | calibrated margin mm | " + " | ".join(f"{v} mm: min cal. / held-out" for v in vs)
             + " | mean box mL, " + " / ".join(str(v) for v in vs) + " mm |",
             "|---|---|" + "---|" * (len(vs) + 1)]
    for organ, sw in sweep.items():
        cal, held = sw.get("calibration"), sw.get("held_out")
        cells = [f"{cal['min'][i]:.2f} / {held['min'][i]:.2f}" if cal and held else "-" for i in range(len(vs))]
        vol = " / ".join(f"{v:.0f}" for v in held["mean_box_ml"]) if held else "-"
        lines.append(f"| {organ} | {margins.get(organ, {}).get('margin_mm', float('nan')):.0f} | "
                     + " | ".join(cells) + f" | {vol} |")
    return lines + [""]


def _below_floor_lines(below: dict, fences: dict = None) -> list:
    """Every patient whose box holds less than the floor of an organ, the walls its contour crosses, and
    whether the contour itself is out of the training range."""
    if not below:
        return []
    fences = fences or {}
    lines = [f"## Patients below {FLOOR} containment", "",
             "Each (patient, organ) whose box, at the calibrated margin, holds less than "
             f"{FLOOR:.0%} of the contour: the walls the contour crosses and how far it reaches beyond each (world "
             "mm, the patient's sides; from the bounding boxes, so a thin tail counts as much as a whole organ). "
             "\"left out\": a failure margin calibration was not sized for. The contour's volume beside the "
             "training contours' median; **bold** where it lies outside their far-out fences (Q1 - 3 IQR, "
             "Q3 + 3 IQR over the training tarball's patients, the far misses' rule): no ordinary contour of "
             "that organ, so no box of its mean size can hold it.", "",
             "| patients | patient | organ | containment | centroid error mm | beyond the box: wall mm "
             "| contour mL (training median) |", "|---|---|---|---|---|---|---|"]
    for group, rows in (("calibration", below.get("calibration", [])), ("held-out", below.get("held_out", []))):
        for r in sorted(rows, key=lambda r: (r["organ"], r["containment"])):
            err = "not found" if r["centroid_error_mm"] is None else f"{r['centroid_error_mm']:.1f}"
            walls = ", ".join(f"{w} {mm:.0f}" for w, mm in sorted(r["spill_mm"].items(), key=lambda x: -x[1])) or "-"
            vol = "-" if r.get("volume_ml") is None else (f"**{r['volume_ml']:.0f}**" if r.get("volume_outside_training")
                                                        else f"{r['volume_ml']:.0f}")
            med = fences.get(r["organ"], {}).get("median_ml")
            lines.append(f"| {group} | {r['case']} | {r['organ']} | {r['containment']:.3f} | {err}"
                         f"{' (left out)' if r['left_out'] else ''} | {walls} | {vol}"
                         f"{f' ({med:.0f})' if med is not None else ''} |")
        if not rows:
            lines.append(f"| {group} | none | | | | | |")
    lines.append("")
    odd = [r for rows in below.values() for r in rows if r.get("volume_outside_training")]
    if odd:
        lines += [f"{len(odd)} of these {sum(len(r) for r in below.values())} pairs have a contour outside the "
                  "training range: " + ", ".join(f"{r['case']} {r['organ']} ({r['volume_ml']:.0f} mL)" for r in odd)
                  + ".", ""]
    return lines


def _moved_lines(calibration: list, held_out: list) -> list:
    """The organs that anatomical consistency moved, on the calibration fold and on the held-out patients."""
    lines = ["## Anatomical consistency", "",
             "A found organ whose centroid lies beyond the fence (3 times the voters' largest spread, at least "
             "20 mm) from where the confidently found organs put it (median vote of its 3 steadiest anchors with "
             "a peak >= 0.5; a voter beyond the fence from the others' median is left out, and at least 2 must "
             "agree) is moved to the vote "
             "(`nnunet_oar/localization/consistency.py`; offsets learned from the training labels). Moved organs, "
             "with the centroid error before (heat map) and after (vote); the calibration fold's moves happen "
             "before its margins are calibrated.", "",
             "| patients | patient | organ | heat-map peak | distance to the vote mm | voters | error mm: "
             "heat map -> vote |", "|---|---|---|---|---|---|---|"]
    for group, moves in (("calibration", calibration), ("held-out", held_out)):
        for m in moves:
            err = " -> ".join(f"{e:.1f}" for e in m["error_mm"]) if "error_mm" in m else "not contoured"
            lines.append(f"| {group} | {m['case']} | {m['organ']} | {m.get('peak', float('nan')):.2f} | "
                         f"{m['distance_mm']:.0f} | {', '.join(m['anchors'])} | {err} |")
        if not moves:
            lines.append(f"| {group} | none | | | | | |")
    return lines + [""]


def _checkpoint_facts(checkpoint: Path) -> dict:
    """From one read of the checkpoint: epochs trained, the wall time (s) of every epoch from nnU-Net's own
    log (unlike the step's time, it covers every invocation of a training that was stopped and resumed with
    ``--c``, though not the work lost after the last checkpoint, which the resumed run redid), and the
    network's parameter count."""
    from nnunet_oar.safe_load import load_checkpoint
    from nnunet_oar.training import network_size
    ckpt = load_checkpoint(checkpoint)
    log = ckpt["logging"]
    return {"epochs_trained": int(ckpt["current_epoch"]),
            "epoch_wall_s": [round(e - s, 1) for s, e in zip(log["epoch_start_timestamps"], log["epoch_end_timestamps"])],
            "parameters": network_size(ckpt["network_weights"])["parameters"]}


def _epoch_lines(result: dict) -> list:
    times = result.get("epoch_wall_s")
    if not times:
        return []
    return [f"Training: {result['epochs_trained']} epochs, {sum(times):.0f} s summed over the epochs of every "
            f"invocation (median epoch {statistics.median(times):.0f} s, fastest {min(times):.0f} s, slowest "
            f"{max(times):.0f} s: epochs well above the fastest ran while the cores were shared or the run was "
            "paused).", ""]


if __name__ == "__main__":
    main()
