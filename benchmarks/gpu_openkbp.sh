#!/usr/bin/env bash
# The OpenKBP benchmark on a lent GPU (device tool: one H100/H200, about 15 minutes in all).
# NOT YET RUN: no session so far has had a GPU. Numbers go to docs/results/openkbp.md with the card named.
#
# Prepare here (the GPU machine reaches no network; the tree that travels is limited to 64 MiB, so
# the wheels and the data must fit together):
#   echo /.whl/ >> .git/info/exclude && mkdir -p .whl
#   python3 -m pip download -d .whl --no-deps --only-binary=:all: --python-version 3.12 \
#       --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 \
#       nnunetv2==2.8.1 acvl-utils dynamic-network-architectures batchgenerators batchgeneratorsv2 \
#       SimpleITK nibabel surface-distance connected-components-3d fft-conv-pytorch blosc2 \
#       dicom2nifti graphviz yacs imagecodecs pydicom highdicom   # the image has torch, numpy, scipy, ...
#   mkdir -p shared/openkbp && cp ../shared/data/openkbp/openkbp-validation.tar.xz shared/openkbp/
#   mkdir -p shared/openkbp/openkbp-train && tar -xJf ../shared/data/openkbp/openkbp-train.tar.xz \
#       -C shared/openkbp/openkbp-train --strip-components=1 --wildcards '*/pt_1[0-9][0-9]/*'   # a subset that fits
#   echo /shared/ >> .git/info/exclude
# Run there (device tool, timeout_s 600):   bash benchmarks/gpu_openkbp.sh
# It installs from .whl, runs `nnunet_oar benchmark --dataset openkbp --budget gpu --device cuda`
# (localizer 2000, every other network 1000 iterations: BUDGETS in nnunet_oar/benchmark.py) under a
# time cap, and copies the report, figures and stage records to $OUT. A rerun on the warm machine
# resumes after the last finished stage.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q --no-index --find-links .whl nnunetv2==2.8.1 surface-distance
python3 -m pip install -q --no-index --no-deps -e .
export nnUNet_def_n_proc=12 nnUNet_n_proc_DA=12 nnUNet_compile=f
WORK=${WORK:-/tmp/kbp_gpu}
mkdir -p "$WORK"
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$OUT/gpu.txt"
timeout "${CAP_S:-540}" nnunet_oar benchmark --dataset openkbp --budget gpu --device cuda --work "$WORK" \
    --openkbp shared/openkbp || echo "benchmark stopped (time cap or error); rerun to resume"
# the device tool returns at most 8 files
cp "$WORK"/report.md "$WORK"/report.json "$WORK"/boxplot_*.png "$OUT/" 2>/dev/null || true
(cd "$WORK" && tar -czf "$OUT/stages_and_metrics.tgz" stages metrics_*.csv 2>/dev/null) || true
