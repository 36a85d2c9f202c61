"""DICOM CT in, RTSTRUCT / SEG / preview / statistics out: round trips against real readers (pydicom,
highdicom, scikit-image rasterisation), geometry and UIDs, and the series checks."""
import csv
import json

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from scipy import ndimage

from nnunet_oar import organs as catalogue
from nnunet_oar.cli import main
from nnunet_oar.dicom.series import read_ct_series
from nnunet_oar.io import InputError
from tests.dicom_helpers import rasterize_rtstruct, write_ct_series

ORGANS = ["liver", "spleen", "kidney_right", "kidney_left", "adrenal_gland_right"]
LABELS = catalogue.labels_for(ORGANS)
TG263 = {"Liver": "liver", "Spleen": "spleen", "Kidney_R": "kidney_right", "Kidney_L": "kidney_left",
         "Glnd_Adrenal_R": "adrenal_gland_right"}           # the default ROI names in RTSTRUCT and SEG
GRIDS = {
    "axial": dict(spacing=(0.9, 0.9, 2.5), direction=(1, 0, 0, 0, 1, 0, 0, 0, 1)),
    "flipped": dict(spacing=(1.0, 1.2, 2.0), direction=(-1, 0, 0, 0, -1, 0, 0, 0, 1)),
    "left_handed": dict(spacing=(1.0, 1.0, 3.0), direction=(1, 0, 0, 0, 1, 0, 0, 0, -1)),
    "thin_slices": dict(spacing=(1.5, 1.5, 0.6), direction=(1, 0, 0, 0, 1, 0, 0, 0, 1)),
}


def make_case(spacing, direction):
    """CT (HU) and label map: a liver with an internal cavity, a spleen in two pieces, two kidneys and a
    0.3 mL adrenal; all on a 60 x 60 mm field of view, 60 mm long."""
    size = [int(round(60 / s)) for s in spacing]                       # x, y, z
    zz, yy, xx = np.meshgrid(*[(np.arange(n) + 0.5) * s for n, s in zip(size[::-1], spacing[::-1])], indexing="ij")
    ct = np.full(zz.shape, -1000, np.int16)
    body = (xx - 30) ** 2 + (yy - 30) ** 2 < 28 ** 2
    ct[body] = 20
    lab = np.zeros(zz.shape, np.uint8)
    liver = ((xx - 20) / 12) ** 2 + ((yy - 25) / 10) ** 2 + ((zz - 30) / 20) ** 2 < 1
    cavity = ((xx - 20) / 4) ** 2 + ((yy - 25) / 4) ** 2 + ((zz - 30) / 8) ** 2 < 1
    lab[liver & ~cavity] = LABELS["liver"]
    lab[((xx - 42) ** 2 + (yy - 20) ** 2 + (zz - 18) ** 2 < 36) | ((xx - 42) ** 2 + (yy - 20) ** 2 + (zz - 40) ** 2 < 25)] = \
        LABELS["spleen"]
    lab[((xx - 22) / 5) ** 2 + ((yy - 45) / 4) ** 2 + ((zz - 30) / 7) ** 2 < 1] = LABELS["kidney_right"]
    lab[((xx - 40) / 5) ** 2 + ((yy - 45) / 4) ** 2 + ((zz - 30) / 7) ** 2 < 1] = LABELS["kidney_left"]
    lab[(xx - 30) ** 2 + (yy - 38) ** 2 + (zz - 45) ** 2 < 16] = LABELS["adrenal_gland_right"]
    for organ, v in LABELS.items():
        if v:
            ct[lab == v] = 40 + 10 * v
    images = []
    for arr in (ct, lab):
        img = sitk.GetImageFromArray(arr)
        img.SetSpacing(spacing)
        img.SetDirection(direction)
        img.SetOrigin((-100.0, 50.0, 300.0))
        images.append(img)
    return images


def to_lps(image):
    return sitk.GetArrayFromImage(sitk.DICOMOrient(image, "LPS"))


