"""Hostile DICOM CT folders, as real scanner exports make them, against nnunet_oar.dicom.series.

Each folder is written with pydicom (tests/dicom_helpers.py) and then given one quirk. What is read must
have SimpleITK's geometry and pydicom's HU; what cannot be read exactly must be refused with an
InputError that names the file or folder, never read short or shifted."""
import shutil

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.fileset import FileSet
from pydicom.pixels import apply_modality_lut
from pydicom.uid import RLELossless, generate_uid

from nnunet_oar.dicom.series import is_dicom_folder, read_ct_series
from nnunet_oar.io import InputError
from tests.dicom_helpers import write_ct_series

SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"


def volume(size=(12, 10, 8), spacing=(0.8, 0.9, 2.5), direction=(1, 0, 0, 0, 1, 0, 0, 0, 1), seed=0):
    """Random HU on a small grid (x, y, z)."""
    arr = np.random.default_rng(seed).integers(-1000, 2000, size[::-1]).astype(np.int16)
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(spacing)
    img.SetDirection(direction)
    img.SetOrigin((-10.0, 20.0, 100.0))
    return img


def series(folder, img=None, **kw):
    """``(image, uids, files in slice order)``; the files' names are shuffled."""
    img = img if img is not None else volume()
    uids = write_ct_series(img, folder, **kw)
    files = sorted(folder.iterdir(), key=lambda f: int(pydicom.dcmread(f, stop_before_pixels=True).InstanceNumber))
    return img, uids, files


def edit(files, change):
    """``change(k, dataset)`` on every file (k: slice index), saved in place."""
    for k, f in enumerate(files):
        ds = pydicom.dcmread(f)
        change(k, ds)
        ds.save_as(f)


def new_object(template, path, series_uid=None, **attributes):
    """A copy of ``template`` with fresh instance (and series) UIDs and ``attributes`` set."""
    ds = pydicom.dcmread(template)
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    for key, value in attributes.items():
        if value is None:
            delattr(ds, key)
        else:
            setattr(ds, key, value)
    if "SOPClassUID" in attributes:
        ds.file_meta.MediaStorageSOPClassUID = attributes["SOPClassUID"]
    ds.save_as(path)
    return ds


def assert_same_image(image, expected):
    assert image.GetSize() == expected.GetSize()
    np.testing.assert_allclose(image.GetSpacing(), expected.GetSpacing(), atol=1e-5)
    np.testing.assert_allclose(image.GetOrigin(), expected.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(image.GetDirection(), expected.GetDirection(), atol=1e-5)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(expected))


def same_world(image, written):
    """Every voxel of ``written`` is found at its world position in ``image`` (any slice order)."""
    for index in [(0, 0, 0), (11, 9, 7), (3, 4, 5), (11, 0, 2)]:
        point = written.TransformIndexToPhysicalPoint(index)
        assert image[image.TransformPhysicalPointToIndex(point)] == written[index]


# several series and other objects in one folder

def test_scouts_dose_screens_and_other_objects_beside_the_ct_are_no_second_series(tmp_path):
    img, uids, files = series(tmp_path / "dcm" / "ct")
    other = tmp_path / "dcm"
    new_object(files[0], other / "scout", ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"],
               ImageOrientationPatient=[1, 0, 0, 0, 0, -1], SeriesNumber=1)
    new_object(files[0], other / "dose_screen", SOPClassUID=SECONDARY_CAPTURE, ImageType=["DERIVED", "SECONDARY"],
               ImagePositionPatient=None, ImageOrientationPatient=None, SeriesDescription="Dose Report")
    for modality, sop_class in (("RTPLAN", "1.2.840.10008.5.1.4.1.1.481.5"), ("SR", "1.2.840.10008.5.1.4.1.1.88.67"),
                                ("RTDOSE", "1.2.840.10008.5.1.4.1.1.481.2")):
        new_object(files[1], other / f"{modality}.dcm", Modality=modality, SOPClassUID=sop_class)
    fs = FileSet()
    fs.add(files[2])
    fs.write(other / "media")                                # DICOMDIR and a second copy of one slice
    (other / "notes.txt").write_text("exported by the scanner")
    (other / ".DS_Store").write_bytes(b"\0\0\0\1Bud1" + bytes(200))
    (other / "ct" / "._IM0001").write_bytes(b"\0\5\26\7" + bytes(300))      # macOS AppleDouble
    image, ct = read_ct_series(other)
    assert ct.series_uid == uids["series"] and len(ct.files) == 8
    assert_same_image(image, img)


