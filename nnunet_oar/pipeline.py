"""End to end: CT -> localize -> boxes -> per-organ nnU-Net on crops -> max-probability merge -> labels.

``predict()`` is the Python API and ``nnunet_oar predict`` its CLI. ``MODELS`` is a folder with a
``models.json`` manifest naming the localizer's and each organ's nnU-Net results folder (paths relative
to the manifest, so the folder can be copied to another machine); ``export_models`` writes it.

Outputs per case, all on exactly the input's grid and written atomically:
``{case}.nii.gz`` (multi-label map), ``{case}.json`` (label names), ``{case}_boxes.json``,
``{case}_stats.json`` / ``.csv`` (per organ: status, volume in mL, mean HU, centroid and box in mm),
on request RTSTRUCT, DICOM SEG and a preview (:mod:`nnunet_oar.export`), and last
``{case}_manifest.json`` (the sha256 of each file of the set; readers refuse a set without it).
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import SimpleITK as sitk
import torch
from tqdm import tqdm

from nnunet_oar import organs as catalogue
from nnunet_oar.conversion.dataset import NETWORK_ORIENTATION
from nnunet_oar.geometry import crop_image
from nnunet_oar.io import (InputError, check_memory, check_writable, geometry, read_image, read_json, write_image,
                           write_json)
from nnunet_oar.localization.boxes import DEFAULT_MARGIN_MM, DEFAULT_READOUT, DEFAULT_TAU, cut_faces
from nnunet_oar.localization.localize import Localizer, available_folds, case_id, list_images
from nnunet_oar.merge import THRESHOLD, MaxProbabilityMerger
from nnunet_oar.paths import ensure_trainer_path, find_dataset, raw_root, results_root
from nnunet_oar.plausibility import input_warnings, organ_check
from nnunet_oar.safe_load import check_checkpoint

MANIFEST = "models.json"
# predict's peak memory per CT voxel, bytes: a 458 x 379 x 224 CT peaked at 6.4 GB with the networks loaded
# (docs/results/inference_benchmark.md), about 160 B per voxel; half of that surely does not fit
PEAK_BYTES_PER_VOXEL = 80
_KEEP = ("plans.json", "dataset.json", "dataset_fingerprint.json")
_KEEP_FOLD = ("checkpoint_final.pth", "box_stats.json")


def _copy_results(src: Path, dst: Path, folds: Sequence) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for name in _KEEP:
        shutil.copy2(src / name, dst / name)
    for f in folds:
        (dst / f"fold_{f}").mkdir(exist_ok=True)
        for name in _KEEP_FOLD:
            if (src / f"fold_{f}" / name).is_file():
                shutil.copy2(src / f"fold_{f}" / name, dst / f"fold_{f}" / name)


def export_models(output: Path, localizer_id: int, organ_ids: Sequence[int],
                  localizer_trainer: str = "nnUNetTrainerOARHeatmap", organ_trainer: str = "nnUNetTrainer",
                  plans: str = "nnUNetPlans", margins: Union[float, Dict[str, float]] = DEFAULT_MARGIN_MM,
                  tau: float = DEFAULT_TAU, readout: str = DEFAULT_READOUT) -> Path:
    """Copy trained results into a self-contained models folder with a ``models.json`` manifest.

    Args:
        output: models folder to write (replaced atomically).
        localizer_id: data set id of the localizer.
        organ_ids: data set ids of the organ networks (each a cropped data set with one organ).
        localizer_trainer, organ_trainer, plans: names in the nnU-Net results folders.
        margins: margin v in mm, one for all organs or per organ (e.g. calibrated ones).
        tau: the localizer's detection threshold.
        readout: the localizer's centroid read-out (``midpoint`` or ``weighted``).
    """
    from nnunet_oar.io import atomic_dir
    loc_name = find_dataset(results_root(), localizer_id)
    if loc_name is None:
        raise FileNotFoundError(f"{results_root()}: no results for data set {localizer_id}")
    loc_src = loc_name / f"{localizer_trainer}__{plans}__3d_loc"
    loc_folds = available_folds(loc_src)
    if not loc_folds:
        raise FileNotFoundError(f"{loc_src}: no trained fold")
    manifest = {"localizer": {"results_folder": "localizer", "configuration": "3d_loc", "trainer": localizer_trainer,
                              "folds": loc_folds, "margin_mm": margins, "tau": tau, "readout": readout},
                "organs": {}}
    with atomic_dir(output) as tmp:
        _copy_results(loc_src, tmp / "localizer", loc_folds)
        for dataset_id in organ_ids:
            folder = find_dataset(results_root(), dataset_id)
            if folder is None:
                raise FileNotFoundError(f"{results_root()}: no results for organ data set {dataset_id}")
            src = folder / f"{organ_trainer}__{plans}__3d_fullres"
            labels = read_json(src / "dataset.json")["labels"]
            organ = next(n for n in labels if n != "background")
            folds = available_folds(src)
            if not folds:
                raise FileNotFoundError(f"{src}: no trained fold")
            _copy_results(src, tmp / "organs" / organ, folds)
            manifest["organs"][organ] = {"results_folder": f"organs/{organ}", "configuration": "3d_fullres",
                                         "trainer": organ_trainer, "folds": folds,
                                         "volume_ml": _trained_volume_range(dataset_id)}
        write_json(manifest, tmp / MANIFEST)
    return Path(output)


def _trained_volume_range(dataset_id: int) -> Optional[List[float]]:
    """[min, max] organ volume (mL) over an organ data set's training crops (``crops.json``), or ``None``
    when the raw data set is not on this machine or predates the record."""
    raw = find_dataset(raw_root(), dataset_id)
    if raw is None or not (raw / "crops.json").is_file():
        return None
    volumes = [c["organ_volume_ml"] for c in read_json(raw / "crops.json").values() if c.get("organ_volume_ml")]
    return [min(volumes), max(volumes)] if volumes else None


def _expected(models: Path, organ: str, entry: dict, box_stats: Dict[str, dict]) -> dict:
    """What an organ looked like in training (see :mod:`nnunet_oar.plausibility`)."""
    fingerprint = models / entry["results_folder"] / "dataset_fingerprint.json"
    hu = None
    if fingerprint.is_file():
        p = read_json(fingerprint)["foreground_intensity_properties_per_channel"]["0"]
        hu = [p["percentile_00_5"], p["percentile_99_5"]]
    return {"mean_hu": hu, "volume_ml": entry.get("volume_ml"),
            "size_mm": box_stats.get(organ, {}).get("mean_size_mm")}


class OARPredictor:
    """Loaded models for :func:`predict`.

    Args:
        models: models folder with ``models.json``.
        folds: folds to ensemble for every network (default: those in the manifest).
        device: ``cpu`` or ``cuda``.
        organs: organs to segment (default: all in the manifest).
        tta: nnU-Net's test-time mirroring for the organ networks.
        step_size: nnU-Net's sliding-window step (fraction of the patch) for the organ networks; 0.5 is
            nnU-Net's default, 1.0 halves the tiles of crops larger than the patch.
    """

    def __init__(self, models: Path, folds: Optional[Sequence] = None, device: str = "cpu",
                 organs: Optional[Sequence[str]] = None, tta: bool = True, step_size: float = 0.5):
        from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
        ensure_trainer_path()
        models = Path(models)
        path = models / MANIFEST
        if not path.is_file():
            raise InputError(f"{path}: no models manifest (write one with `nnunet_oar export-models`)")
        manifest = read_json(path)
        loc = manifest["localizer"]
        self.localizer = Localizer(models / loc["results_folder"], folds or loc["folds"], device, loc["margin_mm"],
                                   loc.get("tau", DEFAULT_TAU), readout=loc.get("readout", DEFAULT_READOUT))
        available = manifest["organs"]
        self.organs = list(organs) if organs else list(available)
        for o in self.organs:
            if o not in available:
                raise InputError(f"no model for {o}; the models folder has {', '.join(available)}")
        self.labels = catalogue.labels_for(self.organs)
        self.networks = {}
        dev = torch.device(device)
        for organ in self.organs:
            for f in folds or available[organ]["folds"]:
                check_checkpoint(models / available[organ]["results_folder"] / f"fold_{f}" / "checkpoint_final.pth")
            p = nnUNetPredictor(tile_step_size=step_size, use_gaussian=True, use_mirroring=tta,
                                perform_everything_on_device=dev.type != "cpu", device=dev, verbose=False,
                                allow_tqdm=False)
            p.initialize_from_trained_model_folder(str(models / available[organ]["results_folder"]),
                                                   folds or available[organ]["folds"])
            self.networks[organ] = p
        self.expected = {o: _expected(models, o, available[o], self.localizer.box_stats) for o in self.organs}

    def predict_image(self, ct: sitk.Image, image_file: Path, case: str, boxes: Optional[dict] = None):
        """One CT (``image_file``, already read as ``ct``) -> (label image on the CT's grid, boxes dict).
        ``boxes`` (a ``{case}_boxes.json``) replaces the localizer, e.g. reference boxes."""
        if boxes is None:
            boxes, _ = self.localizer.localize_file(image_file, case, requested=self.organs)
        merger = MaxProbabilityMerger(ct.GetSize()[::-1])
        orientation = sitk.DICOMOrientImageFilter_GetOrientationFromDirectionCosines(ct.GetDirection())
        for organ in self.organs:
            entry = boxes["organs"].get(organ, {})
            if entry.get("status") != "found":
                continue
            box = entry["box_index_xyz"]
            # the organ networks were trained on RAS-reoriented arrays (SimpleITKIOWithReorient)
            crop = sitk.DICOMOrient(crop_image(ct, box["start"], box["stop"]), NETWORK_ORIENTATION)
            data = sitk.GetArrayFromImage(crop)[None].astype(np.float32)
            _, prob = self.networks[organ].predict_single_npy_array(
                data, {"spacing": list(crop.GetSpacing())[::-1]}, None, None, True)
            prob_img = sitk.GetImageFromArray(np.asarray(prob[1], dtype=np.float32))
            prob_img.CopyInformation(crop)
            prob_zyx = sitk.GetArrayFromImage(sitk.DICOMOrient(prob_img, orientation))
            entry["cut_by_box"] = cut_faces(prob_zyx > THRESHOLD, box["start"], box["stop"], ct.GetSize())
            if entry["cut_by_box"]:
                tqdm.write(f"warning: {case}: {organ} reaches the {'/'.join(entry['cut_by_box'])} face(s) of its box "
                           "inside the image; it may be cut (cut_by_box in the boxes and stats)")
            merger.add(self.labels[organ], prob_zyx, box["start"])
        labels = self._plausible(merger.labels, sitk.GetArrayViewFromImage(ct), ct.GetSpacing(), boxes, case)
        seg = sitk.GetImageFromArray(labels)
        seg.CopyInformation(ct)
        return seg, boxes

    def _plausible(self, labels_zyx: np.ndarray, ct_zyx: np.ndarray, spacing_xyz, boxes: dict, case: str):
        """Remove organs that cannot be what their network was trained on, flag doubtful ones; the reasons
        go into the case's boxes (and from there into the statistics)."""
        boxes["input_warnings"] = input_warnings(ct_zyx.shape[::-1], spacing_xyz, ct_zyx)
        for w in boxes["input_warnings"]:
            tqdm.write(f"warning: {case}: {w}")
        for organ in self.organs:
            entry = boxes["organs"].get(organ)
            mask = labels_zyx == self.labels[organ]
            if entry is None or not mask.any():
                continue
            check = organ_check(mask, ct_zyx, spacing_xyz, self.expected[organ])
            if check["implausible"]:
                labels_zyx[mask] = 0
                entry["implausible"] = check["implausible"]
                tqdm.write(f"warning: {case}: {organ} removed: {check['implausible']}")
            if check["flags"]:
                entry["flags"] = check["flags"]
                tqdm.write(f"warning: {case}: {organ}: " + "; ".join(check["flags"]))
        return labels_zyx


def write_reference_boxes(reference: Path, labels: Dict[str, int], models: Path, output: Path,
                          margin_mm: Optional[float] = None) -> int:
    """``{case}_boxes.json`` for every reference label map in ``reference``: the models' box sizes and
    margin centred on the reference centroids (:func:`~nnunet_oar.localization.boxes.reference_boxes`).
    Returns the number of cases."""
    from nnunet_oar.localization.boxes import reference_boxes
    from nnunet_oar.localization.localize import load_box_stats
    loc = read_json(Path(models) / MANIFEST)["localizer"]
    box_stats = load_box_stats(Path(models) / loc["results_folder"], loc["folds"])
    margin = loc["margin_mm"] if margin_mm is None else margin_mm
    files = list_images(reference)
    for f in files:
        img = read_image(f, "reference label map")
        write_json(reference_boxes(sitk.GetArrayFromImage(img), geometry(img), labels, box_stats, margin, case_id(f)),
                   Path(output) / f"{case_id(f)}_boxes.json")
    return len(files)


def _inputs(inputs: Path) -> List[Tuple[str, Path]]:
    """``[(case, path)]``: one DICOM series folder (case = folder name), one image file, or a folder of images."""
    from nnunet_oar.dicom.series import is_dicom_folder
    inputs = Path(inputs)
    if is_dicom_folder(inputs) and not any(f.name.endswith((".nii.gz", ".nii", ".mha", ".nrrd"))
                                           for f in inputs.iterdir()):
        return [(inputs.name, inputs)]
    return [(case_id(f), f) for f in list_images(inputs)]


def _refuse_overwriting_inputs(sources: List[Tuple[str, Path]], output: Path) -> None:
    """No output may replace an input: an output folder holding the inputs (``-o`` = the input's folder)
    is refused, before any model is loaded, when a case's output name is one of the input files."""
    from nnunet_oar.export import CASE_OUTPUT_SUFFIXES
    out = output.resolve()
    for case, path in sources:
        inputs = set(p.resolve() for p in (path.iterdir() if path.is_dir() else [path]))
        for suffix in CASE_OUTPUT_SUFFIXES:
            if out / f"{case}{suffix}" in inputs:
                raise InputError(f"{path if path.is_file() else out / (case + suffix)}: an input that the output "
                                 f"{case}{suffix} would overwrite; choose another output folder (-o)")


def predict(inputs: Path, output: Path, models: Path, folds: Optional[Sequence] = None, device: str = "cpu",
            organs: Optional[Sequence[str]] = None, tta: bool = True, step_size: float = 0.5,
            series_uid: Optional[str] = None, rtstruct: bool = False, dicom_seg: bool = False,
            preview: bool = False, boxes_dir: Optional[Path] = None, roi_names: str = "tg263") -> Dict[str, str]:
    """Segment every CT in ``inputs`` into ``output``.

    Args:
        inputs: a CT image file, a folder of them, or a DICOM CT series folder (read with
            :func:`nnunet_oar.dicom.series.read_ct_series`; ``series_uid`` picks one of several).
        output: output folder (nothing is written beside the inputs).
        rtstruct, dicom_seg: also write ``{case}_rtstruct.dcm`` / ``{case}_seg.dcm`` (DICOM input only).
        preview: also write ``{case}_preview.png`` (one row of planes per found organ).
        boxes_dir: take each case's boxes from ``{boxes_dir}/{case}_boxes.json`` instead of the localizer
            (e.g. ``nnunet_oar reference-boxes``: the organ stage alone).
        roi_names: ROI / segment names in RTSTRUCT and SEG: ``"tg263"`` (``Kidney_L``) or ``"catalogue"``.

    Returns:
        ``{case: error}`` for inputs that could not be processed; the other cases are written.
    """
    from nnunet_oar.dicom.series import read_ct_series
    from nnunet_oar.export import begin_case_set, finish_case_set, write_outputs
    sources = _inputs(inputs)
    if (rtstruct or dicom_seg) and not any(p.is_dir() for _, p in sources):
        raise InputError(f"{inputs}: RTSTRUCT and DICOM SEG reference the CT's DICOM slices; give a DICOM series "
                         "folder (or convert a label map with `nnunet_oar export --ct DICOM_FOLDER`)")
    _refuse_overwriting_inputs(sources, Path(output))
    check_writable(output)
    predictor = OARPredictor(models, folds, device, organs, tta, step_size)
    output = Path(output)
    errors = {}
    for case, path in tqdm(sources, desc="predict"):
        try:
            series, given = None, None
            if boxes_dir is not None:
                box_file = Path(boxes_dir) / f"{case}_boxes.json"
                if not box_file.is_file():
                    raise InputError(f"{box_file}: no boxes for case {case}")
                given = read_json(box_file)
            if path.is_dir():
                ct, series = read_ct_series(path, series_uid)
                # nnU-Net reads files: the series goes to a temporary NIfTI, never beside the input
                with tempfile.TemporaryDirectory() as tmp:
                    image_file = Path(tmp) / f"{case}_0000.nii.gz"
                    sitk.WriteImage(ct, str(image_file))
                    seg, boxes = predictor.predict_image(ct, image_file, case, given)
            else:
                check_memory(path, PEAK_BYTES_PER_VOXEL, "CT")
                ct = read_image(path, "CT")
                seg, boxes = predictor.predict_image(ct, path, case, given)
        except InputError as e:
            errors[case] = str(e)
            tqdm.write(f"skipped: {e}")
            continue
        clinical = rtstruct or dicom_seg
        if clinical:
            try:
                series.require_uids("RTSTRUCT/SEG")
            except InputError as e:          # the label map and statistics are still written
                errors[case] = str(e)
                tqdm.write(f"warning: {e}")
                clinical = False
        # the case's files form one set: its manifest goes first and comes back last
        begin_case_set(output, case)
        files = [output / f"{case}.nii.gz", output / f"{case}.json", output / f"{case}_boxes.json"]
        write_image(seg, files[0])
        write_json({"labels": predictor.labels, "image": geometry(ct)}, files[1])
        write_json(boxes, files[2])
        written = write_outputs(ct, seg, predictor.labels, case, output, boxes, series, rtstruct and clinical,
                                dicom_seg and clinical, preview, roi_names)
        finish_case_set(output, case, files + list(written.values()))
    return errors
