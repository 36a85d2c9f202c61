"""Helpers of our nnU-Net trainers that live in the package, so that the trainer folder holds trainer
classes only: seeding, short schedules, narrow networks, the heat-map output layer's start, the
localizer's centroid-error curve."""
from __future__ import annotations

import os
import random
import time
from typing import List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans


def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's and torch's generators of this process (network initialisation, the
    training-case sampling of nnU-Net's data loader when ``nnUNet_n_proc_DA=0``). nnU-Net's augmentation
    workers draw their own seeds, so with ``nnUNet_n_proc_DA`` > 0 two runs still differ in augmentation."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class ShortSchedule:
    """Mixin for nnU-Net trainers (before the trainer class in the bases): a seeded run whose schedule is a
    class attribute, so a budget variant is three lines, like nnU-Net's ``nnUNetTrainer_Xepochs``.

    ``budget`` = (epochs, iterations per epoch, validation iterations), ``None`` for nnU-Net's schedule;
    a budget also saves a checkpoint every epoch, so an interrupted short run resumes (``--c``) where it
    stopped, and draws nnU-Net's progress plot at most every ``plot_every_s`` seconds and at the end
    (:class:`ThrottledPlots`). ``seed`` seeds this process (``$nnUNet_oar_seed`` overrides). Fold ``all`` skips nnU-Net's
    final validation, which would only re-predict the training cases.
    """

    budget: Optional[Tuple[int, int, int]] = None
    seed = 0
    plot_every_s = 60.0

    # the explicit signature matters: nnU-Net records its trainer's __init__ arguments by name
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        seed_everything(int(os.environ.get("nnUNet_oar_seed", self.seed)))
        super().__init__(plans, configuration, fold, dataset_json, device)
        if self.budget is not None:
            self.num_epochs, self.num_iterations_per_epoch, self.num_val_iterations_per_epoch = self.budget
            self.save_every = 1
            self.logger = ThrottledPlots(self.logger, self.plot_every_s)

    def on_train_end(self):
        super().on_train_end()
        if isinstance(self.logger, ThrottledPlots):
            self.logger.plot_progress_png(self.output_folder, force=True)

    def perform_actual_validation(self, save_probabilities: bool = False):
        if self.fold != "all":
            super().perform_actual_validation(save_probabilities)


class ThrottledPlots:
    """nnU-Net's logger, whose ``progress.png`` is drawn at most every ``interval_s`` seconds (and when
    forced, after the last epoch); everything else is the wrapped logger's. One plot takes 1.2 s on 2 CPU
    cores, about 10 % of a short budget's epoch of a few seconds (the demo drew 70)."""

    def __init__(self, logger, interval_s: float):
        self._logger, self._interval_s, self._last = logger, interval_s, time.monotonic()

    def plot_progress_png(self, output_folder: str, force: bool = False) -> None:
        if force or time.monotonic() - self._last >= self._interval_s:
            self._logger.plot_progress_png(output_folder)
            self._last = time.monotonic()

    def __getattr__(self, name: str):
        return getattr(self._logger, name)


class NarrowWidth:
    """Mixin for budget trainers (before the trainer class in the bases): nnU-Net's planned network with
    1/``width_divisor`` of its features per stage (8: 32, 64, ... -> 4, 8, ...). The plans, checkpoints and
    nnU-Net's predictor (which builds the network through this same hook) are unchanged; the convolutions
    cost about 1/``width_divisor``² of the planned width's. The tests' 8-iteration trainers, which learn
    nothing at any width, take 1/8; the demo's networks 1/2 (0.34-0.47x the time per iteration on 2 CPU
    cores, ``docs/results/network_width.md``)."""

    width_divisor = 8

    @classmethod
    def build_network_architecture(cls, plans_manager, configuration_manager, num_input_channels: int,
                                   num_output_channels: int, enable_deep_supervision: bool = True) -> torch.nn.Module:
        kwargs = dict(configuration_manager.network_arch_init_kwargs)
        kwargs["features_per_stage"] = [max(2, f // cls.width_divisor) for f in kwargs["features_per_stage"]]
        return get_network_from_plans(configuration_manager.network_arch_class_name, kwargs,
                                      configuration_manager.network_arch_init_kwargs_req_import, num_input_channels,
                                      num_output_channels, allow_init=True, deep_supervision=enable_deep_supervision)


def network_size(weights: Mapping[str, torch.Tensor]) -> dict:
    """What a trained network is, from its weights (nnU-Net's ``network_weights`` in a checkpoint): a budget
    trainer may build a narrower network than its plans say (:class:`NarrowWidth`).

    Returns:
        ``{"features_per_stage": [...]`` (output channels of each encoder stage; empty for an architecture
        without ``encoder.stages``), ``"parameters": int}``, each tensor counted once: nnU-Net's decoder
        holds the encoder, and its blocks list their convolutions twice, so a state dict holds most
        weights several times (a sum over it gave 48.8 M for a network of 16.2 M).
    """
    unique, stages = {}, {}
    for key, w in weights.items():
        unique.setdefault((w.untyped_storage().data_ptr(), w.storage_offset(), tuple(w.shape)), w.numel())
        parts = key.split(".")
        if parts[:2] == ["encoder", "stages"] and parts[-1] == "weight" and w.ndim >= 3:
            stages[int(parts[2])] = int(w.shape[0])       # the stage's last convolution
    return {"features_per_stage": [stages[k] for k in sorted(stages)], "parameters": int(sum(unique.values()))}


def init_output_layer(network: torch.nn.Module, std: float) -> None:
    """Start the last 1x1x1 convolution of an nnU-Net network (``decoder.seg_layers``) at normal(0, std)
    weights and zero bias, so that the first heat maps are about zero, like most of the targets."""
    layers = getattr(getattr(network, "decoder", None), "seg_layers", None)
    if not layers:
        raise TypeError(f"{type(network).__name__}: no decoder.seg_layers; cannot initialise the output layer")
    for layer in layers:
        torch.nn.init.normal_(layer.weight, 0.0, std)
        torch.nn.init.zeros_(layer.bias)


def plot_centroid_errors(per_epoch: List[Sequence[float]], organs: Sequence[str], path: str) -> None:
    """Learning curve: median centroid error (mm) per organ and epoch, log scale, to ``path`` (PNG)."""
    import matplotlib
    matplotlib.use("agg")
    import matplotlib.pyplot as plt
    rows = [r for r in per_epoch if len(r) == len(organs)]
    epochs = [e for e, r in enumerate(per_epoch) if len(r) == len(organs)]
    # nnU-Net's progress plot scales seaborn's fonts for its own 30-inch figure: draw with the defaults
    with plt.style.context("default"):
        fig, ax = plt.subplots(figsize=(8, 4.5))
        for k, organ in enumerate(organs):
            ax.plot(epochs, [min(r[k], 1e3) for r in rows], label=organ, marker=".")
        ax.set_yscale("log")
        ax.set_xlabel("epoch")
        ax.set_ylabel("median centroid error (mm)")
        ax.set_title("validation patches (1000 mm = missed)", fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
        fig.tight_layout()
        fig.savefig(path, dpi=80)
        plt.close(fig)
