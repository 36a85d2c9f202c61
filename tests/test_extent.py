"""The learned extent along the body axis: fitting each end's anchor, placing a box between the ends, and
choosing it only where it beats the mean-size box out of fold."""
import numpy as np

from nnunet_oar.localization.extent import apply_z_extent, fit_z_extent, learned_ends, organ_facts
from nnunet_oar.localization.boxes import organ_box


def _cases(n=40, seed=0):
    """A spinal cord from the brainstem (its top 35 mm below the brainstem's centroid) down to where the scan
    ends (3 mm above), whatever its length; a compact larynx of fixed height at varying positions."""
    rng = np.random.default_rng(seed)
    cases = []
    for _ in range(n):
        bottom = rng.uniform(-250, -150)
        brainstem = rng.uniform(60, 120)
        top = brainstem - 35 + rng.normal(0, 1)
        larynx = rng.uniform(-60, 0)
        cases.append({"scan_z_mm": [bottom, 200.0], "organs": {
            "brainstem": {"ends_mm": [brainstem - 20, brainstem + 20], "centroid_mm": brainstem},
            "spinal_cord": {"ends_mm": [bottom + 3 + rng.normal(0, 1), top], "centroid_mm": (bottom + 3 + top) / 2},
            "larynx": {"ends_mm": [larynx - 15, larynx + 15], "centroid_mm": larynx}}})
    return cases


def test_each_end_is_anchored_where_it_varies_least():
    rule = fit_z_extent(_cases(), "spinal_cord")
    assert rule["bottom"]["anchor"] == "scan_bottom" and abs(rule["bottom"]["offset_mm"] - 3) < 1
    assert rule["top"]["anchor"] == "brainstem" and abs(rule["top"]["offset_mm"] + 35) < 1
    assert rule["top"]["iqr_mm"] < 3 and rule["top"]["n"] == 40
    # a compact organ keeps its own centroid at both ends: that is the mean-size box
    larynx = fit_z_extent(_cases(), "larynx")
    assert {larynx[e]["anchor"] for e in ("bottom", "top")} == {"self"}
    assert abs(larynx["bottom"]["offset_mm"] + 15) < 1e-6
    assert fit_z_extent(_cases(n=5), "spinal_cord") is None          # too few cases to learn from


def test_learned_ends_need_their_anchors():
    rule = fit_z_extent(_cases(), "spinal_cord")
    lo, hi = learned_ends(rule, own_z=0.0, anchors={"scan_bottom": -200.0, "brainstem": 90.0})
    assert abs(lo + 197) < 1 and abs(hi - 55) < 1
    assert learned_ends(rule, 0.0, {"scan_bottom": -200.0}) is None          # the brainstem was not found
    assert learned_ends(rule, 0.0, {"scan_bottom": 100.0, "brainstem": 0.0}) is None   # no extent left
    # kept in the scanned slices
    assert learned_ends(rule, 0.0, {"scan_bottom": -200.0, "brainstem": 90.0}, [-200.0, 0.0])[1] == 0.0


def test_the_box_spans_the_learned_ends_and_says_so():
    geom = {"size_xyz": [100, 100, 200], "spacing_xyz": [2.0, 2.0, 2.5], "origin_xyz": [-100.0, -100.0, -250.0],
            "direction": [1, 0, 0, 0, 1, 0, 0, 0, 1]}
    rule = fit_z_extent(_cases(), "spinal_cord")
    organs = {"brainstem": {"status": "found", "centroid_mm": [0.0, 20.0, 90.0], "margin_mm": 10.0},
              "spinal_cord": {"status": "found", "centroid_mm": [1.0, 30.0, -10.0], "margin_mm": 5.0,
                              "moved_into_scan_mm": 4.0},
              "larynx": {"status": "absent", "peak": 0.01}}
    apply_z_extent(organs, {"spinal_cord": rule, "larynx": rule}, {"spinal_cord": [12.0, 14.0, 200.0]}, geom,
                   [-200.0, 0.0])
    cord = organs["spinal_cord"]
    lo, hi = cord["z_extent"]["ends_mm"]
    # from 3 mm above the scan's bottom to the top of the scanned slices (the learned top, 55 mm, lies beyond)
    assert abs(lo + 197) < 1 and hi == 0.0
    assert abs(cord["centroid_mm"][2] - (lo + hi) / 2) < 0.1 and cord["centroid_mm"][:2] == [1.0, 30.0]
    assert abs(cord["size_mm"][2] - (hi - lo)) < 0.1 and cord["size_mm"][:2] == [12.0, 14.0]
    assert cord["box_index_xyz"] == organ_box(geom, cord["centroid_mm"], cord["size_mm"], 5.0)["box_index_xyz"]
    assert cord["z_extent"]["anchors"] == {"bottom": "scan_bottom", "top": "brainstem"}
    assert cord["z_extent"]["heatmap_z_mm"] == -14.0 and "moved_into_scan_mm" not in cord
    assert organs["larynx"] == {"status": "absent", "peak": 0.01}          # not found: nothing to box
    assert "z_extent" not in organs["brainstem"]


