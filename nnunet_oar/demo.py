"""``nnunet_oar demo``: the paper's comparison on synthetic phantoms, small enough for 2 CPU cores.

It is ``nnunet_oar benchmark --dataset phantoms --budget demo``: 20 training and 3 held-out phantoms,
the localizer (two cross-validation folds, whose out-of-fold boxes crop the organs) and one organ
network per organ (liver, spleen, kidneys) against one multi-organ ``3d_fullres`` network, all trained
briefly with the stock ``nnUNetv2_train``, predicted, scored (Dice, HD95, NSD, localization) and
reported in ``report.md``; plus ``preview.png``, the QA montage of a held-out case. Everything lives
under the output folder (its own nnU-Net folders), so the user's nnU-Net folders are untouched. The CPU
shortcuts are listed in the report's settings (4 mm localizer grid with a foreground-weighted L2,
2.5 mm grid for the organ networks and the baseline, the baseline's patch capped at 32^3 voxels) and
trainers (every network at half nnU-Net's width).
"""
from __future__ import annotations

from pathlib import Path

import SimpleITK as sitk

from nnunet_oar.evaluation.benchmark import run_benchmark
from nnunet_oar.evaluation.settings import settings_for
from nnunet_oar.contracts import read_boxes
from nnunet_oar.io import read_json
from nnunet_oar.paths import find_dataset, raw_root
from nnunet_oar.report import organ_montage_png


def run_demo(output: Path, n_train: int = 20, n_test: int = 3, seed: int = 0) -> dict:
    """Run the demo into ``output``; returns the benchmark report (also ``report.json``)."""
    s = settings_for("phantoms", "demo")
    s.phantoms.update(train=n_train, test=n_test, seed=seed)
    output = Path(output).resolve()
    report = run_benchmark(output, s)
    test_raw = find_dataset(raw_root(), s.test_id)
    case = sorted(read_json(test_raw / "annotations.json"))[0]
    pred = output / "predictions" / "two_stage"
    organ_montage_png(sitk.ReadImage(str(test_raw / "imagesTr" / f"{case}_0000.nii.gz")),
                      sitk.ReadImage(str(pred / f"{case}.nii.gz")),
                      read_json(pred / f"{case}.json")["labels"],
                      read_boxes(pred, case), output / "preview.png",
                      title=f"held-out phantom {case}, two-stage")
    return report
