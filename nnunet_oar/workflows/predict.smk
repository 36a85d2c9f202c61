# Batch prediction: a folder (or a list file) of CT images -> one `nnunet_oar predict` per chunk of cases,
# outputs exactly as predict writes them. A case is done when its {case}_manifest.json exists (predict
# writes it last); a chunk is done when all its cases are, so a rerun predicts only unfinished chunks, and
# the wrapper names the cases that failed. Run it with `nnunet_oar workflow predict --config CONFIG.yaml [--cores N | --profile slurm] [-n]`.
import os
from pathlib import Path
from nnunet_oar.io import case_id
from nnunet_oar.workflows import prediction_inputs

OUT = os.path.abspath(config["output"])
CASES = {case_id(f): f.resolve() for f in prediction_inputs(Path(config["input"]))}
K = int(config.get("chunk_size", 10))
NAMES = list(CASES)
CHUNKS = [NAMES[i:i + K] for i in range(0, len(NAMES), K)]
GPU = 1 if config.get("device", "cpu") == "cuda" else 0
ARGS = f"-m {os.path.abspath(config['models'])} --device {config.get('device', 'cpu')} " + \
       " ".join(str(a) for a in config.get("predict_args", []))


rule all:
    input: expand(f"{OUT}/.workflow/chunk_{{k}}.done", k=range(len(CHUNKS)))


rule predict_chunk:
    # predict reads a folder: the chunk's images are linked into one. The record is written only when
    # every case of the chunk has its manifest, so a rerun retries a chunk with a failed case.
    output: touch(f"{OUT}/.workflow/chunk_{{k}}.done")
    params:
        folder=f"{OUT}/.workflow/chunk_{{k}}",
        links=lambda w: " ".join(f"'{CASES[c]}'" for c in CHUNKS[int(w.k)]),
        manifests=lambda w: " ".join(f"'{OUT}/{c}_manifest.json'" for c in CHUNKS[int(w.k)])
    resources: gpu=GPU
    log: f"{OUT}/.workflow/logs/chunk_{{k}}.log"
    shell:
        "rm -rf {params.folder} && mkdir -p {params.folder} && ln -s {params.links} {params.folder}/ && "
        f"(nnunet_oar predict -i {{params.folder}} -o {OUT} {ARGS} > {{log}} 2>&1; "
        "for m in {params.manifests}; do test -f $m || exit 2; done)"
