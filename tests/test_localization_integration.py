"""The localizer end to end on tiny phantoms: stock nnUNetv2_preprocess / nnUNetv2_train with our
trainer found through nnUNet_extTrainer, then `nnunet_oar localize` on a held-out phantom."""
import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from nnunet_oar.geometry import index_box_to_world
from tests.nnunet_helpers import LOC_ORGANS as ORGANS, LOC_TRAINER as TRAINER, run

pytestmark = pytest.mark.slow      # every test here uses the trained localizer


def test_plan_adds_3d_loc_with_whole_volume_patch_and_batch_1(trained_localizer):
    plans = json.loads((trained_localizer["pre"] / "nnUNetPlans.json").read_text())
    c = plans["configurations"]["3d_loc"]
    assert c["spacing"] == [3.0, 3.0, 3.0] and c["batch_size"] == 1 and c["heatmap_sigma2_mm2"] == 150.0
    assert all(p >= m for p, m in zip(c["patch_size"], c["median_image_size_in_voxels"]))
    assert "3d_fullres" in plans["configurations"]                 # nnU-Net's own configurations are kept
    # nnU-Net's torch resampling (its *_torchres planners'), for the CT, the labels and exported heat maps
    assert {c[k] for k in ("resampling_fn_data", "resampling_fn_seg", "resampling_fn_probabilities")} == \
        {"resample_torch_fornnunet"}
    assert c["resampling_fn_data_kwargs"]["is_seg"] is False and c["resampling_fn_seg_kwargs"]["is_seg"] is True


def test_a_slimmer_localizer_is_planned_beside_the_default(trained_localizer):
    run(["nnunet_oar", "plan-localizer", "-d", "601", "-c", "3d_loc_slim", "--base-features", "8"],
        trained_localizer["env"])
    plans = json.loads((trained_localizer["pre"] / "nnUNetPlans.json").read_text())["configurations"]
    slim, default = plans["3d_loc_slim"]["architecture"]["arch_kwargs"], plans["3d_loc"]["architecture"]["arch_kwargs"]
    assert slim["features_per_stage"][0] == 8 and max(slim["features_per_stage"]) <= 80
    assert default["features_per_stage"][0] == 32 and slim["n_stages"] == default["n_stages"]
    assert plans["3d_loc_slim"]["patch_size"] == plans["3d_loc"]["patch_size"]


def test_training_writes_box_stats_and_localization_summary(trained_localizer):
    fold0 = trained_localizer["model"] / "fold_0"
    stats = json.loads((fold0 / "box_stats.json").read_text())
    assert set(stats) <= set(ORGANS) and all(s["n"] <= 3 for s in stats.values())   # fold 0 trains on 3 cases
    summary = json.loads((fold0 / "validation" / "localization_summary.json").read_text())
    assert set(summary["per_case"]) == set(trained_localizer["ids"][3:])
    for case, organs in summary["per_case"].items():
        for organ, m in organs.items():
            assert m["detection"] in ("tp", "fn", "fp", "tn")
            if m["detection"] == "tp":
                assert 0 <= m["containment"] <= 1 and 0 <= m["iou"] <= 1 and m["centroid_error_mm"] >= 0
    assert (fold0 / "validation" / f"{trained_localizer['ids'][3]}_boxes.json").is_file()