def test_a_scout_inside_the_ct_series_is_left_out(tmp_path):
    img, uids, files = series(tmp_path / "dcm")
    scout = tmp_path / "dcm" / "scout"
    new_object(files[0], scout, series_uid=uids["series"], ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"],
               ImageOrientationPatient=[1, 0, 0, 0, 0, -1])
    image, ct = read_ct_series(tmp_path / "dcm")
    assert scout not in ct.files and len(ct.files) == 8
    assert_same_image(image, img)


def test_two_reconstructions_are_listed_and_one_is_chosen(tmp_path):
    img, a, files = series(tmp_path / "dcm" / "soft")
    _, b, _ = series(tmp_path / "dcm" / "lung", volume(seed=1), study_uid=a["study"])
    scout = new_object(files[0], tmp_path / "dcm" / "scout", ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"])
    with pytest.raises(InputError, match="2 CT series; choose one with --series-uid") as e:
        read_ct_series(tmp_path / "dcm")
    assert a["series"] in str(e.value) and b["series"] in str(e.value)
    assert scout.SeriesInstanceUID not in str(e.value)          # a scout is no candidate
    image, ct = read_ct_series(tmp_path / "dcm", series_uid=a["series"])
    assert ct.series_uid == a["series"]
    assert_same_image(image, img)


@pytest.mark.parametrize("kind", ["scout", "dose screen"])
def test_choosing_a_series_that_is_no_volume_is_refused(tmp_path, kind):
    _, _, files = series(tmp_path / "dcm")
    attributes = (dict(ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"]) if kind == "scout" else
                  dict(SOPClassUID=SECONDARY_CAPTURE, ImagePositionPatient=None, ImageOrientationPatient=None))
    ds = new_object(files[0], tmp_path / "dcm" / "other", **attributes)
    with pytest.raises(InputError, match="holds no CT slices.*" + ("localizer" if kind == "scout" else "secondary")):
        read_ct_series(tmp_path / "dcm", series_uid=ds.SeriesInstanceUID)


# duplicates, order, spacing

def test_one_sop_instance_uid_on_every_file_is_refused_not_read_as_one_slice(tmp_path):
    _, _, files = series(tmp_path / "dcm")
    edit(files, lambda k, ds: setattr(ds, "SOPInstanceUID", "1.2.3.4"))
    with pytest.raises(InputError, match="a different image with the SOPInstanceUID 1.2.3.4 of"):
        read_ct_series(tmp_path / "dcm")


def test_a_second_copy_of_a_slice_counts_once(tmp_path):
    img, _, files = series(tmp_path / "dcm")
    (tmp_path / "dcm" / "copy").mkdir()
    shutil.copy(files[3], tmp_path / "dcm" / "copy" / "IM0003")
    image, ct = read_ct_series(tmp_path / "dcm")
    assert len(ct.files) == 8
    assert_same_image(image, img)


def test_slice_thickness_is_not_the_spacing(tmp_path):
    img, _, files = series(tmp_path / "dcm")
    edit(files, lambda k, ds: setattr(ds, "SliceThickness", "3.0" if k % 2 else "1.0"))
    image, _ = read_ct_series(tmp_path / "dcm")
    assert_same_image(image, img)


def test_steps_within_tolerance_that_add_up_to_a_drift_are_refused(tmp_path):
    """30 steps of 2.50 mm, then 29 of 2.52 mm: each step is within 1 % of the median, but a uniform grid
    puts the middle slices 0.3 mm off."""
    _, _, files = series(tmp_path / "dcm", volume(size=(6, 6, 60)))
    edit(files, lambda k, ds: setattr(ds, "ImagePositionPatient",
                                      [-10.0, 20.0, 100 + 2.5 * min(k, 30) + 2.52 * max(k - 30, 0)]))
    with pytest.raises(InputError, match="non-uniform slice spacing.*off the uniform grid"):
        read_ct_series(tmp_path / "dcm")


# orientation and tilt

ORIENTATIONS = {
    "head_first_supine": (1, 0, 0, 0, 1, 0, 0, 0, 1),
    "feet_first_supine": (-1, 0, 0, 0, 1, 0, 0, 0, -1),
    "head_first_prone": (-1, 0, 0, 0, -1, 0, 0, 0, 1),
    "feet_first_prone": (1, 0, 0, 0, -1, 0, 0, 0, -1),
    "decubitus": (0, -1, 0, 1, 0, 0, 0, 0, 1),
    "sagittal": (0, 0, -1, 1, 0, 0, 0, -1, 0),
    "coronal": (1, 0, 0, 0, 0, -1, 0, 1, 0),
    "slices_against_the_normal": (1, 0, 0, 0, 1, 0, 0, 0, -1),
    "oblique": tuple(sitk.VersorTransform((0.3, 0.1, 0.9), 0.4).GetMatrix()),
}


@pytest.mark.parametrize("orientation", ORIENTATIONS)
def test_orientations_read_as_simpleitk_reads_them(tmp_path, orientation):
    written = volume(direction=ORIENTATIONS[orientation], seed=3)
    series(tmp_path / "dcm", written)
    image, _ = read_ct_series(tmp_path / "dcm")
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(tmp_path / "dcm")))
    assert_same_image(image, reader.Execute())
    same_world(image, written)


