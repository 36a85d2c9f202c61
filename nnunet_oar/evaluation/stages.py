"""The benchmark's stages, run by Snakemake (``nnunet_oar/workflows/benchmark.smk``).

A :class:`Plan` names each stage, its commands (real ``nnunet_oar`` / ``nnUNetv2_*`` command lines) and the
stages it waits for; :meth:`Plan.run` hands it to Snakemake, which runs what is not done yet (an
interrupted benchmark resumes; an interrupted nnU-Net training continues with ``--c``), as many at a time
as ``cores`` and ``gpus`` allow, and measures each stage (``stages/{name}.tsv``: wall time and the peak
memory of its processes). :meth:`Plan.records` reads those measurements for the report.
"""
from __future__ import annotations

import csv
import fcntl
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import yaml

from nnunet_oar.io import InputError

SNAKEFILE = Path(__file__).resolve().parents[1] / "workflows" / "benchmark.smk"


class StageFailed(InputError):
    """A stage's command failed; the message names its log and ends with the log's last lines."""


class Plan:
    """The stages of one benchmark run, in the order the report lists them."""

    def __init__(self, work: Path):
        self.work = Path(work)
        self.steps: Dict[str, dict] = {}
        self.labels: Dict[str, str] = {}

    def add(self, name: str, commands: List[List[str]], after: Sequence[str] = (), gpu: bool = False,
            label: Optional[str] = None) -> str:
        """Add stage ``name`` (its ``commands`` run in order, after the stages ``after``); ``label`` puts it
        in the report's table of stages. Returns ``name``."""
        self.steps[name] = {"commands": [list(map(str, c)) for c in commands], "after": list(after), "gpu": int(gpu)}
        if label:
            self.labels[name] = label
        return name

    def run(self, cores: int = 1, gpus: int = 1, first: Sequence[str] = ()) -> None:
        """Run every stage not done yet through Snakemake, the stages ``first`` and those they wait for
        ahead of the others (so that a run stopped early has them); raise :class:`StageFailed` naming the
        log of a failed one, :class:`InputError` while another run holds the folder."""
        try:
            import snakemake  # noqa: F401
        except ImportError:
            raise InputError("the benchmark runs its stages on Snakemake: pip install 'nnunet_oar[workflow]'") from None
        stages = self.work / "stages"
        stages.mkdir(parents=True, exist_ok=True)
        config = stages / "plan.yaml"
        config.write_text(yaml.safe_dump({"work": str(self.work), "steps": self.steps}))
        # the commands from this Python's environment, also when it is not activated
        env = {**os.environ, "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])}
        cmd = [sys.executable, "-m", "snakemake", "-s", str(SNAKEFILE), "--configfile", str(config), "--cores",
               str(cores), "--resources", f"gpu={gpus}", "--rerun-incomplete", "--keep-going",
               # a handful of jobs needs no ILP solver (and a machine without one gets no warning)
               "--scheduler", "greedy"]
        if first:
            cmd += ["--prioritize", *(str(stages / f"{name}.done") for name in first)]
        # one run per folder, held by the kernel, so a killed run (a session's end) leaves no lock behind;
        # Snakemake's own lock would outlive the kill and stop the resume until `snakemake --unlock`
        with open(stages / "run.lock", "w") as lock, open(self.work / "benchmark.log", "a") as log:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise InputError(f"{self.work}: another benchmark is running in this folder") from None
            rc = subprocess.call([*cmd, "--nolock"], cwd=self.work, env=env, stdout=log, stderr=subprocess.STDOUT)
        if rc:
            failed = [n for n in self.steps if not (stages / f"{n}.done").is_file() and (stages / f"{n}.log").is_file()]
            logs = "\n".join(f"{stages / n}.log:\n" + (stages / f"{n}.log").read_text()[-3000:] for n in failed[:1])
            raise StageFailed(f"{self.work / 'benchmark.log'}: stage(s) {', '.join(failed) or '?'} failed\n{logs}")

    def done(self, name: str) -> bool:
        """Whether stage ``name`` has finished."""
        return (self.work / "stages" / f"{name}.done").is_file()

    def records(self, finished_only: bool = False) -> Dict[str, dict]:
        """``{label: {"wall_s", "peak_rss_gb", "commands"}}`` of the labelled stages (``finished_only``:
        of those that have finished), from Snakemake's measurements; a training run more than once
        (interrupted, then resumed) says so."""
        out = {}
        for name, label in self.labels.items():
            if finished_only and not self.done(name):
                continue
            with open(self.work / "stages" / f"{name}.tsv") as f:
                row = next(csv.DictReader(f, delimiter="\t"))
            rec = {"wall_s": float(row["s"]), "commands": [" ".join(c) for c in self.steps[name]["commands"]]}
            if row.get("max_rss", "NA") not in ("NA", "-", ""):
                rec["peak_rss_gb"] = float(row["max_rss"]) / 1024
            if _resumed(self.steps[name]["commands"]):
                rec["note"] = "resumed after an interruption: wall_s covers the last attempt only"
            out[label] = rec
        return out


def _resumed(commands: List[List[str]]) -> bool:
    """Whether an nnU-Net training among ``commands`` started more than once (one log per start)."""
    from nnunet_oar.paths import find_dataset, results_root
    for c in commands:
        if c[0] == "nnUNetv2_train":
            dataset, config, fold, trainer = c[1], c[2], c[3], c[c.index("-tr") + 1]
            folder = find_dataset(results_root(), int(dataset))
            if folder is not None and len(list((folder / f"{trainer}__nnUNetPlans__{config}" / f"fold_{fold}")
                                               .glob("training_log_*.txt"))) > 1:
                return True
    return False


def epoch_seconds(fold_dir: Path) -> List[float]:
    """The training time of each epoch nnU-Net logged in a fold folder (``Epoch time: X s`` in its
    ``training_log_*.txt``, all attempts of a resumed training), in seconds."""
    return [float(m) for log in sorted(Path(fold_dir).glob("training_log_*.txt"))
            for m in re.findall(r"Epoch time: ([0-9.]+) s", log.read_text())]
