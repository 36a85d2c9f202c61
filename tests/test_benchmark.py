"""The benchmark's phantom mode end to end on a tiny budget (real nnUNetv2_* commands), and the
ignore-label rule of the single-network baseline."""
import json
import subprocess

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_oar.conversion.ignore import ignore_unannotated
from tests.nnunet_helpers import nnunet_environment, run


def test_ignore_label_covers_in_body_background_only():
    ct = np.full((4, 5, 6), -1000.0)
    ct[:, 1:4, 1:5] = 30.0                            # body
    lab = np.zeros(ct.shape, np.uint8)
    lab[1:3, 2, 2] = 1                                 # a contoured organ inside the body
    out = ignore_unannotated(lab, ct, ignore_value=9)
    assert (out[lab == 1] == 1).all()                 # contoured organs keep their label
    assert (out[(ct > -500) & (lab == 0)] == 9).all()  # unknown: might be an uncontoured organ
    assert (out[ct <= -500] == 0).all()               # air stays background


def test_likely_region_ignores_where_the_missing_organ_lies_and_keeps_the_rest_as_background(tmp_path, nnunet_env):
    from nnunet_oar.conversion.ignore import with_ignore_label
    from nnunet_oar.conversion.visceral import convert_visceral
    from nnunet_oar.phantom import write_phantoms
    write_phantoms(tmp_path / "v", 8, seed=5, scale=0.4, organs=["liver", "spleen", "kidney_left"],
                   p_unannotated=0.0, p_second_annotator=0.0, progress=False)
    raw = convert_visceral(tmp_path / "v", 501, organs=["liver", "spleen", "kidney_left"], progress=False)
    labels = json.loads((raw / "dataset.json").read_text())["labels"]
    annotations = json.loads((raw / "annotations.json").read_text())
    case = sorted(annotations)[0]
    label_file = raw / "labelsTr" / f"{case}.nii.gz"
    seg = sitk.ReadImage(str(label_file))
    truth = sitk.GetArrayFromImage(seg)
    assert (truth == labels["spleen"]).sum() > 50
    # the spleen of this case was "not contoured": its file would be missing, its voxels background
    annotations[case] = [o for o in annotations[case] if o != "spleen"]
    (raw / "annotations.json").write_text(json.dumps(annotations))
    partial = sitk.GetImageFromArray(np.where(truth == labels["spleen"], 0, truth).astype(np.uint8))
    partial.CopyInformation(seg)
    sitk.WriteImage(partial, str(label_file))
    out_raw = with_ignore_label(501, 506, region="likely", progress=False)
    assert out_raw.name.endswith("IgnoreLikely")
    ignore = json.loads((out_raw / "dataset.json").read_text())["labels"]["ignore"]
    out = sitk.GetArrayFromImage(sitk.ReadImage(str(out_raw / "labelsTr" / f"{case}.nii.gz")))
    ct = sitk.GetArrayFromImage(sitk.ReadImage(str(raw / "imagesTr" / f"{case}_0000.nii.gz")))
    assert (out[truth == labels["spleen"]] == ignore).mean() > 0.99      # the uncontoured spleen carries no loss
    assert ((out == 0) & (ct > -500)).sum() > 1000                       # the rest of the body stays background
    for organ in ("liver", "kidney_left"):                               # contoured organs keep their labels
        assert (out[truth == labels[organ]] == labels[organ]).all()
    other = sorted(annotations)[1]                                       # a fully annotated case: unchanged
    assert (sitk.GetArrayFromImage(sitk.ReadImage(str(out_raw / "labelsTr" / f"{other}.nii.gz")))
            == sitk.GetArrayFromImage(sitk.ReadImage(str(raw / "labelsTr" / f"{other}.nii.gz")))).all()


