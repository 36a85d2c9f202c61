"""The open catalogue: a user's organs from --catalogue (or $nnunet_oar_catalogue) through conversion,
naming and DICOM SEG coding; a models folder's catalogue.json brings them to predict on another machine;
bad files are refused naming the file."""
import dataclasses
import json
import os

import pytest

from nnunet_oar import organs
from nnunet_oar.cli import main
from nnunet_oar.conversion.names import NameMap
from nnunet_oar.io import InputError
from nnunet_oar.models import read_manifest
from tests.dicom_helpers import write_ct_series, write_rtstruct_file
from tests.test_convert_dicom import _ball, _cube_ct

USER = [{"name": "optic_chiasm", "tg263": "OpticChiasm", "colour": [10, 20, 30], "snomed": "21100008", "hu": 35},
        {"name": "cochlea_left", "partner": "cochlea_right", "tg263": "Cochlea_L"},
        {"name": "cochlea_right", "partner": "cochlea_left", "tg263": "Cochlea_R"}]


@pytest.fixture(autouse=True)
def builtin_catalogue(monkeypatch):
    """Every test starts and ends with the built-in catalogue."""
    monkeypatch.delenv(organs.CATALOGUE_ENV, raising=False)
    saved = [dataclasses.asdict(o) for o in organs.ORGANS.values()]
    yield
    organs.register(saved, replace=True)
    os.environ.pop(organs.CATALOGUE_ENV, None)          # set by main(["--catalogue", ...])


def test_user_organs_go_through_convert_dicom_after_the_builtin_ones(tmp_path, nnunet_env):
    cat = tmp_path / "my_organs.json"
    cat.write_text(json.dumps({"organs": USER}))
    img = _cube_ct()
    uids = write_ct_series(img, tmp_path / "in" / "ct")
    write_rtstruct_file(tmp_path / "in" / "rs.dcm", img, uids, {
        "Liver": _ball(img, (-10, 0, 15), 6), "Optic Chiasm": _ball(img, (10, 0, 15), 4),
        "Cochlea L": _ball(img, (0, 12, 15), 3), "Rt Cochlea": _ball(img, (0, -12, 15), 3)})
    assert main(["--catalogue", str(cat), "convert-dicom", "-i", str(tmp_path / "in"), "-d", "530"]) == 0
    out = next(nnunet_env["nnUNet_raw"].glob("Dataset530_*"))
    labels = json.loads((out / "dataset.json").read_text())["labels"]
    assert labels == {"background": 0, "liver": 1, "optic_chiasm": 2, "cochlea_left": 3, "cochlea_right": 4}
    assert organs.colour("optic_chiasm") == (10, 20, 30) and organs.roi_name("cochlea_left") == "Cochlea_L"
    assert organs.get("cochlea_right").side == "right"


def test_a_user_organ_is_coded_in_dicom_seg_by_its_snomed_code():
    from nnunet_oar.dicom.seg import segment_description
    organs.register(USER)
    desc = segment_description(1, "optic_chiasm")
    code = desc.SegmentedPropertyTypeCodeSequence[0]
    assert (code.CodeValue, code.CodingSchemeDesignator) == ("21100008", "SCT")
    assert desc.SegmentLabel == "OpticChiasm"


def test_a_models_folder_brings_its_catalogue(tmp_path):
    organs.register(USER)
    recorded = organs.entries(["liver", "optic_chiasm"])
    organs.register([dataclasses.asdict(o) for o in organs.ORGANS.values() if "optic" not in o.name
                     and "cochlea" not in o.name], replace=True)
    assert "optic_chiasm" not in organs.ORGANS
    (tmp_path / "models.json").write_text(json.dumps({"localizer": {}, "organs": {}}))
    (tmp_path / "catalogue.json").write_text(json.dumps(recorded))
    read_manifest(tmp_path)
    assert organs.colour("optic_chiasm") == (10, 20, 30)
    assert NameMap()("Optic_Chiasm") == ("optic_chiasm", "rule")


@pytest.mark.parametrize("entry, message", [
    ({"name": "x", "size": 3}, "unknown fields \\['size'\\]"),
    ({"name": "x", "colour": [300, 0, 0]}, "colour must be"),
    ({"name": "x y"}, "letters, digits and _ only"),
    ({"name": "x_left", "partner": "x_right"}, "partner x_right must be in the catalogue"),
    ({"name": "liver", "tg263": "Leber"}, "already in the catalogue with other fields"),
    ({"tg263": "x"}, "every organ needs a name"),
])
def test_bad_catalogues_are_refused_naming_the_file(tmp_path, entry, message):
    cat = tmp_path / "bad.json"
    cat.write_text(json.dumps([entry]))
    with pytest.raises(InputError, match=message) as e:
        organs.load_catalogue(cat)
    assert str(cat) in str(e.value) and "x" not in organs.ORGANS
