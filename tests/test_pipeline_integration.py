"""Organ stage and end to end on tiny phantoms, through the stock nnU-Net commands: crop-rois,
plan-organs, nnUNetv2_train for each organ, export-models, `nnunet_oar predict`, `nnunet_oar merge`."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_oar import organs as catalogue
from nnunet_oar.io import geometry
from tests.nnunet_helpers import LOC_TRAINER, run

ORGANS = ["liver", "kidney_left"]
ORGAN_TRAINER = "nnUNetTrainerOARTiny"
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def pipeline(trained_localizer):
    t = trained_localizer
    env, root = t["env"], t["root"]
    run([sys.executable, str(REPO / "dataset_conversion" / "crop_rois.py"), "-d", "601", "--boxes-from-labels",
         "--shift", "3", "--organs", *ORGANS, "--first-id", "611"], env)
    run(["nnunet_oar", "plan-organs", "--first-id", "611", "--spacing", "0"], env)
    for dataset_id in ("611", "612"):
        run(["nnUNetv2_train", dataset_id, "3d_fullres", "all", "-tr", ORGAN_TRAINER, "-device", "cpu"], env)
    models = root / "models"
    # tau = -1 marks every organ found, so that the organ networks always run in this test whatever the
    # briefly trained localizer outputs
    run(["nnunet_oar", "export-models", "-o", str(models), "--localizer-id", "601", "--first-id", "611",
         "--localizer-trainer", LOC_TRAINER, "--organ-trainer", ORGAN_TRAINER, "--tau", "-1"], env)
    return {**t, "models": models}


@pytest.mark.slow
def test_crop_datasets_hold_exact_crops_of_the_source(pipeline):
    raw = pipeline["root"] / "nnUNet_raw"
    liver = raw / "Dataset611_VISCERAL_liver"
    assert (raw / "Dataset612_VISCERAL_kidney_left").is_dir()
    assert json.loads((liver / "dataset.json").read_text())["labels"] == {"background": 0, "liver": 1}
    crops = json.loads((liver / "crops.json").read_text())
    source_labels = json.loads((raw / "Dataset601_VISCERAL" / "dataset.json").read_text())["labels"]
    for crop_id, c in crops.items():
        src_ct = sitk.ReadImage(str(raw / "Dataset601_VISCERAL" / "imagesTr" / f"{c['source_case']}_0000.nii.gz"))
        src_seg = sitk.GetArrayFromImage(sitk.ReadImage(str(raw / "Dataset601_VISCERAL" / "labelsTr" /
                                                            f"{c['source_case']}.nii.gz")))
        ct = sitk.ReadImage(str(liver / "imagesTr" / f"{crop_id}_0000.nii.gz"))
        seg = sitk.GetArrayFromImage(sitk.ReadImage(str(liver / "labelsTr" / f"{crop_id}.nii.gz")))
        (x0, y0, z0), (x1, y1, z1) = c["box_index_xyz"]["start"], c["box_index_xyz"]["stop"]
        assert np.allclose(ct.GetOrigin(), src_ct.TransformIndexToPhysicalPoint((x0, y0, z0)))
        assert np.array_equal(sitk.GetArrayFromImage(ct), sitk.GetArrayFromImage(src_ct)[z0:z1, y0:y1, x0:x1])
        assert np.array_equal(seg == 1, src_seg[z0:z1, y0:y1, x0:x1] == source_labels["liver"])
    report = json.loads((liver / "crop_report.json").read_text())
    assert report["cases"] == len(crops)


@pytest.mark.slow
def test_crops_from_localizer_boxes_report_missed_and_cut_organs(pipeline, tmp_path):
    from nnunet_oar.segmentation.crops import crop_rois
    raw = pipeline["root"] / "nnUNet_raw" / "Dataset601_VISCERAL"
    annotations = json.loads((raw / "annotations.json").read_text())
    cases = [c for c in sorted(annotations) if "liver" in annotations[c]]
    from nnunet_oar.contracts import write_boxes
    from nnunet_oar.io import geometry
    boxes = tmp_path / "boxes"
    boxes.mkdir()

    def write(case, liver, stop=None):
        seg = sitk.ReadImage(str(raw / "labelsTr" / f"{case}.nii.gz"))
        if stop is not None:
            liver.update(box_index_xyz={"start": [0, 0, 0], "stop": stop(list(seg.GetSize()))}, clipped=False,
                         centroid_mm=list(seg.GetOrigin()))
        write_boxes({"case": case, "image": geometry(seg), "organs": {"liver": liver}}, boxes)
    for c in cases[2:]:                                        # the others: a box over the whole image
        write(c, {"status": "found"}, lambda size: size)
    write(cases[0], {"status": "found"}, lambda size: [s // 2 for s in size])   # one corner of the image only
    write(cases[1], {"status": "absent", "peak": 0.01})
    with pytest.MonkeyPatch.context() as mp:
        for k, v in pipeline["env"].items():
            if k.startswith("nnUNet_"):
                mp.setenv(k, v)
        reports = crop_rois(601, 621, boxes, ["liver"], progress=False)
    r = reports["liver"]
    assert r["skipped"][cases[1]] == "missed by the localizer"
    assert 0 < r["cut"][cases[0]] <= 1
    assert r["cases"] == len(cases) - 1 and cases[2:] and all(c not in r["cut"] for c in cases[2:])


@pytest.mark.slow
def test_organ_networks_are_planned_on_crop_sized_patches(pipeline):
    pre = pipeline["root"] / "nnUNet_preprocessed" / "Dataset611_VISCERAL_liver"
    c = json.loads((pre / "nnUNetPlans.json").read_text())["configurations"]["3d_fullres"]
    assert all(p <= 2 * m + 16 for p, m in zip(c["patch_size"], c["median_image_size_in_voxels"]))


@pytest.mark.slow
def test_predict_end_to_end_keeps_the_input_geometry(pipeline, tmp_path):
    image = next((pipeline["root"] / "heldout").glob("*_ThAb.nii.gz"))
    out = tmp_path / "pred"
    run(["nnunet_oar", "predict", "-i", str(image), "-o", str(out), "-m", str(pipeline["models"]),
         "--disable-tta"], pipeline["env"])
    case = image.name[: -len(".nii.gz")]
    ct, seg = sitk.ReadImage(str(image)), sitk.ReadImage(str(out / f"{case}.nii.gz"))
    assert seg.GetSize() == ct.GetSize() and seg.GetSpacing() == ct.GetSpacing()
    assert seg.GetOrigin() == ct.GetOrigin() and seg.GetDirection() == ct.GetDirection()
    sidecar = json.loads((out / f"{case}.json").read_text())
    assert sidecar["labels"] == {"background": 0, "liver": 1, "kidney_left": 2}
    assert set(np.unique(sitk.GetArrayFromImage(seg))) <= {0, 1, 2}
    stats = json.loads((out / f"{case}_stats.json").read_text())["organs"]
    assert stats["kidney_right"] == {"status": "not_requested"}      # the localizer knows it, no organ model
    for organ in ORGANS:
        s = stats[organ]
        assert s["localizer"] == "found" and s["status"] in ("found", "absent") and s["volume_ml"] >= 0
    boxes = json.loads((out / f"{case}_boxes.json").read_text())
    for organ in ORGANS:                                    # cut organs are flagged, never at the image border
        entry = boxes["organs"][organ]
        assert stats[organ]["cut_by_box"] == entry["cut_by_box"]
        for face in entry["cut_by_box"]:
            k, at_start = "xyz".index(face[0]), face[1] == "-"
            box = entry["box_index_xyz"]
            assert box["start"][k] > 0 if at_start else box["stop"][k] < ct.GetSize()[k]
    before = sorted(p.name for p in out.iterdir())
    run(["nnunet_oar", "predict", "-i", str(image), "-o", str(out), "-m", str(pipeline["models"]),
         "--disable-tta", "--organs", "liver"], pipeline["env"])
    assert sorted(p.name for p in out.iterdir()) == before      # replaced in place, no temporary left


def _voxel_counter():
    """``({"n": voxels}, on_load hook)``: the voxels of every forward pass of the organ networks it is given."""
    count = {"n": 0}

    def hook(predictor):
        predictor.network.register_forward_hook(
            lambda _m, inputs, _o: count.__setitem__("n", count["n"] + int(np.prod(inputs[0].shape[2:]))))
    return count, hook


@pytest.mark.slow
def test_the_crop_tile_takes_fewer_voxels_than_the_trained_patch_and_no_more_memory(pipeline):
    """--tile crop: a crop larger than its patch goes through its network with its own tile (a multiple of the
    network's stride, holding at most the trained patch's voxels) in fewer passes, set through nnU-Net's
    manual_initialization; the output keeps the grid. The liver's box is widened to the whole image so that
    its crop outgrows the patch (the phantoms' own crops are about the patch's size)."""
    import copy
    from nnunet_oar.segmentation.predict import OARPredictor
    image = next((pipeline["root"] / "heldout").glob("*_ThAb.nii.gz"))
    ct = sitk.ReadImage(str(image))
    found, _ = OARPredictor(pipeline["models"], tta=False, one_fold=True).localizer.localize_file(image, "c")
    assert found["organs"]["liver"]["status"] == "found"
    found["organs"]["liver"]["box_index_xyz"] = {"start": [0, 0, 0], "stop": list(ct.GetSize())}
    voxels, liver_tile = {}, {}
    for tile in ("crop", "trained"):
        count, hook = _voxel_counter()
        p = OARPredictor(pipeline["models"], tta=False, tile=tile, one_fold=True, on_load=hook, max_loaded=None)
        seg, boxes = p.predict_image(ct, image, "c", boxes=copy.deepcopy(found))
        assert seg.GetSize() == ct.GetSize() and seg.GetOrigin() == ct.GetOrigin()
        voxels[tile], liver_tile[tile] = count["n"], boxes["organs"]["liver"]["tile"]
        for organ in ORGANS:
            entry, trained = boxes["organs"][organ], p._trained[organ]
            assert entry["tile"].startswith(("tile", "trained patch") if tile == "crop" else "trained patch")
            if entry["tile"].startswith("tile"):
                tile_zyx = json.loads(entry["tile"].split(" ", 1)[1])
                stride = np.prod(trained.network_arch_init_kwargs["strides"], axis=0)
                assert all(t % s == 0 for t, s in zip(tile_zyx, stride))
                assert np.prod(tile_zyx) <= np.prod(trained.patch_size)
    assert liver_tile["crop"].startswith("tile") and liver_tile["trained"].startswith("trained patch")
    assert 0 < voxels["crop"] < voxels["trained"]


@pytest.mark.slow
def test_a_coarser_organ_grid_takes_fewer_voxels_through_the_networks_and_keeps_the_grid(pipeline):
    """--preset fastest: each organ network on a coarser grid (nnU-Net's manual_initialization, its patch
    scaled to the same field of view): fewer voxels through the organ networks, the labels on the input's
    grid, and each organ's box says which grid its network ran on."""
    from nnunet_oar.segmentation.predict import OARPredictor
    from nnunet_oar.segmentation.presets import GRID_FACTOR_FASTEST, PRESETS
    image = next((pipeline["root"] / "heldout").glob("*_ThAb.nii.gz"))
    ct = sitk.ReadImage(str(image))
    voxels, segs = {}, {}
    for preset in ("fast", "fastest"):
        count, hook = _voxel_counter()
        p = OARPredictor(pipeline["models"], on_load=hook, **PRESETS[preset])
        segs[preset], boxes = p.predict_image(ct, image, "c")
        voxels[preset] = count["n"]
        assert segs[preset].GetSize() == ct.GetSize() and segs[preset].GetOrigin() == ct.GetOrigin()
        assert segs[preset].GetSpacing() == ct.GetSpacing() and segs[preset].GetDirection() == ct.GetDirection()
        for organ in ORGANS:
            entry = boxes["organs"][organ]
            assert (f"{GRID_FACTOR_FASTEST:g}x coarser grid" in entry["tile"]) == (preset == "fastest")
            assert entry.get("grid_factor", 1.0) == PRESETS[preset]["grid_factor"]
    # 1 / 1.25^3 = 0.51 on large patches; the fixture's small ones round up to the network's stride (about 0.6)
    assert voxels["fastest"] < 0.75 * voxels["fast"]
    fast, fastest = (sitk.GetArrayFromImage(segs[k]) for k in ("fast", "fastest"))
    assert (fastest > 0).any() and set(np.unique(fastest)) <= set(np.unique(fast)) | {0}


