"""Workflows: the training recipe and batch prediction through Snakemake (nnunet_oar/workflows/)."""
from __future__ import annotations

import sys
from pathlib import Path


def _workflow(a) -> None:
    from nnunet_oar.workflows import WORKFLOWS, run_workflow
    if a.workflow == "path":
        print("\n".join(f"{k}: {v}" for k, v in WORKFLOWS.items()))
        return
    if a.config is None:
        from nnunet_oar.io import InputError
        raise InputError("give --config CONFIG.yaml (examples: nnunet_oar/workflows/examples/)")
    rc = run_workflow(a.workflow, Path(a.config), cores=a.cores, profile=a.profile, dry_run=a.dry_run,
                      work=Path(a.work) if a.work else None, extra=a.snakemake_args)
    if rc:
        sys.exit(rc)


def register(sub) -> None:
    s = sub.add_parser("workflow", help="run the training recipe or batch prediction with Snakemake "
                                        "(locally or on SLURM)")
    s.add_argument("workflow", choices=["train", "predict", "path"], help="path: print the Snakefiles' paths")
    s.add_argument("--config", help="the workflow's YAML (see nnunet_oar/workflows/examples/)")
    s.add_argument("--cores", type=int, help="cores to use locally (default 1)")
    s.add_argument("--profile", help="Snakemake profile: 'slurm' (shipped) or a folder of your own")
    s.add_argument("--work", help="work folder (train; overrides the config's)")
    s.add_argument("-n", "--dry-run", action="store_true", help="list the jobs, run nothing")
    s.add_argument("snakemake_args", nargs="*", help="after --: passed to snakemake as they are")
    s.set_defaults(func=_workflow)
