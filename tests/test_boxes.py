import numpy as np
import pytest

from nnunet_oar.geometry import index_box_to_world
from nnunet_oar.localization.boxes import heatmap_region, into_scan, mean_box_sizes, organ_box
from nnunet_oar.localization.grid import BODY_HU, body_threshold, scanned_extent_mm
from nnunet_oar.localization.localize import boxes_for_case
from nnunet_oar.localization.margins import calibrate_margin, far_miss_fence, inside_counts


def _blob(shape, centre, sigma_vox=3.0):
    g = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1)
    return np.exp(-((g - np.asarray(centre)) ** 2).sum(-1) / (2 * sigma_vox ** 2)).astype(np.float32)


def test_outlier_spike_does_not_move_the_centroid():
    h = _blob((30, 30, 30), (10, 12, 14))
    h[27, 2, 3] = 0.95                                     # a lone spike above tau, far away
    r = heatmap_region(h, 0.1)
    assert np.allclose(r["centroid"], (10, 12, 14))
    assert not r["mask"][27, 2, 3]


def test_peak_below_tau_is_absent():
    assert heatmap_region(0.05 * _blob((20, 20, 20), (5, 5, 5)), 0.1) is None
    assert heatmap_region(np.zeros((5, 5, 5), np.float32), 0.1) is None


def _geom(size=(40, 30, 20), spacing=(2.0, 1.0, 3.0), flip=False):
    d = [-1, 0, 0, 0, -1, 0, 0, 0, 1] if flip else [1, 0, 0, 0, 1, 0, 0, 0, 1]
    return {"size_xyz": list(size), "spacing_xyz": list(spacing), "origin_xyz": [10.0, -5.0, 100.0], "direction": d}


@pytest.mark.parametrize("flip", [False, True])
def test_box_is_mean_size_plus_margin_centred_on_the_centroid(flip):
    g = _geom(flip=flip)
    centre = np.array(index_box_to_world(g, (20, 15, 10), (21, 16, 11))).mean(0)   # world centre of voxel (20,15,10)
    b = organ_box(g, centre, size_mm=(10.0, 6.0, 9.0), margin_mm=2.0)
    start, stop = np.array(b["box_index_xyz"]["start"]), np.array(b["box_index_xyz"]["stop"])
    assert not b["clipped"]
    assert ((start + stop - 1) / 2 == (20, 15, 10)).all()
    extent = np.array(b["box_mm"]["max"]) - np.array(b["box_mm"]["min"])
    assert np.all(extent >= np.array([14.0, 10.0, 13.0]) - 1e-6)
    assert np.all(extent <= np.array([14.0, 10.0, 13.0]) + np.array(g["spacing_xyz"]) * 2)


def test_box_at_the_edge_is_clipped_and_recorded():
    g = _geom()
    corner = np.array(index_box_to_world(g, (0, 0, 0), (1, 1, 1))).mean(0)
    b = organ_box(g, corner, (20.0, 20.0, 20.0), 10.0)
    assert b["clipped"] and b["box_index_xyz"]["start"] == [0, 0, 0]
    assert all(0 < s <= n for s, n in zip(b["box_index_xyz"]["stop"], g["size_xyz"]))


