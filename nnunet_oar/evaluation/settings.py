"""What a benchmark run does (:class:`Settings`, written to ``settings.json`` and the report), the
budgets (trainer classes, iterations fixed in the class as nnU-Net does it) and the defaults per data
set; every deviation from the paper is named here."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

# the project workspace keeps the data beside the checkout (../shared) or, on a device machine, inside it
# (shared/); an installed package has no such default
_REPO = Path(__file__).resolve().parents[2]
DEFAULT_OPENKBP = next((str(d) for d in (_REPO.parent / "shared" / "data" / "openkbp",
                                         _REPO / "shared" / "data" / "openkbp") if d.is_dir()), None)
PHANTOM_ORGANS = ["liver", "spleen", "kidney_right", "kidney_left"]

# trainer class names: (localizer, baseline and organ networks)
BUDGETS = {
    "tiny": ("nnUNetTrainerOARHeatmap_tiny", "nnUNetTrainerOARTiny"),        # tests: 8 iterations each
    "demo": ("nnUNetTrainerOARHeatmap_demo", "nnUNetTrainerOARDemo"),        # 250 / 160 iterations
    "cpu": ("nnUNetTrainerOARHeatmap_cpu", "nnUNetTrainerOARCPU"),           # 1500 / 400 iterations
    "gpu": ("nnUNetTrainerOARHeatmap_gpu", "nnUNetTrainerOARGPU"),           # 4000 / 1000 iterations
    "full": ("nnUNetTrainerOARHeatmap", "nnUNetTrainer"),                    # nnU-Net's 1000 x 250
}


@dataclass
class Settings:
    """What a benchmark run does; written to ``settings.json`` and the report."""
    dataset: str                       # phantoms | openkbp | <raw data set id>
    budget: str = "cpu"
    train_id: int = 100
    test_id: int = 101
    loc_spacing_mm: float = 3.0        # the paper's 3 mm
    loc_fg_weight: float = 0.0         # the paper's plain L2
    organ_spacing_mm: float = 1.0      # the paper's 1 mm; 0 keeps the data's median spacing
    margin_mm: float = 10.0
    baseline_patch: Optional[List[int]] = None   # cap of the baseline's patch (CPU budgets), voxels
    baseline_spacing_mm: Optional[float] = None   # the baseline's isotropic grid; None: nnU-Net's choice
    device: str = "cpu"
    tta: bool = False
    organs: Optional[List[str]] = None
    # organ networks' training crops: "oof" (the paper's: out-of-fold localizer boxes with calibrated
    # margins, from loc_folds localizer folds) or "reference" (reference boxes + margin, randomly shifted)
    organ_boxes: str = "oof"
    # "iterations": the baseline gets the organ networks' trainer (equal iterations per network); "time":
    # also a second baseline trained as long as the two-stage method's trainings took (see _equal_time_epochs)
    baseline_budget: str = "iterations"
    # partial contours: one baseline per rule of nnunet_oar.conversion.ignore ("body", "likely")
    baseline_ignore: List[str] = field(default_factory=lambda: ["body"])
    loc_folds: int = 5
    phantoms: Dict[str, float] = field(default_factory=dict)
    openkbp: Optional[str] = DEFAULT_OPENKBP  # folder with openkbp-{train,validation}.tar.xz (or such folders)

    @property
    def baseline_id(self) -> int:
        return self.train_id + 5

    @property
    def first_organ_id(self) -> int:
        return self.train_id + 10


def settings_for(dataset: str, budget: str) -> Settings:
    """Defaults per data set; every deviation from the paper is named here and in the report."""
    s = _settings_for(dataset, budget)
    s.loc_folds = 2 if budget in ("tiny", "demo", "cpu") else 5     # CPU budgets: two localizer folds
    return s


def _settings_for(dataset: str, budget: str) -> Settings:
    if dataset == "phantoms":
        # CPU shortcuts of the demo: coarser grids, foreground-weighted L2. The demo budget must finish in
        # 15 min on 2 cores: 20 training phantoms, every network at half nnU-Net's width (its trainers),
        # organ networks at 2.5 mm and the baseline on the same grid, its patch capped at 32^3 voxels (80 mm,
        # about the liver network's; at 1.5 mm its 48^3 patch took 693 s of the demo's 31 min at full
        # width, its uncapped 80 x 80 x 96 patch 39 of the older demo's 54). The tests' tiny budget takes
        # the same grids.
        demo = budget == "demo"
        small = budget in ("tiny", "demo")
        return Settings("phantoms", budget, 901, 902, loc_spacing_mm=4.0, loc_fg_weight=20.0,
                        organ_spacing_mm=2.5 if small else 2.0, baseline_patch=[32, 32, 32] if small else None,
                        baseline_spacing_mm=2.5 if small else None,
                        organs=PHANTOM_ORGANS, phantoms={"train": 20 if demo else 30, "test": 3, "seed": 0,
                                                         "scale": 0.4})
    if dataset == "openkbp":
        # OpenKBP CT is 3.9 x 3.9 x 2.5 mm: organ networks on the native grid; on CPU the localizer
        # works on an 8 mm grid (margin 20 mm, chosen before any run) and the baseline patch is capped.
        # The GPU budget keeps these settings, so that it differs from the CPU run in the schedule alone.
        small = budget in ("tiny", "demo", "cpu", "gpu")
        return Settings("openkbp", budget, 100, 101, loc_spacing_mm=8.0 if small else 3.0,
                        loc_fg_weight=20.0 if small else 0.0, organ_spacing_mm=0.0,
                        margin_mm=20.0 if small else 10.0, baseline_patch=[64, 64, 64] if small else None,
                        baseline_budget="time", baseline_ignore=["body", "likely"])
    train_id = int(dataset)
    return Settings(dataset, budget, train_id, train_id + 1)
