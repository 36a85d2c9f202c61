"""README's training recipe, command by command, on phantoms, with a budget that learns: two localizer
folds -> out-of-fold boxes with calibrated margins -> crop_rois.py -> organ networks -> export-models
--margins -> predict on held-out phantoms. Checks that the result segments the organs, not only that the
plumbing runs (the tiny-budget tests cover that)."""
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_oar.phantom import write_phantoms
from tests.nnunet_helpers import nnunet_environment, run

ROOT = Path(__file__).resolve().parents[1]
ORGANS = ["spleen", "kidney_left"]
LOC_TRAINER = "nnUNetTrainerOARHeatmap_150its"      # 2 x 150 iterations at 6 mm
ORGAN_TRAINER = "nnUNetTrainerOARDemo"              # 160 iterations per organ at 2.5 mm, as in the demo


@pytest.mark.slow
def test_readme_recipe_learns_on_phantoms(tmp_path):
    env = nnunet_environment(tmp_path)
    write_phantoms(tmp_path / "train", 12, seed=21, scale=0.4, organs=ORGANS, progress=False)
    write_phantoms(tmp_path / "test", 3, seed=1021, scale=0.4, organs=ORGANS, p_unannotated=0.0,
                   p_second_annotator=0.0, progress=False)
    run(["nnunet_oar", "convert-visceral", "-i", str(tmp_path / "train"), "-d", "701"], env)
    run(["nnunet_oar", "convert-visceral", "-i", str(tmp_path / "test"), "-d", "702"], env)

    # 1. localizer: two folds of nnU-Net's own split, then out-of-fold boxes and calibrated margins
    # 6 mm: a third of 4 mm's voxels per patch (the localizer was 340 s of this test's 620 s at 4 mm)
    run(["nnunet_oar", "plan-localizer", "-d", "701", "--spacing", "6", "--fg-weight", "20"], env)
    run(["nnUNetv2_preprocess", "-d", "701", "-c", "3d_loc", "-np", "2"], env)
    pre = tmp_path / "nnUNet_preprocessed" / "Dataset701_VISCERAL"
    ids = sorted(json.loads((pre / "box_sizes.json").read_text()))
    (pre / "splits_final.json").write_text(json.dumps([{"train": ids[6:], "val": ids[:6]},
                                                       {"train": ids[:6], "val": ids[6:]}]))
    for fold in ("0", "1"):
        run(["nnUNetv2_train", "701", "3d_loc", fold, "-tr", LOC_TRAINER, "-device", "cpu"], env, timeout=1200)
    boxes_cv = tmp_path / "boxes_cv"
    run(["nnunet_oar", "localize", "--cross-validation", "-d", "701", "-tr", LOC_TRAINER, "-o", str(boxes_cv)], env)

    # 2. one cropped data set per organ from the out-of-fold boxes, stock nnU-Net on each
    run([sys.executable, str(ROOT / "dataset_conversion" / "crop_rois.py"), "-d", "701", "--boxes", str(boxes_cv),
         "--first-id", "711", "--organs", *ORGANS], env)
    run(["nnunet_oar", "plan-organs", "--first-id", "711", "--spacing", "2.5"], env)
    for dataset_id in ("711", "712"):
        run(["nnUNetv2_train", dataset_id, "3d_fullres", "all", "-tr", ORGAN_TRAINER, "-device", "cpu"], env)

    # 3. models folder with the same margins, prediction and scoring on the held-out phantoms
    models, out = tmp_path / "models", tmp_path / "out"
    run(["nnunet_oar", "export-models", "-o", str(models), "--localizer-id", "701", "--first-id", "711",
         "--localizer-trainer", LOC_TRAINER, "--organ-trainer", ORGAN_TRAINER,
         "--margins", str(boxes_cv / "margins.json")], env)
    test_raw = tmp_path / "nnUNet_raw" / "Dataset702_VISCERAL"
    run(["nnunet_oar", "predict", "-i", str(test_raw / "imagesTr"), "-o", str(out), "-m", str(models),
         "--device", "cpu", "--disable-tta"], env)
    run(["nnunet_oar", "evaluate", "-r", str(test_raw / "labelsTr"), "-p", str(out), "-o", str(tmp_path / "m.json")],
        env)
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert len(metrics["per_case"]) == 3
    dice = {o: [c[o]["dice"] for c in metrics["per_case"].values()] for o in ORGANS}
    # every held-out organ is found and segmented, and the trivial answer (all background) scores 0
    assert all(d > 0.5 for d in sum(dice.values(), [])), dice

    # training crops (out-of-fold boxes) and inference crops of an organ have one size, up to a voxel
    margins = {o: m["margin_mm"] for o, m in json.loads((boxes_cv / "margins.json").read_text()).items()}
    for organ, dataset_id in zip(ORGANS, ("711", "712")):
        crops = json.loads((tmp_path / "nnUNet_raw" / f"Dataset{dataset_id}_VISCERAL_{organ}" / "crops.json")
                           .read_text())
        train_mm = [np.subtract(c["box_index_xyz"]["stop"], c["box_index_xyz"]["start"]) *
                    c["source_image"]["spacing_xyz"] for c in crops.values() if not c["clipped"]]
        assert train_mm
        for f in out.glob("*_boxes.json"):
            boxes = json.loads(f.read_text())
            entry = boxes["organs"][organ]
            assert entry["status"] == "found" and entry["margin_mm"] == margins[organ]
            if not entry["clipped"]:
                extent = np.subtract(entry["box_mm"]["max"], entry["box_mm"]["min"])
                voxel = max(boxes["image"]["spacing_xyz"]) + 0.01
                assert any(np.allclose(extent, t, atol=voxel) for t in train_mm), (organ, extent, train_mm[:3])

    # impossible inputs with trained models: absence is a result, and the reason is in the statistics
    odd = tmp_path / "odd"
    odd.mkdir()
    ref = sitk.ReadImage(str(next((test_raw / "imagesTr").iterdir())))
    air = sitk.Image(ref.GetSize(), sitk.sitkInt16) - 1000
    air.CopyInformation(ref)
    sitk.WriteImage(air, str(odd / "air.nii.gz"))
    # 240 mm of soft tissue at 20 mm voxels: no air, and a spacing no CT has (12^3 voxels keep the localizer's
    # sliding window at 6 mm to a few tiles; 30^3 took minutes)
    coarse = sitk.Image([12, 12, 12], sitk.sitkInt16) + 40
    coarse.SetSpacing([20.0, 20.0, 20.0])
    sitk.WriteImage(coarse, str(odd / "coarse.nii.gz"))
    run(["nnunet_oar", "predict", "-i", str(odd), "-o", str(tmp_path / "odd_out"), "-m", str(models),
         "--device", "cpu", "--disable-tta"], env)
    for case in ("air", "coarse"):
        stats = json.loads((tmp_path / "odd_out" / f"{case}_stats.json").read_text())
        assert stats["input_warnings"], case
        for organ in ORGANS:
            s = stats["organs"][organ]
            assert s["status"] == "absent" or s.get("flags"), (case, organ, s)