def test_boxes_for_case_maps_heatmap_peaks_to_world_and_reports_absent():
    shape_zyx = (20, 30, 40)                               # numpy order of a (40, 30, 20) x,y,z image
    heat = np.stack([_blob(shape_zyx, (10, 12, 14)), 0.01 * _blob(shape_zyx, (3, 3, 3))])
    props = {"sitk_stuff": {"spacing": (2.0, 1.0, 3.0), "origin": (10.0, -5.0, 100.0),
                            "direction": (1, 0, 0, 0, 1, 0, 0, 0, 1)},
             "spacing": [3.0, 1.0, 2.0], "shape_before_cropping": shape_zyx,
             "bbox_used_for_cropping": [[0, 20], [0, 30], [0, 40]],
             "shape_after_cropping_and_before_resampling": shape_zyx}
    stats = {"liver": {"mean_size_mm": [10.0, 10.0, 10.0]}, "spleen": {"mean_size_mm": [5.0, 5.0, 5.0]}}
    geom = {"size_xyz": [40, 30, 20], "spacing_xyz": [2.0, 1.0, 3.0], "origin_xyz": [10.0, -5.0, 100.0],
            "direction": [1, 0, 0, 0, 1, 0, 0, 0, 1]}
    out = boxes_for_case(heat, ["liver", "spleen"], props, [0, 1, 2], stats, geom, 5.0, 0.1, case="c")
    assert out["image"]["size_xyz"] == [40, 30, 20]
    liver = out["organs"]["liver"]
    assert liver["status"] == "found"
    assert np.allclose(liver["centroid_mm"], (10 + 14 * 2.0, -5 + 12 * 1.0, 100 + 10 * 3.0))
    assert out["organs"]["spleen"] == {"status": "absent", "peak": pytest.approx(0.01, abs=1e-3)}
    out = boxes_for_case(heat, ["liver", "spleen"], props, [0, 1, 2], stats, geom, requested=["spleen"])
    assert out["organs"]["liver"] == {"status": "not_requested"}
    # a learned extent anchored on an organ that was not requested: that organ is found all the same
    rule = {"bottom": {"anchor": "liver", "offset_mm": -20.0}, "top": {"anchor": "liver", "offset_mm": 10.0}}
    out = boxes_for_case(heat, ["liver", "spleen"], props, [0, 1, 2], stats, geom, tau=0.005, requested=["spleen"],
                         z_extent={"spleen": rule})
    assert out["organs"]["liver"] == {"status": "not_requested"} and list(out["organs"]) == ["liver", "spleen"]
    assert out["organs"]["spleen"]["z_extent"]["ends_mm"] == [110.0, 140.0]
    # anatomical consistency comes first: the unsure spleen is moved to where the liver and the kidney put it
    # (world x, y, z: liver at (38, 7, 130), kidney at (70, 15, 130)), and an extent anchored on it follows it
    three = np.stack([heat[0], _blob(shape_zyx, (10, 20, 30)), heat[1]])
    sizes = {**stats, "kidney": {"mean_size_mm": [8.0, 8.0, 8.0]}}
    vote = {"anchors": [{"anchor": "liver", "offset_mm": [0.0, 0.0, -50.0], "iqr_mm": [1.0, 1.0, 1.0]},
                        {"anchor": "kidney", "offset_mm": [-32.0, -8.0, -50.0], "iqr_mm": [1.0, 1.0, 1.0]}]}
    anchored = {"bottom": {"anchor": "spleen", "offset_mm": 0.0}, "top": {"anchor": "spleen", "offset_mm": 60.0}}
    out = boxes_for_case(three, ["liver", "kidney", "spleen"], props, [0, 1, 2], sizes, geom, tau=0.005,
                         z_extent={"liver": anchored}, positions={"spleen": vote})
    liver, spleen = out["organs"]["liver"], out["organs"]["spleen"]
    assert np.allclose(spleen["centroid_mm"], (38.0, 7.0, 80.0))
    assert spleen["position_check"]["anchors"] == ["liver", "kidney"]
    assert liver["z_extent"]["ends_mm"] == [80.0, 140.0] and "position_check" not in liver


def test_a_box_is_moved_into_the_scan_along_z_as_little_as_needed():
    assert np.allclose(into_scan([1, 2, 90], [10, 10, 20], (0.0, 100.0)), [1, 2, 90])     # inside: unchanged
    assert np.allclose(into_scan([1, 2, 130], [10, 10, 20], (0.0, 100.0)), [1, 2, 90])    # above: down to fit
    assert np.allclose(into_scan([1, 2, -30], [10, 10, 20], (0.0, 100.0)), [1, 2, 10])
    assert np.allclose(into_scan([1, 2, 130], [10, 10, 300], (0.0, 100.0)), [1, 2, 50])   # scan too short: centred
    assert np.allclose(into_scan([1, 2, 130], [10, 10, 20], None), [1, 2, 130])


