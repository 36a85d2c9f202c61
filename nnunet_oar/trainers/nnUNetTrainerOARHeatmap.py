"""Heat-map regression trainer for the localization stage (``3d_loc``).

This folder holds only trainer modules and is what ``nnUNet_extTrainer`` points at; nnU-Net imports
these files as top-level modules, so they use absolute imports only.

Usage::

    export nnUNet_extTrainer=$(nnunet_oar trainer-path)
    nnUNetv2_train ID 3d_loc FOLD -tr nnUNetTrainerOARHeatmap

To subclass it from a trainer folder of your own, import it through the package
(``from nnunet_oar.trainers.nnUNetTrainerOARHeatmap import nnUNetTrainerOARHeatmap``): nnU-Net puts a
trainer folder on ``sys.path`` only while it scans that folder.
"""
import os
from os.path import join
from typing import List

import numpy as np
import SimpleITK as sitk
import torch
from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
from nnunetv2.training.data_augmentation.compute_initial_patch_size import get_patch_size
from nnunetv2.training.lr_scheduler.polylr import PolyLRScheduler
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.collate_outputs import collate_outputs

from nnunet_oar.contracts import write_boxes
from nnunet_oar.io import geometry, read_json, write_json
from nnunet_oar.localization.boxes import DEFAULT_MARGIN_MM, DEFAULT_TAU, heatmap_region, mean_box_sizes
from nnunet_oar.localization.heatmaps import DEFAULT_SIGMA2_MM2, HeatmapLoss, heatmap_targets, label_centroids
from nnunet_oar.localization.grid import scan_z_mm
from nnunet_oar.localization.localize import BOX_STATS, boxes_for_case
from nnunet_oar.localization.report import markdown_table, score_case, summarize
from nnunet_oar.training import NarrowWidth, ShortSchedule, init_output_layer, plot_centroid_errors


