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