def test_boxes_stay_in_the_scanned_slab_and_say_how_far_they_moved():
    """A scan whose upper slices hold no patient (OpenKBP pt_221): the organ the network puts there is
    moved down into the slices with anatomy; an organ inside them stays where it is."""
    shape_zyx = (20, 30, 40)
    data = np.full((1, *shape_zyx), -3.0, np.float32)       # preprocessed air/padding
    data[0, 5:15, 10:20, 10:30] = 1.0                       # the patient: z slices 5..14
    heat = np.stack([_blob(shape_zyx, (1, 12, 14)), _blob(shape_zyx, (10, 12, 14))])
    props = {"sitk_stuff": {"spacing": (2.0, 1.0, 3.0), "origin": (10.0, -5.0, 100.0),
                            "direction": (1, 0, 0, 0, 1, 0, 0, 0, 1)},
             "spacing": [3.0, 1.0, 2.0], "shape_before_cropping": shape_zyx,
             "bbox_used_for_cropping": [[0, 20], [0, 30], [0, 40]],
             "shape_after_cropping_and_before_resampling": shape_zyx}
    lo, hi = scanned_extent_mm(data, 0.0, props, [0, 1, 2])
    assert np.allclose([lo[2], hi[2]], [100 + 4.5 * 3, 100 + 14.5 * 3])          # cell edges of slices 5 and 14
    assert np.allclose([lo[0], hi[0]], [10 + 9.5 * 2, 10 + 29.5 * 2])
    assert scanned_extent_mm(data, 5.0, props, [0, 1, 2]) is None
    stats = {"liver": {"mean_size_mm": [10.0, 10.0, 12.0]}, "spleen": {"mean_size_mm": [10.0, 10.0, 12.0]}}
    geom = {"size_xyz": [40, 30, 20], "spacing_xyz": [2.0, 1.0, 3.0], "origin_xyz": [10.0, -5.0, 100.0],
            "direction": [1, 0, 0, 0, 1, 0, 0, 0, 1]}
    out = boxes_for_case(heat, ["liver", "spleen"], props, [0, 1, 2], stats, geom, 0.0, 0.1, case="c",
                         scan_z_mm=(lo[2], hi[2]))
    liver, spleen = out["organs"]["liver"], out["organs"]["spleen"]
    assert liver["centroid_mm"][2] == pytest.approx(lo[2] + 6.0)                 # the box's lower face on the scan's
    heat_z_mm = 100 + heatmap_region(heat[0])["centroid"][0] * 3.0             # where the heat map put it
    assert heat_z_mm < lo[2]
    assert liver["moved_into_scan_mm"] == pytest.approx(lo[2] + 6.0 - heat_z_mm, abs=0.05)
    assert liver["box_index_xyz"]["start"][2] == 5
    assert spleen["centroid_mm"][2] == pytest.approx(100 + 10 * 3.0) and "moved_into_scan_mm" not in spleen
    assert out["scan_z_mm"] == pytest.approx([lo[2], hi[2]])


def test_the_body_threshold_is_minus_500_hu_in_ct_normalised_units_and_none_otherwise():
    from types import SimpleNamespace
    props = {"mean": 100.0, "std": 200.0, "percentile_00_5": -1000.0, "percentile_99_5": 1500.0}
    plans = SimpleNamespace(foreground_intensity_properties_per_channel={"0": props})
    ct = SimpleNamespace(normalization_schemes=["CTNormalization"])
    assert body_threshold(plans, ct) == pytest.approx((BODY_HU - 100.0) / 200.0)
    props["percentile_00_5"] = -100.0             # a floor above -500 HU: just above the floor
    assert body_threshold(plans, ct) == pytest.approx((-50.0 - 100.0) / 200.0)
    assert body_threshold(plans, SimpleNamespace(normalization_schemes=["ZScoreNormalization"])) is None


def test_mean_box_sizes_over_the_given_cases_only():
    per_case = {"a": {"liver": [10, 10, 10]}, "b": {"liver": [20, 20, 20]}, "c": {"liver": [90, 90, 90]}}
    assert mean_box_sizes(per_case, ["a", "b"]) == {"liver": {"mean_size_mm": [15.0, 15.0, 15.0], "n": 2}}


def test_calibrated_margin_is_the_smallest_that_reaches_the_target():
    g = _geom(size=(40, 40, 40), spacing=(1.0, 1.0, 1.0))
    mask = np.zeros((40, 40, 40), bool)
    mask[10:20, 10:20, 10:20] = True
    true_centre = np.array(index_box_to_world(g, (10, 10, 10), (20, 20, 20))).mean(0)
    shifted = true_centre + np.array([4.0, 0.0, 0.0])     # an off-centre prediction
    grid = np.arange(0.0, 10.5, 1.0)
    counts = inside_counts(mask, g, shifted, [10.0, 10.0, 10.0], grid)
    assert counts[0] == 600 and counts[4] == 1000 and (np.diff(counts) >= 0).all()
    m = calibrate_margin(counts, int(mask.sum()), grid, 0.99)
    assert m["reached"] and m["margin_mm"] == 4.0 and m["containment"] == 1.0
    # pooled with a missed case (its voxels count, none inside), the target is out of reach
    m = calibrate_margin(counts, 2 * int(mask.sum()), grid, 0.99)
    assert not m["reached"] and m["margin_mm"] == 10.0 and m["containment"] == 0.5


