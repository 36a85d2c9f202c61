"""convert-dicom: a clinic's CT + RTSTRUCT -> nnU-Net raw data set. Round trips on real anatomy (the
OpenKBP sample patients written as DICOM by an independent pydicom writer, local ROI names), the name
rules, and what does not convert (reported per ROI or per patient while the rest converts)."""
import json

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from nnunet_oar import organs as catalogue
from nnunet_oar.cli import main
from nnunet_oar.conversion.dataset import merge_masks
from nnunet_oar.conversion.dicom_rt import case_id, convert_dicom
from nnunet_oar.conversion.names import NameMap
from nnunet_oar.conversion.openkbp import iter_patients, patient_to_images
from nnunet_oar.dicom.rtstruct import write_rtstruct
from nnunet_oar.dicom.series import read_ct_series
from nnunet_oar.io import InputError
from tests.conftest import shared_or_skip
from tests.dicom_helpers import write_ct_series, write_rtstruct_file

LOCAL_NAMES = [  # one clinic's habits per patient: (catalogue organ -> ROI name)
    {"brainstem": "BrainStem", "spinal_cord": "Spinal Cord", "parotid_right": "Rt Parotid",
     "parotid_left": "L Parotid", "esophagus": "Oesophagus", "larynx": "LARYNX", "mandible": "Bone_Mandible"},
    {"brainstem": "Brain Stem", "spinal_cord": "SPINALCORD", "parotid_right": "PAROTID RT",
     "parotid_left": "Lt_Parotid_Gland", "esophagus": "Esophagus", "larynx": "Larynx", "mandible": "Mandible"},
]


@pytest.mark.parametrize("organ_names", [
    ("Parotid_L", "parotid_left"), ("L Parotid", "parotid_left"), ("PAROTID LT", "parotid_left"),
    ("Lt_Parotid_Gland", "parotid_left"), ("RightParotid", "parotid_right"), ("Parotid (R)", "parotid_right"),
    ("SpinalCord", "spinal_cord"), ("spinal cord", "spinal_cord"), ("Brain Stem", "brainstem"),
    ("Bone_Mandible", "mandible"), ("Oesophagus", "esophagus"), ("Kidney_R", "kidney_right"),
    ("Rt Kidney", "kidney_right"), ("Glnd_Thyroid", "thyroid_gland"), ("A_Aorta", "aorta"),
])
def test_clinical_names_map_to_the_catalogue(organ_names):
    assert NameMap()(organ_names[0]) == (organ_names[1], "rule")


@pytest.mark.parametrize("name", ["Parotid", "Lung", "Parotid_L_PRV", "SpinalCord+5mm", "PTV70", "External",
                                  "Parotid L R", "brainstem_prv03"])
def test_planning_structures_and_sideless_pairs_stay_unmapped(name):
    assert NameMap()(name)[0] is None


def test_user_names_come_first_and_are_checked(tmp_path):
    m = NameMap({"Stammhirn": "brainstem", r"re:parotis\s*li(nks)?": "parotid_left", "Cord": None,
                 "Liver*": None})
    assert m("stammhirn ") == ("brainstem", "user")
    assert m("Parotis links") == ("parotid_left", "user")
    assert m("Cord") == (None, "skip")                    # the built-in rule would have taken it
    assert m("Liver*") == (None, "skip") and m("Liver") == ("liver", "rule")    # a plain key is no pattern
    with pytest.raises(InputError, match="unknown organ 'brain'"):
        NameMap({"x": "brain"})
    bad = tmp_path / "names.json"
    bad.write_text('{"x": 3}')
    with pytest.raises(InputError, match="names.json"):
        NameMap.from_file(bad)


def _dice(a, b):
    return 2 * np.logical_and(a, b).sum() / max(a.sum() + b.sum(), 1)