@pytest.mark.parametrize("grid", list(GRIDS))
def test_series_is_read_in_position_order_in_hu(grid, tmp_path):
    ct, _ = make_case(**GRIDS[grid])
    write_ct_series(ct, tmp_path / "dcm", seed=1)
    image, series = read_ct_series(tmp_path / "dcm")
    assert image.GetSize() == ct.GetSize()
    assert np.allclose(image.GetSpacing(), ct.GetSpacing(), atol=1e-4)
    # the same voxels at the same places, whatever the slice order the files or the direction imply
    assert np.array_equal(to_lps(image), to_lps(ct))
    lps_a, lps_b = sitk.DICOMOrient(image, "LPS"), sitk.DICOMOrient(ct, "LPS")
    assert np.allclose(lps_a.GetOrigin(), lps_b.GetOrigin(), atol=1e-3)
    positions = [float(np.dot(h.ImagePositionPatient, np.cross(h.ImageOrientationPatient[:3],
                                                             h.ImageOrientationPatient[3:]))) for h in series.headers]
    assert positions == sorted(positions)
    assert [str(f) for f in series.files] != sorted(str(f) for f in series.files)   # names are shuffled


@pytest.mark.parametrize("grid", list(GRIDS))
def test_export_round_trips_through_rtstruct_and_seg(grid, tmp_path):
    import highdicom as hd
    ct, lab = make_case(**GRIDS[grid])
    uids = write_ct_series(ct, tmp_path / "dcm", seed=2)
    before = sorted(p.name for p in (tmp_path / "dcm").iterdir())
    sitk.WriteImage(lab, str(tmp_path / "case.nii.gz"))                  # the label map on the NIfTI's own grid
    (tmp_path / "case.json").write_text(json.dumps({"labels": LABELS}))
    out = tmp_path / "out"
    assert main(["export", "-i", str(tmp_path / "case.nii.gz"), "--ct", str(tmp_path / "dcm"), "-o", str(out),
                 "--rtstruct", "--dicom-seg", "--preview"]) == 0
    assert sorted(p.name for p in (tmp_path / "dcm").iterdir()) == before   # nothing written beside the input
    image, series = read_ct_series(tmp_path / "dcm")
    expected = sitk.Resample(lab, image, sitk.Transform(), sitk.sitkNearestNeighbor)
    assert np.array_equal(to_lps(expected), to_lps(lab))                  # same grid, only reoriented
    expected = sitk.GetArrayFromImage(expected)
    voxel_ml = float(np.prod(image.GetSpacing())) / 1000

    # RTSTRUCT: read with pydicom, rasterised on the CT grid
    rt = pydicom.dcmread(out / "case_rtstruct.dcm")
    masks = rasterize_rtstruct(out / "case_rtstruct.dcm", image)
    assert set(masks) == set(TG263)
    masks = {TG263[name]: m for name, m in masks.items()}
    for organ in ORGANS:
        ref = expected == LABELS[organ]
        d = 2 * (masks[organ] & ref).sum() / (masks[organ].sum() + ref.sum())
        if ref.sum() * voxel_ml >= 1.0:
            assert d >= 0.95, (organ, d)
        assert d > 0.9, (organ, d)
    liver = masks["liver"]
    assert not liver[expected == 0].any() or (liver & (expected == 0)).sum() < 0.01 * liver.sum()
    cavity_voxels = (ndimage.binary_fill_holes(expected == LABELS["liver"]) & (expected != LABELS["liver"])).sum()
    assert cavity_voxels > 0 and not (liver & ndimage.binary_fill_holes(expected == LABELS["liver"])
                                      & (expected != LABELS["liver"])).any()      # the hole survived
    assert ndimage.label(masks["spleen"])[1] == 2                                  # both pieces survived
    colours = {r.ReferencedROINumber: tuple(int(v) for v in r.ROIDisplayColor) for r in rt.ROIContourSequence}
    assert len(set(colours.values())) == len(ORGANS)
    # UIDs and references
    assert rt.StudyInstanceUID == uids["study"] and rt.FrameOfReferenceUID == uids["frame"]
    ref_series = rt.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[0].RTReferencedSeriesSequence[0]
    assert ref_series.SeriesInstanceUID == uids["series"]
    sop_uids = {h.SOPInstanceUID for h in series.headers}
    assert {c.ReferencedSOPInstanceUID for c in ref_series.ContourImageSequence} == sop_uids
    for rc in rt.ROIContourSequence:
        for c in rc.ContourSequence:
            assert c.ContourImageSequence[0].ReferencedSOPInstanceUID in sop_uids

    # DICOM SEG: read with highdicom, voxel-exact
    seg = hd.seg.segread(out / "case_seg.dcm")
    assert seg.StudyInstanceUID == uids["study"] and seg.FrameOfReferenceUID == uids["frame"]
    numbers = {seg.get_segment_description(n).SegmentLabel: n for n in seg.get_segment_numbers()}
    assert set(numbers) == set(TG263)
    numbers = {TG263[name]: n for name, n in numbers.items()}
    back = seg.get_pixels_by_source_instance([h.SOPInstanceUID for h in series.headers], combine_segments=True,
                                             skip_overlap_checks=True)
    want = np.zeros_like(back)
    for organ, n in numbers.items():
        want[expected == LABELS[organ]] = n
    assert np.array_equal(back, want)
    liver_desc = seg.get_segment_description(numbers["liver"])
    assert liver_desc.SegmentedPropertyTypeCodeSequence[0].CodeValue == "10200004"
    kidney = seg.get_segment_description(numbers["kidney_left"]).SegmentedPropertyTypeCodeSequence[0]
    assert kidney.CodeMeaning == "Kidney" and kidney.SegmentedPropertyTypeModifierCodeSequence[0].CodeMeaning == "Left"

    # statistics and preview
    stats = json.loads((out / "case_stats.json").read_text())["organs"]
    for organ in ORGANS:
        n = int((expected == LABELS[organ]).sum())
        assert stats[organ]["volume_ml"] == pytest.approx(n * voxel_ml)
        assert stats[organ]["mean_hu"] == pytest.approx(40 + 10 * LABELS[organ])
    rows = {r["organ"]: r for r in csv.DictReader(open(out / "case_stats.csv"))}
    assert float(rows["liver"]["volume_ml"]) == pytest.approx(stats["liver"]["volume_ml"])
    from PIL import Image
    png = np.asarray(Image.open(out / "case_preview.png").convert("RGB"))
    assert png.shape[0] > 5 * 200 and png.shape[1] > 600                  # one row of three planes per organ
    r, g, b = catalogue.colour("liver")
    assert (np.abs(png.astype(int) - (r, g, b)).sum(-1) < 30).sum() > 50  # the liver's contour colour is drawn


