"""Heat-map regression trainer for the localization stage (``3d_loc``).

This folder holds only trainer modules and is what ``nnUNet_extTrainer`` points at; nnU-Net imports
these files as top-level modules, so they use absolute imports only.

Usage::

    export nnUNet_extTrainer=$(nnunet_oar trainer-path)
    nnUNetv2_train ID 3d_loc FOLD -tr nnUNetTrainerOARHeatmap
"""
import json
import os
from os.path import join

import numpy as np
import SimpleITK as sitk
import torch
from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
from nnunetv2.training.data_augmentation.compute_initial_patch_size import get_patch_size
from nnunetv2.training.nnUNetTrainer.variants.optimizer.nnUNetTrainerAdam import nnUNetTrainerAdam

from nnunet_oar.io import geometry, write_json
from nnunet_oar.localization.boxes import mean_box_sizes
from nnunet_oar.localization.heatmaps import DEFAULT_SIGMA2_MM2, HeatmapLoss, heatmap_targets
from nnunet_oar.localization.localize import BOX_STATS, boxes_for_case
from nnunet_oar.metrics import localization_metrics, summarize_localization


class nnUNetTrainerOARHeatmap(nnUNetTrainerAdam):
    """Regresses one Gaussian heat map per organ (sigma^2 from the plans, 150 mm^2 by default) with an
    L2 loss that ignores organs not annotated in a case (``annotations.json``).

    Network outputs: nnU-Net's predictor builds the network with ``num_segmentation_heads`` outputs
    (background + organs), so we keep that shape and let output channel k regress the heat map of
    label k; channel 0 (background) carries no loss and is dropped after prediction.
    """

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        # Deep supervision off: the 3d_loc patch is the whole volume at 3 mm, so the coarse decoder outputs
        # are 6-48 mm grids on which a sigma = 12 mm blob is one or two voxels (docs/localization.md).
        self.enable_deep_supervision = False
        # AdamW (nnU-Net's nnUNetTrainerAdam): the L2 gradients of sparse heat maps are tiny, and SGD at
        # nnU-Net's lr sat on the all-zero output for the whole CPU budget (docs/localization.md).
        self.initial_lr = 1e-3
        self.sigma2_mm2 = float(self.configuration_manager.configuration.get("heatmap_sigma2_mm2", DEFAULT_SIGMA2_MM2))
        labels = dataset_json["labels"]
        self.organ_names = [n for n, v in sorted(labels.items(), key=lambda kv: kv[1]) if v != 0]
        path = join(self.preprocessed_dataset_folder_base, "annotations.json")
        self.annotations = json.load(open(path)) if os.path.isfile(path) else None

    def configure_rotation_dummyDA_mirroring_and_inital_patch_size(self):
        # No mirroring, in training or at test time: a left-right flip would teach kidney_left's channel
        # both sides, and flips along the other axes make anatomy that localization by context never sees.
        # Rotations are kept to +-15 degrees: patients lie in a known orientation on the CT table.
        rotation = (-15. / 360 * 2. * np.pi, 15. / 360 * 2. * np.pi)
        initial_patch_size = get_patch_size(self.configuration_manager.patch_size, rotation, rotation, rotation,
                                            (0.85, 1.25))
        self.inference_allowed_mirroring_axes = None
        return rotation, False, initial_patch_size, None

    def _build_loss(self):
        return HeatmapLoss(float(self.configuration_manager.configuration.get("heatmap_fg_weight", 0.0)))

    def _annotated(self, keys) -> torch.Tensor:
        """(B, n_organs) bool: which organs are annotated in each case of the batch."""
        rows = [[self.annotations is None or o in self.annotations.get(k, []) for o in self.organ_names]
                for k in keys]
        return torch.tensor(rows, dtype=torch.bool, device=self.device)

    def _heatmap_batch(self, batch: dict) -> dict:
        """Replace the integer label patch by [heat-map targets, annotation mask], built on the device."""
        seg = batch["target"].to(self.device, non_blocking=True)
        spacing = self.configuration_manager.spacing
        targets = heatmap_targets(seg, len(self.organ_names), spacing, self.sigma2_mm2)
        return {**batch, "target": [targets, self._annotated(batch["keys"])]}

    def train_step(self, batch: dict) -> dict:
        return super().train_step(self._heatmap_batch(batch))

    def validation_step(self, batch: dict) -> dict:
        batch = self._heatmap_batch(batch)
        target, annotated = batch["target"]
        with torch.no_grad():
            output = self.network(batch["data"].to(self.device, non_blocking=True))
            loss = self.loss(output, batch["target"])
        output = output[:, 1:]
        # pseudo Dice for nnU-Net's progress log: overlap of the blob cores (value > 0.5)
        w = annotated.view(*annotated.shape, 1, 1, 1)
        pred, ref = (output > 0.5) & w, (target > 0.5) & w
        axes = (0, 2, 3, 4)
        tp = (pred & ref).sum(axes).cpu().numpy()
        fp = (pred & ~ref).sum(axes).cpu().numpy()
        fn = (~pred & ref).sum(axes).cpu().numpy()
        return {"loss": loss.detach().cpu().numpy(), "tp_hard": tp, "fp_hard": fp, "fn_hard": fn}

    def on_train_start(self):
        super().on_train_start()
        # the box size of each organ is the mean over this fold's training cases only
        tr_keys, _ = self.do_split()
        sizes = json.load(open(join(self.preprocessed_dataset_folder_base, "box_sizes.json")))
        write_json(mean_box_sizes(sizes, tr_keys), join(self.output_folder, BOX_STATS))

    def perform_actual_validation(self, save_probabilities: bool = False):
        """Heat maps, boxes and ``localization_summary.json`` for the validation cases."""
        self.network.eval()
        predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=False,
                                    perform_everything_on_device=self.device.type != "cpu", device=self.device,
                                    verbose=False, allow_tqdm=False)
        predictor.manual_initialization(self.network, self.plans_manager, self.configuration_manager, None,
                                        self.dataset_json, self.__class__.__name__, None)
        box_stats = json.load(open(join(self.output_folder, BOX_STATS)))
        out_dir = join(self.output_folder, "validation")
        os.makedirs(out_dir, exist_ok=True)
        _, val_keys = self.do_split()
        dataset = self.dataset_class(self.preprocessed_dataset_folder, val_keys)
        labels = self.dataset_json["labels"]
        per_case = {}
        for k in dataset.identifiers:
            data, _, _, properties = dataset.load_case(k)
            with torch.no_grad():
                heat = predictor.predict_sliding_window_return_logits(torch.from_numpy(data[:]))[1:].float().cpu().numpy()
            gt = sitk.ReadImage(join(self.preprocessed_dataset_folder_base, "gt_segmentations",
                                     k + self.dataset_json["file_ending"]))
            gt_zyx, geom = sitk.GetArrayFromImage(gt), geometry(gt)
            boxes = boxes_for_case(heat, self.organ_names, properties, self.plans_manager.transpose_forward,
                                   box_stats, geom, case=k)
            write_json(boxes, join(out_dir, f"{k}_boxes.json"))
            np.savez_compressed(join(out_dir, f"{k}_heatmaps_3d_loc.npz"),
                                **{n: heat[i].astype(np.float16) for i, n in enumerate(self.organ_names)})
            annotated = self.annotations.get(k, self.organ_names) if self.annotations is not None else self.organ_names
            per_case[k] = {o: localization_metrics(gt_zyx == labels[o], geom, boxes["organs"][o])
                           for o in self.organ_names if o in annotated}
        summary = {"per_organ": summarize_localization(per_case), "per_case": per_case}
        write_json(summary, join(out_dir, "localization_summary.json"))
        for organ, s in summary["per_organ"].items():
            self.print_to_log_file(f"{organ}: {json.dumps({k: v for k, v in s.items()})}")
        self.print_to_log_file("Localization validation complete")


