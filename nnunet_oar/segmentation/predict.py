"""Stage 2 at inference: each organ network on its organ's crop, pasted back by the max-probability
merge, after the localizer's boxes (stage 1); then the plausibility checks.

:class:`OARPredictor` holds the loaded networks of a models folder (:mod:`nnunet_oar.models`) and turns
one CT into a label map on exactly its grid; :func:`nnunet_oar.pipeline.predict` does the file handling
around it.
"""
from __future__ import annotations

import itertools
from collections import OrderedDict
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import SimpleITK as sitk
import torch
from tqdm import tqdm

from nnunet_oar import organs as catalogue
from nnunet_oar.conversion.dataset import NETWORK_ORIENTATION
from nnunet_oar.geometry import crop_image
from nnunet_oar.io import InputError, read_json
from nnunet_oar.localization.boxes import DEFAULT_READOUT, DEFAULT_TAU, cut_faces
from nnunet_oar.localization.consistency import validate_positions
from nnunet_oar.localization.localize import Localizer
from nnunet_oar.models import read_manifest
from nnunet_oar.paths import ensure_trainer_path
from nnunet_oar.plausibility import input_warnings, organ_check
from nnunet_oar.safe_load import check_checkpoint
from nnunet_oar.segmentation import postprocessing
from nnunet_oar.segmentation.merge import THRESHOLD, MaxProbabilityMerger
from nnunet_oar.segmentation.presets import TILES


# a tile holds at most the trained patch's voxels: the activations, and so the memory, of nnU-Net's own
# sliding window (4x, one pass for most crops, took the clinical-size benchmark to 8.32 GB, the baseline 4.72)
MAX_TILE_FACTOR = 1.0
MAX_TILES_PER_AXIS = 6


def crop_tile(shape_zyx: Sequence[int], spacing_zyx: Sequence[float], configuration_manager,
              transpose_forward: Sequence[int], step: float = 0.5) -> Optional[List[int]]:
    """The tile that takes a crop through its network in fewer passes than the trained patch, within the
    trained patch's memory.

    Every crop of an organ has about one size (mean box + margin), often unlike the patch nnU-Net's planner
    chose, and the networks are fully convolutional. Candidates, the tight tilings: per axis, ``n`` (1 to
    ``MAX_TILES_PER_AXIS``) tiles of
    ``ceil(size / (1 + (n - 1) * step))`` (nnU-Net's sliding window with ``step`` then needs ``n``), rounded up
    to a multiple of the network's total stride; along an axis where the crop is no larger than the trained
    patch, the patch's length (one tile, padded as in training: a tile of the bare crop cost 0.009 Dice on
    OpenKBP, the network's instance norms saw less padding than they trained with); never under half the
    patch's length. A candidate may hold at most ``MAX_TILE_FACTOR`` times the trained patch's voxels. The one
    with the fewest network passes (nnU-Net's ``compute_steps_for_sliding_window``), and among those the
    largest (the most context), wins where it needs fewer passes than the trained patch: a tile that only
    holds fewer voxels in as many passes saves little and sees less. Lengths between the tight ones are not
    tried (a search over every stride multiple would find fewer passes for crops several times the patch).

    Args:
        shape_zyx, spacing_zyx: the crop as the network's predictor receives it (voxels, mm).
        configuration_manager: the network's nnU-Net configuration (target spacing, patch, strides).
        transpose_forward: the plans' axis order.
        step: the sliding window's step (nnU-Net's ``tile_step_size``).

    Returns:
        The tile per axis, in the network's axis order; ``None`` for a 2D network, an architecture without
        ``strides`` (its input size may be fixed), or where the trained patch is as good (it slides then).
    """
    from nnunetv2.inference.sliding_window_prediction import compute_steps_for_sliding_window
    from nnunetv2.preprocessing.resampling.default_resampling import compute_new_shape
    patch = [int(x) for x in configuration_manager.patch_size]
    if len(patch) != 3:
        return None
    shape = compute_new_shape([shape_zyx[i] for i in transpose_forward], [spacing_zyx[i] for i in transpose_forward],
                              configuration_manager.spacing)
    if "strides" not in configuration_manager.network_arch_init_kwargs:
        return None
    stride = np.prod(np.asarray(configuration_manager.network_arch_init_kwargs["strides"]), axis=0)

    def passes(tile) -> int:        # network passes of nnU-Net's sliding window (it pads a smaller crop to the tile)
        return int(np.prod([len(s) for s in compute_steps_for_sliding_window(np.maximum(shape, tile), tile, step)]))

    lengths = []
    for size, p, st in zip(shape, patch, stride):
        if size <= p:
            lengths.append([p])
            continue
        # never under half the patch: a thin slab would leave the deep layers next to no context along it
        shortest = int(np.ceil(p / 2 / st) * st)
        lengths.append(sorted({max(int(np.ceil(np.ceil(size / (1 + (n - 1) * step)) / st) * st), shortest)
                               for n in range(1, MAX_TILES_PER_AXIS + 1)}))
    budget = MAX_TILE_FACTOR * np.prod(patch)
    best, best_key = None, (passes(patch), -np.prod(patch))
    for tile in itertools.product(*lengths):
        key = (passes(tile), -np.prod(tile))
        if np.prod(tile) <= budget and key < best_key:
            best, best_key = [int(t) for t in tile], key
    return best