def test_organ_facts_measure_ends_and_centroid_in_world_mm():
    geom = {"size_xyz": [4, 4, 10], "spacing_xyz": [1.0, 1.0, 2.0], "origin_xyz": [0.0, 0.0, 100.0],
            "direction": [1, 0, 0, 0, 1, 0, 0, 0, -1]}               # slices run downwards
    label = np.zeros((10, 4, 4), np.uint8)
    label[2:5, 2, 1] = 1                                            # slices 2-4: z = 96, 94, 92; y = 2, x = 1
    facts = organ_facts(label, geom, {"cord": 1, "absent": 2})
    assert facts == {"cord": {"ends_mm": [91.0, 97.0], "centroid_mm": 94.0, "position_mm": [1.0, 2.0, 94.0]}}


def test_the_extent_is_kept_only_where_it_beats_the_mean_size_box_out_of_fold():
    from nnunet_oar.localization.cross_validation import choose_z_extents
    train, held = _cases(), _cases(n=12, seed=1)
    facts = {**{f"t{k}": c for k, c in enumerate(train)}, **{f"v{k}": c for k, c in enumerate(held)}}
    folds = [([f"t{k}" for k in range(len(train))], [f"v{k}" for k in range(len(held))])]
    found = {}
    for k, case in enumerate(held):
        truth = case["organs"]
        # the heat map finds the brainstem and larynx well and the cord's centroid 20 mm off along z
        found[f"v{k}"] = {"scan_z_mm": case["scan_z_mm"], "organs": {
            "brainstem": {"status": "found", "centroid_mm": [0, 0, truth["brainstem"]["centroid_mm"] + 1]},
            "spinal_cord": {"status": "found", "centroid_mm": [0, 0, truth["spinal_cord"]["centroid_mm"] + 20]},
            "larynx": {"status": "found", "centroid_mm": [0, 0, truth["larynx"]["centroid_mm"]]}}}
    organs = ["brainstem", "spinal_cord", "larynx"]
    chosen, compared, per_case = choose_z_extents(facts, folds, found, organs)
    assert list(chosen) == ["spinal_cord"] and compared["spinal_cord"]["n"] == 12
    errors = chosen["spinal_cord"]["median_z_error_mm"]
    assert errors["mean_size_box"] == 20.0 and errors["learned_extent"] < 3
    # the rule inference gets rests on every case; each validation case gets the rule of its fold
    assert chosen["spinal_cord"]["top"]["n"] == 52 and per_case["v0"]["spinal_cord"]["top"]["n"] == 40
    assert errors["learned_extent_exact_anchors"] < 1.5
    # the floor sets the anchors where the contours put them: a brainstem found 12 mm off moves the cord's top
    # (and half as far its centroid) but not the floor, which is the contours' own spread about their anchors
    for boxes in found.values():
        boxes["organs"]["brainstem"]["centroid_mm"][2] += 11
    errors = choose_z_extents(facts, folds, found, organs)[0]["spinal_cord"]["median_z_error_mm"]
    assert 5 < errors["learned_extent"] < 7 and errors["learned_extent_exact_anchors"] < 1.5
    for boxes in found.values():
        boxes["organs"]["brainstem"]["centroid_mm"][2] -= 11
    # a fold that trained on nothing like these cases is judged out of fold too: the rule is not fitted on them
    few = [(folds[0][0][:5], folds[0][1])]
    assert choose_z_extents(facts, few, found, organs)[0] == {}
    # where the heat map finds the cord itself, the mean-size box stays
    for boxes, case in zip(found.values(), held):
        boxes["organs"]["spinal_cord"]["centroid_mm"][2] = case["organs"]["spinal_cord"]["centroid_mm"]
    chosen, compared, per_case = choose_z_extents(facts, folds, found, organs)
    assert chosen == {} and compared["spinal_cord"]["median_z_error_mm"]["mean_size_box"] == 0.0
    assert per_case["v0"] == {}


def test_a_malformed_learned_extent_is_refused_naming_the_file(tmp_path):
    import json
    import pytest
    from nnunet_oar.io import InputError
    from nnunet_oar.localization.margins import read_z_extents
    path = tmp_path / "margins.json"
    rule = {"bottom": {"anchor": "scan_bottom", "offset_mm": 2.0}, "top": {"anchor": "brainstem", "offset_mm": -34.0}}
    path.write_text(json.dumps({"spinal_cord": {"margin_mm": 22.0, "z_extent": rule}, "larynx": {"margin_mm": 29.0}}))
    assert read_z_extents(path) == {"spinal_cord": rule}
    path.write_text(json.dumps({"spinal_cord": {"margin_mm": 22.0, "z_extent": {"bottom": rule["bottom"]}}}))
    with pytest.raises(InputError, match=f"{path}: spinal_cord's z_extent needs bottom and top"):
        read_z_extents(path)
