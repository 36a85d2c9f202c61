import numpy as np
import SimpleITK as sitk

from nnunet_oar import organs
from nnunet_oar.conversion.visceral import scan
from nnunet_oar.phantom import PHANTOM_ORGANS, make_case, write_phantoms


def test_same_seed_same_phantom_other_seed_other_anatomy():
    a = make_case(np.random.default_rng(7), 0.4)
    b = make_case(np.random.default_rng(7), 0.4)
    c = make_case(np.random.default_rng(8), 0.4)
    assert np.array_equal(sitk.GetArrayFromImage(a[0]), sitk.GetArrayFromImage(b[0]))
    assert np.array_equal(sitk.GetArrayFromImage(a[1]), sitk.GetArrayFromImage(b[1]))
    la, lc = sitk.GetArrayFromImage(a[1]), sitk.GetArrayFromImage(c[1])
    assert la.shape != lc.shape or not np.array_equal(la, lc)


def test_plausible_hu_and_relative_positions():
    ct, lab, names = make_case(np.random.default_rng(0), 0.5)
    hu, lab = sitk.GetArrayFromImage(ct), sitk.GetArrayFromImage(lab)
    med = {n: np.median(hu[lab == names.index(n) + 1]) for n in ("liver", "lung_left", "vertebra_L1")}
    assert 20 < med["liver"] < 100 and med["lung_left"] < -600 and med["vertebra_L1"] > 250
    centre = {n: np.argwhere(lab == names.index(n) + 1).mean(0) for n in ("liver", "spleen", "urinary_bladder")}
    # numpy (z, y, x) with identity direction: x increases to patient left, z to superior
    assert centre["liver"][2] < centre["spleen"][2]
    assert centre["urinary_bladder"][0] < centre["liver"][0]


def test_phantom_set_is_visceral_layout_with_variation(phantom_dir):
    cases = scan(phantom_dir)
    assert len(cases) == 6
    spacings, directions, annotated = set(), set(), []
    for c in cases.values():
        ct = sitk.ReadImage(str(c["volume"]))
        spacings.add(ct.GetSpacing())
        directions.add(ct.GetDirection())
        annotated.append(len(c["masks"]))
        for by_annotator in c["masks"].values():
            for path in by_annotator.values():
                m = sitk.ReadImage(str(path))
                assert m.GetSize() == ct.GetSize() and m.GetOrigin() == ct.GetOrigin()
    assert len(spacings) > 1 and len(directions) > 1          # anisotropy and flips occur
    assert min(annotated) < len(PHANTOM_ORGANS)                 # partial annotation occurs
    radlex = {r for c in cases.values() for r in c["masks"]}
    assert radlex <= {organs.get(n).radlex for n in PHANTOM_ORGANS}


def test_cut_field_of_view_gives_empty_masks_for_absent_organs(tmp_path):
    ct, lab, names = make_case(np.random.default_rng(1), 0.4, z_range_mm=(-100, 100))
    present = set(np.unique(sitk.GetArrayFromImage(lab))) - {0}
    assert names.index("urinary_bladder") + 1 not in present


def test_organ_subset_and_unknown_organ(tmp_path):
    write_phantoms(tmp_path / "p", 2, seed=0, scale=0.4, organs=["liver"], p_unannotated=0, progress=False)
    masks = {r for c in scan(tmp_path / "p").values() for r in c["masks"]}
    assert masks == {organs.get("liver").radlex}
    import pytest
    with pytest.raises(ValueError, match="thyroid_gland"):
        write_phantoms(tmp_path / "q", 1, organs=["thyroid_gland"], progress=False)
    assert not (tmp_path / "q").exists()
