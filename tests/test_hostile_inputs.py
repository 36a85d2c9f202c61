"""Fault injection: bad inputs a user will meet, each with the outcome it must have (one line naming the
file, a non-zero exit, inputs and earlier outputs unchanged)."""
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from nnunet_oar import cli
from nnunet_oar.io import InputError, read_image, read_json


def nnunet_oar(*args, env=None):
    env = dict(env or os.environ, PATH=str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", ""))
    return subprocess.run(["nnunet_oar", *map(str, args)], env=env, capture_output=True, text=True)


def checksums(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def ct_file(path: Path, shape=(40, 64, 64)) -> Path:
    rng = np.random.default_rng(0)
    sitk.WriteImage(sitk.GetImageFromArray(rng.integers(-1000, 1000, shape).astype(np.int16)), str(path),
                    useCompression=True)
    return path


@pytest.mark.parametrize("compressed", [True, False])
def test_a_truncated_nifti_is_refused_not_read_as_zeros(tmp_path, compressed):
    good = ct_file(tmp_path / ("ct.nii.gz" if compressed else "ct.nii"))
    cut = tmp_path / ("cut.nii.gz" if compressed else "cut.nii")
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    assert read_image(good).GetSize() == (64, 64, 40)
    with pytest.raises(InputError, match="truncated") as e:
        read_image(cut, "CT")
    assert str(cut) in str(e.value)


def test_a_truncated_metaimage_or_a_sheared_grid_is_named_for_what_it_is(tmp_path):
    img = sitk.GetImageFromArray(np.zeros((8, 10, 12), np.int16))
    sitk.WriteImage(img, str(tmp_path / "ct.mha"))
    cut = tmp_path / "cut.mha"
    cut.write_bytes((tmp_path / "ct.mha").read_bytes()[:400])
    with pytest.raises(InputError, match=r"cut\.mha: cannot read CT \(the reader stopped short: truncated"):
        read_image(cut, "CT")
    # axes at 80 degrees: NIfTI outputs cannot hold the shear, so labels would not overlay the CT
    img.SetDirection([1, 0, 0, 0, 1, 0, 0, np.cos(np.radians(80)), np.sin(np.radians(80))])
    sitk.WriteImage(img, str(tmp_path / "sheared.mha"))
    with pytest.raises(InputError, match=r"sheared\.mha: CT's direction matrix .* is not orthonormal"):
        read_image(tmp_path / "sheared.mha", "CT")


def test_two_files_of_one_case_are_refused_before_either_is_read(tmp_path):
    from nnunet_oar.io import list_images
    for name in ("a.nii.gz", "b_0000.nii.gz", "b_0001.nii.gz"):
        ct_file(tmp_path / name, (4, 4, 4))
    with pytest.raises(InputError, match=r"b_0000\.nii\.gz and b_0001\.nii\.gz: both are case 'b'"):
        list_images(tmp_path)
    (tmp_path / "b_0001.nii.gz").rename(tmp_path / "a.nrrd")
    with pytest.raises(InputError, match=r"a\.nii\.gz and a\.nrrd: both are case 'a'"):
        list_images(tmp_path)
    (tmp_path / "a.nrrd").unlink()
    assert [f.name for f in list_images(tmp_path)] == ["a.nii.gz", "b_0000.nii.gz"]


def test_a_converter_that_meets_a_truncated_ct_leaves_the_existing_data_set_untouched(tmp_path):
    from nnunet_oar.phantom import write_phantoms
    raw = tmp_path / "raw"
    env = dict(os.environ, nnUNet_raw=str(raw))
    write_phantoms(tmp_path / "vis", 2, seed=5, scale=0.3, organs=["liver"], progress=False)
    assert nnunet_oar("convert-visceral", "-i", tmp_path / "vis", "-d", "555", env=env).returncode == 0
    before = checksums(raw)
    volume = sorted((tmp_path / "vis").glob("*_CTce_ThAb.nii.gz"))[1]       # the second case's CT
    volume.write_bytes(volume.read_bytes()[:5000])
    r = nnunet_oar("convert-visceral", "-i", tmp_path / "vis", "-d", "555", env=env)
    assert r.returncode == 2 and str(volume) in r.stderr and "truncated" in r.stderr
    assert "Traceback" not in r.stderr and r.stderr.strip().splitlines()[-1].startswith("nnunet_oar")
    assert checksums(raw) == before


def test_a_folder_given_as_a_file_is_named_as_a_folder(tmp_path):
    with pytest.raises(InputError, match="is a folder"):
        read_image(tmp_path, "CT")


def test_broken_json_is_named_with_its_line(tmp_path):
    bad = tmp_path / "dataset.json"
    bad.write_text('{"labels": {"background": 0,\n "liver": }')
    with pytest.raises(InputError, match="not valid JSON") as e:
        read_json(bad)
    assert str(bad) in str(e.value) and "line 2" in str(e.value)
    ref = tmp_path / "ref"
    ref.mkdir()
    r = nnunet_oar("evaluate", "-r", ref, "-p", ref, "--labels", bad, "-o", tmp_path / "m.json")
    assert r.returncode == 2 and str(bad) in r.stderr and "Traceback" not in r.stderr


def test_evaluate_with_no_matching_organ_fails_and_lists_both_sides(tmp_path):
    ref, pred = tmp_path / "ref", tmp_path / "pred"
    for folder, labels in ((ref, {"background": 0, "Parotid_L": 1}), (pred, {"background": 0, "parotid_left": 1})):
        folder.mkdir()
        lab = np.zeros((8, 8, 8), np.uint8)
        lab[2:5, 2:5, 2:5] = 1
        sitk.WriteImage(sitk.GetImageFromArray(lab), str(folder / "case1.nii.gz"))
        (folder / "dataset.json").write_text(json.dumps({"labels": labels}))
    r = nnunet_oar("evaluate", "-r", ref, "-p", pred, "-o", tmp_path / "m.json")
    assert r.returncode == 2 and "no (case, organ) pair" in r.stderr
    assert "Parotid_L" in r.stderr and "parotid_left" in r.stderr
    assert not (tmp_path / "m.json").exists()


def test_a_programming_error_keeps_its_traceback(monkeypatch):
    """Only the user's input errors become one-line messages; a bug must stay visible."""
    def broken(_):
        raise KeyError("a bug")
    parser = cli.build_parser()
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    args = parser.parse_args(["trainer-path"])
    monkeypatch.setattr(parser, "parse_args", lambda argv=None: args)
    args.func = broken
    with pytest.raises(KeyError, match="a bug"):
        cli.main([])


def test_checkpoints_that_carry_code_or_are_truncated_are_refused_by_name(tmp_path):
    from nnunet_oar.safe_load import check_checkpoint
    good = tmp_path / "good.pth"
    # what nnU-Net stores: tensors, plain containers, numpy scalars in the log
    torch.save({"network_weights": {"w": torch.zeros(3)}, "logging": {"dice": [np.float64(0.5), np.float32(1)]},
                "init_args": {"device": torch.device("cpu")}, "current_epoch": 3, "trainer_name": "nnUNetTrainer"}, good)
    assert check_checkpoint(good) == "nnUNetTrainer"
    nameless = tmp_path / "nameless.pth"
    torch.save({"network_weights": {"w": torch.zeros(3)}}, nameless)
    with pytest.raises(InputError, match="no network_weights or trainer_name"):
        check_checkpoint(nameless)
    cut = tmp_path / "cut.pth"
    cut.write_bytes(good.read_bytes()[:200])
    with pytest.raises(InputError, match="truncated or damaged") as e:
        check_checkpoint(cut)
    assert str(cut) in str(e.value)
    evil = tmp_path / "evil.pth"
    torch.save({"network_weights": {}, "payload": _Payload(tmp_path / "pwned")}, evil)
    with pytest.raises(InputError, match="refused") as e:
        check_checkpoint(evil)
    assert str(evil) in str(e.value) and not (tmp_path / "pwned").exists()


def test_pickles_beside_probabilities_are_read_without_running_code(tmp_path):
    import pickle
    from nnunet_oar.safe_load import load_pickle
    plain = tmp_path / "case.pkl"
    props = {"sitk_stuff": {"spacing": (1.0, 1.0, 2.0), "origin": (0.0, 0.0, 0.0), "direction": (1.0,) * 9},
             "shape": np.int64(4), "bbox": np.array([[0, 4]])}
    plain.write_bytes(pickle.dumps(props))
    assert load_pickle(plain)["sitk_stuff"]["spacing"] == (1.0, 1.0, 2.0)
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps(_Payload(tmp_path / "pwned")))
    pickle.loads(evil.read_bytes())                     # the plain unpickler runs the payload ...
    assert (tmp_path / "pwned").exists()
    (tmp_path / "pwned").unlink()                       # ... ours must not
    with pytest.raises(InputError, match="refused") as e:
        load_pickle(evil)
    assert str(evil) in str(e.value) and not (tmp_path / "pwned").exists()


class _Payload:
    """Unpickling this would run a shell command that creates ``marker``."""
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_device_cuda_without_a_gpu_is_refused_before_models_load(tmp_path):
    from nnunet_oar.localization.localize import Localizer
    (tmp_path / "fold_0").mkdir(parents=True)
    (tmp_path / "fold_0" / "checkpoint_final.pth").write_bytes(b"not read")
    with pytest.raises(InputError, match="no CUDA GPU"):
        Localizer(tmp_path, device="cuda")


def test_unwritable_output_and_impossible_sizes_are_refused_before_work_starts(tmp_path):
    from nnunet_oar.preflight import check_memory, check_writable
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(InputError, match="not writable") as e:
        check_writable(blocker / "out")
    assert str(blocker / "out") in str(e.value)
    ct = ct_file(tmp_path / "ct.nii.gz")
    check_memory(ct, 80)                                   # 160 k voxels: fine
    with pytest.raises(InputError, match="GB to process") as e:
        check_memory(ct, 1e12)                             # the header alone says it cannot fit
    assert str(ct) in str(e.value)
    r = nnunet_oar("predict", "-i", ct, "-o", blocker / "out", "-m", tmp_path / "no_models")
    assert r.returncode == 2 and "not writable" in r.stderr


def _openkbp_patient(ct_rows, roi_text):
    ct = ",data\n" + "".join(f"{i},{v}\n" for i, v in ct_rows)
    return {"ct.csv": ct.encode(), "voxel_dimensions.csv": b"3.9\n3.9\n2.5\n", "Brainstem.csv": roi_text.encode()}


def test_openkbp_values_beyond_int16_are_clipped_and_counted_not_wrapped():
    from nnunet_oar.conversion.openkbp import patient_to_images
    with pytest.warns(UserWarning, match="1 voxel values outside") as w:
        ct, _ = patient_to_images(_openkbp_patient([(0, 1024), (1, 99999)], ",data\n5,\n"), "pt_9")
    assert "pt_9/ct.csv" in str(w[0].message)
    hu = sitk.GetArrayFromImage(ct).transpose(1, 2, 0).ravel()     # back to OpenKBP's flat order
    assert hu[0] == 0 and hu[1] == np.iinfo(np.int16).max           # clipped high, not wrapped to -32097 HU


def test_an_roi_csv_without_header_keeps_its_first_row():
    from nnunet_oar.conversion.openkbp import patient_to_images
    with pytest.warns(UserWarning, match="no header line"):
        _, masks = patient_to_images(_openkbp_patient([(0, 1024)], "7,\n"), "pt_9")
    assert masks["brainstem"].sum() == 1                          # one-row contour: present, not lost
    _, masks = patient_to_images(_openkbp_patient([(0, 1024)], ",data\n7,\n8,\n"), "pt_9")
    assert masks["brainstem"].sum() == 2


def test_an_interrupted_or_edited_output_set_is_refused_by_its_readers(tmp_path):
    from nnunet_oar.contracts import begin_case_set, check_case_set, finish_case_set
    out = tmp_path / "out"
    out.mkdir()
    lab = np.zeros((8, 8, 8), np.uint8)
    lab[2:5, 2:5, 2:5] = 1
    files = [out / "c1.nii.gz", out / "c1.json", out / "c1_boxes.json", out / "c1_stats.json"]
    sitk.WriteImage(sitk.GetImageFromArray(lab), str(files[0]))
    files[1].write_text(json.dumps({"labels": {"background": 0, "liver": 1}}))
    from nnunet_oar.io import geometry
    files[2].write_text(json.dumps({"case": "c1", "image": geometry(sitk.ReadImage(str(files[0]))), "organs": {}}))
    files[3].write_text("{}")
    (out / "c1_rtstruct.dcm").write_bytes(b"an earlier run's")
    finish_case_set(out, "c1", files)
    check_case_set(out, "c1")
    assert not (out / "c1_rtstruct.dcm").exists()           # not this run's: it would pass for one of its files
    (tmp_path / "ref").mkdir()
    sitk.WriteImage(sitk.GetImageFromArray(lab), str(tmp_path / "ref" / "c1.nii.gz"))
    (tmp_path / "ref" / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "liver": 1}}))
    assert nnunet_oar("evaluate", "-r", tmp_path / "ref", "-p", out, "-o", tmp_path / "m.json").returncode == 0
    # a rerun interrupted after its label map: the new map sits beside the old side files
    begin_case_set(out, "c1")
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros_like(lab)), str(files[0]))
    r = nnunet_oar("evaluate", "-r", tmp_path / "ref", "-p", out, "-o", tmp_path / "m.json")
    assert r.returncode == 2 and "incomplete" in r.stderr and "c1_manifest.json" in r.stderr
    finish_case_set(out, "c1", files)
    files[3].write_text('{"edited": true}')
    with pytest.raises(InputError, match="changed since"):
        check_case_set(out, "c1")