def test_gantry_tilt_written_as_a_tilted_plane_stacked_along_the_table_is_refused(tmp_path):
    """Siemens / Philips style: the image plane tilted 15 degrees, the positions along the table axis."""
    _, _, files = series(tmp_path / "dcm")
    t = np.radians(15)
    edit(files, lambda k, ds: (setattr(ds, "ImageOrientationPatient", [1, 0, 0, 0, np.cos(t), np.sin(t)]),
                               setattr(ds, "ImagePositionPatient", [-10, 20, 100 + 2.5 * k])))
    with pytest.raises(InputError, match="gantry tilt"):
        read_ct_series(tmp_path / "dcm")


def test_one_slice_shifted_in_plane_in_a_long_stack_is_refused(tmp_path):
    """A 1 mm shift of one slice of 120 passed a tolerance that grew with the number of slices."""
    _, _, files = series(tmp_path / "dcm", volume(size=(6, 6, 120), spacing=(0.8, 0.8, 1.0)))
    ds = pydicom.dcmread(files[60])
    ds.ImagePositionPatient[0] = float(ds.ImagePositionPatient[0]) + 1.0
    ds.save_as(files[60])
    with pytest.raises(InputError, match="in-plane shift") as e:
        read_ct_series(tmp_path / "dcm")
    assert str(files[60]) in str(e.value)


@pytest.mark.parametrize("key", ["ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing"])
def test_a_slice_without_geometry_is_named(tmp_path, key):
    _, _, files = series(tmp_path / "dcm")
    ds = pydicom.dcmread(files[2])
    delattr(ds, key)
    ds.save_as(files[2])
    with pytest.raises(InputError, match=f"{files[2]} has no {key}"):
        read_ct_series(tmp_path / "dcm")


# Hounsfield units

def _hu(k, ds, values, bits_stored=16, signed=False, slope="1", intercept="-1024"):
    ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits_stored, bits_stored - 1, int(signed)
    ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    ds.PixelData = values.astype(np.int16 if signed else np.uint16).tobytes()


ENCODINGS = {
    "slope_0.5": lambda k, ds, hu: _hu(k, ds, (hu + 1024) // 1, slope="0.5"),
    "signed_hu_intercept_0": lambda k, ds, hu: _hu(k, ds, hu, signed=True, intercept="0"),
    "signed_12_bit": lambda k, ds, hu: _hu(k, ds, hu.clip(-2048, 2047), bits_stored=12, signed=True, intercept="0"),
    "unsigned_12_bit_with_bits_above_high_bit": lambda k, ds, hu: _hu(
        k, ds, (hu + 1024).clip(0, 4095) | 0xF000, bits_stored=12),
    "rescale_differs_between_slices": lambda k, ds, hu: _hu(
        k, ds, hu + 1024, **(dict(slope="0.5", intercept="-1000.5") if k == 3 else {})),
}


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_hounsfield_units_are_pydicoms_modality_lut(tmp_path, encoding):
    img, _, files = series(tmp_path / "dcm", volume(seed=5))
    hu = sitk.GetArrayFromImage(img).astype(np.int32)
    edit(files, lambda k, ds: ENCODINGS[encoding](k, ds, hu[k]))
    image, ct = read_ct_series(tmp_path / "dcm")
    expected = np.stack([apply_modality_lut(ds.pixel_array, ds) for ds in map(pydicom.dcmread, ct.files)])
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), expected)


