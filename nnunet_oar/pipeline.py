"""End to end: CT -> localize -> boxes -> per-organ nnU-Net on crops -> max-probability merge -> labels.

``predict()`` is the Python API and ``nnunet_oar predict`` its CLI. ``MODELS`` is a folder with a
``models.json`` manifest naming the localizer's and each organ's nnU-Net results folder (paths relative
to the manifest, so the folder can be copied to another machine); ``export_models`` writes it.

Outputs per case, all on exactly the input's grid and written atomically:
``{case}.nii.gz`` (multi-label map), ``{case}.json`` (label names), ``{case}_boxes.json`` and
``{case}_stats.json`` (per organ: status, volume in mL, centroid in mm).
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Dict, Optional, Sequence, Union

import numpy as np
import SimpleITK as sitk
import torch
from tqdm import tqdm

from nnunet_oar import organs as catalogue
from nnunet_oar.conversion.dataset import NETWORK_ORIENTATION
from nnunet_oar.geometry import centroid_mm, crop_image
from nnunet_oar.io import InputError, geometry, read_image, write_image, write_json
from nnunet_oar.localization.boxes import DEFAULT_MARGIN_MM, DEFAULT_TAU
from nnunet_oar.localization.localize import Localizer, available_folds, case_id, list_images
from nnunet_oar.merge import MaxProbabilityMerger
from nnunet_oar.paths import ensure_trainer_path, find_dataset, results_root

MANIFEST = "models.json"
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
                  tau: float = DEFAULT_TAU) -> Path:
    """Copy trained results into a self-contained models folder with a ``models.json`` manifest.

    Args:
        output: models folder to write (replaced atomically).
        localizer_id: data set id of the localizer.
        organ_ids: data set ids of the organ networks (each a cropped data set with one organ).
        localizer_trainer, organ_trainer, plans: names in the nnU-Net results folders.
        margins: margin v in mm, one for all organs or per organ (e.g. calibrated ones).
        tau: the localizer's detection threshold.
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
                              "folds": loc_folds, "margin_mm": margins, "tau": tau},
                "organs": {}}
    with atomic_dir(output) as tmp:
        _copy_results(loc_src, tmp / "localizer", loc_folds)
        for dataset_id in organ_ids:
            folder = find_dataset(results_root(), dataset_id)
            if folder is None:
                raise FileNotFoundError(f"{results_root()}: no results for organ data set {dataset_id}")
            src = folder / f"{organ_trainer}__{plans}__3d_fullres"
            labels = json.loads((src / "dataset.json").read_text())["labels"]
            organ = next(n for n in labels if n != "background")
            folds = available_folds(src)
            if not folds:
                raise FileNotFoundError(f"{src}: no trained fold")
            _copy_results(src, tmp / "organs" / organ, folds)
            manifest["organs"][organ] = {"results_folder": f"organs/{organ}", "configuration": "3d_fullres",
                                         "trainer": organ_trainer, "folds": folds}
        write_json(manifest, tmp / MANIFEST)
    return Path(output)


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
        manifest = json.loads(path.read_text())
        loc = manifest["localizer"]
        self.localizer = Localizer(models / loc["results_folder"], folds or loc["folds"], device, loc["margin_mm"],
                                   loc.get("tau", DEFAULT_TAU))
        available = manifest["organs"]
        self.organs = list(organs) if organs else list(available)
        for o in self.organs:
            if o not in available:
                raise ValueError(f"no model for {o}; the models folder has {', '.join(available)}")
        self.labels = catalogue.labels_for(self.organs)
        self.networks = {}
        dev = torch.device(device)
        for organ in self.organs:
            p = nnUNetPredictor(tile_step_size=step_size, use_gaussian=True, use_mirroring=tta,
                                perform_everything_on_device=dev.type != "cpu", device=dev, verbose=False,
                                allow_tqdm=False)
            p.initialize_from_trained_model_folder(str(models / available[organ]["results_folder"]),
                                                   folds or available[organ]["folds"])
            self.networks[organ] = p

    def predict_image(self, ct: sitk.Image, image_file: Path, case: str):
        """One CT -> (label image on the CT's grid, boxes dict, stats dict)."""
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
            merger.add(self.labels[organ], sitk.GetArrayFromImage(sitk.DICOMOrient(prob_img, orientation)), box["start"])
        seg = sitk.GetImageFromArray(merger.labels)
        seg.CopyInformation(ct)
        return seg, boxes, organ_stats(merger.labels, geometry(ct), self.labels, boxes)


def organ_stats(label_zyx: np.ndarray, geom: dict, labels: Dict[str, int], boxes: dict) -> Dict[str, dict]:
    """Per organ: ``status`` (found / absent / not_requested), ``volume_ml``, ``centroid_mm`` (x,y,z) and
    the localizer's status; an organ the localizer found but no voxel of which won the merge is absent."""
    voxel_ml = float(np.prod(geom["spacing_xyz"])) / 1000.0
    out = {}
    for organ, entry in boxes["organs"].items():
        loc_status = entry.get("status")
        if organ not in labels or loc_status == "not_requested":
            out[organ] = {"status": "not_requested"}
            continue
        mask = label_zyx == labels[organ]
        n = int(mask.sum())
        out[organ] = {"status": "found" if n else "absent", "localizer": loc_status,
                      "volume_ml": n * voxel_ml, "centroid_mm": centroid_mm(geom, mask).tolist() if n else None}
    return out


def predict(inputs: Path, output: Path, models: Path, folds: Optional[Sequence] = None, device: str = "cpu",
            organs: Optional[Sequence[str]] = None, tta: bool = True, step_size: float = 0.5) -> Dict[str, str]:
    """Segment every CT in ``inputs`` (file or folder) into ``output``.

    Returns:
        ``{case: error}`` for inputs that could not be processed; the other cases are written.
    """
    images = list_images(inputs)
    predictor = OARPredictor(models, folds, device, organs, tta, step_size)
    output = Path(output)
    errors = {}
    for f in tqdm(images, desc="predict"):
        case = case_id(f)
        try:
            ct = read_image(f, "CT")
            seg, boxes, stats = predictor.predict_image(ct, f, case)
        except InputError as e:
            errors[case] = str(e)
            tqdm.write(f"skipped: {e}")
            continue
        write_image(seg, output / f"{case}.nii.gz")
        write_json({"labels": predictor.labels, "image": geometry(ct)}, output / f"{case}.json")
        write_json(boxes, output / f"{case}_boxes.json")
        write_json({"case": case, "organs": stats}, output / f"{case}_stats.json")
    return errors