def test_inputs_that_are_not_ct_are_named():
    from nnunet_oar.plausibility import input_warnings
    rng = np.random.default_rng(0)
    ct = np.full((40, 64, 64), -1024.0)
    ct[:, 10:50, 10:50] = rng.normal(40, 20, (40, 40, 40))           # a body
    assert input_warnings((64, 64, 40), (1, 1, 2.5), ct) == []
    assert "soft tissue" in " ".join(input_warnings((64, 64, 40), (1, 1, 2.5), np.full((40, 64, 64), -1000.0)))
    assert "no air" in " ".join(input_warnings((64, 64, 40), (1, 1, 2.5), rng.uniform(0, 1000, (40, 64, 64))))
    few = input_warnings((30, 30, 1), (20, 20, 20), ct[:1, :30, :30])
    assert any("1 voxels along one axis" in w for w in few) and any("20.0 mm" in w for w in few)


def test_organs_that_cannot_be_what_their_network_learned_are_removed_or_flagged():
    from nnunet_oar.plausibility import organ_check
    expected = {"mean_hu": [-20.0, 150.0], "volume_ml": [900.0, 2000.0], "size_mm": [180.0, 150.0, 160.0]}
    ct = np.full((60, 100, 100), 60.0)
    mask = np.zeros(ct.shape, bool)
    mask[10:50, 20:80, 20:80] = True                                 # 144 mL at 1 x 1 x 1 mm
    c = organ_check(mask, ct, (1, 1, 1), expected)
    assert c["implausible"] is None and any("volume 144.0 mL" in f for f in c["flags"])
    c = organ_check(mask, np.full(ct.shape, -1000.0), (2, 2, 2), expected)          # air: an impossible liver
    assert "mean -1000 HU" in c["implausible"]
    small = organ_check(mask[10:15, 20:40, 20:40], ct[10:15, 20:40, 20:40], (1, 1, 1), expected)
    assert any("field of view" in f for f in small["flags"])
    assert organ_check(mask, ct, (2.5, 2.5, 2.5), expected) == {"implausible": None, "flags": []}   # 2250 mL


