"""The benchmark's stages: each a list of real commands run in subprocesses, timed and measured on
their own (wall time, and the largest resident set of the stage's processes from ``wait4``). A finished
stage leaves ``stages/{name}.json``; a rerun skips it, so an interrupted benchmark resumes."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

from nnunet_oar.io import InputError, read_json, write_json


class StageFailed(InputError):
    """A stage's command failed; the message names its log and ends with the log's last lines."""


class StageRunner:
    """Runs the stages' commands, logs their output, and records wall time and peak memory."""

    def __init__(self, work: Path):
        self.work, self.log = work, work / "benchmark.log"
        (work / "stages").mkdir(parents=True, exist_ok=True)
        self.bin = Path(sys.executable).parent

    def done(self, stage: str) -> Optional[dict]:
        f = self.work / "stages" / f"{stage}.json"
        return read_json(f) if f.is_file() else None

    def stage(self, name: str, commands: List[List[str]], env: Optional[Dict[str, str]] = None,
              jobs: int = 1) -> dict:
        """Run ``commands`` in order unless the stage is already done; returns its record. Beside other
        stages (``jobs`` > 1) it logs to ``stages/{name}.log`` and records that it shared the machine."""
        rec = self.done(name)
        if rec is not None:
            print(f"[{name}] done before ({rec['wall_s']:.0f} s)", flush=True)
            return rec
        print(f"[{name}] ...", flush=True)
        log = self.log if jobs == 1 else self.work / "stages" / f"{name}.log"
        # an earlier attempt that never finished left this mark: the record will time this attempt only
        started = self.work / "stages" / f"{name}.started"
        resumed = started.is_file()
        started.write_text(time.strftime("%Y-%m-%dT%H:%M:%S\n"))
        t0, peak = time.perf_counter(), 0
        for cmd in commands:
            exe = str(self.bin / cmd[0]) if (self.bin / cmd[0]).exists() else cmd[0]
            with open(log, "a") as fh:
                fh.write(f"\n$ {' '.join(cmd)}\n")
                fh.flush()
                p = subprocess.Popen([exe, *cmd[1:]], stdout=fh, stderr=subprocess.STDOUT,
                                     env={**os.environ, **(env or {})})
                _, status, usage = os.wait4(p.pid, 0)
                p.returncode = os.waitstatus_to_exitcode(status)
            peak = max(peak, usage.ru_maxrss)         # kB on Linux
            if p.returncode:
                # the command's own message (a bad input, a missing file) is at the end of its log
                raise StageFailed(f"{log}: stage {name} failed: {' '.join(cmd)} exited with {p.returncode}:\n"
                                  + log.read_text()[-3000:])
        rec = {"wall_s": time.perf_counter() - t0, "peak_rss_gb": peak / 1024 ** 2,
               "commands": [" ".join(c) for c in commands]}
        notes = [f"ran beside other trainings, {jobs} at a time"] if jobs > 1 else []
        if resumed:
            notes.append("resumed after an interruption: wall_s and peak_rss_gb cover the last attempt only")
        if notes:
            rec["note"] = "; ".join(notes)
        write_json(rec, self.work / "stages" / f"{name}.json")
        started.unlink()
        print(f"[{name}] {rec['wall_s']:.0f} s, peak {rec['peak_rss_gb']:.1f} GB", flush=True)
        return rec

    def stages(self, stages: Dict[str, List[List[str]]], jobs: int = 1) -> Dict[str, dict]:
        """Run independent stages ``jobs`` at a time, started in the given order (longest first), with
        nnU-Net's data-augmentation workers shared out between them; returns their records by name."""
        if jobs <= 1:
            return {name: self.stage(name, commands) for name, commands in stages.items()}
        from concurrent.futures import ThreadPoolExecutor
        env = {"nnUNet_n_proc_DA": str(max(1, (os.cpu_count() or 1) // jobs))}
        with ThreadPoolExecutor(jobs) as pool:
            futures = {name: pool.submit(self.stage, name, commands, env, jobs) for name, commands in stages.items()}
            return {name: f.result() for name, f in futures.items()}


def epoch_seconds(fold_dir: Path) -> List[float]:
    """The training time of each epoch nnU-Net logged in a fold folder (``Epoch time: X s`` in its
    ``training_log_*.txt``, all attempts of a resumed training), in seconds."""
    return [float(m) for log in sorted(Path(fold_dir).glob("training_log_*.txt"))
            for m in re.findall(r"Epoch time: ([0-9.]+) s", log.read_text())]