@pytest.mark.slow
def test_one_organ_network_at_a_time_is_loaded_on_the_main_thread_and_changes_nothing(pipeline):
    """One network kept at a time: each organ's is loaded when its crop comes, on the main thread (nnU-Net's
    trainer lookup is not thread-safe), once per case, no more than one is kept afterwards, and the labels
    are exactly those of a run with every network loaded first."""
    import threading
    from nnunet_oar.segmentation.predict import OARPredictor

    class Recording(OARPredictor):
        def _load(self, organ):
            self.threads.append((organ, threading.current_thread().name))
            return super()._load(organ)

    image = next((pipeline["root"] / "heldout").glob("*_ThAb.nii.gz"))
    ct = sitk.ReadImage(str(image))
    loads = []
    p = Recording(pipeline["models"], tta=False, one_fold=True, max_loaded=1, tile="crop",
                  on_load=lambda net: loads.append(net))
    p.threads = []
    seg, boxes = p.predict_image(ct, image, "c")
    found = [o for o in ORGANS if boxes["organs"][o]["status"] == "found"]
    assert found == ORGANS                                    # tau = -1: both organs run
    assert p.threads == [(o, threading.current_thread().name) for o in found] and len(loads) == len(found)
    assert list(p._loaded) == [found[-1]]
    everything = OARPredictor(pipeline["models"], tta=False, one_fold=True, max_loaded=None, tile="crop")
    for organ in ORGANS:
        everything.network(organ)
    seg_all, _ = everything.predict_image(ct, image, "c")
    assert np.array_equal(sitk.GetArrayViewFromImage(seg), sitk.GetArrayViewFromImage(seg_all))