@pytest.mark.parametrize("missing", [("RescaleIntercept",), ("RescaleIntercept", "RescaleSlope")])
def test_a_missing_rescale_intercept_is_refused_not_read_as_hu(tmp_path, missing):
    _, _, files = series(tmp_path / "dcm")
    edit(files, lambda k, ds: [delattr(ds, key) for key in missing])
    with pytest.raises(InputError, match="RescaleIntercept is missing in 8 of 8 files"):
        read_ct_series(tmp_path / "dcm")


# transfer syntaxes

def _encapsulate(files, compressor):
    """Each slice's pixel data compressed by GDCM (SimpleITK's writer), its transfer syntax with it."""
    for f in files:
        ds = pydicom.dcmread(f)
        one = f.parent / "one.dcm"
        writer = sitk.ImageFileWriter()
        writer.SetFileName(str(one))
        writer.SetImageIO("GDCMImageIO")
        writer.SetUseCompression(True)
        writer.SetCompressor(compressor)
        writer.Execute(sitk.GetImageFromArray(ds.pixel_array))
        compressed = pydicom.dcmread(one)
        one.unlink()
        ds.file_meta.TransferSyntaxUID = compressed.file_meta.TransferSyntaxUID
        ds.PixelData = compressed.PixelData
        ds["PixelData"].VR = "OB"
        ds.save_as(f, enforce_file_format=True)


@pytest.mark.parametrize("compression", ["JPEG", "JPEG2000", "RLE"])
def test_compressed_series_are_decoded_without_pydicom_plugins(tmp_path, compression):
    img, _, files = series(tmp_path / "dcm", volume(seed=9))
    if compression == "RLE":
        edit(files, lambda k, ds: ds.compress(RLELossless))      # pydicom's own encoder
    else:
        _encapsulate(files, compression)
    assert pydicom.dcmread(files[0]).file_meta.TransferSyntaxUID.is_compressed
    image, _ = read_ct_series(tmp_path / "dcm")
    assert_same_image(image, img)


def test_a_transfer_syntax_gdcm_cannot_decode_is_named(tmp_path):
    _, _, files = series(tmp_path / "dcm")
    _encapsulate(files, "JPEG2000")
    for f in files:                                           # an unknown (same-length) transfer syntax UID
        data = f.read_bytes()
        assert data.count(b"1.2.840.10008.1.2.4.90") == 1
        f.write_bytes(data.replace(b"1.2.840.10008.1.2.4.90", b"1.2.840.10008.1.2.4.98"))
    with pytest.raises(InputError, match="cannot decode the pixel data of .*transfer syntax 1.2.840.10008.1.2.4.98"):
        read_ct_series(tmp_path / "dcm")


def test_a_multiframe_enhanced_ct_is_refused_by_name(tmp_path):
    _, _, files = series(tmp_path / "dcm")
    ds = pydicom.dcmread(files[0])
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2.1"
    ds.NumberOfFrames = len(files)
    ds.PixelData = b"".join(pydicom.dcmread(f).PixelData for f in files)
    del ds.ImagePositionPatient                    # it is in the per-frame functional groups
    for f in files:
        f.unlink()
    ds.save_as(tmp_path / "dcm" / "enhanced.dcm")
    with pytest.raises(InputError, match="enhanced.dcm is a multi-frame"):
        read_ct_series(tmp_path / "dcm")


def test_files_without_preamble_are_read(tmp_path):
    img, _, files = series(tmp_path / "dcm")
    for f in files:
        ds = pydicom.dcmread(f)
        ds.preamble = None
        del ds.file_meta
        pydicom.dcmwrite(f, ds, implicit_vr=True, little_endian=True)
    assert files[0].read_bytes()[128:132] != b"DICM"
    assert is_dicom_folder(tmp_path / "dcm")
    image, _ = read_ct_series(tmp_path / "dcm")
    assert_same_image(image, img)


# folders that hold no volume, and damaged files

def test_a_single_slice_is_refused(tmp_path):
    _, _, files = series(tmp_path / "dcm", volume(size=(12, 10, 1)))
    with pytest.raises(InputError, match=f"only one CT slice \\({files[0]}\\)"):
        read_ct_series(tmp_path / "dcm")