def test_openkbp_patients_round_trip_through_dicom(tmp_path, nnunet_env):
    """Three real patients as CT series + RTSTRUCT (two by an independent writer with local names, one
    by our own RTSTRUCT writer), shuffled file names, a planning structure beside the organs: every organ
    of 1 mL or more comes back with Dice >= 0.99 on the original grid, and nothing else is annotated."""
    sample = shared_or_skip("openkbp", "sample")
    originals = {}
    for k, (patient, files, where) in enumerate(iter_patients(sample)):
        ct, masks = patient_to_images(files, where)
        folder = tmp_path / "dicom" / f"P{k}"
        uids = write_ct_series(ct, folder / "ct", seed=k)
        originals[case_id(uids["study"], uids["series"])] = (ct, masks, None)
        if k < len(LOCAL_NAMES):
            ptv = np.zeros_like(next(iter(masks.values())))
            ptv[60:70, 50:70, 50:70] = True
            rois = {LOCAL_NAMES[k][o]: m for o, m in masks.items() if m.any()}
            write_rtstruct_file(folder / "rs.dcm", ct, uids, {**rois, "PTV70": ptv})
        else:       # our own writer, from the label map on the DICOM grid (slices may run the other way)
            labels = catalogue.labels_for(masks)
            label_map, _ = merge_masks(masks, labels)
            dicom_ct, series = read_ct_series(folder / "ct")
            on_dicom = sitk.Resample(_image(label_map, ct), dicom_ct, sitk.Transform(), sitk.sitkNearestNeighbor)
            write_rtstruct(sitk.GetArrayFromImage(on_dicom), labels, series, folder / "rs.dcm")
            originals[case_id(uids["study"], uids["series"])] = (ct, masks, {o: label_map == v for o, v in labels.items()})
    out = convert_dicom(tmp_path / "dicom", 520, progress=False)
    report = json.loads((out / "conversion_report.json").read_text())
    labels = json.loads((out / "dataset.json").read_text())["labels"]
    annotations = json.loads((out / "annotations.json").read_text())
    assert len(annotations) == 3 and not report["skipped"]
    assert report["unmapped_names"] == {"PTV70": 2}
    for case, notes in report["cases"].items():
        assert "patient_id" not in notes and "P1" not in case
    matched = 0
    for case, (ct, masks, exact) in originals.items():
        converted = sitk.ReadImage(str(out / "labelsTr" / f"{case}.nii.gz"))
        back = sitk.GetArrayFromImage(sitk.Resample(converted, ct, sitk.Transform(), sitk.sitkNearestNeighbor))
        ml = np.prod(ct.GetSpacing()) / 1000
        assert sorted(annotations[case]) == sorted(o for o, m in masks.items() if m.any())
        for organ, m in masks.items():
            if m.sum() * ml >= 1:
                assert _dice(back == labels[organ], m) >= 0.99, (case, organ, _dice(back == labels[organ], m))
                matched += 1
        for organ, m in (exact or {}).items():      # our writer's contours give back the very voxels
            assert np.array_equal(back == labels[organ], m), (case, organ)
    assert matched >= 15


def _image(array, like):
    img = sitk.GetImageFromArray(array)
    img.CopyInformation(like)
    return img


def _cube_ct():
    ct = np.full((12, 30, 30), -1000, np.int16)
    ct[:, 5:25, 5:25] = 30
    img = sitk.GetImageFromArray(ct)
    img.SetSpacing((2.0, 2.0, 3.0))
    img.SetOrigin((-30.0, -30.0, 0.0))
    return img


def _ball(img, centre_xyz_mm, r_mm):
    z, y, x = np.meshgrid(*[np.arange(n) for n in img.GetSize()[::-1]], indexing="ij")
    p = np.stack([x, y, z], -1) * np.array(img.GetSpacing()) + np.array(img.GetOrigin())
    return np.linalg.norm(p - np.array(centre_xyz_mm), axis=-1) < r_mm


