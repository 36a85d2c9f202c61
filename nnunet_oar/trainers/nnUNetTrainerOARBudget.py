"""Stock nnU-Net training (Dice + cross-entropy, the paper's eq. 2) on a small CPU budget, for the organ
networks in tests and in the demo. Real training uses nnU-Net's own ``nnUNetTrainer``."""
import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer


class nnUNetTrainerOARTiny(nnUNetTrainer):
    """A few iterations, for tests."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs, self.num_iterations_per_epoch, self.num_val_iterations_per_epoch = 2, 4, 2


class nnUNetTrainerOARDemo(nnUNetTrainer):
    """The demo's CPU budget per organ network."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs, self.num_iterations_per_epoch, self.num_val_iterations_per_epoch = 10, 20, 4
