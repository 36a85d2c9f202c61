#!/usr/bin/env bash
# Issue 13's accurate preset on a lent GPU (device tool: one H100, about 15 minutes in all), in ONE call:
# benchmarks/inference_two_stage_vs_fullres.py --device cuda --accurate, i.e. both methods at the fast
# preset (one fold, no mirroring) and at the accurate one (5 folds, mirroring on 3 axes), each in its own
# process, on the clinical-size CT built from the TotalSegmentator example (random weights).
# The tree carries the CT (shared/data/totalsegmentator/, 2.3 MB, ignored by git) and .whl (see
# gpu_setup.sh; no OpenKBP data): `cp -r ../shared/data/totalsegmentator shared/data/`, then
#   bash benchmarks/gpu_inference.sh        (carry .whl)
# Results come back in $OUT: inference_benchmark_gpu.json/.md (rewritten after every method, so a run
# stopped by CAP_S keeps what it measured) and gpu.txt.
# Rehearsal on a CPU: WHEELS=0 DEVICE=cpu SPACING="4 4 6" OUT=/tmp/out bash benchmarks/gpu_inference.sh
set -euo pipefail
cd "$(dirname "$0")/.."
NO_DATA=1 source benchmarks/gpu_setup.sh "$@"
# SPACING: a coarser CT for a rehearsal; the 600 s call limit leaves CAP_S for the benchmark
timeout "${CAP_S:-540}" python3 benchmarks/inference_two_stage_vs_fullres.py --work "${WORK:-/tmp/bench_gpu}" \
    --device "${DEVICE:-cuda}" --accurate --spacing ${SPACING:-0.8 0.8 1.5} --out "$OUT/inference_benchmark_gpu.json" ||
    echo "stopped at the ${CAP_S:-540} s cap or failed: the JSON holds the methods that finished"
echo "total $(( $(date +%s) - t0 )) s"