class nnUNetTrainerOARHeatmap(ShortSchedule, nnUNetTrainer):
    """Regresses one Gaussian heat map per organ (sigma^2 from the plans, 150 mm^2 by default) with an
    L2 loss that ignores organs not annotated in a case (``annotations.json``).

    Network outputs: nnU-Net's predictor builds the network with ``num_segmentation_heads`` outputs
    (background + organs), so we keep that shape and let output channel k regress the heat map of
    label k; channel 0 (background) carries no loss and is dropped after prediction.

    Optimiser and start (docs/localization.md, "Optimiser"): AdamW at lr 1e-3 without AMSGrad and without
    weight decay, and the 1x1x1 output layer started near zero (normal, std 1e-4, zero bias). The class
    attributes below switch each back to nnU-Net's choice for the ablation variants at the end of this file.
    """

    amsgrad = False             # nnU-Net's nnUNetTrainerAdam uses True
    adam_weight_decay = 0.0     # nnU-Net's default is 3e-5
    output_init_std = 1e-4      # None: nnU-Net's initialisation of the output layer
    # seed and budget (epochs, iterations, validation iterations): see ShortSchedule

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        # Deep supervision off: the 3d_loc patch is the whole volume at 3 mm, so the coarse decoder outputs
        # are 6-48 mm grids on which a sigma = 12 mm blob is one or two voxels (docs/localization.md).
        self.enable_deep_supervision = False
        self.initial_lr = 1e-3
        self.weight_decay = self.adam_weight_decay
        self.sigma2_mm2 = float(self.configuration_manager.configuration.get("heatmap_sigma2_mm2", DEFAULT_SIGMA2_MM2))
        labels = dataset_json["labels"]
        self.organ_names = [n for n, v in sorted(labels.items(), key=lambda kv: kv[1]) if v != 0]
        path = join(self.preprocessed_dataset_folder_base, "annotations.json")
        self.annotations = read_json(path) if os.path.isfile(path) else None
        # per-organ median centroid error on the validation patches, one entry per epoch (log and PNG)
        self.logger.local_logger.my_fantastic_logging.setdefault("centroid_error_mm", [])

    def configure_optimizers(self):
        # AdamW: the L2 gradients of sparse heat maps are tiny, and SGD at nnU-Net's lr sat on the all-zero
        # output. Without AMSGrad: its running maximum of the second moment keeps the large first
        # gradients and shrinks later steps by orders of magnitude (docs/localization.md).
        optimizer = torch.optim.AdamW(self.network.parameters(), lr=self.initial_lr,
                                      weight_decay=self.weight_decay, amsgrad=self.amsgrad)
        return optimizer, PolyLRScheduler(optimizer, self.initial_lr, self.num_epochs)

    def initialize(self):
        super().initialize()
        if self.output_init_std is not None:
            # a near-zero start is already close to the mostly-zero targets, so the first losses are small
            init_output_layer(self.network, self.output_init_std)

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
        return {**batch, "target": [targets, self._annotated(batch["keys"])], "target_seg": seg}

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
        return {"loss": loss.detach().cpu().numpy(), "tp_hard": tp, "fp_hard": fp, "fn_hard": fn,
                "centroid_error_mm": self._centroid_errors(output, batch["target_seg"], annotated)}

    def _centroid_errors(self, heat: torch.Tensor, seg: torch.Tensor, annotated: torch.Tensor) -> np.ndarray:
        """(B, n_organs) distance in mm between the read-out centroid of each predicted heat map and the
        labelled organ's centroid in the patch; NaN where the organ is not annotated or not in the patch,
        inf where it is but the heat map stays below tau (a miss)."""
        ref, present = label_centroids(seg.to(heat.device), len(self.organ_names))
        spacing = np.asarray(self.configuration_manager.spacing, float)
        heat, ref = heat.float().cpu().numpy(), ref.cpu().numpy()
        out = np.full(present.shape, np.nan)
        for b, o in zip(*np.nonzero((present & annotated).cpu().numpy())):
            region = heatmap_region(heat[b, o], DEFAULT_TAU)
            out[b, o] = np.inf if region is None else np.linalg.norm((region["centroid"] - ref[b, o]) * spacing)
        return out

    def on_validation_epoch_end(self, val_outputs: List[dict]):
        super().on_validation_epoch_end(val_outputs)
        errors = collate_outputs(val_outputs)["centroid_error_mm"].reshape(-1, len(self.organ_names))
        # a checkpoint from before this log existed: pad its epochs so the lists stay aligned
        self.logger.local_logger.my_fantastic_logging.setdefault("centroid_error_mm", [[]] * self.current_epoch)
        medians = [float(np.median(e[~np.isnan(e)])) if (~np.isnan(e)).any() else float("nan") for e in errors.T]
        self.logger.log("centroid_error_mm", medians, self.current_epoch)
        self.print_to_log_file("median centroid error mm (validation patches): " +
                               ", ".join(f"{o} {m:.1f}" for o, m in zip(self.organ_names, medians)))
        plot_centroid_errors(self.logger.get_value("centroid_error_mm", step=None), self.organ_names,
                             join(self.output_folder, "progress_centroid_error.png"))

    def on_train_start(self):
        super().on_train_start()
        # the box size of each organ is the mean over this fold's training cases only
        tr_keys, _ = self.do_split()
        base = self.preprocessed_dataset_folder_base
        sizes = read_json(join(base, "box_sizes.json"))
        offsets = None
        if os.path.isfile(join(base, "centroid_offsets.json")):     # plans older than the constant guess lack it
            offsets = read_json(join(base, "centroid_offsets.json"))
        write_json(mean_box_sizes(sizes, tr_keys, offsets), join(self.output_folder, BOX_STATS))

    def perform_actual_validation(self, save_probabilities: bool = False):
        """Heat maps, boxes and ``localization_summary.json`` for the validation cases."""
        if self.fold == "all":
            return          # there are no held-out cases (ShortSchedule's rule, for every schedule here)
        self.network.eval()
        predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=False,
                                    perform_everything_on_device=self.device.type != "cpu", device=self.device,
                                    verbose=False, allow_tqdm=False)
        predictor.manual_initialization(self.network, self.plans_manager, self.configuration_manager, None,
                                        self.dataset_json, self.__class__.__name__, None)
        box_stats = read_json(join(self.output_folder, BOX_STATS))
        out_dir = join(self.output_folder, "validation")
        os.makedirs(out_dir, exist_ok=True)
        _, val_keys = self.do_split()
        dataset = self.dataset_class(self.preprocessed_dataset_folder, val_keys)
        labels = self.dataset_json["labels"]
        per_case, per_case_guess = {}, {}
        for k in dataset.identifiers:
            data, _, _, properties = dataset.load_case(k)
            data = np.asarray(data[:])
            with torch.no_grad():
                heat = predictor.predict_sliding_window_return_logits(torch.from_numpy(data))[1:].float().cpu().numpy()
            gt = sitk.ReadImage(join(self.preprocessed_dataset_folder_base, "gt_segmentations",
                                     k + self.dataset_json["file_ending"]))
            gt_zyx, geom = sitk.GetArrayFromImage(gt), geometry(gt)
            boxes = boxes_for_case(heat, self.organ_names, properties, self.plans_manager.transpose_forward,
                                   box_stats, geom, case=k, scan_z_mm=scan_z_mm(data, properties, self.plans_manager,
                                                                                self.configuration_manager))
            write_boxes(boxes, out_dir)
            np.savez_compressed(join(out_dir, f"{k}_heatmaps_3d_loc.npz"),
                                **{n: heat[i].astype(np.float16) for i, n in enumerate(self.organ_names)})
            annotated = self.annotations.get(k, self.organ_names) if self.annotations is not None else self.organ_names
            per_case[k], per_case_guess[k] = score_case(boxes, gt_zyx, labels, [o for o in self.organ_names if o in annotated],
                                                        box_stats, DEFAULT_MARGIN_MM)
        summary = summarize(per_case, per_case_guess)
        write_json(summary, join(out_dir, "localization_summary.json"))
        self.print_to_log_file("Localization of the validation cases (margin 10 mm), beside the constant guess:\n"
                               + markdown_table(summary))