@pytest.mark.slow
def test_a_models_zip_predicts_what_its_folder_predicts(pipeline, tmp_path):
    """export-models --zip -> install-models elsewhere -> predict, and predict -m models.zip directly:
    the same label map as from the exported folder."""
    env = {**pipeline["env"], "nnunet_oar_cache": str(tmp_path / "cache")}
    image = next((pipeline["root"] / "heldout").glob("*_ThAb.nii.gz"))
    case = image.name[: -len(".nii.gz")]
    run(["nnunet_oar", "export-models", "-o", str(tmp_path / "exported"), "--localizer-id", "601", "--first-id",
         "611", "--localizer-trainer", LOC_TRAINER, "--organ-trainer", ORGAN_TRAINER, "--tau", "-1",
         "--zip", str(tmp_path / "models.zip")], env)
    run(["nnunet_oar", "install-models", str(tmp_path / "models.zip"), "-o", str(tmp_path / "installed")], env)
    maps = []
    for models in ("exported", "installed", "models.zip"):
        run(["nnunet_oar", "predict", "-i", str(image), "-o", str(tmp_path / f"pred_{models}"), "-m",
             str(tmp_path / models), "--disable-tta", "--organs", "liver"], env)
        maps.append(sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / f"pred_{models}" / f"{case}.nii.gz"))))
    assert np.array_equal(maps[0], maps[1]) and np.array_equal(maps[0], maps[2])
    assert (maps[0] > 0).any()