def test_what_does_not_convert_is_reported_and_the_rest_converts(tmp_path, nnunet_env):
    img = _cube_ct()
    liver, spleen = _ball(img, (-10, 0, 15), 8), _ball(img, (12, 0, 15), 6)
    root = tmp_path / "in"
    # A: good; a second, older RTSTRUCT with another label is passed over
    a = write_ct_series(img, root / "A" / "ct", seed=1)
    write_rtstruct_file(root / "A" / "rs_old.dcm", img, a, {"Liver": spleen}, label="draft", date="20250101")
    write_rtstruct_file(root / "A" / "rs.dcm", img, a, {"Liver": liver, "Spleen": spleen}, date="20260101")
    # ... and so is a newer one that our own predict --rtstruct wrote (never training truth by default)
    write_rtstruct_file(root / "A" / "rs_auto.dcm", img, a, {"Liver": spleen}, label="nnunet_oar", date="20270101",
                        manufacturer="nnunet_oar")
    # B: its RTSTRUCT references a series that is not there
    b = write_ct_series(img, root / "B" / "ct", seed=2)
    write_rtstruct_file(root / "B" / "rs.dcm", img, b, {"Liver": liver}, series_uid="1.2.3.4.5")
    # C: the RTSTRUCT's frame of reference is not the CT's
    c = write_ct_series(img, root / "C" / "ct", seed=3)
    write_rtstruct_file(root / "C" / "rs.dcm", img, c, {"Liver": liver}, frame_uid="1.2.3.4.6")
    # D: one good organ beside an empty ROI, an open contour, a contour outside the image, one between
    # slices, an unmapped name and two ROIs naming one organ
    d = write_ct_series(img, root / "D" / "ct", seed=4)
    square = np.array([[-5, -5, 0], [5, -5, 0], [5, 5, 0], [-5, 5, 0]], float)
    write_rtstruct_file(root / "D" / "rs.dcm", img, d, {
        "Liver": liver, "Spleen": [], "Kidney_L": [("OPEN_PLANAR", square + [0, 0, 15])],
        "Kidney_R": [("CLOSED_PLANAR", square + [0, 0, 90])], "Aorta": [("CLOSED_PLANAR", square + [0, 0, 16.5])],
        # every other slice: sparse contouring; a contour 0.2 mm off its slice, written twice: kept, noted
        "Pancreas": [("CLOSED_PLANAR", square + [0, 0, z]) for z in range(3, 30, 6)],
        "Gallbladder": [("CLOSED_PLANAR", square + [0, 0, 12.2])] * 2 + [("CLOSED_PLANAR", square + [0, 0, 15])],
        "Tumour bed": spleen, "Lung_L": spleen, "Lt Lung": spleen,
        # contour data that is no list of x, y, z triplets; contours of 2 points and of 1 (as some export
        # tools write them) mark no voxel, beside a good contour and alone
        "Trachea": [("CLOSED_PLANAR", np.arange(11.0))],
        "Sternum": [("CLOSED_PLANAR", square + [0, 0, 15]), ("CLOSED_PLANAR", np.array([[-5, -5, 18], [5, 5, 18.]]))],
        "Glnd_Thyroid": [("CLOSED_PLANAR", np.array([[0, 0, 15.]]))],
        "Musc_Psoas_L": [("CLOSED_PLANAR", square + [0, 0, 15]), ("CLOSED_PLANAR", np.array([7.0]))]})
    # E: an RTSTRUCT without a series reference (some planning systems omit it): linked by its frame
    e = write_ct_series(img, root / "E" / "ct", seed=5)
    write_rtstruct_file(root / "E" / "rs.dcm", img, e, {"Liver": liver}, series_uid="")
    # F: one slice file cut short (its header ends before the series UID): F is refused, the rest converts
    f = write_ct_series(img, root / "F" / "ct", seed=6)
    write_rtstruct_file(root / "F" / "rs.dcm", img, f, {"Liver": liver})
    cut = sorted((root / "F" / "ct").iterdir())[-1]
    cut.write_bytes(cut.read_bytes()[:300])
    # G: two CT series in one frame of reference and an RTSTRUCT that names neither: not guessed
    g1 = write_ct_series(img, root / "G" / "ct1", seed=7)
    write_ct_series(img, root / "G" / "ct2", seed=8)
    for f in (root / "G" / "ct2").iterdir():
        ds = pydicom.dcmread(f)
        ds.FrameOfReferenceUID = g1["frame"]
        ds.save_as(f)
    write_rtstruct_file(root / "G" / "rs.dcm", img, g1, {"Liver": liver}, series_uid="")
    out = convert_dicom(root, 521, progress=False)
    report = json.loads((out / "conversion_report.json").read_text())
    annotations = json.loads((out / "annotations.json").read_text())
    assert len(annotations) == 3                                        # A, D and E
    reasons = " | ".join(s["reason"] for s in report["skipped"])
    assert "1 damaged DICOM file(s) beside its slices; one may be a missing slice" in reasons        # F
    assert report["damaged_files"] == 1
    assert "references series ['<uid>'], which is not a CT series under the input folder" in reasons   # B
    assert "frame of reference <uid> is not the CT's" in reasons                                      # C
    assert "names no series, and its frame of reference holds 2 CT series (<uid>, <uid>)" in reasons  # G
    case_a = next(c for c, n in report["cases"].items() if "Spleen" in n["roi_to_organ"])
    assert report["cases"][case_a]["rtstruct"] == ("RTSTRUCT 'clinic', the approved or newest of 2; 1 automatic "
                                                   "set(s) (e.g. nnunet_oar's own) passed over")
    case_d = next(c for c in annotations if c != case_a and report["cases"][c]["refused_rois"])
    assert annotations[case_d] == ["liver", "gallbladder", "sternum"]
    refused = report["cases"][case_d]["refused_rois"]
    assert refused["Spleen"] == "empty (no contours)"
    assert "OPEN_PLANAR" in refused["Kidney_L"]
    assert "outside the CT's slices" in refused["Kidney_R"]
    assert "between CT slices" in refused["Aorta"]
    assert "contoured on 5 of the 9 slices of its extent" in refused["Pancreas"]
    assert report["cases"][case_d]["roi_notes"]["Gallbladder"] == "1 repeated contour(s) counted once"
    assert refused["Trachea"] == "contour 1 has malformed ContourData (11 values, not x, y, z triplets of numbers)"
    assert report["cases"][case_d]["roi_notes"]["Sternum"] == "1 contour(s) of fewer than 3 points or on one line, left out"
    sternum = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "labelsTr" / f"{case_d}.nii.gz")))
    assert (sternum[6] == json.loads((out / "dataset.json").read_text())["labels"]["sternum"]).sum() == 0
    assert refused["Glnd_Thyroid"].startswith("its contours enclose no voxel centre (1 contour(s) of fewer than 3")
    assert refused["Musc_Psoas_L"] == "contour 2 has malformed ContourData (1 values, not x, y, z triplets of numbers)"
    assert "2 ROIs name lung_left" in refused["Lung_L"] and "Lt Lung" in refused["Lt Lung"]
    assert report["cases"][case_d]["unmapped_rois"] == {"Tumour bed": "unmapped"}
    assert "patient_id" not in report["cases"][case_a]
    text = (out / "conversion_report.json").read_text()       # nothing that could name the patient
    assert str(root) not in text and "rs.dcm" not in text and "1.2.3.4.5" not in text and "P1" not in text
    # a names file picks up what was unmapped (a rerun replaces the data set)
    names = tmp_path / "names.json"
    names.write_text(json.dumps({"tumour bed": "spleen"}))
    out = convert_dicom(root, 521, names=names, keep_ids=True, progress=False)
    report = json.loads((out / "conversion_report.json").read_text())
    assert json.loads((out / "annotations.json").read_text())[case_d] == ["liver", "spleen", "gallbladder", "sternum"]
    assert report["cases"][case_a]["patient_id"] == "P1" and report["unmapped_names"] == {}
    # --rtstruct-label takes the draft on A; D has no RTSTRUCT so labelled and is skipped, saying so
    out = convert_dicom(root, 521, rtstruct_label="draft", progress=False)
    report = json.loads((out / "conversion_report.json").read_text())
    assert json.loads((out / "annotations.json").read_text())[case_a] == ["liver"]
    assert "'draft'" in report["cases"][case_a]["rtstruct"]
    assert any(s.get("case") == case_d and "no RTSTRUCT labelled 'draft'" in s["reason"] for s in report["skipped"])


