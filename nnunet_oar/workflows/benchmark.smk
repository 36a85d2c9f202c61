# The benchmark's steps (`nnunet_oar benchmark`, the demo) as Snakemake jobs. The plan lives in Python
# (nnunet_oar.evaluation.benchmark writes it into the config: every step's commands, the steps it waits
# for, whether it needs a GPU); this file only runs it. A finished step leaves stages/{name}.done;
# Snakemake reruns an interrupted one (nnU-Net trainings continue with --c) and measures every step
# (stages/{name}.tsv: wall time, peak memory of its processes), which the report reads.
import shlex

W = config["work"]
STEPS = config["steps"]

wildcard_constraints:
    name="|".join(STEPS)


rule all:
    input: [f"{W}/stages/{name}.done" for name in STEPS]


rule step:
    input: lambda w: [f"{W}/stages/{d}.done" for d in STEPS[w.name]["after"]]
    output: touch(f"{W}/stages/{{name}}.done")
    benchmark: f"{W}/stages/{{name}}.tsv"
    log: f"{W}/stages/{{name}}.log"
    resources: gpu=lambda w: STEPS[w.name].get("gpu", 0)
    params: cmd=lambda w: " && ".join(shlex.join(c) for c in STEPS[w.name]["commands"])
    shell: "({params.cmd}) > {log} 2>&1"
