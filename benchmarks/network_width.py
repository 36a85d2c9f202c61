"""Seconds per training iteration of each network a run planned, at nnU-Net's width and at half width
(``nnunet_oar.training.NarrowWidth``, as the demo's networks), side by side in one
run: the network each trainer builds through nnU-Net's ``build_network_architecture`` hook, with the
planned patch, batch size and output channels, one forward + backward + optimiser step on random data
(the data loader is left out: nnU-Net's augmentation runs in its own worker).

    python benchmarks/network_width.py --preprocessed DEMO_OUT/nnUNet_preprocessed \
        --out docs/results/network_width.md

``DEMO_OUT`` is the output folder of ``nnunet_oar demo`` (its own nnU-Net folders). Run it alone on the
machine: the iterations of both widths alternate, so a neighbour slows both alike, but not evenly.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from nnunet_oar.training import NarrowWidth

HALF = type("HalfWidth", (NarrowWidth, nnUNetTrainer), {"width_divisor": 2})


def _networks(preprocessed: Path):
    """(data set, configuration, patch, batch size, inputs, outputs, plans and configuration managers) of
    every 3-D configuration a training of the demo uses: 3d_loc, the capped baseline, the organs' 3d_fullres."""
    for plans_file in sorted(preprocessed.glob("Dataset*/nnUNetPlans.json")):
        plans = json.loads(plans_file.read_text())
        dataset_json = json.loads((plans_file.parent / "dataset.json").read_text())
        pm = PlansManager(plans)
        # the localizer too: background + one heat map per organ (channel 0 carries no loss)
        outputs = pm.get_label_manager(dataset_json).num_segmentation_heads
        names = [c for c in plans["configurations"] if c == "3d_loc" or c.startswith("3d_fullres_p")]
        names = names or ["3d_fullres"]
        for name in names:
            cm = pm.get_configuration(name)
            yield (plans_file.parent.name, name, cm.patch_size, cm.batch_size,
                   determine_num_input_channels(pm, cm, dataset_json), outputs, pm, cm)


def seconds_per_iteration(trainer, pm, cm, inputs: int, outputs: int, patch, batch: int,
                          repeats: int) -> float:
    """Median seconds of one forward + backward + SGD step of ``trainer``'s network (deep supervision on,
    as in training) on a random batch of ``batch`` x ``inputs`` x ``patch`` voxels (z, y, x)."""
    net = trainer.build_network_architecture(pm, cm, inputs, outputs, enable_deep_supervision=True)
    opt = torch.optim.SGD(net.parameters(), lr=1e-3)
    x = torch.randn(batch, inputs, *patch)
    times = []
    for _ in range(repeats + 1):                             # the first one warms the allocator up
        t = time.perf_counter()
        loss = sum(o.float().mean() for o in net(x))
        loss.backward()
        opt.step()
        opt.zero_grad()
        times.append(time.perf_counter() - t)
    return float(sorted(times[1:])[len(times[1:]) // 2])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preprocessed", type=Path, required=True, help="an nnUNet_preprocessed folder")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", type=Path, help="markdown table to write (and a .json beside it)")
    a = ap.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)             # as nnUNetv2_train does on a CPU
    rows = []
    for ds, name, patch, batch, cin, cout, pm, cm in _networks(a.preprocessed):
        w = seconds_per_iteration(nnUNetTrainer, pm, cm, cin, cout, patch, batch, a.repeats)
        n = seconds_per_iteration(HALF, pm, cm, cin, cout, patch, batch, a.repeats)
        rows.append({"dataset": ds, "configuration": name, "patch_zyx": list(patch), "batch": batch,
                     "nnunet_width_s": round(w, 3), "half_width_s": round(n, 3), "ratio": round(n / w, 3)})
        print(f"{ds} {name} patch {patch} batch {batch}: {w:.3f} s -> {n:.3f} s per iteration ({n / w:.2f}x)",
              flush=True)
    machine = f"{platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}"
    if a.out:
        lines = ["# Training iteration at nnU-Net's width and at half width", "",
                 f"`python benchmarks/network_width.py --preprocessed {a.preprocessed} --out {a.out}`; "
                 f"machine: {machine}; median of {a.repeats} forward + backward + SGD steps on random data.", "",
                 "| data set | configuration | patch (z, y, x), voxels | batch | nnU-Net width, s | half width, s | ratio |",
                 "|---|---|---|---|---|---|---|"]
        lines += [f"| {r['dataset']} | {r['configuration']} | {r['patch_zyx']} | {r['batch']} | "
                  f"{r['nnunet_width_s']:.3f} | {r['half_width_s']:.3f} | {r['ratio']:.2f} |" for r in rows]
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text("\n".join(lines) + "\n")
        a.out.with_suffix(".json").write_text(json.dumps({"machine": machine, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
