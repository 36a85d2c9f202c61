#!/usr/bin/env bash
# The OpenKBP benchmark on a lent GPU (device tool: one H100, about 15 minutes in all): the CPU run's
# settings with a longer schedule (budget "gpu": localizer 2000, baseline and organ networks 1000
# iterations each; see BUDGETS in nnunet_oar/evaluation/benchmark.py), four trainings at a time on the one GPU.
#
# Staging, wheels and the two device calls: benchmarks/gpu_setup.sh.
# Results come back in $OUT: report.md/.json, the box plots, gpu.txt and results.tgz (stage records and
# logs, metrics, predictions). Copy them into docs/results/openkbp_gpu/.
#
# Seen on an H100 (2026-11-27, docs/results/openkbp.md): the device's CPUs make the fixed stages slow
# (conversion 35 s, plans and preprocessing 385 s, predictions about 200 s) while training is fast
# (100 iterations in 2-5 s, four at a time). Stage + run + one resumed run (CAP_S=255) used the whole
# 15 minutes and stopped before the reference-box predictions.
set -euo pipefail
cd "$(dirname "$0")/.."
# BUDGET=tiny DEVICE=cpu JOBS=2 DATA=<folder with openkbp-{train,validation}/pt_*> rehearses it on a CPU
WORK=${WORK:-/tmp/kbp_gpu}
source benchmarks/gpu_setup.sh "$@"

timeout "${CAP_S:-530}" nnunet_oar benchmark --dataset openkbp --budget "${BUDGET:-gpu}" --device "${DEVICE:-cuda}" \
    --jobs "${JOBS:-4}" --work "$WORK" --openkbp "$DATA" || echo "benchmark stopped (time cap or error): see results.tgz"
cp "$WORK"/report.md "$WORK"/report.json "$WORK"/boxplot_*.png "$OUT/" 2>/dev/null || true
# the held-out predictions come back too: a run cut before scoring is scored here with
# `nnunet_oar evaluate` against the same conversion of the validation tarball
(cd "$WORK" && tar -czf "$OUT/results.tgz" benchmark.log settings.json stages metrics_* predictions \
    reference_boxes nnUNet_results/*/*/fold_all/progress.png 2>/dev/null) || true
echo "total $(( $(date +%s) - t0 )) s"
