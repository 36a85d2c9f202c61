"""Localizer costs on CPU: heat-map target generation as a share of one training step, and the step with
and without deep supervision, for the demo's patch and for a clinical-size 3 mm patch.

    python benchmarks/localization_benchmark.py [--out docs/results/localization_benchmark.json]

The network is nnU-Net's PlainConvUNet with the topology nnU-Net's planner derives for the patch
(get_pool_and_conv_props, features 32..320), built through nnU-Net's get_network_from_plans.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch
from nnunetv2.experiment_planning.experiment_planners.network_topology import get_pool_and_conv_props
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

from nnunet_oar.localization.heatmaps import HeatmapLoss, heatmap_targets

REPO = Path(__file__).resolve().parents[1]


def network(patch, spacing, n_out, deep_supervision):
    _, pool, conv, patch, _ = get_pool_and_conv_props(spacing, patch, 4, 999999)
    n = len(pool)
    kwargs = {"n_stages": n, "features_per_stage": [min(320, 32 * 2 ** i) for i in range(n)],
              "conv_op": "torch.nn.modules.conv.Conv3d", "kernel_sizes": conv, "strides": pool,
              "n_conv_per_stage": [2] * n, "n_conv_per_stage_decoder": [2] * (n - 1), "conv_bias": True,
              "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d", "norm_op_kwargs": {"eps": 1e-5, "affine": True},
              "dropout_op": None, "dropout_op_kwargs": None, "nonlin": "torch.nn.LeakyReLU",
              "nonlin_kwargs": {"inplace": True}}
    net = get_network_from_plans("dynamic_network_architectures.architectures.unet.PlainConvUNet", kwargs,
                                 ["conv_op", "norm_op", "dropout_op", "nonlin"], 1, n_out,
                                 deep_supervision=deep_supervision)
    return net, patch


def measure(patch, spacing, n_organs, repeats=3):
    seg = torch.zeros((1, 1, *patch), dtype=torch.int16)
    rng = np.random.default_rng(0)
    for k in range(1, n_organs + 1):           # one box-shaped organ per label
        c = [int(rng.integers(4, s - 8)) for s in patch]
        seg[0, 0, c[0]:c[0] + 6, c[1]:c[1] + 6, c[2]:c[2] + 6] = k
    t = time.perf_counter()
    for _ in range(repeats):
        target = heatmap_targets(seg, n_organs, spacing)
    t_target = (time.perf_counter() - t) / repeats
    out = {"patch": list(patch), "spacing_mm": list(spacing), "organs": n_organs, "target_s": t_target}
    for ds in (False, True):
        net, p = network(patch, spacing, 1 + n_organs, ds)
        opt = torch.optim.AdamW(net.parameters(), 1e-3)
        loss_fn = HeatmapLoss()
        x = torch.randn(1, 1, *p)
        annotated = torch.ones(1, n_organs, dtype=torch.bool)
        times = []
        for i in range(repeats + 1):
            t = time.perf_counter()
            y = net(x)
            y = y[0] if ds else y                    # only the full-resolution output carries a target here
            loss = loss_fn(y, [target, annotated])
            opt.zero_grad()
            loss.backward()
            opt.step()
            if i:                                    # the first step warms up
                times.append(time.perf_counter() - t)
        out["step_s_deep_supervision" if ds else "step_s"] = float(np.mean(times))
    out["target_share_of_step"] = t_target / (out["step_s"] + t_target)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(REPO / "docs" / "results" / "localization_benchmark.json"))
    a = ap.parse_args()
    torch.set_num_threads(2)
    results = {"machine": f"{os.cpu_count()} CPU cores, torch {torch.__version__}, 2 threads",
               "runs": [measure((48, 28, 40), (4.0, 4.0, 4.0), 4),
                        measure((80, 96, 96), (3.0, 3.0, 3.0), 20)]}
    for r in results["runs"]:
        print(json.dumps(r))
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
