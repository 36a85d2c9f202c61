"""Helpers for integration tests that drive the real nnUNetv2_* commands on tiny phantom data."""
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

from nnunet_oar.paths import CPU_DEFAULTS

BIN = Path(sys.executable).parent
LOC_ORGANS = ["liver", "kidney_right", "kidney_left"]
LOC_TRAINER = "nnUNetTrainerOARHeatmap_tiny"


def nnunet_environment(root: Path) -> Dict[str, str]:
    """Environment with nnU-Net's folders under ``root`` and CPU-friendly settings."""
    env = dict(os.environ)
    for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        (root / k).mkdir(parents=True, exist_ok=True)
        env[k] = str(root / k)
    env.update(CPU_DEFAULTS, PATH=str(BIN) + os.pathsep + env.get("PATH", ""))
    env["nnUNet_extTrainer"] = run(["nnunet_oar", "trainer-path"], env).strip()
    return env


def run(cmd: List[str], env: Dict[str, str], timeout: int = 900) -> str:
    """Run a command; on failure show the end of its output."""
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    return r.stdout


def train_tiny_localizer(root: Path) -> dict:
    """Six phantoms (+ one held out) -> VISCERAL data set 601 -> 3d_loc -> two tiny folds."""
    env = nnunet_environment(root)
    run(["nnunet_oar", "phantom", "-o", str(root / "vis"), "-n", "6", "--seed", "11", "--scale", "0.4",
         "--organs", *LOC_ORGANS], env)
    run(["nnunet_oar", "phantom", "-o", str(root / "heldout"), "-n", "1", "--seed", "99", "--scale", "0.4",
         "--organs", *LOC_ORGANS], env)
    run(["nnunet_oar", "convert-visceral", "-i", str(root / "vis"), "-d", "601"], env)
    run(["nnunet_oar", "plan-localizer", "-d", "601"], env)
    pre = root / "nnUNet_preprocessed" / "Dataset601_VISCERAL"
    ids = sorted(json.loads((pre / "box_sizes.json").read_text()))
    # two folds, so that cross-validation boxes can be checked
    (pre / "splits_final.json").write_text(json.dumps([{"train": ids[:3], "val": ids[3:]},
                                                       {"train": ids[3:], "val": ids[:3]}]))
    run(["nnUNetv2_preprocess", "-d", "601", "-c", "3d_loc", "-np", "2"], env)
    for fold in ("0", "1"):
        run(["nnUNetv2_train", "601", "3d_loc", fold, "-tr", LOC_TRAINER, "-device", "cpu"], env)
    model = root / "nnUNet_results" / "Dataset601_VISCERAL" / f"{LOC_TRAINER}__nnUNetPlans__3d_loc"
    return {"root": root, "env": env, "model": model, "pre": pre, "ids": ids}
