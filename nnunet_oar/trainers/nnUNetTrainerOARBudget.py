"""Stock nnU-Net training (Dice + cross-entropy, the paper's eq. 2) on small budgets, for the organ
networks and the single-network baseline in tests, the demo and the benchmarks. Real training uses
nnU-Net's own ``nnUNetTrainer``."""
import os

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_oar.training import seed_everything


class nnUNetTrainerOARTiny(nnUNetTrainer):
    """A few iterations, for tests. Seeded like the localizer (``nnUNet_oar_seed``, default 0), so that
    benchmark and demo runs start from the same weights."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        seed_everything(int(os.environ.get("nnUNet_oar_seed", 0)))
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs, self.num_iterations_per_epoch, self.num_val_iterations_per_epoch = 2, 4, 2
        self.save_every = 1        # short schedules: an interrupted run resumes (--c) from its last epoch

    def perform_actual_validation(self, save_probabilities: bool = False):
        # fold "all" would only re-predict the training cases; the benchmark scores held-out cases itself
        if self.fold != "all":
            super().perform_actual_validation(save_probabilities)


class nnUNetTrainerOARDemo(nnUNetTrainerOARTiny):
    """The demo's budget per network: 200 iterations (10 x 20)."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs, self.num_iterations_per_epoch, self.num_val_iterations_per_epoch = 10, 20, 4


class nnUNetTrainerOARCPU(nnUNetTrainerOARTiny):
    """The CPU benchmark's budget per network: 400 iterations (10 x 40)."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs, self.num_iterations_per_epoch, self.num_val_iterations_per_epoch = 10, 40, 4


class nnUNetTrainerOARGPU(nnUNetTrainerOARTiny):
    """The GPU benchmark's budget per network (benchmarks/gpu_openkbp.sh): 1000 iterations (10 x 100)."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs, self.num_iterations_per_epoch, self.num_val_iterations_per_epoch = 10, 100, 10
