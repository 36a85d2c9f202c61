"""plan-organs: nnU-Net's own torch-resampling planner, under the plans name nnUNetv2_train expects."""
import json

import pytest


@pytest.mark.parametrize("planner, resampling", [(None, "resample_torch_fornnunet"),
                                                 ("ExperimentPlanner", "resample_data_or_seg_to_shape")])
def test_plan_organs_plans_and_preprocesses_with_the_chosen_resampling(tmp_path, nnunet_env, planner, resampling):
    from nnunet_oar.conversion.visceral import convert_visceral
    from nnunet_oar.phantom import write_phantoms
    from nnunet_oar.segmentation.crops import crop_rois
    from nnunet_oar.segmentation.planning import plan_organs
    write_phantoms(tmp_path / "v", 2, seed=1, scale=0.3, organs=["liver"], p_unannotated=0.0, progress=False)
    convert_visceral(tmp_path / "v", 501, organs=["liver"], progress=False)
    crop_rois(501, 511, boxes_from_labels=True, progress=False)
    kw = {} if planner is None else {"planner": planner}
    assert plan_organs(511, spacing_mm=2.0, num_processes=1, **kw) == [511]
    pre = next(nnunet_env["nnUNet_preprocessed"].glob("Dataset511_*"))
    # the name nnUNetv2_train and export-models look for, whatever the planner
    cfg = json.loads((pre / "nnUNetPlans.json").read_text())["configurations"]["3d_fullres"]
    assert cfg["spacing"] == [2.0, 2.0, 2.0]
    assert cfg["resampling_fn_data"] == cfg["resampling_fn_seg"] == cfg["resampling_fn_probabilities"] == resampling
    assert cfg["data_identifier"] == "nnUNetPlans_3d_fullres"
    assert len(list((pre / "nnUNetPlans_3d_fullres").glob("*.pkl"))) == 2        # both crops preprocessed


def test_an_unknown_planner_is_refused_before_any_work(nnunet_env):
    from nnunet_oar.io import InputError
    from nnunet_oar.segmentation.planning import plan_organs
    with pytest.raises(InputError, match="no nnU-Net experiment planner named 'nnUNetPlanner_torchress'"):
        plan_organs(511, planner="nnUNetPlanner_torchress")
