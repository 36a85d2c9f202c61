"""Segmentation metrics on analytic shapes, the evaluation rules, and agreement with nnU-Net's Dice."""
import csv
import json
import math

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_oar.evaluation.evaluate import evaluate_folders
from nnunet_oar.evaluation.metrics import organ_metrics


def sphere(shape_zyx, spacing_zyx, centre_mm_zyx, radius_mm):
    """Boolean ball on a grid whose voxel (0,0,0) centre is at 0 mm."""
    grids = np.meshgrid(*[np.arange(n) * s for n, s in zip(shape_zyx, spacing_zyx)], indexing="ij")
    return sum((g - c) ** 2 for g, c in zip(grids, centre_mm_zyx)) <= radius_mm ** 2


def overlap_dice(radius, shift):
    """Dice of two balls of one radius whose centres are ``shift`` apart (lens volume formula)."""
    lens = math.pi * (4 * radius + shift) * (2 * radius - shift) ** 2 / 12
    return lens / (4 / 3 * math.pi * radius ** 3)


def test_identical_masks_are_perfect():
    a = sphere((40, 40, 40), (0.5, 0.5, 0.5), (10, 10, 10), 6)
    m = organ_metrics(a, a, (0.5, 0.5, 0.5))
    assert m["outcome"] == "tp" and m["dice"] == 1.0 and m["hd95_mm"] == 0.0 and m["nsd"] == 1.0
    assert m["volume_diff_ml"] == 0.0


@pytest.mark.parametrize("spacing", [(0.5, 0.5, 0.5), (1.0, 0.5, 0.25)])
@pytest.mark.parametrize("axis", [0, 2])
def test_shifted_sphere_matches_analytic_values(spacing, axis):
    # radius 10 mm, shifted by d = 4 mm: a surface point at angle t from the shift axis is about
    # d |cos t| from the other surface, and |cos t| is uniform on a sphere, so HD95 ~ 0.95 d and
    # NSD at tolerance 2 mm ~ 2 / d = 0.5
    shape = tuple(int(32 / s) for s in spacing)
    centre = np.array([16.0, 16.0, 16.0])
    moved = centre.copy()
    moved[axis] += 4.0
    a, b = sphere(shape, spacing, centre, 10), sphere(shape, spacing, moved, 10)
    m = organ_metrics(a, b, spacing, tolerance_mm=2.0)
    assert m["dice"] == pytest.approx(overlap_dice(10, 4), abs=0.01)
    assert m["hd95_mm"] == pytest.approx(3.8, abs=0.5)
    assert m["nsd"] == pytest.approx(0.5, abs=0.08)
    # physical spacing is honoured: volume of a 10 mm ball is 4.19 mL whatever the grid
    assert m["volume_ref_ml"] == pytest.approx(4 / 3 * math.pi * 1000 / 1000, rel=0.03)


def test_nsd_grows_with_tolerance_and_hd95_with_shift():
    sp = (0.5, 0.5, 0.5)
    a = sphere((64, 64, 64), sp, (16, 16, 16), 8)
    near, far = sphere((64, 64, 64), sp, (16, 16, 18), 8), sphere((64, 64, 64), sp, (16, 16, 22), 8)
    assert organ_metrics(a, near, sp, 1.0)["nsd"] < organ_metrics(a, near, sp, 3.0)["nsd"]
    assert organ_metrics(a, near, sp)["hd95_mm"] < organ_metrics(a, far, sp)["hd95_mm"]


def test_empty_masks_follow_the_documented_rules():
    sp = (2.0, 1.0, 1.0)
    empty = np.zeros((10, 20, 30), bool)
    organ = empty.copy()
    organ[3:6, 5:10, 5:10] = True
    diagonal = math.sqrt(20 ** 2 + 20 ** 2 + 30 ** 2)
    tn = organ_metrics(empty, empty, sp)
    assert tn["outcome"] == "tn" and tn["dice"] is None and tn["hd95_mm"] is None and tn["volume_diff_ml"] == 0
    fn = organ_metrics(organ, empty, sp)
    assert fn["outcome"] == "fn" and fn["dice"] == 0 and fn["nsd"] == 0
    assert fn["hd95_mm"] == pytest.approx(diagonal)
    assert fn["volume_diff_ml"] == pytest.approx(-75 * 2 / 1000)
    fp = organ_metrics(empty, organ, sp)
    assert fp["outcome"] == "fp" and fp["dice"] == 0 and fp["hd95_mm"] == pytest.approx(diagonal)
    assert fp["volume_diff_ml"] == pytest.approx(75 * 2 / 1000)