def _series(tmp_path, **kw):
    ct, _ = make_case(**GRIDS["axial"])
    write_ct_series(ct, tmp_path / "dcm", **kw)
    return sorted((tmp_path / "dcm").iterdir())


def test_missing_slice_is_named(tmp_path):
    files = _series(tmp_path)
    by_pos = sorted(files, key=lambda f: float(pydicom.dcmread(f).ImagePositionPatient[2]))
    by_pos[10].unlink()
    with pytest.raises(InputError, match="missing slice"):
        read_ct_series(tmp_path / "dcm")


def test_duplicate_position_and_non_ct_and_tilt_are_refused(tmp_path):
    files = _series(tmp_path)
    ds = pydicom.dcmread(files[3])
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.save_as(tmp_path / "dcm" / "copy")
    with pytest.raises(InputError, match="one position"):
        read_ct_series(tmp_path / "dcm")
    ct, _ = make_case(**GRIDS["axial"])
    write_ct_series(ct, tmp_path / "mr", modality="MR")
    with pytest.raises(InputError, match="is MR, not CT"):
        read_ct_series(tmp_path / "mr")
    write_ct_series(ct, tmp_path / "tilt", tilt_mm_per_slice=0.5)
    with pytest.raises(InputError, match="gantry tilt"):
        read_ct_series(tmp_path / "tilt")


