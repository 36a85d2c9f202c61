"""Anatomical consistency: an organ found far from where the confidently found organs put it is moved there;
one wrong anchor among three is outvoted, a single organ never moves another, an unsure one does not vote,
and the record keeps the heat map's centroid."""
import numpy as np
import pytest

from nnunet_oar.io import InputError, write_json
from nnunet_oar.localization.boxes import organ_box
from nnunet_oar.localization.consistency import (FENCE, MIN_FENCE_MM, check_positions, expected_position,
                                                 fit_position, validate_positions)
from nnunet_oar.localization.extent import apply_z_extent
from nnunet_oar.localization.margins import read_positions

GEOM = {"size_xyz": [100, 100, 100], "spacing_xyz": [3.0, 3.0, 3.0], "origin_xyz": [-150.0, -150.0, -150.0],
        "direction": [1, 0, 0, 0, 1, 0, 0, 0, 1]}
# head-and-neck-like layout, mm from the brainstem (x, y, z): parotids either side, mandible in front, larynx below
LAYOUT = {"brainstem": [0, 0, 0], "parotid_right": [-50, -10, -20], "parotid_left": [50, -10, -20],
          "mandible": [0, -60, -40], "larynx": [0, -40, -90]}
SIZES = {o: [30.0, 30.0, 30.0] for o in LAYOUT}


def _cases(n=30, seed=0):
    """Patients at random positions, each organ 2 mm (s.d.) from the layout."""
    rng = np.random.default_rng(seed)
    cases = []
    for _ in range(n):
        at = rng.uniform(-40, 40, 3)
        cases.append({"organs": {o: {"position_mm": (at + off + rng.normal(0, 2, 3)).tolist()}
                                 for o, off in LAYOUT.items()}})
    return cases


def _found(at, peaks=None, wrong=None):
    """A case's boxes: every organ found at the layout around ``at``; ``wrong``: {organ: offset mm}."""
    organs = {}
    for o, off in LAYOUT.items():
        c = np.add(at, off) + np.asarray((wrong or {}).get(o, [0, 0, 0]))
        organs[o] = {"status": "found", "peak": (peaks or {}).get(o, 0.9), "centroid_mm": c.tolist(),
                     "margin_mm": 5.0, **organ_box(GEOM, c, SIZES[o], 5.0)}
    return organs


def _rules(iqr=None):
    rules = {o: fit_position(_cases(), o) for o in LAYOUT}
    if iqr is not None:             # every anchor this steady (x, y, z mm)
        for rule in rules.values():
            for a in rule["anchors"]:
                a["iqr_mm"] = list(iqr)
    return rules


def test_offsets_are_learned_steadiest_first():
    rule = fit_position(_cases(), "parotid_right")
    assert len(rule["anchors"]) == 4
    by = {a["anchor"]: a for a in rule["anchors"]}
    assert np.allclose(by["brainstem"]["offset_mm"], [-50, -10, -20], atol=2)
    assert np.allclose(by["parotid_left"]["offset_mm"], [-100, 0, 0], atol=2)
    spreads = [np.linalg.norm(a["iqr_mm"]) for a in rule["anchors"]]
    assert spreads == sorted(spreads) and 2 < spreads[0] < 8 and by["brainstem"]["n"] == 30
    assert fit_position(_cases(n=5), "larynx") is None                     # too few cases to learn from


def test_a_far_organ_is_moved_to_the_vote_and_keeps_its_heatmap_centroid():
    at = [5.0, -3.0, 10.0]
    organs = _found(at, peaks={"parotid_right": 0.3}, wrong={"parotid_right": [70, 20, 0]})
    check_positions(organs, _rules(), SIZES, GEOM, None)
    moved = organs["parotid_right"]
    assert np.allclose(moved["centroid_mm"], np.add(at, LAYOUT["parotid_right"]), atol=4)
    assert moved["box_index_xyz"] == organ_box(GEOM, moved["centroid_mm"], SIZES["parotid_right"], 5.0)["box_index_xyz"]
    check = moved["position_check"]
    assert np.allclose(check["heatmap_centroid_mm"], np.add(at, LAYOUT["parotid_right"]) + [70, 20, 0], atol=0.1)
    assert check["distance_mm"] > 60 and len(check["anchors"]) == 3 and "parotid_right" not in check["anchors"]
    # the others were where they belong: untouched
    assert all("position_check" not in organs[o] for o in LAYOUT if o != "parotid_right")