def test_far_miss_fence_is_tukeys_far_out_fence_with_a_floor():
    assert far_miss_fence([1.0, 2.0, 3.0, 4.0, 5.0, 100.0]) == 20.0       # Q3 + 3 IQR = 12.25 < the 20 mm floor
    errors = [10.0, 20.0, 30.0, 40.0, 50.0]                                 # Q1 20, Q3 40
    assert far_miss_fence(errors) == pytest.approx(100.0)
    assert far_miss_fence(errors, floor_mm=150.0) == 150.0


def test_calibration_leaves_out_missed_organs_and_far_misses_only():
    from nnunet_oar.localization.cross_validation import calibration_failures
    errors = {"a": 1.0, "b": 2.0, "c": 3.0, "d": 4.0, "e": 5.0, "f": 72.0}
    found = {c: {"organs": {"brainstem": {"status": "found", "centroid_mm": [e, 0.0, 0.0]}}} for c, e in errors.items()}
    found["g"] = {"organs": {"brainstem": {"status": "absent"}}}             # contoured, not found
    found["h"] = {"organs": {"brainstem": {"status": "found", "centroid_mm": [500.0, 0.0, 0.0]}}}  # not contoured
    facts = {c: {"organs": {"brainstem": {"position_mm": [0.0, 0.0, 0.0]}}} for c in "abcdefg"}
    facts["h"] = {"organs": {}}
    out = calibration_failures(found, facts, ["brainstem"])["brainstem"]
    assert out["fence_mm"] == 20.0
    assert out["cases"] == [{"case": "g", "status": "missed"}, {"case": "f", "status": "far_miss", "error_mm": 72.0}]
    kept = calibration_failures(found, facts, ["brainstem"], exclude_far_misses=False)["brainstem"]
    assert kept["fence_mm"] == 20.0 and kept["cases"][1] == {"case": "f", "status": "far_miss", "error_mm": 72.0,
                                                             "pooled": True}


def test_the_calibration_pool_leaves_failures_out_and_keeps_pooled_far_misses():
    from nnunet_oar.localization.cross_validation import pool_inside_counts
    g = _geom(size=(40, 40, 40), spacing=(1.0, 1.0, 1.0))
    mask = np.zeros((40, 40, 40), bool)
    mask[10:20, 10:20, 10:20] = True
    centre = np.array(index_box_to_world(g, (10, 10, 10), (20, 20, 20))).mean(0)
    boxes = {c: {"organs": {"liver": {"status": "found", "centroid_mm": (centre + [dx, 0, 0]).tolist()}}}
             for c, dx in (("near", 0.0), ("far", 30.0), ("gone", 0.0))}
    grid = np.arange(0.0, 4.5, 1.0)
    cases = [(c, boxes[c], g, {"liver": mask}) for c in boxes]
    failures = {"liver": {"fence_mm": 20.0, "cases": [{"case": "far", "status": "far_miss", "error_mm": 30.0},
                                                      {"case": "gone", "status": "missed"}]}}
    inside, total, n = pool_inside_counts(cases, failures, {"liver": [10.0, 10.0, 10.0]}, grid)
    assert n["liver"] == 1 and total["liver"] == 1000 and (inside["liver"] == 1000).all()   # only "near"
    failures["liver"]["cases"][0]["pooled"] = True                                          # --keep-far-misses
    inside, total, n = pool_inside_counts(cases, failures, {"liver": [10.0, 10.0, 10.0]}, grid)
    assert n["liver"] == 2 and total["liver"] == 2000 and (inside["liver"] == 1000).all()   # the far box holds none


def test_reference_boxes_centre_the_mean_box_on_the_reference_centroid():
    from nnunet_oar.geometry import centroid_mm
    from nnunet_oar.localization.boxes import reference_boxes
    geom = {"size_xyz": [40, 30, 20], "spacing_xyz": [1.0, 2.0, 3.0], "origin_xyz": [5.0, -7.0, 11.0],
            "direction": [1, 0, 0, 0, 1, 0, 0, 0, 1]}
    lab = np.zeros((20, 30, 40), np.uint8)        # (z, y, x), spacing (x, y, z) = (1, 2, 3) mm
    lab[5:9, 10:14, 20:30] = 1
    stats = {"liver": {"mean_size_mm": [10.0, 8.0, 12.0]}, "spleen": {"mean_size_mm": [5.0, 5.0, 5.0]}}
    out = reference_boxes(lab, geom, {"background": 0, "liver": 1, "spleen": 2}, stats, margin_mm=4.0, case="c")
    liver = out["organs"]["liver"]
    assert np.allclose(liver["centroid_mm"], centroid_mm(geom, lab == 1))
    size = np.asarray(liver["box_mm"]["max"]) - np.asarray(liver["box_mm"]["min"])
    assert np.all(np.abs(size - (np.array([10.0, 8.0, 12.0]) + 8.0)) <= np.array(geom["spacing_xyz"]))
    assert out["organs"]["spleen"] == {"status": "absent"}
    # an organ with a learned extent along z: the oracle gives it its reference extent along z, here
    # slices 5-14 (30 mm) once a thin tail runs on from slice 9
    lab[9:15, 11, 25] = 1
    liver = reference_boxes(lab, geom, {"liver": 1}, stats, 4.0, "c", z_extent=["liver"])["organs"]["liver"]
    assert liver["size_mm"] == [10.0, 8.0, 30.0] and liver["centroid_mm"][2] == 11.0 + 3.0 * 9.5
    assert liver["box_mm"]["max"][2] - liver["box_mm"]["min"][2] == pytest.approx(30.0 + 8.0, abs=3.0)


