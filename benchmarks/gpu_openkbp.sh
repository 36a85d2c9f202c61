#!/usr/bin/env bash
# The OpenKBP benchmark on a lent GPU (device tool: one H100, about 15 minutes in all): the CPU run's
# settings with a longer schedule (budget "gpu": localizer 2000, baseline and organ networks 1000
# iterations each; see BUDGETS in nnunet_oar/benchmark.py), four trainings at a time on the one GPU.
#
# The device takes at most 64 MiB per call and the train tarball alone is 62 MiB, so the run is two
# calls on one warm machine, the second within its 30 s idle window:
#   1. `bash benchmarks/gpu_openkbp.sh stage`  tree: shared/openkbp/openkbp-train.tar.xz
#   2. `bash benchmarks/gpu_openkbp.sh run`    tree: shared/openkbp/openkbp-validation.tar.xz; carry .whl
# The device image has torch, numpy, scipy, scikit-image, pandas and matplotlib but no nnU-Net; prepare
# the rest here (python 3.12 wheels; SimpleITK's 53 MB wheel travels unpacked as a 28 MB tar.xz):
#   echo /.whl/ >> .git/info/exclude; echo /shared/ >> .git/info/exclude; mkdir -p .whl
#   pip wheel --no-deps -w .whl nnunetv2==2.8.1 acvl-utils==0.2.6 batchgenerators==0.25.5 \
#       batchgeneratorsv2==0.3.6 dynamic-network-architectures==0.4.4 nibabel yacs future \
#       surface-distance==0.1 pydicom==3.0.2 pydantic==2.14.4 annotated-types typing-inspection
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 -d .whl \
#       blosc2==4.14.1 ndindex numexpr pydantic-core==2.50.5 SimpleITK==2.5.7 connected-components-3d
#   mkdir sitk && unzip -q .whl/simpleitk-*.whl -d sitk && rm .whl/simpleitk-*.whl
#   tar -C sitk -cf - . | xz -9 > .whl/simpleitk.tar.xz
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
DATA=${DATA:-/tmp/kbp_data} SITE=${SITE:-/tmp/site} WORK=${WORK:-/tmp/kbp_gpu}
mkdir -p "$DATA"
if [ -d shared/openkbp ]; then cp -r shared/openkbp/. "$DATA/"; fi
if [ "${1:-run}" = stage ]; then ls -la "$DATA"; exit 0; fi
ls -d "$DATA"/openkbp-train* "$DATA"/openkbp-validation* || { echo "$DATA: no train or validation data"; exit 1; }

t0=$(date +%s)
# pip installs the wheels' commands (nnUNetv2_*) only into a bin/ that it creates itself
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" .whl/*.whl
tar -xJf .whl/simpleitk.tar.xz -C "$SITE"
# our command, as pip would write it (the guard matters: nnU-Net's workers re-import the main module)
printf '#!/usr/bin/env python3\nimport sys\nfrom nnunet_oar.cli import main\nif __name__ == "__main__":\n    sys.exit(main())\n' \
    > "$SITE/bin/nnunet_oar"
chmod +x "$SITE/bin/nnunet_oar"
export PYTHONPATH="$SITE:$PWD" PATH="$SITE/bin:$PATH" PYTHONUNBUFFERED=1
export nnUNet_def_n_proc=$(( $(nproc) > 4 ? $(nproc) * 3 / 4 : 2 )) nnUNet_compile=f
echo "installed in $(( $(date +%s) - t0 )) s"
(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || echo "no GPU") | tee "$OUT/gpu.txt"
nproc | tee -a "$OUT/gpu.txt"

timeout "${CAP_S:-530}" nnunet_oar benchmark --dataset openkbp --budget "${BUDGET:-gpu}" --device "${DEVICE:-cuda}" \
    --jobs "${JOBS:-4}" --work "$WORK" --openkbp "$DATA" || echo "benchmark stopped (time cap or error): see results.tgz"
cp "$WORK"/report.md "$WORK"/report.json "$WORK"/boxplot_*.png "$OUT/" 2>/dev/null || true
# the held-out predictions come back too: a run cut before scoring is scored here with
# `nnunet_oar evaluate` against the same conversion of the validation tarball
(cd "$WORK" && tar -czf "$OUT/results.tgz" benchmark.log settings.json stages metrics_* predictions \
    reference_boxes nnUNet_results/*/*/fold_all/progress.png 2>/dev/null) || true
echo "total $(( $(date +%s) - t0 )) s"