@pytest.mark.slow
def test_a_2d_organ_network_from_its_best_checkpoint_predicts_end_to_end(pipeline, tmp_path):
    """Any nnU-Net configuration as an organ network: a 2d liver network (checkpoint_best.pth), exported
    with -c/--checkpoint, recorded in models.json, used by predict."""
    env = pipeline["env"]
    run(["nnUNetv2_preprocess", "-d", "611", "-c", "2d", "-np", "1"], env)
    run(["nnUNetv2_train", "611", "2d", "all", "-tr", ORGAN_TRAINER, "-device", "cpu"], env)
    models = tmp_path / "models_2d"
    run(["nnunet_oar", "export-models", "-o", str(models), "--localizer-id", "601", "--organ-ids", "611",
         "--localizer-trainer", LOC_TRAINER, "--organ-trainer", ORGAN_TRAINER, "--tau", "-1", "-c", "2d",
         "--checkpoint", "checkpoint_best.pth"], env)
    entry = json.loads((models / "models.json").read_text())["organs"]["liver"]
    assert (entry["configuration"], entry["checkpoint"], entry["plans"]) == ("2d", "checkpoint_best.pth", "nnUNetPlans")
    assert [p.name for p in (models / "organs" / "liver" / "fold_all").iterdir()] == ["checkpoint_best.pth"]
    image = next((pipeline["root"] / "heldout").glob("*_ThAb.nii.gz"))
    run(["nnunet_oar", "predict", "-i", str(image), "-o", str(tmp_path / "pred"), "-m", str(models),
         "--disable-tta"], env)
    case = image.name[: -len(".nii.gz")]
    ct, seg = sitk.ReadImage(str(image)), sitk.ReadImage(str(tmp_path / "pred" / f"{case}.nii.gz"))
    assert seg.GetSize() == ct.GetSize() and seg.GetOrigin() == ct.GetOrigin()
    stats = json.loads((tmp_path / "pred" / f"{case}_stats.json").read_text())["organs"]
    assert stats["liver"]["status"] in ("found", "absent") and stats["liver"]["localizer"] == "found"
    # one tile per crop is for 3D networks: a 2D one keeps its trained patch, and says why
    run(["nnunet_oar", "predict", "-i", str(image), "-o", str(tmp_path / "pred_tile"), "-m", str(models),
         "--preset", "fast", "--tile", "crop"], env)
    entry = json.loads((tmp_path / "pred_tile" / f"{case}_boxes.json").read_text())["organs"]["liver"]
    assert entry["tile"].startswith("trained patch") and entry["tile"].endswith("(a 2D network)")