def test_no_mirroring_in_training_or_inference(trained_localizer):
    ckpt = torch.load(trained_localizer["model"] / "fold_0" / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert ckpt["inference_allowed_mirroring_axes"] is None


def test_stock_predictor_loads_the_trainer_without_patching(trained_localizer, monkeypatch):
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    monkeypatch.setenv("nnUNet_extTrainer", trained_localizer["env"]["nnUNet_extTrainer"])
    p = nnUNetPredictor(device=torch.device("cpu"), perform_everything_on_device=False)
    p.initialize_from_trained_model_folder(str(trained_localizer["model"]), ["0"])
    assert p.trainer_name == TRAINER
    assert p.network(torch.zeros(1, 1, *p.configuration_manager.patch_size)).shape[1] == 1 + len(ORGANS)


def test_localize_heldout_keeps_the_input_geometry(trained_localizer, tmp_path):
    image = next((trained_localizer["root"] / "heldout").glob("*_ThAb.nii.gz"))
    out = tmp_path / "boxes"
    run(["nnunet_oar", "localize", "-i", str(image), "-o", str(out), "-m", str(trained_localizer["model"]),
         "-f", "0", "1", "--save-heatmaps"], trained_localizer["env"])
    case = image.name[: -len(".nii.gz")]
    boxes = json.loads((out / f"{case}_boxes.json").read_text())
    ct = sitk.ReadImage(str(image))
    assert boxes["image"]["size_xyz"] == list(ct.GetSize())
    assert np.allclose(boxes["image"]["origin_xyz"], ct.GetOrigin())
    assert np.allclose(boxes["image"]["direction"], ct.GetDirection())
    assert set(boxes["organs"]) == set(ORGANS)
    # the phantom's body runs through every slice: the scanned extent is the image's along z (within a
    # localizer voxel), read from nnU-Net's real CT normalisation of the localizer's input
    lo, hi = index_box_to_world(boxes["image"], [0, 0, 0], ct.GetSize())
    assert np.allclose(boxes["scan_z_mm"], [lo[2], hi[2]], atol=4.0)
    for entry in boxes["organs"].values():
        assert entry["status"] in ("found", "absent")
        if entry["status"] == "found":
            start, stop = entry["box_index_xyz"]["start"], entry["box_index_xyz"]["stop"]
            assert all(0 <= a < b <= n for a, b, n in zip(start, stop, ct.GetSize()))
    heat = np.load(out / f"{case}_heatmaps.npz")
    assert heat["liver"].shape == ct.GetSize()[::-1]
    # a rerun replaces the outputs and leaves no temporary files
    run(["nnunet_oar", "localize", "-i", str(image), "-o", str(out), "-m", str(trained_localizer["model"]), "-f", "0"],
        trained_localizer["env"])
    assert sorted(p.name for p in out.iterdir()) == sorted([f"{case}_boxes.json", f"{case}_heatmaps.npz"])


def test_localize_bad_input_names_the_file_and_goes_on(trained_localizer, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    good = next((trained_localizer["root"] / "heldout").glob("*_ThAb.nii.gz"))
    (src / good.name).write_bytes(good.read_bytes())
    (src / "broken.nii.gz").write_bytes(b"not an image")
    import subprocess
    r = subprocess.run(["nnunet_oar", "localize", "-i", str(src), "-o", str(tmp_path / "o"), "-m",
                        str(trained_localizer["model"]), "-f", "0"], env=trained_localizer["env"], capture_output=True, text=True)
    assert r.returncode == 2 and "broken.nii.gz" in r.stderr
    assert (tmp_path / "o" / f"{good.name[:-7]}_boxes.json").is_file()


def test_cross_validation_boxes_use_the_calibrated_margins(trained_localizer, tmp_path):
    """One margin source: the out-of-fold boxes (the organ networks' training crops) carry the margins that
    margins.json gives to export-models / localize --margins (the inference crops)."""
    out = tmp_path / "cv"
    run(["nnunet_oar", "localize", "--cross-validation", "-d", "601", "-tr", TRAINER, "-o", str(out)], trained_localizer["env"])
    assert sorted(p.name[: -len("_boxes.json")] for p in out.glob("*_boxes.json")) == trained_localizer["ids"]
    margins = json.loads((out / "margins.json").read_text())
    for m in margins.values():
        assert 0 <= m["margin_mm"] <= 60 and (m["containment"] is None or 0 <= m["containment"] <= 1)
        # the failures left out of the calibration are listed, with the organ's far-miss fence
        assert m["failures"]["fence_mm"] is None or m["failures"]["fence_mm"] >= 20
        assert all(c["status"] in ("missed", "far_miss") and c["case"] in trained_localizer["ids"]
                   for c in m["failures"]["cases"]) and 0 < m["n_cases"] <= len(trained_localizer["ids"])
    for f in out.glob("*_boxes.json"):
        for organ, entry in json.loads(f.read_text())["organs"].items():
            if entry["status"] == "found":
                assert entry["margin_mm"] == margins[organ]["margin_mm"]
    summary = json.loads((out / "localization_summary.json").read_text())
    assert set(summary["constant_guess"]) == set(summary["per_organ"]) and summary["folds"] == [0, 1]
    # the same margins through localize --margins give boxes of the same size on the same case
    case = trained_localizer["ids"][0]
    cv_box = json.loads((out / f"{case}_boxes.json").read_text())
    image = trained_localizer["root"] / "nnUNet_raw" / "Dataset601_VISCERAL" / "imagesTr" / f"{case}_0000.nii.gz"
    run(["nnunet_oar", "localize", "-i", str(image), "-o", str(tmp_path / "inf"), "-m", str(trained_localizer["model"]),
         "-f", "0", "1", "--margins", str(out / "margins.json")], trained_localizer["env"])
    inf_box = json.loads((tmp_path / "inf" / f"{case}_boxes.json").read_text())
    for organ, entry in cv_box["organs"].items():
        if entry["status"] == "found" and inf_box["organs"][organ]["status"] == "found" and not entry["clipped"] \
                and not inf_box["organs"][organ]["clipped"]:
            size = lambda e: np.subtract(e["box_index_xyz"]["stop"], e["box_index_xyz"]["start"])  # noqa: E731
            assert (np.abs(size(entry) - size(inf_box["organs"][organ])) <= 1).all()
    # an organ whose rule in margins.json is a learned extent along z gets the box between its learned ends
    rule = {"bottom": {"anchor": "scan_bottom", "offset_mm": 5.0}, "top": {"anchor": "self", "offset_mm": 20.0}}
    extent = tmp_path / "extent.json"
    extent.write_text(json.dumps({**margins, "liver": {**margins["liver"], "z_extent": rule}}))
    run(["nnunet_oar", "localize", "-i", str(image), "-o", str(tmp_path / "ext"), "-m", str(trained_localizer["model"]),
         "-f", "0", "1", "--margins", str(extent)], trained_localizer["env"])
    boxes = json.loads((tmp_path / "ext" / f"{case}_boxes.json").read_text())
    liver = boxes["organs"]["liver"]
    assert liver["z_extent"]["anchors"] == {"bottom": "scan_bottom", "top": "self"}
    lo, hi = liver["z_extent"]["ends_mm"]
    assert abs(lo - max(boxes["scan_z_mm"][0] + 5.0, boxes["scan_z_mm"][0])) < 0.1 and liver["size_mm"][2] == pytest.approx(hi - lo, abs=0.1)
    assert abs((liver["box_mm"]["max"][2] - liver["box_mm"]["min"][2]) - (hi - lo + 2 * liver["margin_mm"])) \
        <= max(boxes["image"]["spacing_xyz"]) + 0.01 or liver["clipped"]
    assert all("z_extent" not in e for o, e in boxes["organs"].items() if o != "liver")
    # an anatomical-consistency rule in margins.json that puts the liver 300 mm (x) from where the heat maps put
    # it, by every other organ's vote, moves it there: first the heat maps' centroids with plain margins
    plain = {o: {"margin_mm": m["margin_mm"]} for o, m in margins.items()}
    extent.write_text(json.dumps(plain))
    run(["nnunet_oar", "localize", "-i", str(image), "-o", str(tmp_path / "plain"), "-m", str(trained_localizer["model"]),
         "-f", "0", "1", "--margins", str(extent)], trained_localizer["env"])
    organs = json.loads((tmp_path / "plain" / f"{case}_boxes.json").read_text())["organs"]
    others = [o for o in margins if o != "liver"]
    voters = [o for o in others if organs[o]["status"] == "found" and organs[o]["peak"] >= 0.5][:3]
    assert len(voters) >= 2 and organs["liver"]["status"] == "found"     # the fixture's localizer finds them surely
    offset = {o: (np.subtract(organs["liver"]["centroid_mm"], organs[o]["centroid_mm"]) + [300, 0, 0]).tolist()
              for o in others if organs[o]["status"] == "found"}
    position = {"anchors": [{"anchor": o, "offset_mm": d, "iqr_mm": [1.0, 1.0, 1.0], "n": 10} for o, d in offset.items()]}
    extent.write_text(json.dumps({**plain, "liver": {**plain["liver"], "position": position}}))
    run(["nnunet_oar", "localize", "-i", str(image), "-o", str(tmp_path / "pos"), "-m", str(trained_localizer["model"]),
         "-f", "0", "1", "--margins", str(extent)], trained_localizer["env"])
    moved = json.loads((tmp_path / "pos" / f"{case}_boxes.json").read_text())["organs"]
    liver = moved["liver"]
    assert liver["position_check"]["anchors"] == voters and all("position_check" not in moved[o] for o in others)
    assert np.allclose(liver["position_check"]["heatmap_centroid_mm"], organs["liver"]["centroid_mm"], atol=0.1)
    assert liver["centroid_mm"][0] == pytest.approx(organs["liver"]["centroid_mm"][0] + 300, abs=0.1)


def test_training_logs_centroid_errors_and_the_constant_guess(trained_localizer):
    fold0 = trained_localizer["model"] / "fold_0"
    log = next(fold0.glob("training_log_*.txt")).read_text()
    assert log.count("median centroid error mm (validation patches)") == 2          # one line per epoch
    assert (fold0 / "progress_centroid_error.png").stat().st_size > 1000
    # a short budget draws nnU-Net's progress plot at most once a minute, and always at the end
    assert (fold0 / "progress.png").stat().st_size > 1000
    stats = json.loads((fold0 / "box_stats.json").read_text())
    assert all(len(s["mean_offset_mm"]) == 3 for s in stats.values())
    assert "constant guess" in log
    ckpt = torch.load(fold0 / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    group = ckpt["optimizer_state"]["param_groups"][0]
    assert group["amsgrad"] is False and group["weight_decay"] == 0.0
    assert len(ckpt["logging"]["centroid_error_mm"]) == 2


def test_localizer_refusals_name_the_file(trained_localizer, tmp_path):
    import shutil
    import subprocess
    env = trained_localizer["env"]

    def fails(cmd):
        r = subprocess.run(cmd, env=env, capture_output=True, text=True)
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
        return r.stderr
    image = next((trained_localizer["root"] / "heldout").glob("*_ThAb.nii.gz"))
    bad = tmp_path / "margins.json"
    bad.write_text(json.dumps({"liver": {"margin_mm": 5.0}, "pancreas": {"margin_mm": 5.0}}))
    err = fails(["nnunet_oar", "localize", "-i", str(image), "-o", str(tmp_path / "o"), "-m",
                 str(trained_localizer["model"]), "-f", "0", "--margins", str(bad)])
    assert str(bad) in err and "pancreas" in err
    # ... and so does export-models, which writes them into the models folder that predict reads
    err = fails(["nnunet_oar", "export-models", "-o", str(tmp_path / "models"), "--localizer-id", "601",
                 "--organ-ids", "611", "--localizer-trainer", TRAINER, "--margins", str(bad)])
    assert str(bad) in err and "pancreas" in err and not (tmp_path / "models").exists()
    bad.write_text("{not json")
    assert str(bad) in fails(["nnunet_oar", "localize", "-i", str(image), "-o", str(tmp_path / "o"), "-m",
                              str(trained_localizer["model"]), "-f", "0", "--margins", str(bad)])
    # a localizer folder without its box sizes
    copy = tmp_path / "model"
    shutil.copytree(trained_localizer["model"], copy)
    (copy / "fold_0" / "box_stats.json").unlink()
    err = fails(["nnunet_oar", "localize", "-i", str(image), "-o", str(tmp_path / "o"), "-m", str(copy), "-f", "0"])
    assert str(copy / "fold_0" / "box_stats.json") in err
    # a cross-validation with a fold that was not trained
    err = fails(["nnunet_oar", "localize", "--cross-validation", "-d", "601", "-tr", TRAINER, "-o", str(tmp_path / "cv"),
                 "--folds", "0", "3"])
    assert "fold_3" in err and "checkpoint_final.pth" in err
