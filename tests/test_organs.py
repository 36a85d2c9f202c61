import pytest

from nnunet_oar import organs


def test_visceral_radlex_table_from_the_challenge():
    expected = {58: "liver", 86: "spleen", 170: "pancreas", 187: "gallbladder", 237: "urinary_bladder",
                480: "aorta", 1247: "trachea", 1302: "lung_right", 1326: "lung_left", 2473: "sternum",
                7578: "thyroid_gland", 29193: "vertebra_L1", 29662: "kidney_right", 29663: "kidney_left",
                30324: "adrenal_gland_right", 30325: "adrenal_gland_left", 32248: "psoas_major_right",
                32249: "psoas_major_left", 40357: "rectus_abdominis_right", 40358: "rectus_abdominis_left"}
    assert {k: v.name for k, v in organs.BY_RADLEX.items()} == expected
    assert len(organs.organ_set("visceral")) == 20


def test_openkbp_roi_names():
    assert {k: v.name for k, v in organs.BY_OPENKBP_ROI.items()} == {
        "Brainstem": "brainstem", "SpinalCord": "spinal_cord", "RightParotid": "parotid_right",
        "LeftParotid": "parotid_left", "Esophagus": "esophagus", "Larynx": "larynx", "Mandible": "mandible"}


def test_partners_are_symmetric_and_sided():
    for o in organs.ORGANS.values():
        if o.partner:
            assert organs.get(o.partner).partner == o.name
            assert {o.side, organs.get(o.partner).side} == {"left", "right"}


def test_labels_are_consecutive_in_catalogue_order_whatever_the_input_order():
    labels = organs.labels_for(["kidney_left", "liver", "spleen"])
    assert labels == {"background": 0, "liver": 1, "spleen": 2, "kidney_left": 3}
    with pytest.raises(ValueError):
        organs.labels_for(["liver", "liver"])
    with pytest.raises(KeyError, match="unknown organ"):
        organs.labels_for(["livre"])
