"""Paired statistics of Table I (nnunet_oar.evaluation.statistics) and the side-by-side figure."""
import numpy as np
import SimpleITK as sitk

from nnunet_oar.evaluation.statistics import compare_methods, largest_differences, paired_difference, paired_values


def _per_case(values):
    """{case: {organ: dice}} -> evaluate_folders' per_case layout (None: a true negative, unscored)."""
    return {c: {o: {"dice": v, "outcome": "tn" if v is None else "tp"} for o, v in organs.items()}
            for c, organs in values.items()}


def test_only_pairs_both_methods_scored_are_compared():
    a = _per_case({"p1": {"liver": 0.9, "spleen": 0.8}, "p2": {"liver": 0.7, "spleen": None}, "p3": {"liver": 0.5}})
    b = _per_case({"p1": {"liver": 0.8, "spleen": 0.6}, "p2": {"liver": 0.7, "spleen": 0.0}})
    assert paired_values(a, b) == [("p1", "liver", 0.9, 0.8), ("p1", "spleen", 0.8, 0.6), ("p2", "liver", 0.7, 0.7)]
    result = compare_methods(a, b)
    assert result["overall"]["n"] == 3 and set(result["per_organ"]) == {"liver", "spleen"}
    assert np.isclose(result["per_organ"]["liver"]["mean_diff"], 0.05)


def test_a_constant_shift_is_exact_and_significant():
    a = np.linspace(0.5, 0.9, 10)
    d = paired_difference(a, a - 0.1)
    assert np.isclose(d["mean_diff"], 0.1) and np.isclose(d["ci_low"], 0.1) and np.isclose(d["ci_high"], 0.1)
    assert d["p_wilcoxon"] < 0.01                     # 10 of 10 in one direction: exact p = 2 / 2**10


def test_no_difference_and_a_symmetric_one_are_not_significant():
    a = np.linspace(0.5, 0.9, 6)
    same = paired_difference(a, a)
    assert same["mean_diff"] == 0 and same["p_wilcoxon"] == 1.0 and same["ci_low"] == same["ci_high"] == 0
    sym = paired_difference(a, a + np.array([-0.3, -0.2, -0.1, 0.1, 0.2, 0.3]))
    assert sym["ci_low"] < 0 < sym["ci_high"] and sym["p_wilcoxon"] > 0.5


def test_a_noisy_shift_is_found_inside_its_interval():
    rng = np.random.default_rng(1)
    a = rng.uniform(0.6, 0.9, 40)
    b = a - 0.05 + rng.normal(0, 0.03, 40)
    d = paired_difference(a, b)
    assert 0 < d["ci_low"] < 0.05 < d["ci_high"] and d["p_wilcoxon"] < 1e-4
    assert paired_difference(a[:1], b[:1])["ci_low"] is None            # one pair: no interval, no test


def test_largest_differences_rank_cases_by_their_mean_difference():
    a = _per_case({"p1": {"liver": 0.9, "spleen": 0.9}, "p2": {"liver": 0.9, "spleen": 0.1}, "p3": {"liver": 0.5}})
    b = _per_case({"p1": {"liver": 0.9, "spleen": 0.8}, "p2": {"liver": 0.9, "spleen": 0.9}, "p3": {"liver": 0.2}})
    top = largest_differences(a, b, k=2)
    assert [(c, o) for c, o, _ in top] == [("p2", "spleen"), ("p3", "liver")]
    assert np.isclose(top[0][2], -0.4) and np.isclose(top[1][2], 0.3)


def test_side_by_side_figure_has_a_row_pair_per_case(tmp_path):
    from nnunet_oar.report import method_comparison_png
    arr = np.zeros((20, 30, 30), np.uint8)
    arr[5:15, 10:20, 5:12] = 1
    ct = sitk.GetImageFromArray(np.full(arr.shape, -100, np.int16))
    ref = sitk.GetImageFromArray(arr)
    moved = sitk.GetImageFromArray(np.roll(arr, 6, axis=2))
    for img in (ref, moved):
        img.CopyInformation(ct)
    dst = tmp_path / "fig.png"
    method_comparison_png([("c1", ct, {"reference": ref, "a": moved}, "liver"),
                           ("c2", ct, {"reference": ref, "a": ref}, "liver")], {"liver": 1}, dst, "t")
    import matplotlib.image as mpimg
    h, w = mpimg.imread(dst).shape[:2]
    assert h > w                      # 4 rows (2 cases x axial, coronal) by 2 columns


def test_a_paired_difference_reads_as_mean_interval_and_p():
    from nnunet_oar.evaluation.statistics import format_difference
    assert format_difference({"mean_diff": -0.0012, "ci_low": -0.0061, "ci_high": 0.0034, "p_wilcoxon": 0.987}) \
        == "-0.001 [-0.006, +0.003], p = 0.99"
    assert format_difference({"mean_diff": 0.0, "ci_low": None, "ci_high": None, "p_wilcoxon": None}) == "n/a"