def test_stages_run_as_snakemake_jobs_in_order_once_and_a_failure_names_its_log(tmp_path):
    from nnunet_oar.evaluation.stages import Plan, StageFailed, epoch_seconds
    plan = Plan(tmp_path)
    out = tmp_path / "order.txt"
    plan.add("first", [["sh", "-c", f"echo first >> {out}"]], label="the first stage")
    plan.add("second", [["sh", "-c", f"echo second >> {out}"], ["sh", "-c", f"echo again >> {out}"]], ["first"],
             label="the second stage")
    plan.run()
    assert out.read_text().split() == ["first", "second", "again"]
    records = plan.records()
    assert list(records) == ["the first stage", "the second stage"]
    assert records["the second stage"]["wall_s"] >= 0 and len(records["the second stage"]["commands"]) == 2
    plan.run()                                          # everything done: nothing runs again
    assert out.read_text().split() == ["first", "second", "again"]
    # stages asked for first run, with what they wait for, ahead of the others
    for branch in "abc":
        plan.add(f"{branch}1", [["sh", "-c", f"echo {branch}1 >> {out}"]])
        plan.add(f"{branch}2", [["sh", "-c", f"echo {branch}2 >> {out}"]], [f"{branch}1"])
    for wanted in ("b2", "c2"):
        out.write_text("")
        for f in (tmp_path / "stages").glob("[abc][12].done"):
            f.unlink()
        plan.run(first=[wanted])
        assert out.read_text().split()[:2] == [f"{wanted[0]}1", wanted]
    plan.add("broken", [["sh", "-c", "echo the reason >&2; exit 3"]], ["second"])
    with pytest.raises(StageFailed, match="broken") as e:
        plan.run()
    assert "the reason" in str(e.value) and not (tmp_path / "stages" / "broken.done").exists()
    # the equal-time rule counts every epoch nnU-Net logged, across the attempts of a resumed training
    fold = tmp_path / "fold_0"
    fold.mkdir()
    (fold / "training_log_1.txt").write_text("x: Epoch 0\nx: Epoch time: 10.5 s\nx: Epoch 1\nx: Epoch time: 11 s\n")
    (fold / "training_log_2.txt").write_text("x: Epoch 2\nx: Epoch time: 9.25 s\n")
    assert epoch_seconds(fold) == [10.5, 11.0, 9.25]
    # shared cores only lengthen epochs: a training's compute is its epochs x its fast (10th-percentile) epoch
    from nnunet_oar.evaluation.baselines import training_seconds
    alone = [50.0] * 20
    shared = alone[:10] + [150.0] * 10                  # half the epochs ran beside a test suite
    assert training_seconds(shared) == training_seconds(alone) == 1000.0 and training_seconds([]) == 0.0
    # but not a training that shared the device throughout (--jobs N): the report says so, after scoring too
    from nnunet_oar.evaluation.baselines import equal_time_record
    from nnunet_oar.evaluation.settings import Settings
    settings = Settings(dataset="phantoms", budget="tiny", baseline_budget="time")
    (tmp_path / "equal_time.json").write_text(json.dumps({"trainer": "T_3epochs", "two_stage_training_s": 9.0,
                                                          "rule": "3 epochs = ..."}))
    for jobs, caveat in ((1, False), (0, False), (2, True), (0, True)):     # 0: --report-only
        trainers = {}
        equal_time_record(settings, tmp_path, trainers, jobs=jobs)
        assert trainers["baseline_equal_time_rule"].startswith("3 epochs = ...")
        assert ("ran up to 2 at a time" in trainers["baseline_equal_time_rule"]) == caveat


def test_a_killed_run_resumes_and_a_second_run_in_the_same_folder_is_refused(tmp_path):
    import fcntl
    import os
    import signal
    import sys
    import time
    from nnunet_oar.evaluation.stages import Plan
    from nnunet_oar.io import InputError
    started, out = tmp_path / "started", tmp_path / "out.txt"
    stage = ["sh", "-c", f"touch {started}; sleep 60; echo late >> {out}"]
    script = ("import sys; from nnunet_oar.evaluation.stages import Plan; p = Plan(sys.argv[1]); "
              f"p.add('slow', [{stage!r}]); p.run()")
    # a session's end: the whole run (Python, Snakemake, the stage) killed at once
    proc = subprocess.Popen([sys.executable, "-c", script, str(tmp_path)], start_new_session=True)
    for _ in range(600):
        if started.exists():
            break
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    plan = Plan(tmp_path)
    plan.add("slow", [["sh", "-c", f"echo resumed >> {out}"]])
    plan.run()                                          # no lock left behind to unlock by hand
    assert out.read_text().split() == ["resumed"]
    with open(tmp_path / "stages" / "run.lock") as held:
        fcntl.flock(held, fcntl.LOCK_EX)                # a run still under way
        with pytest.raises(InputError, match="another benchmark is running"):
            plan.run()


