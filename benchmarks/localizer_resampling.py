"""The localizer's input resampling: nnU-Net's default (cubic spline, scipy) against nnU-Net's torch
resampling (trilinear, the choice of its ``*_torchres`` planners), which ``plan-localizer`` now writes.

1. Time and difference of the two on real CT brought to the localizer's grid: the clinical-size CT of the
   inference benchmark (``../shared/data/totalsegmentator`` at 0.8 x 0.8 x 1.5 mm) and the unpacked OpenKBP
   patients (``../shared/data/openkbp/sample``), both in HU; both functions as nnU-Net's preprocessor calls
   them (``resampling_fn_data`` with the plans' kwargs). Timed one after the other, 3 repeats, the median.
2. With ``--compare LOCALIZER IMAGES`` (repeatable; a trained localizer's results folder: nnU-Net's
   ``..._3d_loc`` folder or a models folder's ``localizer/``, and a folder of held-out CTs): the same
   trained localizer run twice on every image, with its plans' own resampling and with the other one (a copy of its results
   folder whose ``3d_loc`` configuration names the other function; nothing patched): the shift of each
   organ's centroid (mm), and whether its found/absent call changed.

    python benchmarks/localizer_resampling.py --work WORK [--spacing 3] [--compare LOCALIZER IMAGES ...]

writes docs/results/localizer_resampling.json and .md.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
CLINICAL_SPACING = (0.8, 0.8, 1.5)
FUNCTIONS = {  # name in the plans -> kwargs nnU-Net's planners write for data
    "resample_data_or_seg_to_shape": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None},
    "resample_torch_fornnunet": {"is_seg": False, "force_separate_z": False, "memefficient_seg_resampling": False},
}


def real_cts() -> dict:
    """{name: SimpleITK CT in HU}: the clinical-grid abdomen CT and the unpacked OpenKBP patients."""
    from nnunet_oar.conversion.openkbp import patient_to_images
    ct3 = sitk.ReadImage(str(SHARED / "totalsegmentator" / "example_ct.nii.gz"))
    size = [int(round(n * s / t)) for n, s, t in zip(ct3.GetSize(), ct3.GetSpacing(), CLINICAL_SPACING)]
    ref = sitk.Image(size, sitk.sitkInt16)
    ref.SetSpacing(CLINICAL_SPACING)
    ref.SetOrigin(ct3.GetOrigin())
    ref.SetDirection(ct3.GetDirection())
    cts = {"abdomen CT 0.8x0.8x1.5 mm": sitk.Resample(ct3, ref, sitk.Transform(), sitk.sitkLinear, -1024)}
    for d in sorted((SHARED / "openkbp" / "sample").glob("pt_*")):
        ct, _ = patient_to_images({f.name: f.read_bytes() for f in d.glob("*.csv")}, str(d))
        cts[f"OpenKBP {d.name}"] = ct
    return cts


def compare_resampling(cts: dict, spacing_mm: float) -> list:
    """Per CT: both functions' time (median of 3) and the HU difference of their outputs."""
    from nnunetv2.preprocessing.resampling.default_resampling import compute_new_shape
    from nnunetv2.preprocessing.resampling.utils import recursive_find_resampling_fn_by_name
    rows = []
    for name, ct in cts.items():
        data = sitk.GetArrayFromImage(ct)[None].astype(np.float32)       # (1, z, y, x), HU
        spacing = list(ct.GetSpacing())[::-1]
        target = [spacing_mm] * 3
        shape = compute_new_shape(data.shape[1:], spacing, target)
        out, seconds = {}, {}
        for fn_name, kwargs in FUNCTIONS.items():
            fn = recursive_find_resampling_fn_by_name(fn_name)
            times = []
            for _ in range(3):
                t = time.perf_counter()
                out[fn_name] = np.asarray(fn(data, shape, spacing, target, **kwargs), dtype=np.float32)
                times.append(time.perf_counter() - t)
            seconds[fn_name] = statistics.median(times)
        diff = np.abs(out["resample_data_or_seg_to_shape"] - out["resample_torch_fornnunet"])
        rows.append({"ct": name, "shape_zyx": list(data.shape[1:]), "spacing_zyx_mm": spacing,
                     "target_shape_zyx": [int(s) for s in shape], "seconds": seconds,
                     "ratio_torch_over_default": seconds["resample_torch_fornnunet"] / seconds["resample_data_or_seg_to_shape"],
                     "abs_diff_hu_mean": float(diff.mean()), "abs_diff_hu_p99": float(np.percentile(diff, 99)),
                     "abs_diff_hu_max": float(diff.max())})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def with_resampling(results_folder: Path, fn_name: str, dst: Path) -> Path:
    """A copy of a localizer's results folder whose 3d_loc configuration resamples data with ``fn_name``."""
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(results_folder, dst)
    plans = json.loads((dst / "plans.json").read_text())
    config = plans["configurations"]["3d_loc"]
    config["resampling_fn_data"], config["resampling_fn_data_kwargs"] = fn_name, FUNCTIONS[fn_name]
    (dst / "plans.json").write_text(json.dumps(plans, indent=2))
    return dst


