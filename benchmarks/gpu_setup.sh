# Sourced by the GPU scripts (benchmarks/gpu_*.sh): stages the OpenKBP data and installs what the device
# image lacks. The device takes at most 64 MiB per call and the train tarball alone is 62 MiB, so a run is
# several calls on one warm machine, each within the 30 s idle window of the last (the tree itself is 4.5 MiB):
#   1. `bash benchmarks/gpu_X.sh stage`  tree: shared/openkbp/openkbp-train.tar.xz.part1of2 (half of it)
#                                        + shared/wheels/ (Snakemake and its dependencies, 10 MB)
#   2. `bash benchmarks/gpu_X.sh stage`  tree: shared/openkbp/openkbp-train.tar.xz.part2of2 + openkbp-validation.tar.xz
#   3. `bash benchmarks/gpu_X.sh run`    tree: nothing under shared/; carry .whl
#   (split -n 2 --numeric-suffixes=1 -a 1 --additional-suffix=of2 openkbp-train.tar.xz openkbp-train.tar.xz.part)
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
# The benchmark runs its stages on Snakemake, whose wheels travel in the first staging call: every
# distribution of Snakemake's dependency closure in the project's venv (53 names; pydantic and its
# helpers are in .whl already) as python 3.12 wheels into shared/wheels (the same pip download
# line with --platform manylinux2014_x86_64 manylinux_2_5_x86_64 manylinux1_x86_64 added;
# connection-pool==0.0.3 has no wheel: `pip wheel --no-deps`). pulp's wheel carries 35 MB of CBC solver
# binaries: unzip it, delete pulp/solverdir/cbc (and its RECORD lines), zip it again. The benchmark asks
# Snakemake for its greedy scheduler, which needs no solver.
# A rehearsal on a CPU: DATA=<folder with openkbp-{train,validation}.tar.xz or such folders>, OUT=<folder>,
# and either SITE=<empty folder> with a Python 3.12 first on the PATH (the wheels are the device's), or
# WHEELS=0 with the project's venv first on the PATH; plus the script's own CPU settings (each says which).
DATA=${DATA:-/tmp/kbp_data} SITE=${SITE:-/tmp/site}
OUT=${OUT:-/tmp/gpu_out}
mkdir -p "$DATA" "$OUT"
STAGED_WHEELS=${STAGED_WHEELS:-/tmp/staged_wheels}
if [ -d shared/openkbp ]; then cp -r shared/openkbp/. "$DATA/"; fi
if [ -d shared/wheels ]; then mkdir -p "$STAGED_WHEELS" && cp shared/wheels/*.whl "$STAGED_WHEELS/"; fi
# a tarball too large for one call travels in pieces over several stage calls (NAME.partKofN, from
# `split -n N --numeric-suffixes=1 -a 1 --additional-suffix=ofN NAME NAME.part`): joined once all are there
for first in "$DATA"/*.part1of*; do
    [ -e "$first" ] || continue
    name=${first%.part1of*} n=${first##*of}
    if [ "$(ls "$name".part*of"$n" | wc -l)" = "$n" ]; then
        for k in $(seq 1 "$n"); do cat "$name.part${k}of$n"; done > "$name.tmp" && mv "$name.tmp" "$name"
        rm "$name".part*of"$n"
    fi
done
if [ "${1:-run}" = stage ]; then ls -la "$DATA"; exit 0; fi
# NO_DATA=1: a script that needs no OpenKBP data (gpu_inference.sh)
[ "${NO_DATA:-0}" = 1 ] || ls -d "$DATA"/openkbp-train* "$DATA"/openkbp-validation* ||
    { echo "$DATA: no train or validation data"; exit 1; }

t0=$(date +%s)
if [ "${WHEELS:-1}" = 1 ]; then     # WHEELS=0: a rehearsal in a Python that has everything already
    # pip installs the wheels' commands (nnUNetv2_*) only into a bin/ that it creates itself
    if [ ! -d "$SITE/nnunetv2" ]; then   # a later call on the same warm machine finds them installed
        # Snakemake's wheels, where staged (the benchmark needs them, the localization scripts do not)
        staged=("$STAGED_WHEELS"/*.whl); [ -e "${staged[0]}" ] || { staged=(); echo "no Snakemake wheels staged"; }
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" .whl/*.whl \
            "${staged[@]}"
        tar -xJf .whl/simpleitk.tar.xz -C "$SITE"
    fi
    # our command, as pip would write it (the guard matters: nnU-Net's workers re-import the main module)
    printf '#!/usr/bin/env python3\nimport sys\nfrom nnunet_oar.cli import main\nif __name__ == "__main__":\n    sys.exit(main())\n' \
        > "$SITE/bin/nnunet_oar"
    chmod +x "$SITE/bin/nnunet_oar"
    export PYTHONPATH="$SITE:$PWD" PATH="$SITE/bin:$PATH"
fi
export PYTHONUNBUFFERED=1 nnUNet_compile=f nnUNet_def_n_proc=$(( $(nproc) > 4 ? $(nproc) * 3 / 4 : 2 ))
echo "installed in $(( $(date +%s) - t0 )) s"
(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || echo "no GPU") | tee "$OUT/gpu.txt"
nproc | tee -a "$OUT/gpu.txt"