@pytest.mark.slow
def test_benchmark_on_phantoms_end_to_end(tmp_path):
    env = nnunet_environment(tmp_path / "env")
    work = tmp_path / "bench"
    cmd = ["nnunet_oar", "benchmark", "--dataset", "phantoms", "--budget", "tiny", "--phantoms", "6", "2",
           "--organs", "liver", "kidney_left", "--work", str(work), "--baseline-budget", "time"]
    run(cmd, env, timeout=1500)
    report = json.loads((work / "report.json").read_text())
    assert set(report["overall"]) == {"baseline", "baseline_equal_time", "two_stage", "two_stage_reference_boxes"}
    test_raw = work / "nnUNet_raw" / "Dataset902_VISCERAL"
    for method in ("baseline", "baseline_equal_time", "two_stage", "two_stage_reference_boxes"):
        metrics = json.loads((work / f"metrics_{method}.json").read_text())
        assert set(metrics["per_case"]) == {p.name[:-len(".nii.gz")] for p in (test_raw / "labelsTr").iterdir()}
        assert all(set(c) == {"liver", "kidney_left"} for c in metrics["per_case"].values())
        assert len((work / f"metrics_{method}.csv").read_text().strip().splitlines()) == 1 + 2 * 2
        for case in metrics["per_case"]:
            ref = sitk.ReadImage(str(test_raw / "labelsTr" / f"{case}.nii.gz"))
            pred = sitk.ReadImage(str(work / "predictions" / method / f"{case}.nii.gz"))
            assert pred.GetSize() == ref.GetSize() and np.allclose(pred.GetOrigin(), ref.GetOrigin())
            assert np.allclose(pred.GetDirection(), ref.GetDirection())
        # the report's numbers are what `nnunet_oar evaluate` says about the same folders
        run(["nnunet_oar", "evaluate", "-r", str(test_raw / "labelsTr"), "-p", str(work / "predictions" / method),
             "--annotations", str(test_raw / "annotations.json"), "-o", str(tmp_path / f"{method}.json")], env)
        again = json.loads((tmp_path / f"{method}.json").read_text())
        assert again["overall"] == report["overall"][method]
    assert report["localization"]["liver"]["n"] == 2
    ref_boxes = json.loads(next((work / "reference_boxes").glob("*_boxes.json")).read_text())["organs"]
    assert ref_boxes["liver"]["status"] == "found" and ref_boxes["liver"]["box_index_xyz"]
    # with reference boxes every organ crop contains its organ's centre: nothing is missed by localization
    reference = json.loads((work / "metrics_two_stage_reference_boxes.json").read_text())
    assert reference["localization"]["liver"]["detection"]["tp"] == 2
    baseline_raw = work / "nnUNet_raw" / "Dataset906_VISCERALIgnore"
    labels = json.loads((baseline_raw / "dataset.json").read_text())["labels"]
    assert labels["ignore"] == max(labels.values())
    # the paper's flow: two localizer folds -> out-of-fold boxes with calibrated margins -> organ crops;
    # inference uses the same margins and box sizes, so training and inference crops have one size
    calibrated = json.loads((work / "oof_boxes" / "margins.json").read_text())
    margins = {o: m["margin_mm"] for o, m in calibrated.items()}
    manifest = json.loads((work / "models" / "models.json").read_text())["localizer"]
    assert manifest["margin_mm"] == margins and manifest["folds"] == [0, 1]
    # an organ given a learned extent along z by the cross-validation keeps it at inference
    assert manifest.get("z_extent", {}) == {o: m["z_extent"] for o, m in calibrated.items() if "z_extent" in m}
    assert manifest.get("position", {}) == {o: m["position"] for o, m in calibrated.items() if "position" in m}
    axes = 2 if "z_extent" in calibrated["liver"] else 3          # its length along z then varies per case
    crops = json.loads((work / "nnUNet_raw" / "Dataset911_VISCERAL_liver" / "crops.json").read_text())
    train_mm = {tuple(np.round(np.subtract(c["box_index_xyz"]["stop"], c["box_index_xyz"]["start"])
                               * c["source_image"]["spacing_xyz"])) for c in crops.values() if not c["clipped"]}
    for f in (work / "predictions" / "two_stage").glob("*_boxes.json"):
        boxes = json.loads(f.read_text())
        entry = boxes["organs"]["liver"]
        if entry["status"] == "found" and not entry["clipped"]:
            extent = np.subtract(entry["box_mm"]["max"], entry["box_mm"]["min"])
            voxel = max(boxes["image"]["spacing_xyz"]) + 0.01
            assert any(np.allclose(extent[:axes], t[:axes], atol=voxel) for t in train_mm)   # up to one voxel
            assert entry["margin_mm"] == margins["liver"] and isinstance(entry["cut_by_box"], list)
    md = (work / "report.md").read_text()
    assert "constant guess" in md and set(report["constant_guess"]) == {"liver", "kidney_left"}
    assert set(report["cut_by_box"]) >= {"liver", "kidney_left"}
    # the widths the tiny trainers built (1/8 of nnU-Net's 32 features), read back from the checkpoints
    sizes = report["trainers"]["network_sizes"]
    assert set(sizes) == {"localizer", "organ networks", "baseline"} and set(sizes["organ networks"]) == {
        "liver", "kidney_left"}
    assert all(n["features_per_stage"][0] == 4 and n["parameters"] > 0 for nets in sizes.values()
               for n in nets.values())
    assert "Networks, as their checkpoints hold them: localizer [4, 8" in md
    # every stage ran as a Snakemake job with its own log and measurement, which the report reads
    for name in ("loc_train_0", "loc_train_1", "loc_cv", "organ_crops", "organ_plan_911", "organ_plan_912",
                 "organ_train_911", "organ_train_912", "baseline_train",
                 "baseline_equal_time_train", "predict_two_stage", "predict_baseline", "predict_baseline_equal_time"):
        assert (work / "stages" / f"{name}.done").is_file() and (work / "stages" / f"{name}.log").is_file()
    for label in ("localizer: train fold 0", "localizer: train fold 1", "organs: out-of-fold boxes",
                  "organ network liver: train", "organ network kidney_left: train", "baseline: train",
                  "baseline, equal time: train", "two-stage: predict held-out", "baseline: predict held-out"):
        rec = report["stages"][label]
        assert rec["wall_s"] > 0 and rec["peak_rss_gb"] > 0.1 and rec["commands"]
    md = (work / "report.md").read_text()
    assert "| baseline |" in md and "| two_stage |" in md and "boxplot_dice.png" in md
    assert (work / "boxplot_dice.png").stat().st_size > 5000
    # the equal-time baseline's epochs follow the rule from nnU-Net's logged epoch times, fixed before it trained
    from nnunet_oar.evaluation.baselines import training_seconds
    from nnunet_oar.evaluation.stages import epoch_seconds
    res = work / "nnUNet_results"
    runs = [epoch_seconds(d) for d in [*res.glob("Dataset901_*/*__3d_loc/fold_[01]"), *res.glob("Dataset91[12]_*/*/fold_all")]]
    assert [len(r) for r in runs] == [2, 2, 2, 2]     # tiny budgets: 2 epochs per localizer fold and organ network
    # the tiny budget caps the baseline's patch as the demo does: its own configuration
    from nnunet_oar.evaluation.baselines import capped_configuration
    config = capped_configuration(json.loads((work / "settings.json").read_text())["baseline_patch"])
    per_epoch = epoch_seconds(res / "Dataset906_VISCERALIgnore" / f"nnUNetTrainerOARTiny__nnUNetPlans__{config}"
                              / "fold_all")
    epochs = max(1, round(sum(map(training_seconds, runs)) / np.percentile(per_epoch, 10)))
    assert report["trainers"]["baseline_equal_time"] == f"nnUNetTrainerOARTiny_{epochs}epochs"
    final = work / "nnUNet_results" / "Dataset906_VISCERALIgnore" / \
        f"nnUNetTrainerOARTiny_{epochs}epochs__nnUNetPlans__{config}" / "fold_all" / "checkpoint_final.pth"
    assert final.is_file() and f"{epochs} epochs = round(two-stage training" in (work / "report.md").read_text()
    # and it did train about as long, by the same measure (tiny budgets: 2-epoch trainings, so loosely)
    ratio = report["trainers"]["baseline_equal_time_training_s"] / report["trainers"]["two_stage_training_s"]
    assert 0.3 < ratio < 3 and "`baseline_equal_time` trained" in (work / "report.md").read_text()
    # Table I carries the paired differences against the equal-time baseline, over the pairs both scored
    assert "baseline" in report["paired_vs_baseline"] and "baseline_equal_time" not in report["paired_vs_baseline"]
    paired = report["paired_vs_baseline"]["two_stage"]["overall"]
    assert paired["n"] == report["overall"]["two_stage"]["dice"]["n"] == 4
    assert abs(paired["mean_diff"] - (paired["mean_a"] - paired["mean_b"])) < 1e-9
    assert "Δ Dice vs baseline" in md and (work / "cases_largest_difference.png").stat().st_size > 5000
    # another setting in the same work folder is refused: it would mix networks of two runs
    other = subprocess.run([*cmd[:7], "5", "2", *cmd[9:]], env=env, capture_output=True, text=True)
    assert other.returncode == 2 and "other settings" in other.stderr
    # a rerun resumes: every stage is found done (Snakemake runs nothing), the scores are the same
    done = {f: f.stat().st_mtime_ns for f in (work / "stages").glob("*.done")}
    run(cmd, env)
    assert len(done) >= 15 and done == {f: f.stat().st_mtime_ns for f in (work / "stages").glob("*.done")}
    assert "Nothing to be done" in (work / "benchmark.log").read_text().rsplit("Building DAG", 1)[-1]
    assert json.loads((work / "report.json").read_text())["overall"] == report["overall"]
    # a run stopped before a stage finished (say, by a time cap) is scored as far as it got, and says so
    (work / "stages" / "predict_baseline_equal_time.done").unlink()
    run([*cmd, "--report-only"], env)
    partial = json.loads((work / "report.json").read_text())
    assert set(partial["overall"]) == {"baseline", "two_stage", "two_stage_reference_boxes"}
    assert partial["overall"]["two_stage"] == report["overall"]["two_stage"]
    assert partial["unfinished_stages"] == ["baseline, equal time: predict held-out"]
    assert "A partial report" in (work / "report.md").read_text()
    assert not (work / "stages" / "predict_baseline_equal_time.done").exists()      # it ran nothing