def test_organs_within_the_fence_stay_where_the_heat_map_put_them():
    organs = _found([0.0, 0.0, 0.0], wrong={"larynx": [0, 0, 4]})
    before = {o: dict(e) for o, e in organs.items()}
    check_positions(organs, _rules(), SIZES, GEOM, None)
    assert organs == before


def test_one_wrong_anchor_is_outvoted_and_a_single_organ_moves_nothing():
    rules, at = _rules(), [0.0, 0.0, 0.0]
    # the brainstem is 80 mm off: it is left out of the others' votes and moved back by theirs
    organs = _found(at, wrong={"brainstem": [0, 0, 80]})
    check_positions(organs, rules, SIZES, GEOM, None)
    assert [o for o in LAYOUT if "position_check" in organs[o]] == ["brainstem"]
    assert np.allclose(organs["brainstem"]["centroid_mm"], at, atol=4)
    # a wrong mandible, the only confident organ, moves nobody (nor is it moved: no one else votes)
    organs = _found(at, peaks={o: 0.3 for o in LAYOUT if o != "mandible"}, wrong={"mandible": [0, 0, 60]})
    before = {o: dict(e) for o, e in organs.items()}
    check_positions(organs, rules, SIZES, GEOM, None)
    assert organs == before


def test_voters_unsure_or_disagreeing_cast_no_vote_and_the_vote_is_their_median():
    rules, at = _rules(), np.zeros(3)
    found = {o: (np.add(at, off), 0.3) for o, off in LAYOUT.items()}
    assert expected_position(rules["larynx"], found) is None                  # nobody is sure
    found["mandible"] = (np.add(at, LAYOUT["mandible"]), 0.9)
    assert expected_position(rules["larynx"], found) is None                  # one voter is not enough
    found["parotid_left"] = (np.add(at, LAYOUT["parotid_left"]), 0.9)
    position, anchors, _ = expected_position(rules["larynx"], found)
    assert sorted(anchors) == ["mandible", "parotid_left"] and np.allclose(position, LAYOUT["larynx"], atol=4)
    # two confident voters 100 mm apart: neither is outvoted, so there is no vote
    found["parotid_left"] = (np.add(at, LAYOUT["parotid_left"]) + [0, 0, 100], 0.9)
    assert expected_position(rules["larynx"], found) is None
    # three agreeing voters at x = 0, 2 and 10 mm: the vote is their median, not their mean
    rule = {"anchors": [{"anchor": n, "offset_mm": [dx, 0, 0], "iqr_mm": [1, 1, 1]}
                        for n, dx in (("a", 0.0), ("b", 2.0), ("c", 10.0))]}
    position, anchors, fence = expected_position(rule, {n: (np.zeros(3), 0.9) for n in "abc"})
    assert position[0] == 2.0 and anchors == ["a", "b", "c"] and fence == MIN_FENCE_MM


def test_the_fence_is_in_units_of_the_voters_spread_and_never_closer_than_its_floor():
    rules = _rules(iqr=[10.0, 0.0, 0.0])        # spread 10 mm: the fence is 30 mm
    for factor, moves in ((FENCE * 0.8, False), (FENCE * 1.2, True)):
        organs = _found([0.0, 0.0, 0.0], wrong={"larynx": [0, 0, factor * 10.0]})
        check_positions(organs, rules, SIZES, GEOM, None)
        assert ("position_check" in organs["larynx"]) == moves, factor
    rules = _rules(iqr=[1.0, 0.0, 0.0])         # anatomy this steady: the floor decides
    for off, moves in ((MIN_FENCE_MM * 0.8, False), (MIN_FENCE_MM * 1.2, True)):
        organs = _found([0.0, 0.0, 0.0], wrong={"larynx": [0, 0, off]})
        check_positions(organs, rules, SIZES, GEOM, None)
        assert ("position_check" in organs["larynx"]) == moves, off