class nnUNetTrainerOARHeatmap_tiny(nnUNetTrainerOARHeatmap):
    """A few iterations, for tests on CPU."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs, self.num_iterations_per_epoch, self.num_val_iterations_per_epoch = 2, 4, 2


class nnUNetTrainerOARHeatmap_demo(nnUNetTrainerOARHeatmap):
    """The demo's CPU budget."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs, self.num_iterations_per_epoch, self.num_val_iterations_per_epoch = 40, 25, 4


class nnUNetTrainerOARHeatmap_250it(nnUNetTrainerOARHeatmap):
    """250 iterations (10 x 25), the CPU budget of benchmarks/localization_openkbp.py."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs, self.num_iterations_per_epoch, self.num_val_iterations_per_epoch = 10, 25, 2


class nnUNetTrainerOARHeatmap_cpu(nnUNetTrainerOARHeatmap):
    """The CPU benchmark's localizer budget: 1000 iterations (20 x 50)."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs, self.num_iterations_per_epoch, self.num_val_iterations_per_epoch = 20, 50, 4
        self.save_every = 1        # short schedules: an interrupted run resumes (--c) from its last epoch

    def perform_actual_validation(self, save_probabilities: bool = False):
        # fold "all" would only re-localize the training cases; the benchmark scores held-out patients itself
        if self.fold != "all":
            super().perform_actual_validation(save_probabilities)


class nnUNetTrainerOARHeatmap_gpu(nnUNetTrainerOARHeatmap_cpu):
    """The GPU benchmark's localizer budget (benchmarks/gpu_openkbp.sh): 2000 iterations (20 x 100)."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs, self.num_iterations_per_epoch, self.num_val_iterations_per_epoch = 20, 100, 10
