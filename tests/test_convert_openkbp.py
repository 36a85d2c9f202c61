import json
import subprocess
import tarfile

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_oar.conversion.openkbp import convert_openkbp
from nnunet_oar.geometry import centroid_mm
from nnunet_oar.io import InputError, geometry
from tests.conftest import shared_or_skip


@pytest.fixture
def sample():
    return shared_or_skip("openkbp", "sample")


def test_sample_converts_with_anatomical_orientation_and_hu(sample, nnunet_env):
    out = convert_openkbp(sample, 510, progress=False)
    labels = json.loads((out / "dataset.json").read_text())["labels"]
    annotations = json.loads((out / "annotations.json").read_text())
    assert sorted(annotations) == ["pt_1", "pt_10", "pt_2"]
    assert "esophagus" in annotations["pt_2"] and "mandible" not in annotations["pt_10"]   # not contoured
    ct = sitk.ReadImage(str(out / "imagesTr" / "pt_2_0000.nii.gz"))
    seg = sitk.ReadImage(str(out / "labelsTr" / "pt_2.nii.gz"))
    assert ct.GetSize() == seg.GetSize() == (128, 128, 128) and ct.GetOrigin() == seg.GetOrigin()
    vd = np.loadtxt(sample / "pt_2" / "voxel_dimensions.csv")   # axes 0 (A-P), 1 (R-L), 2 (S-I)
    assert np.allclose(ct.GetSpacing(), (vd[1], vd[0], vd[2]))
    s, g = sitk.GetArrayFromImage(seg), geometry(seg)
    c = {n: centroid_mm(g, s == v) for n, v in labels.items() if v and (s == v).any()}
    # LPS: x grows to patient left, y to posterior, z to superior
    assert c["parotid_right"][0] < c["parotid_left"][0]
    assert c["mandible"][1] < c["brainstem"][1]
    assert c["brainstem"][2] > c["spinal_cord"][2]
    hu = sitk.GetArrayFromImage(ct)
    assert hu.min() == -1024
    assert 600 < np.median(hu[s == labels["mandible"]]) < 1500            # bone
    assert -60 < np.median(hu[s == labels["brainstem"]]) < 80             # soft tissue


def test_tarball_gives_the_same_dataset_as_the_folder(sample, nnunet_env, tmp_path):
    tar_path = tmp_path / "small.tar.xz"
    with tarfile.open(tar_path, "w:xz") as tar:
        for pt in ("pt_1", "pt_10"):
            tar.add(sample / pt, arcname=f"train-pats/{pt}")
    out = convert_openkbp(tar_path, 511, progress=False)
    assert sorted(json.loads((out / "annotations.json").read_text())) == ["pt_1", "pt_10"]
    a = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "labelsTr" / "pt_1.nii.gz")))
    out2 = convert_openkbp(sample, 512, progress=False)
    b = sitk.GetArrayFromImage(sitk.ReadImage(str(out2 / "labelsTr" / "pt_1.nii.gz")))
    assert np.array_equal(a, b)


def test_nnunet_verifies_the_openkbp_dataset(sample, nnunet_env):
    convert_openkbp(sample, 513, progress=False)
    r = subprocess.run(["nnUNetv2_extract_fingerprint", "-d", "513", "--verify_dataset_integrity", "-np", "2"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]


def _patient(tmp_path, sample, name="pt_1"):
    import shutil
    d = tmp_path / "src" / name
    shutil.copytree(sample / name, d)
    return d


@pytest.mark.parametrize("defect,match", [
    ("no_ct", "ct.csv: missing"),
    ("bad_index", "Brainstem.csv: flat indices"),
    ("nan", "ct.csv: holds NaN"),
    ("garbage", "ct.csv: not an OpenKBP sparse CSV"),
    ("spacing", "voxel_dimensions.csv"),
])
def test_bad_patient_files_are_named_and_nothing_is_written(sample, nnunet_env, tmp_path, defect, match):
    d = _patient(tmp_path, sample)
    if defect == "no_ct":
        (d / "ct.csv").unlink()
    elif defect == "bad_index":
        (d / "Brainstem.csv").write_text(",data\n99999999,\n")
    elif defect == "nan":
        (d / "ct.csv").write_text(",data\n5,nan\n")
    elif defect == "garbage":
        (d / "ct.csv").write_text(",data\nfoo,bar\n")
    else:
        (d / "voxel_dimensions.csv").write_text("3.9\n-1\n")
    with pytest.raises(InputError, match=match):
        convert_openkbp(tmp_path / "src", 514, progress=False)
    assert list(nnunet_env["nnUNet_raw"].iterdir()) == []


def test_damaged_tarball_is_a_clear_error(nnunet_env, tmp_path):
    bad = tmp_path / "broken.tar.xz"
    bad.write_bytes(b"\xfd7zXZ\x00 truncated")
    with pytest.raises(InputError, match="broken.tar.xz"):
        convert_openkbp(bad, 515, progress=False)