def test_non_uniform_spacing_is_refused(tmp_path):
    files = _series(tmp_path)
    for f in files:
        ds = pydicom.dcmread(f)
        z = float(ds.ImagePositionPatient[2])
        if z > 320:
            ds.ImagePositionPatient[2] = f"{z + 1.0:.6f}"
            ds.save_as(f)
    # the two files where the spacing changes, with their positions
    with pytest.raises(InputError, match=r"non-uniform slice spacing \(.* mm between \S+ \(320\.\d\d mm\) and "
                                         r"\S+ \(\d+\.\d\d mm\) where the median is"):
        read_ct_series(tmp_path / "dcm")


def test_several_series_need_a_choice(tmp_path):
    ct, _ = make_case(**GRIDS["axial"])
    a = write_ct_series(ct, tmp_path / "dcm" / "a")
    b = write_ct_series(ct, tmp_path / "dcm" / "b", study_uid=a["study"])
    with pytest.raises(InputError) as e:
        read_ct_series(tmp_path / "dcm")
    assert a["series"] in str(e.value) and b["series"] in str(e.value) and "--series-uid" in str(e.value)
    image, series = read_ct_series(tmp_path / "dcm", series_uid=b["series"])
    assert series.series_uid == b["series"] and image.GetSize() == ct.GetSize()


def test_an_rtstruct_beside_the_ct_series_is_not_a_second_series(tmp_path):
    ct, lab = make_case(**GRIDS["axial"])
    uids = write_ct_series(ct, tmp_path / "dcm")
    image, series = read_ct_series(tmp_path / "dcm")
    from nnunet_oar.dicom.rtstruct import write_rtstruct
    write_rtstruct(sitk.GetArrayFromImage(lab), LABELS, series, tmp_path / "dcm" / "rtstruct.dcm")
    image, series = read_ct_series(tmp_path / "dcm")
    assert series.series_uid == uids["series"] and len(series.files) == ct.GetSize()[2]


def test_one_slice_of_another_modality_and_a_truncated_slice_are_named(tmp_path):
    files = _series(tmp_path)
    ds = pydicom.dcmread(files[5])
    ds.Modality = "MR"
    ds.save_as(files[5])
    with pytest.raises(InputError, match="mixes modalities") as e:
        read_ct_series(tmp_path / "dcm")
    assert str(files[5]) in str(e.value)
    files = _series(tmp_path / "b")
    files[7].write_bytes(files[7].read_bytes()[:-500])
    with pytest.raises(InputError, match="truncated or damaged") as e:
        read_ct_series(tmp_path / "b" / "dcm")
    assert str(files[7]) in str(e.value)


def _export_case(tmp_path, **attributes):
    """The axial case as a DICOM series in ``tmp_path/dcm`` (``attributes`` set on every slice) and its
    label map ``case.nii.gz`` with the names beside it."""
    ct, lab = make_case(**GRIDS["axial"])
    write_ct_series(ct, tmp_path / "dcm", seed=2)
    _set_on_every_slice(tmp_path / "dcm", **attributes)
    sitk.WriteImage(lab, str(tmp_path / "case.nii.gz"))
    (tmp_path / "case.json").write_text(json.dumps({"labels": LABELS}))


def _set_on_every_slice(folder, **attributes):
    for f in folder.iterdir():
        ds = pydicom.dcmread(f)
        for key, value in attributes.items():
            setattr(ds, key, value)
        ds.save_as(f)


