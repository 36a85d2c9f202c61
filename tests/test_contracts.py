"""The per-case contract (nnunet_oar.contracts): boxes files are checked where they are read, and one
malformed file is refused naming it, by every stage that reads boxes."""
import json

import numpy as np
import pytest

from nnunet_oar.contracts import check_boxes, read_boxes, write_boxes
from nnunet_oar.io import InputError
from nnunet_oar.localization.boxes import organ_box

GEOM = {"size_xyz": [20, 20, 10], "spacing_xyz": [2.0, 2.0, 3.0], "origin_xyz": [0.0, 0.0, 0.0],
        "direction": [1, 0, 0, 0, 1, 0, 0, 0, 1]}


def _boxes():
    return {"case": "c1", "image": GEOM, "organs": {
        "liver": {"status": "found", "peak": 0.8, "centroid_mm": [10.0, 10.0, 9.0], "margin_mm": 5.0,
                  **organ_box(GEOM, [10.0, 10.0, 9.0], [8.0, 8.0, 6.0], 5.0)},
        "spleen": {"status": "absent", "peak": 0.02}, "kidney_left": {"status": "not_requested"}}}


def test_boxes_round_trip_through_the_contract(tmp_path):
    path = write_boxes(_boxes(), tmp_path)
    assert path.name == "c1_boxes.json"
    back = read_boxes(tmp_path, "c1")
    assert back == json.loads(json.dumps(_boxes()))
    assert np.all(np.array(back["organs"]["liver"]["box_index_xyz"]["stop"])
                  > np.array(back["organs"]["liver"]["box_index_xyz"]["start"]))


@pytest.mark.parametrize("defect, message", [
    (lambda b: b.pop("organs"), "no 'organs'"),
    (lambda b: b["image"].pop("spacing_xyz"), "'image' must hold"),
    (lambda b: b["organs"]["spleen"].update(status="maybe"), "spleen: status 'maybe'"),
    (lambda b: b["organs"]["liver"].pop("box_index_xyz"), "liver: a found organ needs"),
    (lambda b: b["organs"]["liver"]["box_index_xyz"].update(start=[1, 2]), "liver: a found organ needs"),
])
def test_a_malformed_boxes_file_is_refused_naming_it(tmp_path, defect, message):
    boxes = json.loads(json.dumps(_boxes()))
    defect(boxes)
    (tmp_path / "c1_boxes.json").write_text(json.dumps(boxes))
    with pytest.raises(InputError, match=message) as e:
        read_boxes(tmp_path, "c1")
    assert str(tmp_path / "c1_boxes.json") in str(e.value)


def test_a_missing_boxes_file_is_refused_naming_it(tmp_path):
    with pytest.raises(InputError, match="c9_boxes.json: localization boxes does not exist"):
        read_boxes(tmp_path, "c9")
    check_boxes(_boxes(), tmp_path / "fine.json")          # a well-formed record passes


def test_crop_rois_refuses_a_malformed_boxes_file_naming_it(tmp_path, nnunet_env):
    """crop-rois reads the localizer's boxes through the contract, before any crop is written."""
    from nnunet_oar.conversion.visceral import convert_visceral
    from nnunet_oar.phantom import write_phantoms
    from nnunet_oar.segmentation.crops import crop_rois
    write_phantoms(tmp_path / "v", 2, seed=1, scale=0.3, organs=["liver"], p_unannotated=0.0, progress=False)
    raw = convert_visceral(tmp_path / "v", 501, organs=["liver"], progress=False)
    cases = sorted(json.loads((raw / "annotations.json").read_text()))
    (tmp_path / "boxes").mkdir()
    for case in cases:
        (tmp_path / "boxes" / f"{case}_boxes.json").write_text(json.dumps(
            {"case": case, "image": GEOM, "organs": {"liver": {"status": "found"}}}))
    with pytest.raises(InputError, match="liver: a found organ needs") as e:
        crop_rois(501, 511, boxes_dir=tmp_path / "boxes", progress=False)
    assert f"{cases[0]}_boxes.json" in str(e.value)
    assert not list(nnunet_env["nnUNet_raw"].glob("Dataset511_*"))


def test_crop_rois_refuses_boxes_that_miss_the_organ_in_every_case(tmp_path, nnunet_env):
    """A localizer trained too briefly can miss an organ everywhere: crop-rois says so, instead of nnU-Net's
    planning failing later on crops without a foreground voxel."""
    import SimpleITK as sitk
    from nnunet_oar.conversion.visceral import convert_visceral
    from nnunet_oar.io import geometry
    from nnunet_oar.localization.boxes import organ_box
    from nnunet_oar.phantom import write_phantoms
    from nnunet_oar.segmentation.crops import crop_rois
    write_phantoms(tmp_path / "v", 2, seed=1, scale=0.3, organs=["liver"], p_unannotated=0.0, progress=False)
    raw = convert_visceral(tmp_path / "v", 501, organs=["liver"], progress=False)
    (tmp_path / "boxes").mkdir()
    for case in sorted(json.loads((raw / "annotations.json").read_text())):
        geom = geometry(sitk.ReadImage(str(raw / "labelsTr" / f"{case}.nii.gz")))
        corner = np.asarray(geom["origin_xyz"]) + 4.0          # a small box in a corner of the image, in air
        write_boxes({"case": case, "image": geom, "organs": {"liver": {
            "status": "found", "peak": 0.5, "centroid_mm": corner.tolist(), "margin_mm": 1.0,
            **organ_box(geom, corner, [4.0, 4.0, 4.0], 1.0)}}}, tmp_path / "boxes")
    with pytest.raises(InputError, match="liver: none of its 2 crops holds any of the organ"):
        crop_rois(501, 511, boxes_dir=tmp_path / "boxes", progress=False)
    assert not list(nnunet_env["nnUNet_raw"].glob("Dataset511_*"))
