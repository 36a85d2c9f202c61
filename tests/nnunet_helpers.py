"""Helpers for integration tests that drive the real nnUNetv2_* commands on tiny phantom data."""
import os
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

BIN = Path(sys.executable).parent


def nnunet_environment(root: Path) -> Dict[str, str]:
    """Environment with nnU-Net's folders under ``root`` and CPU-friendly settings."""
    env = dict(os.environ)
    for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        (root / k).mkdir(parents=True, exist_ok=True)
        env[k] = str(root / k)
    env.update(nnUNet_def_n_proc="2", nnUNet_n_proc_DA="1", nnUNet_compile="f",
               PATH=str(BIN) + os.pathsep + env.get("PATH", ""))
    env["nnUNet_extTrainer"] = run(["nnunet_oar", "trainer-path"], env).strip()
    return env


def run(cmd: List[str], env: Dict[str, str], timeout: int = 900) -> str:
    """Run a command; on failure show the end of its output."""
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    return r.stdout
