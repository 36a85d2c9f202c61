"""Localization inference: CT -> heat maps (nnU-Net predictor, fold ensemble) -> ``{case}_boxes.json``.

Centroids are taken on the preprocessed (3 mm) grid and mapped to the original image analytically
(:mod:`nnunet_oar.localization.grid`); heat maps are resampled to the original grid only when asked
for (``save_heatmaps``): the boxes need no array resampled (with nnU-Net's default cubic resampling, that of
the heat maps cost ten times the network pass on a clinical CT).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

import numpy as np
import SimpleITK as sitk
import torch
from tqdm import tqdm

from nnunet_oar.contracts import write_boxes
from nnunet_oar.io import (InputError, atomic_path, case_id, geometry, image_from_geometry,
                           list_images, read_image, read_json)
from nnunet_oar.localization.boxes import (DEFAULT_MARGIN_MM, DEFAULT_READOUT, DEFAULT_TAU, heatmap_region,
                                          into_scan, organ_box)
from nnunet_oar.localization.grid import preprocessed_to_world, reader_geometry, scan_z_mm
from nnunet_oar.localization.consistency import check_positions
from nnunet_oar.localization.extent import apply_z_extent
from nnunet_oar.localization.margins import read_margins, read_positions, read_z_extents
from nnunet_oar.paths import ensure_trainer_path
from nnunet_oar.preflight import check_writable
from nnunet_oar.safe_load import check_checkpoint

BOX_STATS = "box_stats.json"
Margins = Union[float, Dict[str, float]]


def boxes_for_case(heat: np.ndarray, organ_names: Sequence[str], properties: dict,
                   transpose_forward: Sequence[int], box_stats: Dict[str, dict], image_geom: Dict[str, list],
                   margin_mm: Margins = DEFAULT_MARGIN_MM, tau: float = DEFAULT_TAU,
                   requested: Optional[Sequence[str]] = None, case: str = "", readout: str = DEFAULT_READOUT,
                   scan_z_mm: Optional[Sequence[float]] = None, z_extent: Optional[Dict[str, dict]] = None,
                   positions: Optional[Dict[str, dict]] = None) -> dict:
    """Boxes from one case's heat maps.

    Args:
        heat: heat maps (n_organs, *preprocessed spatial shape), channel k = ``organ_names[k]``.
        organ_names: organ of each channel.
        properties: nnU-Net's properties of the case (from preprocessing).
        transpose_forward: the plans' ``transpose_forward``.
        box_stats: ``{organ: {"mean_size_mm": [x, y, z]}}``.
        image_geom: geometry record of the original image file; boxes are given in its voxel indices.
        margin_mm: margin v in mm, one for all organs or ``{organ: v}``.
        tau: detection threshold.
        requested: organs to report; the others get ``status: not_requested``.
        case: case id for the JSON.
        readout: centroid read-out of the region (:func:`~nnunet_oar.localization.boxes.heatmap_region`).
        scan_z_mm: world z extent (min, max) mm of the scanned patient; each box is kept in it
            (:func:`~nnunet_oar.localization.boxes.into_scan`, ``moved_into_scan_mm`` records the move).
        z_extent: ``{organ: rule}``: organs whose box spans their learned extent along z
            (:func:`~nnunet_oar.localization.extent.apply_z_extent`; from ``margins.json``).
        positions: ``{organ: rule}``: the anatomical-consistency rules
            (:func:`~nnunet_oar.localization.consistency.check_positions`, applied before the extents).

    Returns:
        The ``{case}_boxes.json`` content (:class:`nnunet_oar.contracts.CaseBoxes`).
    """
    organs = {}
    # organs not requested are found all the same: another organ's learned extent may be anchored on them
    unwanted = [] if requested is None else [name for name in organ_names if name not in requested]
    for k, name in enumerate(organ_names):
        if name in unwanted and name not in box_stats:
            continue
        region = heatmap_region(heat[k], tau, readout)
        if region is None:
            organs[name] = {"status": "absent", "peak": float(heat[k].max())}
            continue
        if name not in box_stats:
            raise InputError(f"no box size for {name}: it was never annotated in the localizer's training cases")
        size = box_stats[name]["mean_size_mm"]
        heat_mm = preprocessed_to_world(region["centroid"], heat.shape[1:], properties, transpose_forward)
        c_mm = into_scan(heat_mm, size, scan_z_mm)
        v = margin_mm[name] if isinstance(margin_mm, dict) else margin_mm
        organs[name] = {"status": "found", "peak": region["peak"], "centroid_mm": c_mm.tolist(), "margin_mm": v,
                        **organ_box(image_geom, c_mm, size, v)}
        if c_mm[2] != heat_mm[2]:
            organs[name]["moved_into_scan_mm"] = round(float(c_mm[2] - heat_mm[2]), 1)
    sizes = {o: st["mean_size_mm"] for o, st in box_stats.items()}
    if positions:
        check_positions(organs, positions, sizes, image_geom, scan_z_mm)
    if z_extent:
        apply_z_extent(organs, z_extent, sizes, image_geom, scan_z_mm)
    organs.update({name: {"status": "not_requested"} for name in unwanted})
    out = {"case": case, "image": image_geom, "organs": {name: organs[name] for name in organ_names}}
    if scan_z_mm is not None:
        out["scan_z_mm"] = [float(z) for z in scan_z_mm]
    return out


def heatmaps_on_original_grid(heat: np.ndarray, properties: dict, plans_manager, configuration_manager,
                              orientation: str) -> np.ndarray:
    """Resample heat maps (n, *preprocessed shape) to the original image, numpy (n, z, y, x), with the
    configuration's own probability resampling; outside nnU-Net's crop the heat map is 0.

    Args:
        orientation: the original image's DICOM orientation code (e.g. ``LPS``), to undo the reader's
            reorientation.
    """
    from acvl_utils.cropping_and_padding.bounding_boxes import insert_crop_into_image
    tf = plans_manager.transpose_forward
    resampled = configuration_manager.resampling_fn_probabilities(
        heat, properties["shape_after_cropping_and_before_resampling"], configuration_manager.spacing,
        [properties["spacing"][i] for i in tf])
    full = np.zeros((heat.shape[0], *properties["shape_before_cropping"]), dtype=np.float32)
    full = insert_crop_into_image(full, np.asarray(resampled, dtype=np.float32),
                                  [[0, heat.shape[0]], *properties["bbox_used_for_cropping"]])
    full = full.transpose(0, *[i + 1 for i in plans_manager.transpose_backward])
    geom = reader_geometry(properties, plans_manager.transpose_forward)
    return np.stack([sitk.GetArrayFromImage(sitk.DICOMOrient(image_from_geometry(h, geom), orientation))
                     for h in full])


def load_box_stats(model_folder: Path, folds: Sequence[Union[int, str]]) -> Dict[str, dict]:
    """Mean box sizes (and constant-guess offsets) saved by each fold's trainer, averaged over the folds
    (weighted by case count)."""
    acc: Dict[str, Dict[str, list]] = {}
    for f in folds:
        path = Path(model_folder) / f"fold_{f}" / BOX_STATS
        if not path.is_file():
            raise InputError(f"{path}: missing (the box sizes of the localizer); was this model trained with "
                             "nnUNetTrainerOARHeatmap?")
        for organ, s in read_json(path).items():
            for key in ("mean_size_mm", "mean_offset_mm"):
                if key in s:
                    acc.setdefault(organ, {}).setdefault(key, []).append((np.asarray(s[key]), s["n"]))
    out = {}
    for organ, keys in acc.items():
        out[organ] = {k: (sum(v * n for v, n in vs) / sum(n for _, n in vs)).tolist() for k, vs in keys.items()}
        out[organ]["n"] = sum(n for _, n in keys["mean_size_mm"])
    return out


def available_folds(model_folder: Path, checkpoint: str = "checkpoint_final.pth") -> List[Union[int, str]]:
    """Folds of a results folder that hold ``checkpoint``."""
    folds = sorted(p.name[5:] for p in Path(model_folder).glob("fold_*") if (p / checkpoint).is_file())
    return [int(f) if f.isdigit() else f for f in folds]


class Localizer:
    """A trained heat-map model (one or several folds) ready to localize CTs.

    Args:
        model_folder: nnU-Net results folder ``.../nnUNetTrainerOARHeatmap__nnUNetPlans__3d_loc``.
        folds: folds to ensemble (heat maps are averaged); default all with a final checkpoint.
        device: torch device.
        margin_mm: margin v in mm: one value, ``{organ: v}``, or the path of a ``margins.json`` (whose
            learned extents and anatomical-consistency rules are then used too).
        tau: detection threshold.
        readout: centroid read-out (``midpoint``, the paper's, or ``weighted``).
        z_extent: ``{organ: rule}`` of organs boxed by their learned extent along z (a models folder's).
        positions: ``{organ: rule}``: anatomical-consistency rules (a models folder's).
    """

    def __init__(self, model_folder: Path, folds: Optional[Sequence[Union[int, str]]] = None,
                 device: Union[str, torch.device] = "cpu", margin_mm: Union[Margins, Path] = DEFAULT_MARGIN_MM,
                 tau: float = DEFAULT_TAU, checkpoint: str = "checkpoint_final.pth",
                 readout: str = DEFAULT_READOUT, z_extent: Optional[Dict[str, dict]] = None,
                 positions: Optional[Dict[str, dict]] = None):
        from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
        ensure_trainer_path()
        self.model_folder = Path(model_folder)
        self.folds = list(folds) if folds else available_folds(self.model_folder, checkpoint)
        if not self.folds:
            raise FileNotFoundError(f"{self.model_folder}: no fold with {checkpoint}")
        device = torch.device(device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise InputError(f"--device {device}: no CUDA GPU is visible to torch here; use --device cpu")
        for f in self.folds:
            check_checkpoint(self.model_folder / f"fold_{f}" / checkpoint)
        self.predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=True,
                                         perform_everything_on_device=device.type != "cpu", device=device,
                                         verbose=False, allow_tqdm=False)
        self.predictor.initialize_from_trained_model_folder(str(self.model_folder), self.folds, checkpoint)
        labels = self.predictor.dataset_json["labels"]
        self.organ_names = [n for n, v in sorted(labels.items(), key=lambda kv: kv[1]) if v != 0]
        self.box_stats = load_box_stats(self.model_folder, self.folds)
        if isinstance(margin_mm, Path):
            margins = read_margins(margin_mm, self.organ_names)
            z_extent, positions = read_z_extents(margin_mm), read_positions(margin_mm)
            margin_mm = {o: margins.get(o, DEFAULT_MARGIN_MM) for o in self.organ_names}
        self.margin_mm, self.tau, self.readout, self.z_extent = margin_mm, tau, readout, z_extent or {}
        self.positions = positions or {}

    def heatmaps(self, data: np.ndarray) -> np.ndarray:
        """Network heat maps (n_organs, *shape) for preprocessed data (1, *shape); channel 0 (background)
        is dropped."""
        with torch.no_grad():
            out = self.predictor.predict_logits_from_preprocessed_data(torch.from_numpy(data))
        return out[1:].float().cpu().numpy()

    def preprocess(self, image_file: Path):
        """nnU-Net's preprocessing of the localizer's configuration: ``(data, properties)``."""
        p = self.predictor
        preprocessor = p.configuration_manager.preprocessor_class(verbose=False)
        data, _, properties = preprocessor.run_case([str(image_file)], None, p.plans_manager,
                                                    p.configuration_manager, p.dataset_json)
        return data, properties

    def boxes(self, data: np.ndarray, heat: np.ndarray, properties: dict, image_geom: Dict[str, list], case: str,
              requested: Optional[Sequence[str]] = None) -> dict:
        """Boxes of one case from its preprocessed data (1, *shape) and heat maps (:meth:`heatmaps`)."""
        p = self.predictor
        return boxes_for_case(heat, self.organ_names, properties, p.plans_manager.transpose_forward,
                              self.box_stats, image_geom, self.margin_mm, self.tau, requested, case, self.readout,
                              scan_z_mm(data, properties, p.plans_manager, p.configuration_manager), self.z_extent,
                              self.positions)

    def localize_file(self, image_file: Path, case: str, requested: Optional[Sequence[str]] = None,
                      with_heatmaps: bool = False, image: Optional[sitk.Image] = None):
        """Localize one CT file: ``(boxes dict, heat maps on the original grid (n, z, y, x) or None)``.
        ``image``: the file, already read and checked by the caller (``read_image``), not read twice."""
        if image is None:
            image = read_image(image_file, "CT")      # a clear error before nnU-Net sees a bad file
        data, properties = self.preprocess(image_file)
        heat = self.heatmaps(data)
        full = None
        if with_heatmaps:
            orientation = sitk.DICOMOrientImageFilter_GetOrientationFromDirectionCosines(image.GetDirection())
            full = heatmaps_on_original_grid(heat, properties, self.predictor.plans_manager,
                                             self.predictor.configuration_manager, orientation)
        return self.boxes(data, heat, properties, geometry(image), case, requested), full


def write_heatmaps(heat_zyx: np.ndarray, organ_names: Sequence[str], geom: dict, dst: Path) -> None:
    """``{case}_heatmaps.npz``: one array per organ (z, y, x) on the original grid, plus the geometry."""
    with atomic_path(dst) as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, geometry=json.dumps(geom),
                                **{n: heat_zyx[k].astype(np.float16) for k, n in enumerate(organ_names)})


def localize(inputs: Path, output: Path, model_folder: Path, folds: Optional[Sequence] = None,
             device: str = "cpu", save_heatmaps: bool = False, margin_mm: Union[Margins, Path] = DEFAULT_MARGIN_MM,
             tau: float = DEFAULT_TAU, organs: Optional[Sequence[str]] = None, readout: str = DEFAULT_READOUT,
             checkpoint: str = "checkpoint_final.pth") -> Dict[str, str]:
    """Localize every CT in ``inputs`` (a file or a folder) and write ``{case}_boxes.json`` to ``output``.

    Returns:
        ``{case: error message}`` for the inputs that failed (the others are written).
    """
    images = list_images(inputs)
    check_writable(output)
    localizer = Localizer(model_folder, folds, device, margin_mm, tau, checkpoint, readout)
    errors = {}
    for f in tqdm(images, desc="localize"):
        case = case_id(f)
        try:
            boxes, heat = localizer.localize_file(f, case, organs, save_heatmaps)
        except InputError as e:
            errors[case] = str(e)
            tqdm.write(f"skipped: {e}")
            continue
        write_boxes(boxes, Path(output))
        if heat is not None:
            write_heatmaps(heat, localizer.organ_names, boxes["image"], Path(output) / f"{case}_heatmaps.npz")
    return errors