def test_a_structure_set_the_reader_cannot_read_skips_its_patient_only(tmp_path, nnunet_env, monkeypatch):
    from nnunet_oar.conversion import dicom_rt
    img = _cube_ct()
    liver = _ball(img, (-10, 0, 15), 8)
    for name, seed in (("A", 1), ("B", 2)):
        uids = write_ct_series(img, tmp_path / "in" / name / "ct", seed=seed)
        write_rtstruct_file(tmp_path / "in" / name / "rs.dcm", img, uids, {"Liver": liver}, label=name)
    read = dicom_rt.rasterize_rois

    def broken_for_b(ds, *args, **kwargs):      # a malformation the reader does not foresee, in B only
        if ds.StructureSetLabel == "B":
            raise ValueError("invalid literal for int() with base 10: 'x'")
        return read(ds, *args, **kwargs)
    monkeypatch.setattr(dicom_rt, "rasterize_rois", broken_for_b)
    out = convert_dicom(tmp_path / "in", 523, progress=False)
    report = json.loads((out / "conversion_report.json").read_text())
    assert len(json.loads((out / "annotations.json").read_text())) == 1
    assert [s["reason"] for s in report["skipped"]] == [
        "its RTSTRUCT could not be read (ValueError: invalid literal for int() with base 10: 'x')"]
    assert "rs.dcm" not in (out / "conversion_report.json").read_text()


