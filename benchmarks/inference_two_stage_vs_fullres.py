"""Two-stage inference against one nnU-Net 3d_fullres multi-organ network, on the same CT and settings.

The real CT of ../shared/data/totalsegmentator (abdomen-pelvis, 3 mm) is resampled to a clinical grid
(0.8 x 0.8 x 1.5 mm). Its TotalSegmentator map gives 15 VISCERAL structures. Every network is planned by
nnU-Net's own planner on data of the right size (the full CT for the baseline and for the 3 mm
localizer; each organ's 10 mm-margin crop for its organ network, at the paper's 1 mm), and gets random
weights (timing does not need trained ones; seeded, so that the random localizer places the same boxes at
every preparation), the same for each of 5 folds. The two methods then run
through their real code paths: ``nnUNetPredictor.predict_single_npy_array`` for the baseline,
``nnunet_oar.segmentation.predict.OARPredictor`` for the two-stage method (tau = -1, so every organ is
"found" and its mean-size box is processed), and the localizer alone (``Localizer.localize_file``:
nnU-Net preprocessing to 3 mm, the network, boxes). Each method runs in its own process, so peak memory
is its own.

Presets, both methods at the same settings: ``fast`` (one fold, no test-time mirroring; ``predict
--preset fast``) always, and ``fastest`` (``fast`` with the organ networks on a coarser grid, against the
baseline's ``fast``: nnU-Net has no such option); ``accurate`` (5 folds, mirroring on 3 axes: nnU-Net's and ``predict``'s
defaults) with ``--accurate``, which on CPU takes hours for the baseline (40x its fast time): run it on
a GPU (``--device cuda``).

    python benchmarks/inference_two_stage_vs_fullres.py [--work /tmp/bench] [--device cpu|cuda] [--accurate]

writes docs/results/inference_benchmark.json and .md.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

REPO = Path(__file__).resolve().parents[1]
# beside the checkout in the project workspace; inside it (shared/) on a device machine
SHARED = next((d for d in (REPO.parent / "shared" / "data" / "totalsegmentator",
                           REPO / "shared" / "data" / "totalsegmentator") if d.is_dir()),
              REPO.parent / "shared" / "data" / "totalsegmentator")
CLINICAL_SPACING = (0.8, 0.8, 1.5)
# TotalSegmentator "total" ids -> catalogue names (lungs: union of lobes)
TS_TO_ORGAN = {"spleen": [1], "kidney_right": [2], "kidney_left": [3], "gallbladder": [4], "liver": [5],
               "pancreas": [7], "adrenal_gland_right": [8], "adrenal_gland_left": [9], "lung_left": [10, 11],
               "lung_right": [12, 13, 14], "urinary_bladder": [21], "vertebra_L1": [31], "aorta": [52],
               "psoas_major_left": [88], "psoas_major_right": [89]}
BASE_ID, FIRST_ORGAN_ID = 801, 811
FOLDS = 5
# method -> (what it is, preset); "two_stage*" run OARPredictor, "baseline*" nnU-Net's predictor
METHODS = {
    "localizer": ("localizer alone (3 mm), one fold", "fast"),
    "two_stage": ("two-stage, trained patch sliding in each crop (`--tile trained`, the default)", "fast"),
    "two_stage_crop_tile": ("two-stage, each crop's own tile, within the patch's voxels (`--tile crop`)", "fast"),
    "two_stage_all_loaded": ("two-stage, all organ networks loaded first (`--keep-networks 0`)", "fast"),
    "two_stage_cubic": ("two-stage, organ networks planned by nnU-Net's default planner (cubic spline; "
                        "`plan-organs --planner ExperimentPlanner`)", "fast"),
    "two_stage_coarser_grid": ("two-stage, organ networks on a coarser grid, trained patch (`--preset fastest "
                               "--tile trained`)", "fastest"),
    "two_stage_fastest": ("two-stage, organ networks on a coarser grid, each crop's own tile (`--preset fastest`)",
                          "fastest"),
    "baseline": ("nnU-Net 3d_fullres, 15 labels (baseline)", "fast"),
    "two_stage_accurate": ("two-stage, 5 folds, mirroring (`--preset accurate`)", "accurate"),
    "baseline_accurate": ("nnU-Net 3d_fullres, 5 folds, mirroring", "accurate"),
}


class NetworkTimer:
    """Forward hooks that add up the time spent inside a network's forward passes (no patching). On a GPU
    the hooks wait for the device (``sync``), since kernels run after the call returns."""

    def __init__(self, sync=lambda: None):
        self.seconds, self.calls, self.voxels, self.sync = 0.0, 0, 0, sync

    def attach(self, net):
        net.register_forward_pre_hook(self._pre)
        net.register_forward_hook(self._post)

    def _pre(self, module, inputs):
        self.sync()
        self._t = time.perf_counter()
        self.voxels += int(np.prod(inputs[0].shape[2:])) * inputs[0].shape[0]

    def _post(self, module, inputs, output):
        self.sync()
        self.seconds += time.perf_counter() - self._t
        self.calls += 1


def prepare(work: Path, spacing) -> None:
    """Clinical-grid CT, raw data sets, nnU-Net plans and random-weight checkpoints, models folder."""
    import torch
    from nnunetv2.experiment_planning.plan_and_preprocess_api import extract_fingerprints, plan_experiments
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels

    from nnunet_oar.conversion.dataset import build_dataset
    from nnunet_oar.geometry import crop_image, index_box_to_world, mask_bbox_xyz, world_box_to_index
    from nnunet_oar.io import geometry, write_image, write_json
    from nnunet_oar.localization.plans import plan_localizer
    from nnunet_oar.models import export_models
    from nnunet_oar.segmentation.planning import ORGAN_PLANNER

    for sub in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results", "models", "models_cubic",
                "models_cubic.tmp"):      # another grid or planner before
        shutil.rmtree(work / sub, ignore_errors=True)
    ct3 = sitk.ReadImage(str(SHARED / "example_ct.nii.gz"))
    seg3 = sitk.ReadImage(str(SHARED / "example_seg.nii.gz"))
    size = [int(round(n * s / t)) for n, s, t in zip(ct3.GetSize(), ct3.GetSpacing(), spacing)]
    ref = sitk.Image(size, sitk.sitkInt16)
    ref.SetSpacing(spacing)
    ref.SetOrigin(ct3.GetOrigin())
    ref.SetDirection(ct3.GetDirection())
    ct = sitk.Cast(sitk.Resample(ct3, ref, sitk.Transform(), sitk.sitkLinear, -1024), sitk.sitkInt16)
    seg = sitk.Resample(seg3, ref, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
    write_image(ct, work / "ct_clinical.nii.gz")
    ts = sitk.GetArrayFromImage(seg)
    masks = {o: np.isin(ts, ids) for o, ids in TS_TO_ORGAN.items()}
    organs = [o for o in masks if masks[o].any()]
    geom = geometry(ct)
    with build_dataset(BASE_ID, "BENCH", organs, "benchmark CT", work / "nnUNet_raw") as b:
        b.add_case("ct", ct, {o: masks[o] for o in organs})
    box_sizes = {}
    organ_ids = []
    for k, organ in enumerate(organs):
        lo, hi = index_box_to_world(geom, *mask_bbox_xyz(masks[organ]))
        box_sizes[organ] = {"mean_size_mm": (hi - lo).tolist(), "n": 1}
        start, stop, _ = world_box_to_index(geom, lo - 10, hi + 10)
        (x0, y0, z0), (x1, y1, z1) = start, stop
        with build_dataset(FIRST_ORGAN_ID + k, f"BENCH_{organ}", [organ], "crop", work / "nnUNet_raw") as b:
            b.add_case("ct", crop_image(ct, start, stop), {organ: masks[organ][z0:z1, y0:y1, x0:x1].copy()})
        organ_ids.append(FIRST_ORGAN_ID + k)
    ids = [BASE_ID] + organ_ids
    extract_fingerprints(ids, num_processes=int(os.environ.get("nnUNet_def_n_proc", 2)), check_dataset_integrity=False, show_progress_bar=False)
    plan_experiments([BASE_ID])
    # the organ networks as plan-organs plans them; the baseline as nnU-Net's default planner does
    plan_experiments(organ_ids, ORGAN_PLANNER, overwrite_target_spacing=(1.0, 1.0, 1.0),
                     overwrite_plans_name="nnUNetPlans")
    plan_localizer(BASE_ID, 3.0, progress=False)

    def fake_results(dataset_id, configuration, trainer, extra=None):
        pre = sorted((work / "nnUNet_preprocessed").glob(f"Dataset{dataset_id:03d}_*"))[0]
        plans = json.loads((pre / "nnUNetPlans.json").read_text())
        dataset_json = json.loads((pre / "dataset.json").read_text())
        out = work / "nnUNet_results" / pre.name / f"{trainer}__nnUNetPlans__{configuration}"
        out.mkdir(parents=True, exist_ok=True)
        write_json(plans, out / "plans.json")
        write_json(dataset_json, out / "dataset.json")
        write_json(json.loads((pre / "dataset_fingerprint.json").read_text()), out / "dataset_fingerprint.json")
        pm = PlansManager(plans)
        cm = pm.get_configuration(configuration)
        cls = recursive_find_trainer_class_by_name(trainer)
        # seeded: the random localizer's heat maps place the boxes (and crops at the image's edge are
        # smaller), so that every preparation gives the same boxes
        torch.manual_seed(dataset_id)
        net = cls.build_network_architecture(pm, cm, determine_num_input_channels(pm, cm, dataset_json),
                                             pm.get_label_manager(dataset_json).num_segmentation_heads, False)
        # nnU-Net mirrors on all axes; our localizer never (nnUNetTrainerOARHeatmap: left/right channels)
        axes = None if configuration == "3d_loc" else (0, 1, 2)
        for fold in range(FOLDS):           # the same weights in every fold: the time is what counts
            (out / f"fold_{fold}").mkdir(parents=True, exist_ok=True)
            torch.save({"network_weights": net.state_dict(), "trainer_name": trainer,
                        "init_args": {"configuration": configuration}, "inference_allowed_mirroring_axes": axes},
                       out / f"fold_{fold}" / "checkpoint_final.pth")
            for name, obj in (extra or {}).items():
                write_json(obj, out / f"fold_{fold}" / name)
        return out, cm

    summary = {}
    _, cm = fake_results(BASE_ID, "3d_fullres", "nnUNetTrainer")
    summary["baseline_patch"] = cm.patch_size
    _, cm = fake_results(BASE_ID, "3d_loc", "nnUNetTrainerOARHeatmap", {"box_stats.json": box_sizes})
    summary["localizer_patch"] = cm.patch_size
    summary["organ_patches"] = {}
    for organ, dataset_id in zip(organs, organ_ids):
        _, cm = fake_results(dataset_id, "3d_fullres", "nnUNetTrainer")
        summary["organ_patches"][organ] = cm.patch_size
    export_models(work / "models", BASE_ID, organ_ids, tau=-1.0)
    summary["ct_size_xyz"], summary["spacing_xyz_mm"] = list(ct.GetSize()), list(spacing)
    summary["organs"], summary["organ_planner"] = organs, ORGAN_PLANNER
    write_json(summary, work / "prepared.json")


def cubic_models(work: Path) -> Path:
    """The models folder with the organ networks' plans resampling as nnU-Net's default planner does (the
    baseline's plans give its entries): what ``plan-organs --planner ExperimentPlanner`` would have
    planned; the checkpoints are links to the same random weights."""
    out = work / "models_cubic"
    if out.is_dir():
        return out
    base = json.loads(next((work / "nnUNet_results").glob(f"Dataset{BASE_ID}_*")).joinpath(
        "nnUNetTrainer__nnUNetPlans__3d_fullres", "plans.json").read_text())["configurations"]["3d_fullres"]
    keys = [k for k in base if k.startswith("resampling_fn")]
    tmp = work / "models_cubic.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(work / "models", tmp, copy_function=lambda src, dst: (
        os.symlink(os.path.realpath(src), dst) if src.endswith(".pth") else shutil.copy2(src, dst)))
    for plans_file in (tmp / "organs").glob("*/plans.json"):
        plans = json.loads(plans_file.read_text())
        plans["configurations"]["3d_fullres"].update({k: base[k] for k in keys})
        plans_file.write_text(json.dumps(plans, indent=2))
    tmp.rename(out)
    return out


def run_method(work: Path, method: str, device: str) -> dict:
    """Time one method in this process (called in a child process by ``main``)."""
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    preset = METHODS[method][1]
    accurate = preset == "accurate"
    dev = torch.device(device)
    if dev.type == "cpu":
        torch.set_num_threads(len(os.sched_getaffinity(0)))
    ct = sitk.ReadImage(str(work / "ct_clinical.nii.gz"))
    t0 = time.perf_counter()
    timer = NetworkTimer(torch.cuda.synchronize if dev.type == "cuda" else lambda: None)
    extra = {}
    if method.startswith("baseline"):
        folder = next((work / "nnUNet_results").glob(f"Dataset{BASE_ID}_*")) / "nnUNetTrainer__nnUNetPlans__3d_fullres"
        p = nnUNetPredictor(tile_step_size=0.5, use_mirroring=accurate, perform_everything_on_device=dev.type != "cpu",
                            device=dev, allow_tqdm=False)
        p.initialize_from_trained_model_folder(str(folder), list(range(FOLDS)) if accurate else [0])
        timer.attach(p.network)
        t_start = time.perf_counter()
        data = sitk.GetArrayFromImage(sitk.DICOMOrient(ct, "RAS"))[None].astype(np.float32)
        p.predict_single_npy_array(data, {"spacing": list(ct.GetSpacing())[::-1]}, None, None, False)
    elif method == "localizer":
        from nnunet_oar.localization.localize import Localizer
        loc = Localizer(next((work / "models").glob("localizer")), folds=[0], device=device, tau=-1.0)
        timer.attach(loc.predictor.network)
        t_start = time.perf_counter()
        loc.localize_file(work / "ct_clinical.nii.gz", "ct")
    else:
        from nnunet_oar.segmentation.predict import OARPredictor
        from nnunet_oar.segmentation.presets import PRESETS
        # the default loads one organ network at a time, when needed (inside the wall time);
        # two_stage_all_loaded loads every one before the clock starts (what multi-case runs amortize)
        keep = None if method == "two_stage_all_loaded" else 1
        models = cubic_models(work) if method == "two_stage_cubic" else work / "models"
        tile = {"two_stage_crop_tile": "crop", "two_stage_coarser_grid": "trained"}.get(method, PRESETS[preset]["tile"])
        p = OARPredictor(models, device=device, max_loaded=keep, on_load=lambda net: timer.attach(net.network),
                         **{**PRESETS[preset], "tile": tile})
        timer.attach(p.localizer.predictor.network)
        extra["grid_factor"] = p.grid_factor
        if keep is None:
            for organ in p.organs:
                p.network(organ)
        t_start = time.perf_counter()
        p.predict_image(ct, work / "ct_clinical.nii.gz", "ct")
    gpu = {}
    if dev.type == "cuda":
        torch.cuda.synchronize()
        gpu = {"peak_gpu_gb": torch.cuda.max_memory_allocated() / 1024 ** 3}
    wall = time.perf_counter() - t_start
    return {"method": method, "wall_s": wall, "load_s": t_start - t0, "network_s": timer.seconds,
            "network_calls": timer.calls, "voxels_through_networks": timer.voxels,
            "share_outside_networks": 1 - timer.seconds / wall,
            "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2, **gpu, **extra}


def write_markdown(results: dict, path: Path, command: str) -> None:
    """The results as docs/results/inference_benchmark.md: table, ratios, targets (issue 13)."""
    prep = results["prepared"]
    gpu = results["device"] == "cuda"
    lines = ["# Inference: two-stage vs one nnU-Net 3d_fullres network", "",
             f"Machine: {results['machine']}; torch {results['torch']}, nnU-Net {results['nnunetv2']}. "
             f"Date: {results['date']}.", "", f"Command: `{command}` (raw numbers: `{path.with_suffix('.json').name}`; "
             "this file is written by the script).", "",
             f"CT: `../shared/data/totalsegmentator/example_ct.nii.gz` resampled to "
             f"{' x '.join(map(str, results['clinical_spacing_xyz_mm']))} mm, {prep['ct_size_xyz']} voxels (x, y, z); "
             f"{len(prep['organs'])} structures from its TotalSegmentator map. Random weights; sliding-window step 0.5. "
             "Each method in its own process; the wall time excludes loading the networks, except where a method "
             "loads them one at a time when needed.", "",
             f"Planners: the baseline nnU-Net's default (`ExperimentPlanner`); the organ networks as `plan-organs` "
             f"plans them (`{prep['organ_planner']}`), except where a row says otherwise.", "",
             f"Patches planned by nnU-Net: baseline 3d_fullres {prep['baseline_patch']}; localizer 3d_loc "
             f"{prep['localizer_patch']} at 3 mm; organ networks at 1 mm: "
             + ", ".join(f"{o} {p}" for o, p in prep["organ_patches"].items()) + ".", "",
             "| method | preset | wall s | in networks s | outside networks | network calls | voxels through networks | peak RSS GB |"
             + (" peak GPU GB |" if gpu else ""),
             "|---|---|---|---|---|---|---|---|" + ("---|" if gpu else "")]
    for m, (label, preset) in METHODS.items():
        if m in results:
            r = results[m]
            lines.append(f"| {label} | {preset} | {r['wall_s']:.1f} | {r['network_s']:.1f} | "
                         f"{100 * r['share_outside_networks']:.1f} % | {r['network_calls']} | "
                         f"{r['voxels_through_networks'] / 1e6:.1f} M | {r['peak_rss_gb']:.2f} |"
                         + (f" {r['peak_gpu_gb']:.2f} |" if gpu else ""))
    lines += ["", "Wall-time ratios, two-stage / baseline at the same preset (one run of each, side by side):", ""]
    lines += [f"- `{k}`: **{v:.3f}**" for k, v in results.items() if k.startswith("ratio_wall")]
    if "two_stage" in results and "baseline" in results:
        t, b, loc = results["two_stage"], results["baseline"], results.get("localizer", {})
        lines += ["", "Targets (issue 13):", "",
                  f"- fast preset, wall time <= 0.20x the baseline's: {results['ratio_wall_two_stage_over_baseline']:.3f}x",
                  f"- peak RSS <= the baseline's: {t['peak_rss_gb']:.2f} vs {b['peak_rss_gb']:.2f} GB",
                  f"- localization <= 15 s: {loc.get('wall_s', float('nan')):.1f} s",
                  f"- non-network share <= 5 %: {100 * t['share_outside_networks']:.1f} % (`--tile crop`: "
                  f"{100 * results.get('two_stage_crop_tile', t)['share_outside_networks']:.1f} %)"]
    if "ratio_wall_two_stage_fastest_over_baseline" in results:
        lines += [f"- fastest preset (each crop's own tile, organ networks on a {results['two_stage_fastest']['grid_factor']:g}x "
                  "coarser grid), wall time "
                  f"<= 0.20x the baseline's fast: {results['ratio_wall_two_stage_fastest_over_baseline']:.3f}x "
                  f"(`--tile trained`: {results.get('ratio_wall_two_stage_coarser_grid_over_baseline', float('nan')):.3f}x)"]
    if "ratio_wall_two_stage_over_baseline_accurate" in results:
        lines += [f"- accurate preset, wall time <= 0.20x the baseline's: "
                  f"{results['ratio_wall_two_stage_over_baseline_accurate']:.3f}x"]
    if "baseline_accurate" not in results:
        lines += ["", "The accurate preset (5 folds, mirroring) was not run here: `--accurate`, on a GPU."]
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default="/tmp/nnunet_oar_bench")
    ap.add_argument("--out", default=str(REPO / "docs" / "results" / "inference_benchmark.json"),
                    help="JSON to write; the Markdown table goes beside it (.md)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--accurate", action="store_true", help="also the accurate preset (5 folds, mirroring): hours on CPU")
    ap.add_argument("--spacing", nargs=3, type=float, default=CLINICAL_SPACING, metavar=("X", "Y", "Z"),
                    help="the CT's grid in mm (default: clinical 0.8 0.8 1.5; coarser for a quick rehearsal)")
    ap.add_argument("--method", choices=list(METHODS), help=argparse.SUPPRESS)
    a = ap.parse_args()
    work = Path(a.work)
    from nnunet_oar.paths import use_nnunet_folders
    use_nnunet_folders(work)
    if a.method:
        print(json.dumps(run_method(work, a.method, a.device)))
        return
    prepared = work / "prepared.json"
    from nnunet_oar.segmentation.planning import ORGAN_PLANNER
    prep = json.loads(prepared.read_text()) if prepared.is_file() else {}
    if (prep.get("spacing_xyz_mm"), prep.get("organ_planner")) != (list(a.spacing), ORGAN_PLANNER):
        prepare(work, tuple(a.spacing))
    import nnunetv2
    import torch
    machine = (f"{torch.cuda.get_device_name(0)}, {len(os.sched_getaffinity(0))} CPU cores" if a.device == "cuda" else
               f"{len(os.sched_getaffinity(0))} CPU cores (torch threads: all), "
               f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 1024 ** 3:.0f} GB RAM")
    results = {"machine": machine, "device": a.device, "torch": torch.__version__,
               "nnunetv2": getattr(nnunetv2, "__version__", "2.8.1"), "date": time.strftime("%Y-%m-%d"),
               "clinical_spacing_xyz_mm": list(a.spacing), "prepared": json.loads(prepared.read_text())}
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    command = "python benchmarks/inference_two_stage_vs_fullres.py " + " ".join(sys.argv[1:])
    failed = []
    for method, (_, preset) in METHODS.items():
        if preset == "accurate" and not a.accurate:
            continue
        r = subprocess.run([sys.executable, __file__, "--work", str(work), "--method", method, "--device", a.device],
                           capture_output=True, text=True, env=os.environ)
        if r.returncode:        # the other methods still run; the run fails at the end
            print(f"{method} failed:\n{r.stderr[-3000:]}", file=sys.stderr, flush=True)
            failed.append(method)
            continue
        results[method] = json.loads(r.stdout.strip().splitlines()[-1])
        print(json.dumps(results[method], indent=1), flush=True)
        # written after every method: a run stopped at a time limit keeps what it measured
        _write(results, out, command)
    _write(results, out, command)
    if failed:
        raise SystemExit(f"failed: {', '.join(failed)}")


def _write(results: dict, out: Path, command: str) -> None:
    """Ratios of the methods measured so far, the JSON and the Markdown beside it."""
    for method, (_, preset) in METHODS.items():
        base = "baseline_accurate" if preset == "accurate" else "baseline"
        if method.startswith("two_stage") and method in results and base in results:
            # keys kept across versions: ratio_wall_two_stage_over_baseline(_accurate)
            key = f"{method.replace('_accurate', '')}_over_{base}"
            results[f"ratio_wall_{key}"] = results[method]["wall_s"] / results[base]["wall_s"]
            results[f"ratio_voxels_{key}"] = (results[method]["voxels_through_networks"] /
                                              results[base]["voxels_through_networks"])
    out.write_text(json.dumps(results, indent=2) + "\n")
    write_markdown(results, out.with_suffix(".md"), command)


if __name__ == "__main__":
    main()
