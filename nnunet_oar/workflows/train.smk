# The paper's recipe as a Snakemake workflow: every rule runs the command a user would type (README,
# "Training and prediction, step by step"); the configuration is one YAML (examples/*.yaml).
# Run it with `nnunet_oar workflow train --config CONFIG.yaml [--cores N | --profile slurm] [-n]`.
import os
from nnunet_oar.segmentation.crops import organ_dataset_ids

W = os.path.abspath(config["work"])
ID = int(config["dataset_id"])
LOC, ORG = config["localizer"], config["organ_networks"]
ORGANS = list(config["organs"])
IDS = organ_dataset_ids(int(ORG["first_id"]), ORGANS)      # organ k in catalogue order: first_id + k
DEVICE = config.get("device", "cpu")
NP = int(config.get("num_processes", 2))
DONE = f"{W}/workflow"                                     # one record per finished step
NAME = config["dataset_name"]                              # Dataset{ID}_{NAME}, as the convert step names it
RESULTS = f"{W}/nnUNet_results"
# a training's output is its final checkpoint: deleting one re-runs that training and what depends on it
LOC_CKPT = (f"{RESULTS}/Dataset{ID:03d}_{NAME}/{LOC['trainer']}__nnUNetPlans__{LOC['configuration']}"
            "/fold_{fold}/checkpoint_final.pth")
ORG_CKPT = (f"{RESULTS}/Dataset{{dataset}}_{NAME}_{{organ}}/{ORG['trainer']}__nnUNetPlans__"
            f"{ORG.get('configuration', '3d_fullres')}/fold_{{fold}}/checkpoint_final.pth")
GPU = 1 if DEVICE == "cuda" else 0
# nnU-Net's three folders under the work folder, for every command
ENV = (f"export nnUNet_raw={W}/nnUNet_raw nnUNet_preprocessed={W}/nnUNet_preprocessed "
       f"nnUNet_results={W}/nnUNet_results; ")
for k, v in config.get("env", {}).items():
    ENV += f"export {k}={v}; "


# the checkpoints are targets too: Snakemake does not rebuild a deleted intermediate file whose consumers
# are up to date, so a deleted checkpoint re-runs its training (and then the export) only when asked for
ORG_CKPTS = [ORG_CKPT.format(dataset=f"{IDS[o]:03d}", organ=o, fold=f) for o in ORGANS for f in ORG["folds"]]


rule all:
    input: f"{W}/models/models.json", expand(LOC_CKPT, fold=LOC["folds"]), ORG_CKPTS


rule convert:
    output: touch(f"{DONE}/convert.done")
    params: cmd=config.get("convert", "true").format(work=W)
    log: f"{DONE}/logs/convert.log"
    shell: ENV + "({params.cmd}) > {log} 2>&1"


rule plan_localizer:
    input: rules.convert.output
    output: touch(f"{DONE}/plan_localizer.done")
    log: f"{DONE}/logs/plan_localizer.log"
    shell:
        ENV + f"(nnunet_oar plan-localizer -d {ID} -c {LOC['configuration']} --spacing {LOC['spacing']} "
        f"--sigma2 {LOC.get('sigma2', 150)} --fg-weight {LOC.get('fg_weight', 20)} -np {NP} && "
        f"nnUNetv2_preprocess -d {ID} -c {LOC['configuration']} -np {NP} && "
        f"nnunet_oar split -d {ID} -k {LOC.get('n_splits', 5)}) > {{log}} 2>&1"


rule train_localizer:
    input: rules.plan_localizer.output
    output: LOC_CKPT
    resources: gpu=GPU
    log: f"{DONE}/logs/localizer_fold_{{fold}}.log"
    # --c continues an interrupted training (and starts one where there is no checkpoint yet)
    shell:
        ENV + f"nnUNetv2_train {ID} {LOC['configuration']} {{wildcards.fold}} -tr {LOC['trainer']} "
        f"-device {DEVICE} --c > {{log}} 2>&1"


rule localize_cross_validation:
    input: expand(LOC_CKPT, fold=LOC["folds"])
    output: f"{W}/boxes_cv/margins.json"
    resources: gpu=GPU
    log: f"{DONE}/logs/localize_cross_validation.log"
    shell:
        ENV + f"nnunet_oar localize --cross-validation -d {ID} -tr {LOC['trainer']} -c {LOC['configuration']} "
        f"--folds {' '.join(map(str, LOC['folds']))} -o {W}/boxes_cv --device {DEVICE} > {{log}} 2>&1"


rule crop_rois:
    input: rules.localize_cross_validation.output
    output: touch(f"{DONE}/crop_rois.done")
    log: f"{DONE}/logs/crop_rois.log"
    shell:
        ENV + f"nnunet_oar crop-rois -d {ID} --boxes {W}/boxes_cv --organs {' '.join(ORGANS)} "
        f"--first-id {ORG['first_id']} > {{log}} 2>&1"


rule plan_organs:
    input: rules.crop_rois.output
    output: touch(f"{DONE}/plan_organs.done")
    log: f"{DONE}/logs/plan_organs.log"
    shell:
        ENV + f"nnunet_oar plan-organs --first-id {ORG['first_id']} --spacing {ORG.get('spacing', 1)} "
        f"-c {ORG.get('configuration', '3d_fullres')} -np {NP} "
        + (f"--planner {ORG['planner']} " if "planner" in ORG else "") + "> {log} 2>&1"


rule train_organ:
    input: rules.plan_organs.output
    output: ORG_CKPT
    wildcard_constraints: dataset=r"\d+", fold=r"\d+|all"
    resources: gpu=GPU
    log: f"{DONE}/logs/organ_{{dataset}}_{{organ}}_fold_{{fold}}.log"
    shell:
        ENV + "nnUNetv2_train {wildcards.dataset} " + f"{ORG.get('configuration', '3d_fullres')} " +
        "{wildcards.fold} " + f"-tr {ORG['trainer']} -device {DEVICE} --c > {{log}} 2>&1"


rule export_models:
    input:
        ORG_CKPTS,
        margins=rules.localize_cross_validation.output
    output: f"{W}/models/models.json"
    params: zip=f"--zip {W}/models.zip" if config.get("zip") else ""
    log: f"{DONE}/logs/export_models.log"
    shell:
        ENV + f"nnunet_oar export-models -o {W}/models --localizer-id {ID} --organ-ids {' '.join(str(IDS[o]) for o in ORGANS)} "
        f"--localizer-trainer {LOC['trainer']} --organ-trainer {ORG['trainer']} "
        f"-c {ORG.get('configuration', '3d_fullres')} --margins {{input.margins}} {{params.zip}} > {{log}} 2>&1"