def test_nothing_to_convert_is_named(tmp_path, nnunet_env, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["convert-dicom", "-i", str(tmp_path / "empty"), "-d", "522"]) == 2
    assert f"{tmp_path / 'empty'}: no CT series" in capsys.readouterr().err
    img = _cube_ct()
    uids = write_ct_series(img, tmp_path / "in" / "ct")
    write_rtstruct_file(tmp_path / "in" / "rs.dcm", img, uids, {"GTV": _ball(img, (0, 0, 15), 5)})
    with pytest.raises(InputError, match="no ROI name maps to a catalogue organ"):
        convert_dicom(tmp_path / "in", 522, progress=False)


def test_a_plain_nnunet_data_set_without_annotations_is_cropped(tmp_path, nnunet_env, capsys):
    """crop_rois on a data set without annotations.json: every organ of dataset.json counts as annotated
    in every case, said once."""
    from nnunet_oar.segmentation.crops import crop_rois
    img = _cube_ct()
    for k in range(2):
        uids = write_ct_series(img, tmp_path / "in" / f"P{k}" / "ct", seed=k)
        write_rtstruct_file(tmp_path / "in" / f"P{k}" / "rs.dcm", img, uids, {"Liver": _ball(img, (-8 + k, 0, 15), 7)})
    out = convert_dicom(tmp_path / "in", 523, progress=False)
    (out / "annotations.json").unlink()
    reports = crop_rois(523, 524, organs=["liver"], boxes_from_labels=True, progress=False)
    assert reports["liver"]["cases"] == 2
    assert "no annotations.json; every organ of dataset.json counts as annotated in all 2 cases" in capsys.readouterr().out