@pytest.mark.slow
def test_postprocessing_is_nnunets_where_it_chose_one_else_on_request(pipeline, tmp_path):
    """A postprocessing.pkl in an organ network's cross-validation results travels into the models folder
    and is applied; --largest-component applies nnU-Net's function to other organs; both are reported."""
    from batchgenerators.utilities.file_and_folder_operations import save_pickle
    from nnunetv2.postprocessing.remove_connected_components import remove_all_but_largest_component_from_segmentation
    env = pipeline["env"]
    results = next((pipeline["root"] / "nnUNet_results").glob("Dataset611_*")) / f"{ORGAN_TRAINER}__nnUNetPlans__3d_fullres"
    (results / "crossval_results_folds_all").mkdir(exist_ok=True)
    save_pickle(([remove_all_but_largest_component_from_segmentation], [{"labels_or_regions": 1}]),
                str(results / "crossval_results_folds_all" / "postprocessing.pkl"))
    models = tmp_path / "models_pp"
    try:
        run(["nnunet_oar", "export-models", "-o", str(models), "--localizer-id", "601", "--first-id", "611",
             "--localizer-trainer", LOC_TRAINER, "--organ-trainer", ORGAN_TRAINER, "--tau", "-1"], env)
    finally:
        shutil.rmtree(results / "crossval_results_folds_all")
    manifest = json.loads((models / "models.json").read_text())["organs"]
    assert manifest["liver"]["postprocessing"] == "postprocessing.pkl" and manifest["kidney_left"]["postprocessing"] is None
    image = next((pipeline["root"] / "heldout").glob("*_ThAb.nii.gz"))
    run(["nnunet_oar", "predict", "-i", str(image), "-o", str(tmp_path / "pred"), "-m", str(models),
         "--disable-tta", "--largest-component", "kidney_left"], env)
    stats = json.loads((tmp_path / "pred" / f"{image.name[: -len('.nii.gz')]}_stats.json").read_text())["organs"]
    for organ, method in (("liver", "nnU-Net postprocessing.pkl"), ("kidney_left", "largest component")):
        if "postprocessing" in stats[organ]:          # an organ the brief training found nothing of has no record
            assert stats[organ]["postprocessing"]["method"] == method
            assert stats[organ]["postprocessing"]["removed_voxels"] >= 0
    assert any("postprocessing" in stats[o] for o in ("liver", "kidney_left"))


