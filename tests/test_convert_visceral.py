import json
import shutil
import subprocess
import warnings

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_oar import organs
from nnunet_oar.conversion.visceral import convert_visceral, scan
from nnunet_oar.io import InputError


def _mask_paths(case):
    return {organs.BY_RADLEX[r].name: by[min(by)] for r, by in case["masks"].items()}


def test_labels_are_voxel_exact_and_geometry_identical(phantom_dir, nnunet_env):
    out = convert_visceral(phantom_dir, 501, progress=False)
    labels = json.loads((out / "dataset.json").read_text())["labels"]
    annotations = json.loads((out / "annotations.json").read_text())
    cases = scan(phantom_dir)
    assert sorted(annotations) == sorted(cases)
    for case_id, case in cases.items():
        ct = sitk.ReadImage(str(case["volume"]))
        img = sitk.ReadImage(str(out / "imagesTr" / f"{case_id}_0000.nii.gz"))
        seg = sitk.ReadImage(str(out / "labelsTr" / f"{case_id}.nii.gz"))
        for im in (img, seg):
            assert im.GetSize() == ct.GetSize() and im.GetSpacing() == ct.GetSpacing()
            assert im.GetOrigin() == ct.GetOrigin() and im.GetDirection() == ct.GetDirection()
        assert np.array_equal(sitk.GetArrayFromImage(img), sitk.GetArrayFromImage(ct))
        seg = sitk.GetArrayFromImage(seg)
        paths = _mask_paths(case)
        assert annotations[case_id] == [n for n in labels if n in paths]
        for name, path in paths.items():   # phantom masks do not overlap, so each is reproduced exactly
            assert np.array_equal(seg == labels[name], sitk.GetArrayFromImage(sitk.ReadImage(str(path))) > 0), name


def test_nnunet_verifies_the_converted_dataset(phantom_dir, nnunet_env):
    convert_visceral(phantom_dir, 501, progress=False)
    r = subprocess.run(["nnUNetv2_extract_fingerprint", "-d", "501", "--verify_dataset_integrity", "-np", "2"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]


def _copy_case(phantom_dir, dst, case_index=0):
    dst.mkdir()
    stem = sorted(scan(phantom_dir))[case_index]
    for f in phantom_dir.glob(f"{stem}_*"):
        shutil.copy(f, dst / f.name)
    return stem, dst


def test_overlap_smaller_structure_wins_and_is_reported(phantom_dir, nnunet_env, tmp_path):
    stem, d = _copy_case(phantom_dir, tmp_path / "v")
    vol = next(d.glob("*_ThAb.nii.gz"))
    ct = sitk.ReadImage(str(vol))
    big = np.zeros(ct.GetSize()[::-1], np.uint8)
    big[5:15, 5:15, 5:15] = 1
    small = np.zeros_like(big)
    small[10:12, 10:12, 10:12] = 1
    for f in d.glob(f"{vol.name[:-7]}_*_*.nii.gz"):
        f.unlink()
    for radlex, arr in ((58, big), (86, small)):
        m = sitk.GetImageFromArray(arr)
        m.CopyInformation(ct)
        sitk.WriteImage(m, str(d / f"{vol.name[:-7]}_{radlex}_1.nii.gz"))
    out = convert_visceral(d, 502, progress=False)
    seg = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "labelsTr" / f"{stem}.nii.gz")))
    assert seg[11, 11, 11] == 2 and seg[6, 6, 6] == 1                  # spleen (small) over liver (big)
    report = json.loads((out / "conversion_report.json").read_text())
    assert report["cases"][stem]["overlap_voxels"] == {"liver+spleen": 8}


def test_two_annotators_lowest_number_used_and_reported(phantom_dir, nnunet_env, tmp_path):
    stem, d = _copy_case(phantom_dir, tmp_path / "v")
    liver = sorted(d.glob("*_ThAb_58_*.nii.gz"))[0]
    annotator = int(liver.name.split("_")[-1].split(".")[0])
    other = d / liver.name.replace(f"_58_{annotator}.", f"_58_{annotator + 10}.")
    m = sitk.ReadImage(str(liver)) * 0
    sitk.WriteImage(m, str(other))
    out = convert_visceral(d, 503, progress=False)
    report = json.loads((out / "conversion_report.json").read_text())["cases"][stem]
    assert report["annotator_choice (lowest number wins)"]["liver"] == {"used": annotator,
                                                                       "available": [annotator, annotator + 10]}
    assert report["organs"]["liver"] > 0


