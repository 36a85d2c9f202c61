"""Model packages: export-models --zip -> install-models -> the same folder; damaged, cut-short and
escaping zips are refused naming the zip, and nothing is written."""
import json
import zipfile

import pytest

from nnunet_oar.cli import main
from nnunet_oar.io import InputError
from nnunet_oar.models import PACKAGE, install_package, models_folder, write_package
from nnunet_oar.organs import entries


@pytest.fixture
def models(tmp_path):
    m = tmp_path / "models"
    (m / "localizer" / "fold_0").mkdir(parents=True)
    (m / "organs" / "liver" / "fold_all").mkdir(parents=True)
    (m / "models.json").write_text(json.dumps({"localizer": {"results_folder": "localizer", "folds": [0]},
                                               "organs": {"liver": {"results_folder": "organs/liver"}}}))
    (m / "catalogue.json").write_text(json.dumps(entries(["liver"])))
    (m / "localizer" / "fold_0" / "checkpoint_final.pth").write_bytes(bytes(range(256)) * 400)
    (m / "organs" / "liver" / "fold_all" / "checkpoint_final.pth").write_bytes(b"liver" * 1000)
    return m


def _files(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_round_trip_gives_the_same_files_with_versions_and_catalogue(models, tmp_path):
    z = write_package(models, tmp_path / "m.zip")
    assert main(["install-models", str(z), "-o", str(tmp_path / "installed")]) == 0
    got = _files(tmp_path / "installed")
    package = json.loads(got.pop(PACKAGE))
    assert got == _files(models)
    assert set(package["versions"]) == {"nnunet_oar", "nnunetv2", "torch"}
    assert json.loads(got["catalogue.json"])[0]["tg263"] == "Liver"


def test_models_folder_installs_a_zip_once_into_the_cache(models, tmp_path, monkeypatch):
    monkeypatch.setenv("nnunet_oar_cache", str(tmp_path / "cache"))
    z = write_package(models, tmp_path / "m.zip")
    folder = models_folder(z)
    assert (folder / "models.json").is_file() and folder.is_relative_to(tmp_path / "cache")
    assert models_folder(z) == folder and models_folder(models) == models


def _rewrite(src, dst, change):
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for name in zin.namelist():
            data = change(name, zin.read(name))
            if data is not None:
                zout.writestr(name, data)


@pytest.mark.parametrize("damage, message", [
    ("flip", "does not match its sha256"),
    ("cut", "not a complete models zip"),
    ("drop", "1 listed files are missing"),
    ("escape", "would be written outside the models folder"),
    ("extra", "is not listed"),
    ("no_package", "not a models package"),
])
def test_damaged_packages_are_refused_and_nothing_is_written(models, tmp_path, damage, message):
    z = write_package(models, tmp_path / "m.zip")
    bad = tmp_path / "bad.zip"
    liver = "organs/liver/fold_all/checkpoint_final.pth"
    if damage == "cut":
        bad.write_bytes(z.read_bytes()[:-200])
    elif damage == "flip":
        _rewrite(z, bad, lambda n, d: d[:-1] + b"X" if n == liver else d)
    elif damage == "drop":
        _rewrite(z, bad, lambda n, d: None if n == liver else d)
    elif damage == "no_package":
        _rewrite(z, bad, lambda n, d: None if n == PACKAGE else d)
    else:
        _rewrite(z, bad, lambda n, d: d)
        with zipfile.ZipFile(bad, "a") as za:
            za.writestr("../evil.py" if damage == "escape" else "organs/extra.py", "print('hi')")
    with pytest.raises(InputError, match=message) as e:
        install_package(bad, tmp_path / "out")
    assert str(bad) in str(e.value)
    assert not (tmp_path / "out").exists() and not (tmp_path / "evil.py").exists()
    assert not list(tmp_path.glob(".out.*"))           # no temporary folder left