def test_blank_uids_refuse_rtstruct_and_seg_but_not_the_label_map(tmp_path):
    """An anonymiser blanked the UIDs in the data sets; the file meta keeps each SOP Instance UID."""
    _export_case(tmp_path, SOPInstanceUID="", SOPClassUID="")
    image, series = read_ct_series(tmp_path / "dcm")
    assert all(h.SOPInstanceUID == h.file_meta.MediaStorageSOPInstanceUID for h in series.headers)
    assert all(h.SOPClassUID == h.file_meta.MediaStorageSOPClassUID for h in series.headers)
    series.require_uids("RTSTRUCT")                                   # recovered from the file meta
    _set_on_every_slice(tmp_path / "dcm", StudyInstanceUID="")
    out = tmp_path / "out"
    with pytest.raises(InputError, match="StudyInstanceUID is empty"):
        read_ct_series(tmp_path / "dcm")[1].require_uids("RTSTRUCT")
    assert main(["export", "-i", str(tmp_path / "case.nii.gz"), "--ct", str(tmp_path / "dcm"), "-o", str(out),
                 "--rtstruct", "--dicom-seg"]) == 2
    assert not out.exists() or not any(out.iterdir())                 # nothing half-written
    assert main(["export", "-i", str(tmp_path / "case.nii.gz"), "--ct", str(tmp_path / "dcm"), "-o", str(out)]) == 0


def test_roi_names_follow_tg263_by_default_and_the_catalogue_on_request(tmp_path):
    _export_case(tmp_path)
    assert main(["export", "-i", str(tmp_path / "case.nii.gz"), "--ct", str(tmp_path / "dcm"), "-o",
                 str(tmp_path / "out"), "--rtstruct", "--roi-names", "catalogue"]) == 0
    rt = pydicom.dcmread(tmp_path / "out" / "case_rtstruct.dcm")
    assert sorted(r.ROIName for r in rt.StructureSetROISequence) == sorted(ORGANS)
    assert all(catalogue.ORGANS[o].tg263 for o in catalogue.ORGANS)    # every catalogue organ has one


def _luminance(rgb):
    c = np.asarray(rgb) / 255.0
    lin = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    return float(lin @ [0.2126, 0.7152, 0.0722])


def test_no_organ_colour_vanishes_on_a_white_structure_list():
    assert max(_luminance(catalogue.colour(o)) for o in catalogue.ORGANS) < 0.8


def _dciodvfy():
    """dicom3tools' IOD verifier; installed here if missing and possible, else the test says why it skips."""
    import shutil
    import subprocess
    if shutil.which("dciodvfy") is None and shutil.which("apt-get") is not None:
        subprocess.run(["apt-get", "install", "-y", "-q", "dicom3tools"], capture_output=True, timeout=300)
    if shutil.which("dciodvfy") is None:
        pytest.skip("dciodvfy (Debian package dicom3tools) is not installed and could not be installed here")
    return shutil.which("dciodvfy")


def test_rtstruct_and_seg_pass_the_dicom3tools_verifier(tmp_path):
    """Zero errors and warnings from dciodvfy, for a multi-organ case whose patient name is not ASCII
    (the CT itself has its own findings, which are not ours)."""
    import subprocess
    verifier = _dciodvfy()
    _export_case(tmp_path, SpecificCharacterSet="ISO_IR 100", PatientName="M\u00fcller^J\u00fcrgen")
    out = tmp_path / "out"
    assert main(["export", "-i", str(tmp_path / "case.nii.gz"), "--ct", str(tmp_path / "dcm"), "-o", str(out),
                 "--rtstruct", "--dicom-seg"]) == 0
    for name in ("case_rtstruct.dcm", "case_seg.dcm"):
        r = subprocess.run([verifier, str(out / name)], capture_output=True, text=True, errors="replace")
        findings = [line for line in (r.stdout + r.stderr).splitlines() if line.startswith(("Error", "Warning"))]
        assert findings == [], (name, findings)
    assert str(pydicom.dcmread(out / "case_rtstruct.dcm").PatientName) == "M\u00fcller^J\u00fcrgen"