@pytest.mark.slow
def test_batch_prediction_workflow_finishes_the_good_cases_names_the_bad_and_resumes(pipeline, tmp_path):
    """`nnunet_oar workflow predict`: chunks of 2 cases through `nnunet_oar predict`; a broken input fails
    its chunk but not the others (nor its chunk-mate), is named, and a rerun after the fix predicts only
    the unfinished chunk."""
    import yaml
    cts = tmp_path / "cts"
    cts.mkdir()
    image = next((pipeline["root"] / "heldout").glob("*_ThAb.nii.gz"))
    for name in ("a", "b", "c"):                        # three cases (one held-out phantom, three names)
        shutil.copy(image, cts / f"{name}.nii.gz")
    (cts / "zz_broken.nii.gz").write_text("not an image")
    config = tmp_path / "predict.yaml"
    config.write_text(yaml.safe_dump({"input": "cts", "output": "out", "models": str(pipeline["models"]),
                                      "chunk_size": 2, "predict_args": ["--disable-tta", "--organs", "liver"]}))
    cmd = ["nnunet_oar", "workflow", "predict", "--config", str(config), "--cores", "1"]
    r = subprocess.run(cmd, env=pipeline["env"], capture_output=True, text=True)
    assert r.returncode != 0 and "1 case(s) not finished" in r.stderr and "zz_broken" in r.stderr
    cases = ["a", "b", "c"]
    for case in cases:              # chunk 1 holds the third case and the broken one: it finished too
        assert (tmp_path / "out" / f"{case}_manifest.json").is_file()
        assert (tmp_path / "out" / f"{case}.nii.gz").is_file()
    first_chunk = (tmp_path / "out" / f"{cases[0]}.nii.gz").stat().st_mtime_ns
    (cts / "zz_broken.nii.gz").unlink()
    (tmp_path / "cts_list.txt").write_text("".join(f"{cts / c}.nii.gz\n" for c in cases))
    config.write_text(config.read_text().replace("input: cts", f"input: {tmp_path / 'cts_list.txt'}"))
    r = subprocess.run(cmd, env=pipeline["env"], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert (tmp_path / "out" / f"{cases[0]}.nii.gz").stat().st_mtime_ns == first_chunk    # not predicted again
    # the same files as `nnunet_oar predict` on the folder, and the same label maps: voxel-exact where both
    # runs sum in the same order; a job on other cores may sum otherwise, so up to 0.1 % of the voxels
    # (a wrong organ set or other settings change far more)
    run(["nnunet_oar", "predict", "-i", str(cts), "-o", str(tmp_path / "direct"), "-m", str(pipeline["models"]),
         "--disable-tta", "--organs", "liver"], pipeline["env"])
    assert sorted(f.name for f in (tmp_path / "out").iterdir() if f.is_file()) == \
        sorted(f.name for f in (tmp_path / "direct").iterdir() if f.is_file())
    for case in cases:
        a, b = (sitk.ReadImage(str(tmp_path / d / f"{case}.nii.gz")) for d in ("out", "direct"))
        assert geometry(a) == geometry(b)
        a, b = sitk.GetArrayFromImage(a), sitk.GetArrayFromImage(b)
        assert set(np.unique(a)) == set(np.unique(b)) and np.mean(a != b) <= 1e-3, (case, int((a != b).sum()))


@pytest.mark.slow
def test_predict_bad_input_is_named_and_other_cases_go_on(pipeline, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    image = next((pipeline["root"] / "heldout").glob("*_ThAb.nii.gz"))
    shutil.copy(image, src / image.name)
    (src / "corrupt.nii.gz").write_bytes(b"\x00" * 10)
    r = subprocess.run(["nnunet_oar", "predict", "-i", str(src), "-o", str(tmp_path / "o"), "-m",
                        str(pipeline["models"]), "--disable-tta"], env=pipeline["env"], capture_output=True, text=True)
    assert r.returncode == 2 and "corrupt.nii.gz" in r.stderr
    assert (tmp_path / "o" / image.name).is_file()
    assert not (tmp_path / "o" / "corrupt.nii.gz").exists()


@pytest.mark.slow
def test_merge_of_nnunet_prediction_folders(pipeline, tmp_path):
    env, raw = pipeline["env"], pipeline["root"] / "nnUNet_raw"
    folders = []
    for dataset_id, name in (("611", "liver"), ("612", "kidney_left")):
        ds = raw / f"Dataset{dataset_id}_VISCERAL_{name}"
        pred = tmp_path / name
        run(["nnUNetv2_predict", "-i", str(ds / "imagesTr"), "-o", str(pred), "-d", dataset_id, "-c", "3d_fullres",
             "-f", "all", "-tr", ORGAN_TRAINER, "--save_probabilities", "--disable_tta", "-device", "cpu",
             "-npp", "1", "-nps", "1"], env)
        shutil.copy(ds / "crops.json", pred / "crops.json")
        folders.append(str(pred))
    out = tmp_path / "merged"
    run([sys.executable, str(REPO / "postprocessing" / "merge_organs.py"), "-i", *folders, "-o", str(out)], env)
    crops = json.loads((raw / "Dataset611_VISCERAL_liver" / "crops.json").read_text())
    case = next(iter(crops))
    src = sitk.ReadImage(str(raw / "Dataset601_VISCERAL" / "imagesTr" / f"{case}_0000.nii.gz"))
    merged = sitk.ReadImage(str(out / f"{case}.nii.gz"))
    assert merged.GetSize() == src.GetSize() and merged.GetOrigin() == src.GetOrigin()
    assert merged.GetDirection() == src.GetDirection() and merged.GetSpacing() == src.GetSpacing()
    labels = json.loads((out / f"{case}.json").read_text())["labels"]
    assert labels == {"background": 0, "liver": 1, "kidney_left": 2}
    # where the liver crop's own nnU-Net segmentation says liver and no kidney crop overlaps, the merge says liver
    liver_seg = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "liver" / f"{case}.nii.gz")))
    (x0, y0, z0), (x1, y1, z1) = crops[case]["box_index_xyz"]["start"], crops[case]["box_index_xyz"]["stop"]
    m = sitk.GetArrayFromImage(merged)[z0:z1, y0:y1, x0:x1]
    assert np.all(m[liver_seg == 1] != 0)


