"""``nnunet_oar``: one command with subcommands, like git, grouped as the method runs: conversion,
localization, segmentation (crops, organ networks, merge), prediction (models folder, predict, clinical
files) and evaluation. Each group module registers its subcommands; each subcommand passes keyword
arguments to one library function. Errors in the user's input are printed as one line naming the file;
anything else is a bug and keeps its traceback."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import List, Optional

from nnunet_oar.cli import conversion, evaluation, localization, prediction, segmentation, workflow
from nnunet_oar.io import InputError

GROUPS = (conversion, localization, segmentation, prediction, evaluation, workflow)


def _trainer_path(a) -> None:
    from nnunet_oar.paths import trainer_path
    print(trainer_path())


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nnunet_oar", description=__doc__)
    p.add_argument("--catalogue", help="JSON of organs to add to the built-in catalogue (name, organ_set, "
                   "partner, tg263, colour, snomed, ...; see nnunet_oar/organs.py); also $nnunet_oar_catalogue")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in GROUPS:
        group.register(sub)
    sub.add_parser("trainer-path", help="print the folder to put in nnUNet_extTrainer").set_defaults(
        func=_trainer_path)
    return p


def _use_every_cpu() -> None:
    """torch's CPU threads: every CPU this process may run on, as nnU-Net's own entry points set them.
    Snakemake exports OMP_NUM_THREADS=1 to a job without ``threads:``, which would make prediction single
    threaded and its floating-point sums differ from a run outside the workflow; the affinity mask is what
    SLURM and taskset actually grant."""
    import torch
    torch.set_num_threads(len(os.sched_getaffinity(0)))


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.catalogue:
            from nnunet_oar import organs
            organs.load_catalogue(Path(args.catalogue))
            os.environ[organs.CATALOGUE_ENV] = str(Path(args.catalogue).resolve())   # for subprocesses
        if getattr(args, "device", None) == "cpu":
            _use_every_cpu()
        args.func(args)
    except (InputError, OSError) as e:         # anything else is a bug: its traceback shows
        print(f"nnunet_oar {args.command}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