def coarser_grid(configuration_manager, factor: float):
    """An organ network's configuration on a grid ``factor`` times coarser than it was trained on.

    The spacing is multiplied by ``factor`` and the patch keeps at least its field of view in mm: each
    length divided by ``factor``, rounded up to a multiple of the network's total stride along that axis
    (an architecture without ``strides`` keeps its patch in voxels). The patch then holds up to ``factor**3``
    fewer voxels (``factor**2`` for a 2D network, coarser in-plane only), less where the rounding keeps a
    length; a crop smaller than the patch is padded to it, as in training. The network meets organs
    ``1 / factor`` their trained size in voxels; nnU-Net's augmentation scales a fifth of its training
    samples by 0.7-1.4, so factors up to about 1.4 stay within what the network has seen.

    Args:
        configuration_manager: the network's nnU-Net configuration as trained.
        factor: grid coarsening, >= 1 (1 returns the configuration unchanged).

    Returns:
        An nnU-Net ``ConfigurationManager``: the trained configuration with another spacing and patch.
    """
    from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager
    if factor == 1:
        return configuration_manager
    c = configuration_manager.configuration
    patch = list(c["patch_size"])
    strides = configuration_manager.network_arch_init_kwargs.get("strides")
    if strides is not None:
        stride = np.prod(np.asarray(strides), axis=0)
        # less a hair: 84 / 1.4 / 4 is 15.000000000000002 in floating point
        patch = [int(max(np.ceil(p / factor / s - 1e-9), 1) * s) for p, s in zip(patch, stride)]
    return ConfigurationManager({**c, "spacing": [float(x) * factor for x in c["spacing"]], "patch_size": patch})


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
        one_fold: each network's first fold in the manifest only (when ``folds`` is not given).
        device: ``cpu`` or ``cuda``.
        organs: organs to segment (default: all in the manifest).
        tta: nnU-Net's test-time mirroring for the organ networks.
        step_size: nnU-Net's sliding-window step (fraction of the patch) for the organ networks; 0.5 is
            nnU-Net's default, 1.0 halves the tiles of crops larger than the patch.
        largest_component: organs whose networks have no nnU-Net ``postprocessing.pkl`` and keep only
            their largest connected component (:mod:`nnunet_oar.segmentation.postprocessing`).
        max_loaded: organ networks kept in memory at once (each loaded when its crop comes, the least
            recently used dropped); ``None`` keeps every one loaded (fastest for many cases, most memory).
        on_load: called with each organ's ``nnUNetPredictor`` when it is loaded (benchmarks time the
            networks this way).
        tile: ``"crop"``: each crop with its own tile where that needs fewer passes within the trained
            patch's memory (:func:`crop_tile`); ``"trained"``: nnU-Net's sliding window with the trained patch.
        grid_factor: every organ network runs on a grid this many times coarser than it was trained on
            (:func:`coarser_grid`; ``--preset fastest``); 1 is the trained grid.
    """

    def __init__(self, models: Path, folds: Optional[Sequence] = None, device: str = "cpu",
                 organs: Optional[Sequence[str]] = None, tta: bool = True, step_size: float = 0.5,
                 largest_component: Sequence[str] = (), max_loaded: Optional[int] = 1,
                 on_load: Optional[Callable] = None, tile: str = "trained", one_fold: bool = False,
                 grid_factor: float = 1.0):
        ensure_trainer_path()
        if tile not in TILES:
            raise InputError(f"tile must be one of {', '.join(TILES)}, got {tile!r}")
        if not 1 <= grid_factor < float("inf"):
            raise InputError(f"grid_factor must be at least 1 (the trained grid) and finite, got {grid_factor}")
        self.tile, self.grid_factor = tile, float(grid_factor)
        models = Path(models)
        manifest = read_manifest(models)
        loc = manifest["localizer"]
        def folds_of(entry: dict) -> list:
            return list(folds) if folds else entry["folds"][:1] if one_fold else entry["folds"]
        self.localizer = Localizer(models / loc["results_folder"], folds_of(loc), device, loc["margin_mm"],
                                   loc.get("tau", DEFAULT_TAU), readout=loc.get("readout", DEFAULT_READOUT),
                                   z_extent=loc.get("z_extent"),
                                   positions=validate_positions(loc.get("position", {}), str(models / "models.json")))
        available = manifest["organs"]
        self.organs = list(organs) if organs else list(available)
        for o in self.organs:
            if o not in available:
                raise InputError(f"no model for {o}; the models folder has {', '.join(available)}")
        self.labels = catalogue.labels_for(self.organs)
        # every checkpoint is checked now, so that a bad one fails before any case is processed; its trainer
        # class is looked up now too, once: nnU-Net's lookup walks sys.modules, which an import on the batch's
        # reader or writer thread would change under it
        from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
        self._specs = {}
        trainers = {}
        for organ in self.organs:
            checkpoint = available[organ].get("checkpoint", "checkpoint_final.pth")
            organ_folds = folds_of(available[organ])
            folder = models / available[organ]["results_folder"]
            names = {check_checkpoint(folder / f"fold_{f}" / checkpoint) for f in organ_folds}
            if len(names) > 1:
                raise InputError(f"{folder}: its folds were trained by different trainers ({', '.join(sorted(names))})")
            name = names.pop()
            if name not in trainers:
                try:
                    trainers[name] = recursive_find_trainer_class_by_name(name)
                except RuntimeError as e:
                    raise InputError(f"{folder}: {e}") from None
            self._specs[organ] = (folder, organ_folds, checkpoint, trainers[name])
        self._settings = dict(tile_step_size=step_size, use_mirroring=tta, device=torch.device(device))
        if max_loaded is not None and max_loaded < 1:
            raise InputError(f"max_loaded must be at least 1 (or None: all), got {max_loaded}")
        self.max_loaded, self.on_load = max_loaded, on_load
        self._loaded: "OrderedDict[str, object]" = OrderedDict()
        self._trained: Dict[str, object] = {}    # each organ network's configuration (on the coarser grid)
        self.expected = {o: _expected(models, o, available[o], self.localizer.box_stats) for o in self.organs}
        self.postprocess = {}
        for o in self.organs:
            if available[o].get("postprocessing"):
                path = models / available[o]["results_folder"] / available[o]["postprocessing"]
                self.postprocess[o] = (postprocessing.nnunet_postprocessing(path), "nnU-Net postprocessing.pkl")
            elif o in largest_component:
                self.postprocess[o] = (postprocessing.largest_component(), "largest component")

    def _load(self, organ: str):
        """A new ``nnUNetPredictor`` with the organ's network: nnU-Net's
        ``initialize_from_trained_model_folder`` step by step, with the trainer class looked up in
        ``__init__`` (nnU-Net's own loader would look it up again, beside the batch's I/O threads)."""
        from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
        from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
        from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
        folder, folds, checkpoint, trainer_class = self._specs[organ]
        dev = self._settings["device"]
        p = nnUNetPredictor(tile_step_size=self._settings["tile_step_size"], use_gaussian=True,
                            use_mirroring=self._settings["use_mirroring"], perform_everything_on_device=dev.type != "cpu",
                            device=dev, verbose=False, allow_tqdm=False)
        plans, dataset_json = PlansManager(read_json(folder / "plans.json")), read_json(folder / "dataset.json")
        # checked by check_checkpoint in __init__
        saved = [torch.load(folder / f"fold_{f}" / checkpoint, map_location="cpu", weights_only=False) for f in folds]
        cm = plans.get_configuration(saved[0]["init_args"]["configuration"])
        network = trainer_class.build_network_architecture(
            plans, cm, determine_num_input_channels(plans, cm, dataset_json),
            plans.get_label_manager(dataset_json).num_segmentation_heads, enable_deep_supervision=False)
        weights = [s["network_weights"] for s in saved]
        network.load_state_dict(weights[0])
        p.manual_initialization(network, plans, cm, weights, dataset_json, saved[0]["trainer_name"],
                                saved[0].get("inference_allowed_mirroring_axes"))
        return p

    def network(self, organ: str):
        """The organ's ``nnUNetPredictor``, loaded when first needed; beyond ``max_loaded`` networks the
        least recently used one is dropped (its memory freed)."""
        if organ in self._loaded:
            self._loaded.move_to_end(organ)
            return self._loaded[organ]
        p = self._load(organ)
        self._trained[organ] = coarser_grid(p.configuration_manager, self.grid_factor)
        if self.on_load is not None:
            self.on_load(p)
        self._loaded[organ] = p
        while self.max_loaded is not None and len(self._loaded) > self.max_loaded:
            self._loaded.popitem(last=False)
        return p

    def _set_tile(self, organ: str, p, shape_zyx: Sequence[int], spacing_zyx: Sequence[float]) -> str:
        """Give the organ's predictor ``p`` the tile for this crop (its configuration with another patch or
        grid, through nnU-Net's ``manual_initialization``); returns how the crop is tiled, for the boxes."""
        from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager
        trained = self._trained[organ]
        tile = crop_tile(shape_zyx, spacing_zyx, trained, p.plans_manager.transpose_forward,
                         self._settings["tile_step_size"]) if self.tile == "crop" else None
        cm = trained if tile is None else ConfigurationManager({**trained.configuration, "patch_size": tile})
        if cm.configuration != p.configuration_manager.configuration:
            p.manual_initialization(p.network, p.plans_manager, cm, p.list_of_parameters, p.dataset_json,
                                    p.trainer_name, p.allowed_mirroring_axes)
        grid = "" if self.grid_factor == 1 else (f" on a {self.grid_factor:g}x coarser grid "
                                                 f"({' x '.join(f'{s:g}' for s in cm.spacing)} mm, network axis order)")
        if tile is not None:
            return f"tile {tile}{grid}"
        why = "" if self.tile == "trained" else (" (a 2D network)" if len(trained.patch_size) != 3 else
                                                 " (no tile within its voxels needs fewer passes)")
        return f"{'trained' if self.grid_factor == 1 else 'coarse'} patch {list(trained.patch_size)}{grid}{why}"

    def predict_image(self, ct: sitk.Image, image_file: Path, case: str, boxes: Optional[dict] = None):
        """One CT (``image_file``, already read as ``ct``) -> (label image on the CT's grid, boxes dict).
        ``boxes`` (a ``{case}_boxes.json``) replaces the localizer, e.g. reference boxes."""
        if boxes is None:
            boxes, _ = self.localizer.localize_file(image_file, case, requested=self.organs, image=ct)
        merger = MaxProbabilityMerger(ct.GetSize()[::-1])
        orientation = sitk.DICOMOrientImageFilter_GetOrientationFromDirectionCosines(ct.GetDirection())
        found = [o for o in self.organs if boxes["organs"].get(o, {}).get("status") == "found"]
        for organ in tqdm(found, desc=case, unit="organ", leave=False):
            self._predict_organ(self.network(organ), organ, boxes["organs"][organ], ct, orientation, merger, case)
        labels = self._plausible(merger.labels, sitk.GetArrayViewFromImage(ct), ct.GetSpacing(), boxes, case)
        seg = sitk.GetImageFromArray(labels)
        seg.CopyInformation(ct)
        return seg, boxes

    def _predict_organ(self, net, organ: str, entry: dict, ct: sitk.Image, orientation: str,
                       merger: MaxProbabilityMerger, case: str) -> None:
        """One organ's crop through its network (``net``), postprocessed, into the merge; its tile,
        postprocessing and cut faces go into its ``entry`` of the boxes."""
        box = entry["box_index_xyz"]
        # the organ networks were trained on RAS-reoriented arrays (SimpleITKIOWithReorient)
        crop = sitk.DICOMOrient(crop_image(ct, box["start"], box["stop"]), NETWORK_ORIENTATION)
        data = sitk.GetArrayFromImage(crop)[None].astype(np.float32)
        spacing_zyx = list(crop.GetSpacing())[::-1]
        entry["tile"] = self._set_tile(organ, net, data.shape[1:], spacing_zyx)
        if self.grid_factor != 1:
            entry["grid_factor"] = self.grid_factor
        _, prob = net.predict_single_npy_array(data, {"spacing": spacing_zyx}, None, None, True)
        prob_img = sitk.GetImageFromArray(np.asarray(prob[1], dtype=np.float32))
        prob_img.CopyInformation(crop)
        prob_zyx = sitk.GetArrayFromImage(sitk.DICOMOrient(prob_img, orientation))
        mask = prob_zyx > THRESHOLD
        kept, record = postprocessing.apply(mask, *self.postprocess.get(organ, (None, "")))
        if record is not None:
            prob_zyx[mask & ~kept] = 0.0           # what postprocessing removes cannot win the merge
            entry["postprocessing"] = record
        entry["cut_by_box"] = cut_faces(kept, box["start"], box["stop"], ct.GetSize())
        if entry["cut_by_box"]:
            tqdm.write(f"warning: {case}: {organ} reaches the {'/'.join(entry['cut_by_box'])} face(s) of its box "
                       "inside the image; it may be cut (cut_by_box in the boxes and stats)")
        merger.add(self.labels[organ], prob_zyx, box["start"])

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
            if boxes["input_warnings"]:       # whatever is found in an input that is not CT is in doubt
                check["flags"].append("found in an input that does not look like CT (input_warnings)")
            if check["implausible"]:
                labels_zyx[mask] = 0
                entry["implausible"] = check["implausible"]
                tqdm.write(f"warning: {case}: {organ} removed: {check['implausible']}")
            if check["flags"]:
                entry["flags"] = check["flags"]
                tqdm.write(f"warning: {case}: {organ}: " + "; ".join(check["flags"]))
        return labels_zyx