def test_moves_into_the_scan_are_undone_before_voting_and_counted_from_the_vote():
    rules = _rules()
    organs = _found([0.0, 0.0, 0.0], peaks={"larynx": 0.2}, wrong={"larynx": [0, 0, 100]})
    # the brainstem's box had been moved 6 mm down into the scan: its heat map said z = 0, which is what votes
    organs["brainstem"]["centroid_mm"][2] = -6.0
    organs["brainstem"]["moved_into_scan_mm"] = -6.0
    # the larynx had been moved up 3 mm: the heat map's own centroid is what the record keeps
    organs["larynx"]["centroid_mm"][2] += 3.0
    organs["larynx"]["moved_into_scan_mm"] = 3.0
    check_positions(organs, rules, SIZES, GEOM, scan_z_mm=[-80.0, 100.0])
    larynx = organs["larynx"]
    assert larynx["position_check"]["heatmap_centroid_mm"] == [0.0, -40.0, 10.0]
    assert "position_check" not in organs["brainstem"]
    assert larynx["centroid_mm"][2] == pytest.approx(-65.0)             # the vote (about -90) moved into the scan
    assert larynx["moved_into_scan_mm"] == pytest.approx(25.0, abs=4)   # counted from the vote
    organs = _found([0.0, 0.0, 0.0], peaks={"larynx": 0.2}, wrong={"larynx": [0, 0, 100]})
    organs["larynx"]["moved_into_scan_mm"] = 3.0
    check_positions(organs, rules, SIZES, GEOM, scan_z_mm=None)         # the vote lies in the scan: no move left
    assert "moved_into_scan_mm" not in organs["larynx"]


def test_a_moved_organ_with_a_learned_extent_records_the_heat_maps_z():
    organs = _found([0.0, 0.0, 0.0], peaks={"larynx": 0.2}, wrong={"larynx": [0, 0, 100]})
    check_positions(organs, _rules(), SIZES, GEOM, None)
    rule = {"bottom": {"anchor": "self", "offset_mm": -10.0}, "top": {"anchor": "self", "offset_mm": 10.0}}
    apply_z_extent(organs, {"larynx": rule}, SIZES, GEOM, None)
    larynx = organs["larynx"]
    assert larynx["z_extent"]["heatmap_z_mm"] == pytest.approx(10.0)   # the heat map's, not the vote's
    lo, hi = larynx["z_extent"]["ends_mm"]
    assert (lo + hi) / 2 == pytest.approx(-90.0, abs=4)                 # around the vote


def test_positions_are_read_back_and_malformed_ones_refused(tmp_path):
    rules = _rules()
    path = tmp_path / "margins.json"
    write_json({o: {"margin_mm": 5.0, "position": r} for o, r in rules.items()}, path)
    assert read_positions(path) == rules
    good = {"anchor": "mandible", "offset_mm": [1, 2, 3], "iqr_mm": [1, 1, 1]}
    for bad in ({"anchors": [{**good, "offset_mm": [1, 2]}]}, {"anchors": [{**good, "offset_mm": 5}]},
                {"anchors": [{**good, "iqr_mm": ["a", "b", "c"]}]}, {"anchors": [{**good, "iqr_mm": [1, float("nan"), 1]}]},
                {"anchors": []}, [1]):
        write_json({"larynx": {"margin_mm": 5.0, "position": bad}}, path)
        with pytest.raises(InputError, match="margins.json: larynx's position"):
            read_positions(path)
    assert validate_positions({"larynx": {"anchors": [good]}}, "x") == {"larynx": {"anchors": [good]}}
    with pytest.raises(InputError, match="models.json: the positions"):
        validate_positions([good], "models.json")


def test_out_of_fold_boxes_are_checked_with_their_folds_rules():
    from nnunet_oar.localization.cross_validation import check_out_of_fold
    train, held = _cases(), _cases(n=6, seed=1)
    facts = {**{f"t{k}": c for k, c in enumerate(train)}, **{f"v{k}": c for k, c in enumerate(held)}}
    found = {}
    for k, case in enumerate(held):
        at = np.subtract(case["organs"]["brainstem"]["position_mm"], LAYOUT["brainstem"])
        found[f"v{k}"] = {"image": GEOM, "organs": _found(at, peaks={"parotid_left": 0.2} if k == 0 else None,
                                                           wrong={"parotid_left": [-90, 0, 0]} if k == 0 else None)}
    folds = [([f"t{k}" for k in range(len(train))], list(found))]
    rules, moves = check_out_of_fold(facts, folds, found, SIZES, list(LAYOUT))
    assert [(m["case"], m["organ"]) for m in moves] == [("v0", "parotid_left")]
    before, after = moves[0]["error_mm"]
    assert before > 80 and after < 10 and moves[0]["peak"] == 0.2
    assert "position_check" in found["v0"]["organs"]["parotid_left"]
    # the rules inference gets rest on every case
    assert {a["n"] for a in rules["larynx"]["anchors"]} == {36}