def compare_localization(folder: Path, images: Path, work: Path, clinical_ct: Path) -> dict:
    """The same trained localizer with either resampling on every image: centroid shifts, changed calls;
    and its whole preprocessing (nnU-Net's ``run_case``: reading, cropping, normalizing, resampling) of the
    clinical-size CT with each (median of 3)."""
    from nnunet_oar.io import case_id, list_images
    from nnunet_oar.localization.localize import Localizer
    own = json.loads((folder / "plans.json").read_text())["configurations"]["3d_loc"]["resampling_fn_data"]
    other = next(f for f in FUNCTIONS if f != own)
    variants = {own: folder, other: with_resampling(folder, other, work / f"other_resampling_{folder.name}")}
    boxes, seconds, preprocess = {}, {}, {}
    for fn_name, path in variants.items():
        localizer = Localizer(path)
        times = []
        for _ in range(3):
            t = time.perf_counter()
            localizer.preprocess(clinical_ct)
            times.append(time.perf_counter() - t)
        preprocess[fn_name] = statistics.median(times)
        boxes[fn_name], seconds[fn_name] = {}, 0.0
        for f in list_images(images):
            t = time.perf_counter()
            boxes[fn_name][case_id(f)], _ = localizer.localize_file(f, case_id(f))
            seconds[fn_name] += time.perf_counter() - t
    shifts, changed = [], []
    for case, b in boxes[own].items():
        for organ, e in b["organs"].items():
            e2 = boxes[other][case]["organs"][organ]
            if e["status"] != e2["status"]:
                changed.append(f"{case} {organ}: {e['status']} -> {e2['status']}")
            elif e["status"] == "found":
                shifts.append(float(np.linalg.norm(np.subtract(e["centroid_mm"], e2["centroid_mm"]))))
    return {"localizer": str(folder), "images": str(images), "trained_with": own, "compared_with": other,
            "organ_calls": len(shifts) + len(changed), "changed_calls": changed,
            "centroid_shift_mm": {"median": float(np.median(shifts)), "p95": float(np.percentile(shifts, 95)),
                                  "max": float(np.max(shifts))} if shifts else {},
            "localize_seconds": seconds, "clinical_ct_preprocess_seconds": preprocess}


def write_markdown(results: dict, path: Path) -> None:
    lines = ["# The localizer's input resampling: nnU-Net's cubic spline vs its torch resampling", "",
             f"Generated by `{results['command']}` on {results['machine']}. The localizer's grid: "
             f"{results['spacing_mm']} mm isotropic. Time: median of 3, one after the other on an idle machine "
             "(the cubic spline runs on one thread, torch on all it is given).", "",
             "Neither CT holds detail finer than about 3 mm (the abdomen CT is a 3 mm CT brought to a clinical grid by "
             "linear interpolation; OpenKBP's CTs are about 3.9 x 3.9 x 2.5 mm), so the HU differences are those of "
             "smooth inputs; a native sub-millimetre CT shrunk to 3 mm without anti-aliasing would differ more. "
             "What counts is the localizer's output, below.", "",
             "| CT | voxels (z, y, x) | spacing mm (z, y, x) | cubic spline s | torch s | ratio | mean abs diff HU | 99th pct HU | max HU |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in results["resampling"]:
        s = r["seconds"]
        lines.append(f"| {r['ct']} | {r['shape_zyx']} | {[round(x, 2) for x in r['spacing_zyx_mm']]} | "
                     f"{s['resample_data_or_seg_to_shape']:.2f} | {s['resample_torch_fornnunet']:.3f} | "
                     f"{r['ratio_torch_over_default']:.3f} | {r['abs_diff_hu_mean']:.1f} | {r['abs_diff_hu_p99']:.1f} | "
                     f"{r['abs_diff_hu_max']:.0f} |")
    for loc in results.get("localization", []):
        shift = loc["centroid_shift_mm"]
        lines += ["", f"Same trained localizer (`{loc['localizer']}`, trained with `{loc['trained_with']}`), on every CT of "
                  f"`{loc['images']}`, read through `{loc['compared_with']}` instead: {loc['organ_calls']} organ calls, "
                  f"{len(loc['changed_calls'])} changed found/absent"
                  + (f" ({'; '.join(loc['changed_calls'])})" if loc["changed_calls"] else "")
                  + (f"; centroid shift median {shift['median']:.2f} mm, 95th percentile {shift['p95']:.2f} mm, "
                     f"max {shift['max']:.2f} mm" if shift else "") + ". Localization wall time: "
                  + ", ".join(f"`{k}` {v:.1f} s" for k, v in loc["localize_seconds"].items())
                  + ". Its whole preprocessing of the clinical-size CT (nnU-Net's `run_case`, median of 3): "
                  + ", ".join(f"`{k}` {v:.2f} s" for k, v in loc["clinical_ct_preprocess_seconds"].items()) + "."]
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", required=True)
    ap.add_argument("--spacing", type=float, default=3.0, help="the localizer's grid, mm (default: the paper's 3)")
    ap.add_argument("--compare", nargs=2, action="append", default=[], metavar=("LOCALIZER", "IMAGES"),
                    help="a trained localizer's results folder and a folder of held-out CTs (repeatable)")
    ap.add_argument("--out", default=str(REPO / "docs" / "results" / "localizer_resampling.json"))
    a = ap.parse_args()
    import torch
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    results = {"command": "python benchmarks/localizer_resampling.py " + " ".join(sys.argv[1:]),
               "machine": f"{len(os.sched_getaffinity(0))} CPU cores ({platform.machine()}), torch {torch.__version__}",
               "spacing_mm": a.spacing}
    cts = real_cts()
    results["resampling"] = compare_resampling(cts, a.spacing)
    results["localization"] = []
    clinical = work / "clinical_ct.nii.gz"
    if a.compare:
        sitk.WriteImage(cts["abdomen CT 0.8x0.8x1.5 mm"], str(clinical))
    for folder, images in a.compare:
        results["localization"].append(compare_localization(Path(folder), Path(images), work, clinical))
        print(json.dumps(results["localization"][-1]), flush=True)
    out = Path(a.out)
    out.write_text(json.dumps(results, indent=2) + "\n")
    write_markdown(results, out.with_suffix(".md"))


if __name__ == "__main__":
    main()
