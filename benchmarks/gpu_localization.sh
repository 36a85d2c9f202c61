#!/usr/bin/env bash
# The localizer on OpenKBP on a lent GPU (device tool: one H100, about 15 minutes in all), in one run call:
# - the paper's setting: 3 mm grid, sigma^2 = 150 mm^2, plain L2 (configuration 3d_loc_3mm, trainer
#   nnUNetTrainerOARHeatmap_gpu), time-capped at CAP3_S seconds of training;
# - the ablation of the optimiser and start at the CPU setting (8 mm, foreground weight 20, 1500
#   iterations): today's trainer and one variant per choice put back to nnU-Net's, all at once on the GPU.
# Every model goes through benchmarks/localization_openkbp.py (fold 0 trained, its validation patients
# calibrate the margins, the held-out tarball is scored beside the constant guess).
# Staging, wheels and the two device calls: benchmarks/gpu_setup.sh. Results come back in $OUT: one
# Markdown report per model, gpu.txt, and results.tgz (reports, JSON, training logs, progress plots).
#
# Rehearsal on a CPU (see gpu_setup.sh): DEVICE=cpu TRAINERS=nnUNetTrainerOARHeatmap_tiny
#   PAPER=nnUNetTrainerOARHeatmap_tiny DATA=<subset> OUT=/tmp/out bash benchmarks/gpu_localization.sh run
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${WORK:-/tmp/kbp_loc_gpu}
source benchmarks/gpu_setup.sh "$@"
DEVICE=${DEVICE:-cuda}
TRAINERS=${TRAINERS:-"nnUNetTrainerOARHeatmap_cpu nnUNetTrainerOARHeatmap_cpu_amsgrad nnUNetTrainerOARHeatmap_cpu_defaultinit nnUNetTrainerOARHeatmap_cpu_wd nnUNetTrainerOARHeatmap_cpu_nnunet"}
PAPER=${PAPER:-nnUNetTrainerOARHeatmap_gpu}
bench() { python3 benchmarks/localization_openkbp.py --openkbp "$DATA" --work "$WORK" --device "$DEVICE" "$@"; }
PAPER_ARGS=(-c 3d_loc_3mm --spacing "${PAPER_SPACING:-3}" --fg-weight 0)   # PAPER_SPACING: rehearsals only

bench --stop-after-preprocessing
bench "${PAPER_ARGS[@]}" --stop-after-preprocessing
# nnU-Net's own 5-fold split, written once before the trainings start side by side
python3 -c "
import os
from batchgenerators.utilities.file_and_folder_operations import save_json
from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
from nnunetv2.utilities.crossval_split import generate_crossval_split
pre = os.path.join('$WORK', 'nnUNet_preprocessed', 'Dataset100_OpenKBP')
folder = os.path.join(pre, 'nnUNetPlans_3d_loc')
keys = sorted(infer_dataset_class(folder).get_identifiers(folder))
save_json(generate_crossval_split(keys, seed=12345, n_splits=5), os.path.join(pre, 'splits_final.json'))"
echo "data ready after $(( $(date +%s) - t0 )) s"

mkdir -p "$WORK/reports"
pids=()
nnUNet_n_proc_DA=${DA3:-6} bench "${PAPER_ARGS[@]}" --trainer "$PAPER" --max-train-s "${CAP3_S:-240}" \
    --out "$WORK/reports/paper_3mm.md" > "$WORK/reports/paper_3mm.out" 2>&1 & pids+=($!)
for tr in $TRAINERS; do
    nnUNet_n_proc_DA=${DA8:-1} OMP_NUM_THREADS=1 bench --trainer "$tr" --max-train-s "${CAP8_S:-240}" \
        --out "$WORK/reports/$tr.md" > "$WORK/reports/$tr.out" 2>&1 & pids+=($!)
done
for p in "${pids[@]}"; do wait "$p" || echo "a run failed: see its .out in results.tgz"; done
echo "all done after $(( $(date +%s) - t0 )) s"
cp "$WORK"/reports/*.md "$OUT/" 2>/dev/null || true
(cd "$WORK" && tar -czf "$OUT/results.tgz" reports log.txt steps \
    nnUNet_results/*/*/fold_0/training_log_*.txt nnUNet_results/*/*/fold_0/progress*.png \
    nnUNet_results/*/*/fold_0/box_stats.json 2>/dev/null) || true
echo "total $(( $(date +%s) - t0 )) s"