def test_a_reference_contour_far_outside_its_organs_volumes_is_named_at_conversion(tmp_path, capsys):
    # OpenKBP's held-out split has "SpinalCord" contours of 478 and 543 mL where cords hold about 25 mL
    from nnunet_oar.conversion.dataset import build_dataset
    ct = sitk.GetImageFromArray(np.zeros((20, 30, 30), np.int16))
    ct.SetSpacing((2.0, 2.0, 2.5))                                   # 10 uL voxels
    sizes = {f"case_{k:02d}": 2 + k % 3 for k in range(12)}          # cords of 2-4 slices of 4 x 4 voxels
    sizes["case_big"] = 20                                           # a "cord" of 20 slices of 20 x 20 voxels
    with build_dataset(990, "VolumeCheck", ["spinal_cord", "liver"], "test", tmp_path) as builder:
        for case, n in sizes.items():
            cord = np.zeros((20, 30, 30), bool)
            cord[:n, 5:9, 5:9] = True
            if case == "case_big":
                cord[:, 5:25, 5:25] = True
            builder.add_case(case, ct, {"spinal_cord": cord, "liver": np.zeros_like(cord)})   # liver: absent
    report = read_json(builder.destination / "conversion_report.json")
    assert [(o["case"], o["organ"]) for o in report["volume_outliers"]] == [("case_big", "spinal_cord")]
    big = report["volume_outliers"][0]
    assert big["volume_ml"] == 80.0 and big["median_ml"] == 0.48 and big["fences_ml"][1] < 2.0
    assert report["cases"]["case_00"]["volume_ml"] == {"spinal_cord": 0.32, "liver": 0.0}
    assert "check case_big: its spinal_cord contour holds 80.0 mL" in capsys.readouterr().out
