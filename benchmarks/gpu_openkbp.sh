#!/usr/bin/env bash
# The OpenKBP benchmark on a lent GPU (device tool: one H100/H200, about 15 minutes in all).
#
# Prepare here (this machine reaches the package registries; the GPU machine reaches nothing):
#   echo /.whl/ >> .git/info/exclude; mkdir -p .whl
#   python3 -m pip download -d .whl --only-binary=:all: --python-version 3.12 \
#       --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 \
#       nnunetv2==2.8.1 surface-distance   # then remove torch*/nvidia* wheels: the machine has its torch
#   mkdir -p shared && cp ../shared/data/openkbp/openkbp-*.tar.xz shared/    # travels with the tree (75 MB: check the limit)
# Run there (device tool, timeout_s 600):
#   bash benchmarks/gpu_openkbp.sh
# It installs from .whl without network, runs `nnunet_oar benchmark --dataset openkbp --budget gpu
# --device cuda` (localizer 2000, every other network 1000 iterations; see BUDGETS in
# nnunet_oar/benchmark.py) under a time cap, and copies the report, figures and stage records to $OUT.
# A rerun on a warm machine resumes from the last finished stage.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q --no-index --find-links .whl nnunetv2==2.8.1 surface-distance
python3 -m pip install -q --no-index --no-deps -e .
export nnUNet_def_n_proc=12 nnUNet_n_proc_DA=12 nnUNet_compile=f
WORK=${WORK:-/tmp/kbp_gpu}
mkdir -p "$WORK/data"
[ -e ../shared/data/openkbp ] || { mkdir -p ../shared/data/openkbp && cp shared/openkbp-*.tar.xz ../shared/data/openkbp/; }
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$WORK/gpu.txt"
timeout "${CAP_S:-560}" nnunet_oar benchmark --dataset openkbp --budget gpu --device cuda --work "$WORK" || true
mkdir -p "$OUT/stages"
cp "$WORK"/report.md "$WORK"/report.json "$WORK"/boxplot_*.png "$WORK"/metrics_*.csv "$WORK/gpu.txt" "$OUT/" 2>/dev/null || true
cp "$WORK"/stages/*.json "$OUT/stages/" 2>/dev/null || true