def test_empty_missing_and_non_dicom_folders_are_named(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="empty: no DICOM files"):
        read_ct_series(tmp_path / "empty")
    with pytest.raises(InputError, match="absent: not a folder"):
        read_ct_series(tmp_path / "absent")
    (tmp_path / "text").mkdir()
    (tmp_path / "text" / "IM0001").write_text("0008,0016 CT Image Storage\n" * 20)
    with pytest.raises(InputError, match="text: no DICOM files"):
        read_ct_series(tmp_path / "text")


@pytest.mark.parametrize("cut", [132, 400])
def test_a_slice_cut_short_at_the_end_of_the_stack_is_refused_not_dropped(tmp_path, cut):
    """pydicom reads a header cut before SeriesInstanceUID without complaint; skipped, the last slice
    would silently be missing from the volume."""
    _, _, files = series(tmp_path / "dcm")
    files[-1].write_bytes(files[-1].read_bytes()[:cut])
    with pytest.raises(InputError, match="without SeriesInstanceUID") as e:
        read_ct_series(tmp_path / "dcm")
    assert str(files[-1]) in str(e.value)


def test_a_dicom_file_with_a_damaged_header_is_named(tmp_path):
    series(tmp_path / "dcm")
    bad = tmp_path / "dcm" / "IM_bad"
    bad.write_bytes(bytes(128) + b"DICM" + np.random.default_rng(0).integers(0, 256, 3000, dtype=np.uint8).tobytes())
    with pytest.raises(InputError, match=str(bad)):
        read_ct_series(tmp_path / "dcm")


def test_a_damaged_file_elsewhere_in_the_tree_is_reported_not_fatal(tmp_path, capsys):
    """A cut-off file in another folder (a dose screen, an old export) cannot be a slice of this CT."""
    img, _, _ = series(tmp_path / "study" / "CT")
    (tmp_path / "study" / "other").mkdir()
    bad = tmp_path / "study" / "other" / "IM_cut"
    bad.write_bytes(bytes(128) + b"DICM" + np.random.default_rng(1).integers(0, 256, 3000, dtype=np.uint8).tobytes())
    image, _ = read_ct_series(tmp_path / "study")
    assert_same_image(image, img)
    assert f"warning: {bad}" in capsys.readouterr().out


@pytest.mark.parametrize("spacing", [2.5, 0.625])
def test_positions_written_to_a_tenth_of_a_millimetre_are_read(tmp_path, spacing):
    """Elekta XiO writes positions to 0.1 mm: 2.5 mm steps read 2.5 and 2.6 where they cross zero
    (pytrip issue 409), 0.625 mm steps read 0.6 and 0.7; nothing is missing or out of place."""
    img = volume(size=(6, 6, 24), spacing=(0.8, 0.9, spacing))
    _, _, files = series(tmp_path / "dcm", img)
    z = [-5.25 + spacing * k for k in range(24)]
    edit(files, lambda k, ds: setattr(ds, "ImagePositionPatient",
                                      [-10.0, 20.0, float(np.sign(z[k]) * np.floor(abs(z[k]) * 10 + 0.5) / 10)]))
    image, _ = read_ct_series(tmp_path / "dcm")
    assert abs(image.GetSpacing()[2] - spacing) < 0.01
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(img))


def test_a_tilt_tag_on_an_orthogonal_stack_is_reported_not_refused(tmp_path, capsys):
    """Tools that resample a tilted scan often leave GantryDetectorTilt set; the positions decide."""
    img, _, files = series(tmp_path / "dcm")
    edit(files, lambda k, ds: setattr(ds, "GantryDetectorTilt", "15"))
    image, _ = read_ct_series(tmp_path / "dcm")
    assert_same_image(image, img)
    assert "GantryDetectorTilt says 15.0 degrees" in capsys.readouterr().out


def test_a_bolus_tracking_series_at_one_position_is_no_second_ct(tmp_path):
    """Monitoring scans image one position again and again: no volume, so no choice to ask for."""
    img, uids, files = series(tmp_path / "study" / "ct")
    bolus = generate_uid()
    (tmp_path / "study" / "bolus").mkdir()
    for k in range(5):
        new_object(files[3], tmp_path / "study" / "bolus" / f"IM{k}", series_uid=bolus, InstanceNumber=k + 1,
                   SeriesDescription="monitoring")
    image, ct = read_ct_series(tmp_path / "study")
    assert ct.series_uid == uids["series"]
    assert_same_image(image, img)