def test_the_reports_network_line_names_widths_sizes_and_unreadable_checkpoints():
    from nnunet_oar.evaluation.comparison import _network_lines
    sizes = {"localizer": {"fold_0": {"features_per_stage": [16, 32], "parameters": 1_369_759}},
             "organ networks": {"liver": {"features_per_stage": [16, 32, 64], "parameters": 1_400_000},
                                "spleen": {"features_per_stage": [16, 32], "parameters": 340_000},
                                "aorta": {"unreadable": "x.pth: checkpoint is truncated"}}}
    assert _network_lines(sizes) == [
        "Networks, as their checkpoints hold them: localizer [16, 32] features per stage, 1.4 M parameters; "
        "organ networks [16, 32] or [16, 32, 64] features per stage, 0.3-1.4 M parameters (checkpoint "
        "unreadable: aorta).", ""]
    assert _network_lines({}) == _network_lines(None) == []


def test_a_run_on_some_organs_scores_those_organs_only(tmp_path):
    # OpenKBP converts all seven organs; `benchmark --organs` trains some, so the others are not misses
    from nnunet_oar.evaluation.comparison import write_comparison
    test_raw = tmp_path / "Dataset101_X"
    (test_raw / "labelsTr").mkdir(parents=True)
    pred = tmp_path / "pred"
    pred.mkdir()
    lab = np.zeros((12, 12, 12), np.uint8)
    lab[2:5, 2:5, 2:5], lab[7:10, 7:10, 7:10] = 1, 2
    for case in ("a", "b"):
        sitk.WriteImage(sitk.GetImageFromArray(lab), str(test_raw / "labelsTr" / f"{case}.nii.gz"))
        sitk.WriteImage(sitk.GetImageFromArray(np.where(lab == 1, lab, 0)), str(pred / f"{case}.nii.gz"))
    for folder in (test_raw, pred):
        (folder / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "brainstem": 1, "larynx": 2}}))
    (test_raw / "annotations.json").write_text(json.dumps({"a": ["brainstem", "larynx"], "b": ["brainstem", "larynx"]}))
    trainers = {"localizer": "L", "networks": "N", "baseline_config": "3d_fullres"}
    report = write_comparison(tmp_path, test_raw, {"two_stage_reference_boxes": pred}, {},
                              {"dataset": "openkbp", "budget": "cpu", "train_id": 100, "device": "cpu",
                               "organs": ["brainstem"]}, trainers)
    assert set(report["per_organ"]["two_stage_reference_boxes"]) == {"brainstem"}
    assert report["overall"]["two_stage_reference_boxes"]["dice"]["mean"] == 1.0
    assert "no baseline is scored yet" in (tmp_path / "report.md").read_text()
    everything = write_comparison(tmp_path, test_raw, {"two_stage_reference_boxes": pred}, {},
                                  {"dataset": "openkbp", "budget": "cpu", "train_id": 100, "device": "cpu",
                                   "organs": None}, trainers)
    assert everything["overall"]["two_stage_reference_boxes"]["dice"]["mean"] == 0.5    # larynx: a miss