def _write(arr, path, spacing=(1.5, 1.0, 2.0), direction=(1, 0, 0, 0, -1, 0, 0, 0, 1)):
    img = sitk.GetImageFromArray(arr.astype(np.uint8))
    img.SetSpacing(spacing)
    img.SetOrigin((-10.0, 5.0, 3.0))
    img.SetDirection(direction)
    sitk.WriteImage(img, str(path))


@pytest.fixture
def folders(tmp_path):
    """Three cases, labels a=1, b=2, c=3 in the reference; the prediction numbers them c=1, a=2, b=3."""
    ref_dir, pred_dir = tmp_path / "ref" / "labelsTr", tmp_path / "pred"
    ref_dir.mkdir(parents=True)
    pred_dir.mkdir()
    (tmp_path / "ref" / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "a": 1, "b": 2, "c": 3}}))
    (pred_dir / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "c": 1, "a": 2, "b": 3}}))
    rng = np.random.default_rng(0)
    for k in range(3):
        ref = np.zeros((20, 30, 30), np.uint8)
        ref[2:12, 3:15, 4:14] = 1
        ref[5:15, 18:27, 15:26] = 2
        if k != 2:
            ref[14:19, 2:8, 20:28] = 3              # c absent in case 2
        pred = np.zeros_like(ref)
        pred[ref == 1] = 2
        pred[np.roll(ref == 2, k + 1, axis=2)] = 3
        pred[(ref == 3) & (rng.random(ref.shape) < 0.8)] = 1
        if k == 1:
            pred[pred == 3] = 0                     # b missed in case 1
        _write(ref, ref_dir / f"case{k}.nii.gz")
        _write(pred, pred_dir / f"case{k}.nii.gz")
    return tmp_path, ref_dir, pred_dir


def test_evaluate_folders_rules(folders):
    root, ref_dir, pred_dir = folders
    annotations = {"case0": ["a", "b", "c"], "case1": ["a", "b"], "case2": ["a", "b", "c"]}
    r = evaluate_folders(ref_dir, pred_dir, annotations, progress=False)
    assert r["per_case"]["case0"]["a"]["dice"] == 1.0          # names matched across different numbering
    assert "c" not in r["per_case"]["case1"] and r["skipped"]["case1"]["c"] == "not annotated"
    assert r["per_case"]["case2"]["c"]["outcome"] == "tn"
    assert r["per_case"]["case1"]["b"]["outcome"] == "fn"
    assert r["per_organ"]["c"]["outcomes"] == {"tp": 1, "fn": 0, "fp": 0, "tn": 1}
    assert r["per_organ"]["c"]["dice"]["n"] == 1               # the true negative is not averaged
    assert r["per_organ"]["b"]["dice"]["n"] == 3
    assert r["per_case"]["case0"]["a"]["volume_ref_ml"] == pytest.approx(10 * 12 * 10 * 3.0 / 1000)


def test_evaluate_agrees_with_nnunet_dice(folders):
    from nnunetv2.evaluation.evaluate_predictions import compute_metrics_on_folder
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
    root, ref_dir, pred_dir = folders
    # nnU-Net needs one numbering: renumber our predictions to the reference's
    renum = root / "pred_renumbered"
    renum.mkdir()
    mapping = {1: 3, 2: 1, 3: 2}
    for f in pred_dir.glob("*.nii.gz"):
        img = sitk.ReadImage(str(f))
        arr = sitk.GetArrayFromImage(img)
        out = np.zeros_like(arr)
        for src, dst in mapping.items():
            out[arr == src] = dst
        o = sitk.GetImageFromArray(out)
        o.CopyInformation(img)
        sitk.WriteImage(o, str(renum / f.name))
    ours = evaluate_folders(ref_dir, pred_dir, progress=False)
    theirs = compute_metrics_on_folder(str(ref_dir), str(renum), str(root / "summary.json"), SimpleITKIO(),
                                       ".nii.gz", [1, 2, 3], None, 1)
    names = {1: "a", 2: "b", 3: "c"}
    checked = 0
    for case in theirs["metric_per_case"]:
        cid = case["reference_file"].split("/")[-1].split(".")[0]
        for label, m in case["metrics"].items():
            ours_dice = ours["per_case"][cid][names[int(label)]]["dice"]
            if np.isnan(m["Dice"]):
                assert ours_dice is None
            else:
                assert ours_dice == pytest.approx(m["Dice"], abs=1e-9)
                checked += 1
    assert checked == 8


