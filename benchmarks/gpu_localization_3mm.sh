#!/usr/bin/env bash
# The paper's 3 mm grid on a lent GPU (device tool: one H100, about 15 minutes in all), with the recommended
# trainer and loss (nnUNetTrainerOARHeatmap_cpu: 1500 iterations, foreground weight 20, sigma^2 = 150 mm^2),
# so that it compares with the 8 mm run of the same trainer on the same GPU (localization_openkbp_gpu/) at
# equal iterations: only the grid differs. The plain-L2 3 mm run is in that folder already (nothing detected
# after 800 iterations).
# Three calls on one warm machine, each within the 30 s idle window of the last (benchmarks/gpu_setup.sh):
#   1. `bash benchmarks/gpu_localization_3mm.sh stage`   tree: shared/openkbp/openkbp-train.tar.xz
#   2. `bash benchmarks/gpu_localization_3mm.sh train`   tree: shared/openkbp/openkbp-validation.tar.xz; carry .whl
#   3. `bash benchmarks/gpu_localization_3mm.sh score`   (resumes from the step records of 2)
# Results come back in $OUT: the Markdown report and its JSON, gpu.txt, results.tgz (log, step records, boxes,
# training log and progress plots).
# Rehearsal on a CPU: WHEELS=0 DEVICE=cpu TRAINER=nnUNetTrainerOARHeatmap_tiny SPACING=12 DATA=<subset> \
#   OUT=/tmp/out bash benchmarks/gpu_localization_3mm.sh train (then score)
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${WORK:-/tmp/kbp_loc_gpu}
source benchmarks/gpu_setup.sh "$@"
TRAINER=${TRAINER:-nnUNetTrainerOARHeatmap_cpu}
bench() {
    python3 benchmarks/localization_openkbp.py --openkbp "$DATA" --work "$WORK" --device "${DEVICE:-cuda}" \
        -c 3d_loc_3mm_fg20 --spacing "${SPACING:-3}" --trainer "$TRAINER" --readouts weighted \
        --out "$WORK/reports/grid_3mm.md" "$@"
}
mkdir -p "$WORK/reports"
if [ "${1:-}" = train ]; then
    nnUNet_n_proc_DA=${DA:-12} bench --max-train-s "${CAP_S:-270}" --stop-after-training
else
    bench
    cp "$WORK"/reports/grid_3mm.* "$OUT/"
fi
(cd "$WORK" && tar -czf "$OUT/results.tgz" log.txt steps */boxes_weighted */margins.json \
    nnUNet_results/*/*/fold_0/training_log_*.txt nnUNet_results/*/*/fold_0/*.png 2>/dev/null) || true
echo "total $(( $(date +%s) - t0 )) s"