def test_rounded_slice_positions_do_not_make_the_grid_drift():
    """A scanner that writes positions to 0.01 mm: 400 slices of 0.625 mm. The median step (0.62 or 0.63)
    would put the last slice up to 2 mm off; the spacing from the end slices keeps every slice within
    the rounding."""
    from pydicom.dataset import Dataset
    from nnunet_oar.dicom.series import slice_geometry
    headers = []
    for k in range(400):
        h = Dataset()
        h.ImageOrientationPatient, h.PixelSpacing, h.Rows, h.Columns = [1, 0, 0, 0, 1, 0], [0.8, 0.8], 4, 4
        h.ImagePositionPatient = [0.0, 0.0, round(-100 + 0.625 * k, 2)]
        headers.append(h)
    _, _, spacing = slice_geometry(headers, "rounded")
    last = -100 + spacing[2] * 399
    assert abs(last - headers[-1].ImagePositionPatient[2]) < 0.01


def test_an_roi_without_its_own_frame_is_in_the_structure_sets_and_only_wanted_rois_are_read(tmp_path):
    from nnunet_oar.dicom.rtstruct_reader import rasterize_rois
    img = _cube_ct()
    uids = write_ct_series(img, tmp_path / "ct", seed=1)
    ball = _ball(img, (0, 0, 15), 8)
    rs = tmp_path / "rs.dcm"
    write_rtstruct_file(rs, img, uids, {"Liver": ball, "PTV": ball}, frame_uid="1.2.3.4.6")
    ds = pydicom.dcmread(rs)
    for roi in ds.StructureSetROISequence:
        roi.ReferencedFrameOfReferenceUID = ""
    masks, refused, _ = rasterize_rois(ds, img, uids["frame"], keep=lambda name: name == "Liver")
    assert masks == {} and refused == {"Liver": f"frame of reference 1.2.3.4.6 is not the CT's ({uids['frame']})"}
    masks, refused, _ = rasterize_rois(ds, img, "1.2.3.4.6", keep=lambda name: name == "Liver")
    assert list(masks) == ["Liver"] and refused == {} and masks["Liver"].sum() == ball.sum()
    # a contour through voxel centres (as tools that trace a mask's pixels write it) holds them all; at
    # 0.7 mm from -250.3 mm the centres' indices come out of the arithmetic a hair off (39 of 49 before)
    fine = sitk.Image([40, 40, 3], sitk.sitkInt16)
    fine.SetSpacing((0.7, 0.7, 3.0))
    fine.SetOrigin((-250.3, -250.3, 0.0))
    fine_uids = write_ct_series(fine, tmp_path / "fine", seed=2)
    for decimals in (4, 2):                 # ContourData as exports write it, to a few decimals
        lo, hi = round(-250.3 + 0.7 * 9, decimals), round(-250.3 + 0.7 * 15, decimals)
        square = np.array([[lo, lo, 3], [hi, lo, 3], [hi, hi, 3], [lo, hi, 3]])
        write_rtstruct_file(rs, fine, fine_uids, {"Liver": [("CLOSED_PLANAR", square)]})
        masks, _, _ = rasterize_rois(pydicom.dcmread(rs), fine, fine_uids["frame"])
        assert masks["Liver"].sum() == masks["Liver"][1].sum() == 7 * 7
    # a hole traced through the centres of the voxels around it (as such tools trace a ring) takes none of them
    a, b = round(-250.3 + 0.7 * 11, 4), round(-250.3 + 0.7 * 13, 4)
    hole = np.array([[a, a, 3], [b, a, 3], [b, b, 3], [a, b, 3]])
    write_rtstruct_file(rs, fine, fine_uids, {"Liver": [("CLOSED_PLANAR", square), ("CLOSED_PLANAR", hole)]})
    masks, _, _ = rasterize_rois(pydicom.dcmread(rs), fine, fine_uids["frame"])
    assert masks["Liver"].sum() == 7 * 7 - 1 and not masks["Liver"][1, 12, 12]
    # an ROI without ROINumber cannot be tied to its contours: refused, named, not dropped
    ds = pydicom.dcmread(rs)
    del ds.StructureSetROISequence[0].ROINumber
    assert rasterize_rois(ds, fine, fine_uids["frame"]) == ({}, {"Liver": "no ROINumber: its contours cannot be found"},
                                                            {})