def test_weighted_readout_follows_the_mass_where_the_midpoint_follows_the_tails():
    h = _blob((40, 40, 40), (15, 20, 20), sigma_vox=3.0)
    h[15, 20, 20:37] = np.maximum(h[15, 20, 20:37], 0.2)    # a thin tail to one side, above tau
    mid = heatmap_region(h, 0.1, "midpoint")["centroid"]
    weighted = heatmap_region(h, 0.1, "weighted")["centroid"]
    assert mid[2] >= 24                                     # the bounding box follows the tail
    assert abs(weighted[2] - 20) < 1.5 and np.allclose(weighted[:2], (15, 20), atol=0.01)
    with pytest.raises(ValueError, match="readout"):
        heatmap_region(h, 0.1, "peak")


def test_constant_guess_is_the_mean_offset_from_the_image_centre():
    from nnunet_oar.localization.boxes import centroid_offsets_mm, constant_guess_boxes, image_centre_mm
    g = _geom(size=(40, 30, 20), spacing=(2.0, 1.0, 3.0), flip=True)
    lab = np.zeros((20, 30, 40), np.uint8)
    lab[4:8, 5:9, 6:12] = 1
    off = centroid_offsets_mm(lab, g, {"background": 0, "liver": 1, "spleen": 2})
    assert set(off) == {"liver"}
    from nnunet_oar.geometry import centroid_mm
    assert np.allclose(image_centre_mm(g) + off["liver"], centroid_mm(g, lab == 1))
    # two training cases: the guess is their mean offset, boxed with the mean size and the margin
    stats = mean_box_sizes({"a": {"liver": [10.0, 4.0, 12.0]}, "b": {"liver": [10.0, 4.0, 12.0]}}, ["a", "b"],
                           {"a": {"liver": [2.0, 0.0, 0.0]}, "b": {"liver": [6.0, -4.0, 3.0]}})
    assert stats["liver"]["mean_offset_mm"] == [4.0, -2.0, 1.5]
    guess = constant_guess_boxes(g, stats, {"liver": 3.0}, "c")["organs"]["liver"]
    assert np.allclose(guess["centroid_mm"], image_centre_mm(g) + [4.0, -2.0, 1.5]) and guess["margin_mm"] == 3.0
    # kept in the scanned slices like the localizer's boxes: a scan ending 2 mm above the guess's centre
    top = image_centre_mm(g)[2] + 1.5 + 2.0
    kept = constant_guess_boxes(g, stats, 3.0, "c", scan_z_mm=(top - 100.0, top))["organs"]["liver"]
    assert kept["centroid_mm"][2] == pytest.approx(top - 6.0)


def test_cut_faces_are_box_faces_inside_the_image_that_the_organ_touches():
    from nnunet_oar.localization.boxes import cut_faces
    mask = np.zeros((6, 8, 10), bool)                     # a box of 10 x 8 x 6 voxels (x, y, z)
    mask[2:4, 3:5, 4:6] = True
    assert cut_faces(mask, (5, 5, 5), (15, 13, 11), (40, 30, 20)) == []
    mask[2:4, 3:5, 0:6] = True                            # reaches x = start
    assert cut_faces(mask, (5, 5, 5), (15, 13, 11), (40, 30, 20)) == ["x-"]
    assert cut_faces(mask, (0, 5, 5), (10, 13, 11), (40, 30, 20)) == []     # ... which is the image border
    mask[5, 3, 4] = True                                  # reaches z = stop - 1
    assert cut_faces(mask, (5, 5, 5), (15, 13, 11), (40, 30, 20)) == ["x-", "z+"]
