"""A non-editable install (a wheel built from pyproject.toml) can train and predict: the trainer modules
travel with it, the CLI runs, and nothing points back into the source checkout."""
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """The wheel, installed without dependencies into its own folder (the venv provides torch & co.)."""
    tmp = tmp_path_factory.mktemp("wheel")
    # built from a copy of the tracked sources, so that setuptools' build/ and egg-info stay out of the checkout
    src = tmp / "src"
    files = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    for name in files:
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, src / name)
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation",
                        "-w", str(tmp / "dist"), "-q"], capture_output=True, text=True)
    if r.returncode != 0 and "setuptools" in r.stderr and "No module named" in r.stderr:
        pytest.skip("setuptools is not in this environment (pip wheel --no-build-isolation needs it)")
    assert r.returncode == 0, r.stderr
    wheel = next((tmp / "dist").glob("nnunet_oar-*.whl"))
    site = tmp / "site"
    r = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    # the installed copy comes first; run from a folder that holds no source checkout
    env = dict(os.environ, PYTHONPATH=str(site), PATH=str(site / "bin") + os.pathsep + os.environ["PATH"])
    env.pop("nnUNet_extTrainer", None)
    return {"wheel": wheel, "site": site, "env": env, "cwd": tmp}


def run(installed, *args):
    return subprocess.run([sys.executable, "-c", "import sys; from nnunet_oar.cli import main; sys.exit(main())",
                           *args], env=installed["env"], cwd=installed["cwd"], capture_output=True, text=True)


def test_the_wheel_holds_the_trainer_modules(installed):
    names = zipfile.ZipFile(installed["wheel"]).namelist()
    for module in ("nnUNetTrainerOARHeatmap.py", "nnUNetTrainerOARBudget.py"):
        assert f"nnunet_oar/trainers/{module}" in names
    for f in ("train.smk", "predict.smk", "examples/phantoms_tiny.yaml", "profiles/slurm/config.yaml"):
        assert f"nnunet_oar/workflows/{f}" in names


def test_the_installed_cli_runs_and_points_nnunet_at_installed_trainers(installed):
    r = run(installed, "--help")
    assert r.returncode == 0 and "predict" in r.stdout
    r = run(installed, "trainer-path")
    folder = Path(r.stdout.strip())
    assert r.returncode == 0 and folder.is_relative_to(installed["site"])
    assert (folder / "nnUNetTrainerOARHeatmap.py").is_file()
    assert run(installed, "demo", "--help").returncode == 0
    # nnUNetv2_train's own lookup finds our trainer in that folder
    code = ("from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name as f; "
            "c = f('nnUNetTrainerOARHeatmap_tiny'); import nnunet_oar; print(c.__name__, nnunet_oar.__file__)")
    r = subprocess.run([sys.executable, "-c", code], env={**installed["env"], "nnUNet_extTrainer": str(folder)},
                       cwd=installed["cwd"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    name, package = r.stdout.splitlines()[-1].split()          # after nnU-Net's "Inspecting module" lines
    assert name == "nnUNetTrainerOARHeatmap_tiny" and Path(package).is_relative_to(installed["site"])


def test_the_openkbp_benchmark_takes_its_data_from_an_explicit_folder(installed, tmp_path):
    work = tmp_path / "work"
    r = run(installed, "benchmark", "--dataset", "openkbp", "--budget", "tiny", "--work", str(work))
    assert r.returncode == 2 and "needs --openkbp DIR" in r.stderr          # no default outside the workspace
    r = run(installed, "benchmark", "--dataset", "openkbp", "--budget", "tiny", "--work", str(work / "b"),
            "--openkbp", str(tmp_path / "kbp"))
    assert r.returncode == 2 and str(tmp_path / "kbp" / "openkbp-train") in r.stderr + r.stdout