class nnUNetTrainerOARHeatmap_tiny(NarrowWidth, nnUNetTrainerOARHeatmap):
    """A few iterations of a narrow network, for tests of the plumbing on CPU. Eight iterations cannot
    learn anything; with nnU-Net's default start the outputs stay of order 1, so organs are 'found'
    somewhere and the stages after localization get boxes to work on (a near-zero start would leave every
    organ absent)."""
    budget = (2, 4, 2)
    output_init_std = None


class nnUNetTrainerOARHeatmap_150its(nnUNetTrainerOARHeatmap):
    """150 iterations: enough for small phantoms at 4-6 mm (the recipe test, ``tests/test_recipe.py``, at 6 mm:
    held-out Dice 0.72-0.94; with 300 its at 4 mm validation centroid errors were within 8 mm after 75)."""
    budget = (6, 25, 4)


class nnUNetTrainerOARHeatmap_demo(NarrowWidth, nnUNetTrainerOARHeatmap):
    """The demo's CPU budget: 250 iterations at half nnU-Net's width, as the demo's other networks. On the
    demo's phantoms, 100 iterations at nnU-Net's width took 120-125 s per fold, 250 at half width 142-148 s,
    and the narrow one localized better on the held-out phantoms (median centroid errors 1.7-8.5 mm against
    2.7-15.2 mm, containment 1.000 against 0.981 at least; at 5 mm its iterations were slower than at 4 mm:
    demo runs on 2 CPU cores, 2026-12-06)."""
    budget = (10, 25, 4)
    width_divisor = 2


class nnUNetTrainerOARHeatmap_cpu(nnUNetTrainerOARHeatmap):
    """The CPU budget on OpenKBP (benchmarks/localization_openkbp.py, nnunet_oar benchmark): 1500 iterations,
    30-35 min on 2 cores at 8 mm with nnU-Net's width (63 min on a slower 2-core machine), about 18 min with
    ``plan-localizer --base-features 16`` (docs/localization.md, "A slimmer network")."""
    budget = (30, 50, 4)


class nnUNetTrainerOARHeatmap_gpu(nnUNetTrainerOARHeatmap):
    """The GPU budget (benchmarks/gpu_openkbp.sh): 4000 iterations."""
    budget = (40, 100, 10)


# Ablation of the optimiser and start (docs/localization.md): each puts back one of nnU-Net's choices.
class nnUNetTrainerOARHeatmap_cpu_amsgrad(nnUNetTrainerOARHeatmap_cpu):
    amsgrad = True


class nnUNetTrainerOARHeatmap_cpu_defaultinit(nnUNetTrainerOARHeatmap_cpu):
    output_init_std = None


class nnUNetTrainerOARHeatmap_cpu_wd(nnUNetTrainerOARHeatmap_cpu):
    adam_weight_decay = 3e-5


class nnUNetTrainerOARHeatmap_cpu_nnunet(nnUNetTrainerOARHeatmap_cpu):
    """All three as nnU-Net's nnUNetTrainerAdam has them: the localizer before this change."""
    amsgrad, output_init_std, adam_weight_decay = True, None, 3e-5