def test_evaluate_cli_writes_json_and_csv(folders, tmp_path):
    from nnunet_oar.cli import main
    root, ref_dir, pred_dir = folders
    ann = root / "annotations.json"
    ann.write_text(json.dumps({"case0": ["a"], "case1": ["a"], "case2": ["a"]}))
    assert main(["evaluate", "-r", str(ref_dir), "-p", str(pred_dir), "--annotations", str(ann),
                 "-o", str(tmp_path / "m.json")]) == 0
    result = json.loads((tmp_path / "m.json").read_text())
    assert result["overall"]["dice"]["mean"] == 1.0
    rows = list(csv.DictReader(open(tmp_path / "m.csv")))
    assert len(rows) == 3 and {r["organ"] for r in rows} == {"a"}
    summary = {r["organ"]: r for r in csv.DictReader(open(tmp_path / "m_summary.csv"))}
    assert set(summary) == {"a", "overall"} and float(summary["a"]["dice_mean"]) == 1.0 and summary["a"]["tp"] == "3"


def test_evaluate_names_a_prediction_on_another_grid(folders):
    from nnunet_oar.io import InputError
    root, ref_dir, pred_dir = folders
    arr = sitk.GetArrayFromImage(sitk.ReadImage(str(pred_dir / "case1.nii.gz")))
    _write(arr, pred_dir / "case1.nii.gz", spacing=(1.0, 1.0, 2.0))
    with pytest.raises(InputError, match="case1.nii.gz"):
        evaluate_folders(ref_dir, pred_dir, progress=False)


def test_localization_error_per_axis_and_the_worst_case_are_named():
    from nnunet_oar.localization.boxes import organ_box
    from nnunet_oar.evaluation.metrics import localization_metrics, summarize_localization
    # 2 x 1 x 1 mm voxels along (x, y, z) and z flipped: world axes differ from array axes
    geom = {"size_xyz": [20, 20, 20], "spacing_xyz": [2.0, 1.0, 1.0], "origin_xyz": [0.0, 0.0, 0.0],
            "direction": [1, 0, 0, 0, 1, 0, 0, 0, -1]}
    mask = np.zeros((20, 20, 20), bool)
    mask[5:9, 5:9, 5:9] = True                      # z, y, x indices 5..8: centre (13, 6.5, -6.5) mm in x, y, z
    per_case = {}
    for case, shift in (("a", (2.0, 0.0, 0.0)), ("b", (0.0, 0.0, -3.0))):
        centre = np.array([13.0, 6.5, -6.5]) + shift
        entry = {"status": "found", "centroid_mm": centre.tolist(), **organ_box(geom, centre, [8, 4, 4], 0.0)}
        per_case[case] = {"organ": localization_metrics(mask, geom, entry)}
    assert np.allclose(per_case["a"]["organ"]["centroid_error_xyz_mm"], [2, 0, 0])
    assert np.allclose(per_case["b"]["organ"]["centroid_error_xyz_mm"], [0, 0, 3])
    s = summarize_localization(per_case)["organ"]
    assert np.allclose(s["centroid_error_xyz_mm"]["median"], [1, 0, 1.5])
    # the signed offset (predicted - reference) keeps the direction: b was placed 3 mm towards -z
    assert np.allclose(per_case["b"]["organ"]["centroid_offset_xyz_mm"], [0, 0, -3])
    assert np.allclose(s["centroid_offset_xyz_mm"]["median"], [1, 0, -1.5])
    # a box shifted 3 mm along z holds 1 of the 4 slices: the worse case is named
    assert s["containment"]["min_case"] == "b" and s["containment"]["min"] < per_case["a"]["organ"]["containment"]
    # where the contour leaves its box, in world mm per wall: a spills 2 mm towards -x, b 3 mm towards +z
    assert np.allclose(per_case["a"]["organ"]["spill_mm"]["min"], [2, 0, 0])
    assert np.allclose(per_case["a"]["organ"]["spill_mm"]["max"], [0, 0, 0])
    assert np.allclose(per_case["b"]["organ"]["spill_mm"]["min"], [0, 0, 0])
    assert np.allclose(per_case["b"]["organ"]["spill_mm"]["max"], [0, 0, 3])
