"""The training recipe and batch prediction as Snakemake workflows (``train.smk``, ``predict.smk``), run
locally or on a cluster through Snakemake's executors (``profiles/slurm``). Every rule runs a command a
user could type; :func:`run_workflow` is a thin wrapper over Snakemake's command line, so one can drop
to ``snakemake -s $(nnunet_oar workflow path train) --configfile ...`` at any time."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import List, Optional, Sequence

from nnunet_oar.contracts import MANIFEST_SUFFIX, case_file
from nnunet_oar.io import InputError

HERE = Path(__file__).resolve().parent
WORKFLOWS = {"train": HERE / "train.smk", "predict": HERE / "predict.smk"}


def profile_path(profile: str) -> Path:
    """A profile shipped with the package (``slurm``) or a folder of one's own."""
    shipped = HERE / "profiles" / profile
    path = shipped if shipped.is_dir() else Path(profile)
    if not (path / "config.yaml").is_file():
        raise InputError(f"{profile}: not a Snakemake profile (no config.yaml; shipped: "
                         f"{', '.join(p.name for p in (HERE / 'profiles').iterdir())})")
    return path


def snakemake_command(workflow: str, config: Path, cores: Optional[int] = None, profile: Optional[str] = None,
                      dry_run: bool = False, work: Optional[Path] = None, extra: Sequence[str] = ()) -> List[str]:
    """The ``snakemake`` command line :func:`run_workflow` runs."""
    if workflow not in WORKFLOWS:
        raise InputError(f"unknown workflow {workflow!r}; choose {', '.join(WORKFLOWS)}")
    if not Path(config).is_file():
        raise InputError(f"{config}: no such configuration file")
    cmd = [sys.executable, "-m", "snakemake", "-s", str(WORKFLOWS[workflow]), "--configfile", str(Path(config).resolve()),
           # finish what can be finished; an interrupted step reruns
           "--keep-going", "--rerun-incomplete", "--printshellcmds"]
    if profile:
        cmd += ["--profile", str(profile_path(profile))]
    else:
        cmd += ["--cores", str(cores or 1)]
    if work is not None:
        cmd += ["--config", f"work={Path(work).resolve()}"]
    if dry_run:
        cmd += ["--dry-run"]
    return [*cmd, *extra]


def check_config(workflow: str, config: Path, work: Optional[Path] = None) -> dict:
    """Refuse a configuration that cannot run, before any job starts, naming the key."""
    import yaml
    from nnunet_oar import organs as catalogue
    try:
        cfg = yaml.safe_load(Path(config).read_text()) or {}
    except yaml.YAMLError as e:
        raise InputError(f"{config}: not YAML ({e})") from None
    required = {"train": ("work", "dataset_id", "dataset_name", "organs", "localizer", "organ_networks"),
                "predict": ("input", "output", "models")}[workflow]
    missing = [k for k in required if k not in cfg and not (k == "work" and work is not None)]
    if missing:
        raise InputError(f"{config}: missing key(s) {', '.join(missing)}")
    base = Path(config).resolve().parent
    if workflow == "predict":
        if not (base / cfg["input"]).exists():
            raise InputError(f"{config}: input: {base / cfg['input']} does not exist")
        return cfg
    for organ in cfg["organs"]:
        if organ not in catalogue.ORGANS:
            raise InputError(f"{config}: organs: unknown organ {organ!r} (add it with --catalogue)")
    for key in ("trainer", "folds"):
        for part in ("localizer", "organ_networks"):
            if key not in cfg[part]:
                raise InputError(f"{config}: {part}.{key} is missing")
    n_splits = int(cfg["localizer"].get("n_splits", 5))
    for part in ("localizer", "organ_networks"):
        for fold in cfg[part]["folds"]:
            if not (fold == "all" or (isinstance(fold, int) and 0 <= fold < n_splits)):
                raise InputError(f"{config}: {part}.folds: fold {fold!r} is out of range (0..{n_splits - 1} or all)")
    if "all" in cfg["localizer"]["folds"]:
        raise InputError(f"{config}: localizer.folds: 'all' has no held-out cases for the out-of-fold boxes")
    if not cfg.get("convert"):
        from nnunet_oar.paths import find_dataset
        raw = Path(work or base / cfg["work"]).resolve() / "nnUNet_raw"
        found = find_dataset(raw, int(cfg["dataset_id"]))
        if found is None:
            raise InputError(f"{config}: dataset_id: no data set {cfg['dataset_id']} under {raw}, and no convert "
                             "command to make it")
        if found.name.split("_", 1)[1] != str(cfg["dataset_name"]):
            raise InputError(f"{config}: dataset_name: {cfg['dataset_name']!r}, but the data set is {found.name}")
    return cfg


def run_workflow(workflow: str, config: Path, **kwargs) -> int:
    """Run a workflow to its end (see :func:`snakemake_command` for the arguments); returns Snakemake's
    exit status. For ``predict``, the cases without a finished output set are named."""
    try:
        import snakemake  # noqa: F401
    except ImportError:
        raise InputError("the workflows need Snakemake: pip install 'nnunet_oar[workflow]'") from None
    cmd = snakemake_command(workflow, Path(config), **kwargs)
    check_config(workflow, Path(config), kwargs.get("work"))
    from nnunet_oar.paths import ensure_trainer_path
    ensure_trainer_path()           # nnUNetv2_train finds our trainers (nnUNet_extTrainer), as in every command
    # the rules' commands (nnunet_oar, nnUNetv2_*) from this Python's environment, also when not activated
    env = {**os.environ, "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])}
    rc = subprocess.call(cmd, cwd=Path(config).resolve().parent, env=env)
    if workflow == "predict" and not kwargs.get("dry_run"):
        missing = unfinished_cases(Path(config))
        if missing:
            print(f"{len(missing)} case(s) not finished (see the chunk logs under the output's .workflow/logs): "
                  + ", ".join(missing[:20]), file=sys.stderr)
            return rc or 2
    return rc


def prediction_inputs(source: Path) -> List[Path]:
    """The CT images of a predict configuration's ``input``: a folder of them, or a text file listing one
    path per line (what ``predict.smk`` chunks)."""
    from nnunet_oar.io import list_images
    source = Path(source)
    if source.is_file():
        return [Path(line.strip()) for line in source.read_text().splitlines() if line.strip()]
    return list_images(source)


def unfinished_cases(config: Path) -> List[str]:
    """Cases of a predict configuration without their ``{case}_manifest.json``."""
    import yaml
    from nnunet_oar.io import case_id
    cfg = yaml.safe_load(Path(config).read_text())
    base = Path(config).resolve().parent
    out = base / cfg["output"]
    return [case_id(f) for f in prediction_inputs(base / cfg["input"])
            if not case_file(out, case_id(f), MANIFEST_SUFFIX).is_file()]