def test_unknown_radlex_is_skipped_with_warning_and_fcsv_ignored(phantom_dir, nnunet_env, tmp_path):
    stem, d = _copy_case(phantom_dir, tmp_path / "v")
    liver = sorted(d.glob("*_ThAb_58_*.nii.gz"))[0]
    shutil.copy(liver, d / liver.name.replace("_58_", "_99999_"))
    (d / f"{liver.name.split('_CTce')[0]}_CTce_ThAb_landmarks.fcsv").write_text("# landmarks\n")
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        out = convert_visceral(d, 504, progress=False)
    text = " ".join(str(x.message) for x in w)
    assert "99999" in text and ".fcsv" in text
    assert "99999" not in (out / "dataset.json").read_text()


def test_mask_on_another_grid_is_an_error_naming_both_files_unless_resampled(phantom_dir, nnunet_env, tmp_path):
    stem, d = _copy_case(phantom_dir, tmp_path / "v")
    liver = sorted(d.glob("*_ThAb_58_*.nii.gz"))[0]
    m = sitk.ReadImage(str(liver))
    m.SetOrigin([o + 4.0 for o in m.GetOrigin()])
    sitk.WriteImage(m, str(liver))
    with pytest.raises(InputError) as e:
        convert_visceral(d, 505, progress=False)
    assert liver.name in str(e.value) and f"{liver.name.split('_58_')[0]}.nii.gz" in str(e.value)
    assert list(nnunet_env["nnUNet_raw"].iterdir()) == []             # nothing half-written
    out = convert_visceral(d, 505, resample_masks=True, progress=False)
    assert (out / "labelsTr" / f"{stem}.nii.gz").exists()


@pytest.mark.parametrize("defect", ["unreadable", "empty", "nan"])
def test_bad_volume_is_a_clear_error_and_an_earlier_dataset_survives(phantom_dir, nnunet_env, tmp_path, defect):
    stem, d = _copy_case(phantom_dir, tmp_path / "v")
    out = convert_visceral(d, 506, progress=False)
    before = sorted(p.name for p in out.rglob("*"))
    vol = next(d.glob("*_ThAb.nii.gz"))
    if defect == "unreadable":
        vol.write_bytes(b"this is not a nifti file")
    elif defect == "empty":
        vol.write_bytes(b"")
    else:
        arr = sitk.GetArrayFromImage(sitk.ReadImage(str(vol))).astype(np.float32)
        arr[0, 0, 0] = np.nan
        img = sitk.GetImageFromArray(arr)
        img.CopyInformation(sitk.ReadImage(str(next(d.glob("*_58_*.nii.gz")))))
        sitk.WriteImage(img, str(vol))
    with pytest.raises(InputError, match=vol.name):
        convert_visceral(d, 506, progress=False)
    assert sorted(p.name for p in out.rglob("*")) == before            # the earlier result is intact
    assert [p.name for p in nnunet_env["nnUNet_raw"].iterdir()] == [out.name]


def test_rerun_is_idempotent(phantom_dir, nnunet_env):
    out = convert_visceral(phantom_dir, 507, progress=False)
    first = {p.relative_to(out): p.read_bytes() for p in sorted(out.rglob("*.json"))}
    out = convert_visceral(phantom_dir, 507, progress=False)
    assert {p.relative_to(out): p.read_bytes() for p in sorted(out.rglob("*.json"))} == first
    assert len(list(nnunet_env["nnUNet_raw"].iterdir())) == 1


def test_cli_reports_bad_input_in_one_line(tmp_path, nnunet_env, capsys):
    from nnunet_oar.cli import main
    assert main(["convert-visceral", "-i", str(tmp_path / "missing"), "-d", "508"]) == 2
    assert "missing: VISCERAL folder does not exist" in capsys.readouterr().err


def test_outputs_get_the_usual_permissions(phantom_dir, nnunet_env):
    import os
    import stat
    out = convert_visceral(phantom_dir, 509, progress=False)
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o777 & ~mask
    assert stat.S_IMODE((out / "dataset.json").stat().st_mode) == 0o666 & ~mask