@pytest.mark.slow
def test_predict_from_a_dicom_series_writes_clinical_files(pipeline, tmp_path):
    from nnunet_oar.dicom.series import read_ct_series
    from tests.dicom_helpers import write_ct_series
    image = next((pipeline["root"] / "heldout").glob("*_ThAb.nii.gz"))
    dcm = tmp_path / "CT_series"
    uids = write_ct_series(sitk.ReadImage(str(image)), dcm)
    before = sorted(p.name for p in dcm.iterdir())
    out = tmp_path / "out"
    run(["nnunet_oar", "predict", "-i", str(dcm), "-o", str(out), "-m", str(pipeline["models"]), "--disable-tta",
         "--rtstruct", "--dicom-seg", "--preview"], pipeline["env"])
    assert sorted(p.name for p in dcm.iterdir()) == before                 # nothing written beside the input
    ct, series = read_ct_series(dcm)
    seg = sitk.ReadImage(str(out / "CT_series.nii.gz"))
    assert seg.GetSize() == ct.GetSize() and np.allclose(seg.GetSpacing(), ct.GetSpacing())
    assert np.allclose(seg.GetOrigin(), ct.GetOrigin()) and np.allclose(seg.GetDirection(), ct.GetDirection())
    stats = json.loads((out / "CT_series_stats.json").read_text())["organs"]
    found = [o for o in ORGANS if stats[o]["status"] == "found"]
    import pydicom
    rt = pydicom.dcmread(out / "CT_series_rtstruct.dcm")
    names = sorted(r.ROIName for r in getattr(rt, "StructureSetROISequence", []))
    assert names == sorted(catalogue.roi_name(o) for o in found)                  # TG-263: Liver, Kidney_L
    ref = rt.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[0].RTReferencedSeriesSequence[0]
    assert ref.SeriesInstanceUID == uids["series"] and rt.FrameOfReferenceUID == uids["frame"]
    assert (out / "CT_series_seg.dcm").is_file() == bool(found)
    assert (out / "CT_series_preview.png").stat().st_size > 10_000
    r = subprocess.run(["nnunet_oar", "predict", "-i", str(image), "-o", str(tmp_path / "o2"), "-m",
                        str(pipeline["models"]), "--rtstruct"], env=pipeline["env"], capture_output=True, text=True)
    assert r.returncode == 2 and "DICOM" in r.stderr


