"""The Snakemake workflows: the training recipe's DAG from the shipped phantom example (a dry run through
`nnunet_oar workflow`), the shipped SLURM profile, and the wrapper's refusals. Batch prediction runs for
real in tests/test_pipeline_integration.py."""
import re
import shutil
import subprocess
import sys

import pytest

from nnunet_oar.io import InputError
from nnunet_oar.workflows import HERE, profile_path, snakemake_command


def test_the_training_recipe_dag_from_the_phantom_example(tmp_path):
    config = tmp_path / "phantoms_tiny.yaml"
    shutil.copy(HERE / "examples" / "phantoms_tiny.yaml", config)
    r = subprocess.run([sys.executable, "-c", "import sys; from nnunet_oar.cli import main; sys.exit(main())",
                        "workflow", "train", "--config", str(config), "-n"], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    counts = dict(re.findall(r"^(\w+)\s+(\d+)$", r.stdout, re.M))
    assert counts == {"convert": "1", "plan_localizer": "1", "train_localizer": "2", "localize_cross_validation": "1",
                      "crop_rois": "1", "plan_organs": "1", "train_organ": "2", "export_models": "1", "all": "1",
                      "total": "11"}
    # every step is a command a user would type, with nnU-Net's folders under the work folder
    work = tmp_path / "phantoms_tiny_work"
    for command in ("nnunet_oar plan-localizer -d 501", "nnUNetv2_train 501 3d_loc 0 -tr nnUNetTrainerOARHeatmap_tiny",
                    "nnunet_oar localize --cross-validation -d 501", "nnunet_oar crop-rois -d 501",
                    "nnUNetv2_train 511 3d_fullres all", "nnUNetv2_train 512 3d_fullres all",
                    f"nnunet_oar export-models -o {work}/models"):
        assert command in r.stdout, command
    assert f"nnUNet_results={work}/nnUNet_results" in r.stdout


def test_a_slurm_dry_run_lists_every_job_with_its_resources_without_a_cluster(tmp_path):
    """Folds x organs + the rest, trainings on a GPU partition with --gres=gpu:1 (SLURM executor plugin)."""
    config = tmp_path / "phantoms_tiny.yaml"
    shutil.copy(HERE / "examples" / "phantoms_tiny.yaml", config)
    r = subprocess.run([sys.executable, "-c", "import sys; from nnunet_oar.cli import main; sys.exit(main())",
                        "workflow", "train", "--config", str(config), "--profile", "slurm", "-n",
                        "--work", str(tmp_path / "w")], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert re.search(r"^total\s+11$", r.stdout, re.M)       # 2 localizer folds + 2 organs x 1 fold + 7
    blocks = re.findall(r"^rule (\w+):\n(?:.*\n)*?\s+resources: (.*)$", r.stdout, re.M)
    trainings = [res for rule, res in blocks if rule in ("train_localizer", "train_organ")]
    assert len(trainings) == 4 and all("slurm_extra=--gres=gpu:1" in res and "slurm_partition=gpu" in res
                                       for res in trainings)
    assert all("slurm_partition=cpu" in res for rule, res in blocks if rule in ("convert", "crop_rois"))


def test_the_visceral_example_is_the_papers_job_count(tmp_path):
    """20 organs x 5 folds + 5 localizer folds + 6 steps (+ the target rule): the job table in
    docs/results/workflow_jobs_visceral.md."""
    config = tmp_path / "visceral.yaml"
    shutil.copy(HERE / "examples" / "visceral.yaml", config)
    r = subprocess.run([sys.executable, "-c", "import sys; from nnunet_oar.cli import main; sys.exit(main())",
                        "workflow", "train", "--config", str(config), "-n"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    counts = dict(re.findall(r"^(\w+)\s+(\d+)$", r.stdout, re.M))
    assert counts["train_organ"] == "100" and counts["train_localizer"] == "5" and counts["total"] == "112"


def test_work_and_profile_options_reach_snakemake(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("work: w\n")
    cmd = snakemake_command("train", config, profile="slurm", work=tmp_path / "elsewhere", dry_run=True)
    assert cmd[cmd.index("--profile") + 1] == str(HERE / "profiles" / "slurm")
    assert f"work={tmp_path / 'elsewhere'}" in cmd and "--dry-run" in cmd and "--cores" not in cmd
    import yaml
    profile = yaml.safe_load((profile_path("slurm") / "config.yaml").read_text())
    assert profile["executor"] == "slurm"
    for rule in ("train_localizer", "train_organ"):
        assert "gpu:1" in profile["set-resources"][rule]["slurm_extra"]


@pytest.mark.parametrize("args, message", [
    (("deploy", "c.yaml"), "unknown workflow 'deploy'"),
    (("train", "missing.yaml"), "no such configuration file"),
])
def test_bad_workflow_calls_are_named(tmp_path, args, message):
    (tmp_path / "c.yaml").write_text("work: w\n")
    with pytest.raises(InputError, match=message):
        snakemake_command(args[0], tmp_path / args[1])
    with pytest.raises(InputError, match="not a Snakemake profile"):
        profile_path(str(tmp_path))


@pytest.mark.parametrize("change, message", [
    (("organs", ["liver", "brain"]), "organs: unknown organ 'brain'"),
    (("localizer", {"trainer": "t", "folds": [0, 7], "n_splits": 2}), "localizer.folds: fold 7 is out of range"),
    (("localizer", {"trainer": "t", "folds": ["all"]}), "'all' has no held-out cases"),
    (("convert", None), "dataset_id: no data set 501"),
    (("organ_networks", {"trainer": "t"}), "organ_networks.folds is missing"),
])
def test_a_bad_training_config_is_refused_before_any_job_naming_the_key(tmp_path, change, message):
    import yaml
    from nnunet_oar.workflows import check_config
    cfg = yaml.safe_load((HERE / "examples" / "phantoms_tiny.yaml").read_text())
    cfg[change[0]] = change[1]
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(InputError, match=message) as e:
        check_config("train", tmp_path / "c.yaml")
    assert "c.yaml" in str(e.value)
    assert not (tmp_path / "phantoms_tiny_work").exists()


def test_a_cpu_command_uses_every_cpu_whatever_omp_num_threads_says(tmp_path):
    """Snakemake exports OMP_NUM_THREADS=1 to its jobs: a workflow's predict must still use the CPUs it is
    given, and the same number as a `nnunet_oar predict` outside the workflow (the same sums, the same labels)."""
    import os
    import torch
    from nnunet_oar.cli import main
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(["predict", "-i", str(tmp_path / "none"), "-o", str(tmp_path / "o"), "-m", str(tmp_path)]) == 2
        assert torch.get_num_threads() == len(os.sched_getaffinity(0))
    finally:
        torch.set_num_threads(before)


@pytest.mark.slow
def test_the_tiny_recipe_runs_end_to_end_then_does_nothing_then_reruns_only_a_deleted_training(tmp_path):
    """The shipped phantom example through `nnunet_oar workflow train`: models folder and zip at the end;
    a second run has nothing to do; deleting one organ network's checkpoint re-runs that training and the
    export, nothing else."""
    from tests.nnunet_helpers import nnunet_environment
    env = nnunet_environment(tmp_path / "env")
    config, work = tmp_path / "phantoms_tiny.yaml", tmp_path / "w"
    shutil.copy(HERE / "examples" / "phantoms_tiny.yaml", config)
    cmd = ["nnunet_oar", "workflow", "train", "--config", str(config), "--work", str(work), "--cores", "2"]
    first = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    manifest = work / "models" / "models.json"
    assert manifest.is_file() and (work / "models.zip").is_file()
    again = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr
    checkpoint = next(work.glob("nnUNet_results/Dataset512_VISCERAL_spleen/*/fold_all/checkpoint_final.pth"))
    checkpoint.unlink()
    dry = subprocess.run([*cmd, "-n"], env=env, capture_output=True, text=True)
    counts = dict(re.findall(r"^(\w+)\s+(\d+)$", dry.stdout, re.M))
    assert counts == {"train_organ": "1", "export_models": "1", "all": "1", "total": "3"}, dry.stdout
    rerun = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert rerun.returncode == 0 and checkpoint.is_file()
    assert "nnUNetv2_train 512 3d_fullres all" in rerun.stdout + rerun.stderr
    assert "nnUNetv2_train 511" not in rerun.stdout + rerun.stderr