def test_predict_never_overwrites_its_input(tmp_path):
    """`predict -i d/ct.nii.gz -o d` would write the label map over the CT: refused before any model loads."""
    import hashlib
    folder = tmp_path / "d"
    folder.mkdir()
    ct = folder / "ct.nii.gz"
    sitk.WriteImage(sitk.Image(8, 8, 8, sitk.sitkInt16), str(ct))
    before = hashlib.sha256(ct.read_bytes()).hexdigest()
    env = dict(os.environ, PATH=str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", ""))
    for args in (["-i", str(ct), "-o", str(folder)], ["-i", str(folder), "-o", str(folder)]):
        r = subprocess.run(["nnunet_oar", "predict", *args, "-m", str(tmp_path / "no_models")], env=env,
                           capture_output=True, text=True)
        assert r.returncode == 2 and str(ct) in r.stderr and "overwrite" in r.stderr, r.stderr
    assert hashlib.sha256(ct.read_bytes()).hexdigest() == before
    assert sorted(p.name for p in folder.iterdir()) == ["ct.nii.gz"]
    # nnU-Net's naming (ct_0000.nii.gz -> ct.nii.gz) overwrites nothing, but outputs beside the inputs would
    # be taken for inputs by the next run: refused too
    ct.rename(folder / "ct_0000.nii.gz")
    r = subprocess.run(["nnunet_oar", "predict", "-i", str(folder), "-o", str(folder), "-m", str(tmp_path / "no_models")],
                       env=env, capture_output=True, text=True)
    assert r.returncode == 2 and "holds this input, and outputs are never written beside the inputs" in r.stderr
    assert sorted(p.name for p in folder.iterdir()) == ["ct_0000.nii.gz"]


@pytest.mark.slow
def test_predict_on_a_series_with_blank_uids_writes_the_labels_and_refuses_rtstruct(pipeline, tmp_path):
    import pydicom
    from tests.dicom_helpers import write_ct_series
    image = next((pipeline["root"] / "heldout").glob("*_ThAb.nii.gz"))
    dcm = tmp_path / "anon"
    write_ct_series(sitk.ReadImage(str(image)), dcm)
    for f in dcm.iterdir():
        ds = pydicom.dcmread(f)
        ds.SeriesInstanceUID = ""
        ds.save_as(f)
    out = tmp_path / "out"
    r = subprocess.run(["nnunet_oar", "predict", "-i", str(dcm), "-o", str(out), "-m", str(pipeline["models"]),
                        "--disable-tta", "--rtstruct", "--dicom-seg"], env=pipeline["env"], capture_output=True,
                       text=True)
    assert r.returncode == 2 and "SeriesInstanceUID is empty" in r.stderr and "Traceback" not in r.stderr
    assert sorted(p.name for p in out.iterdir()) == ["anon.json", "anon.nii.gz", "anon_boxes.json",
                                                      "anon_manifest.json", "anon_stats.csv", "anon_stats.json"]
