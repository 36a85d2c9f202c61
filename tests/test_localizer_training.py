"""The localizer's optimiser and start (docs/localization.md): AdamW without AMSGrad or weight decay, the
output layer near zero, seeding, and the ablation variants that put nnU-Net's choices back."""
import importlib
import sys

import pytest
import torch

from nnunet_oar.safe_load import load_checkpoint
from nnunet_oar.training import init_output_layer, network_size, seed_everything
from nnunet_oar.paths import trainer_path


@pytest.fixture
def heatmap_module(monkeypatch):
    monkeypatch.syspath_prepend(str(trainer_path()))
    return importlib.import_module("nnUNetTrainerOARHeatmap")


def _unet():
    from dynamic_network_architectures.architectures.unet import PlainConvUNet
    return PlainConvUNet(1, 3, (8, 16, 32), torch.nn.Conv3d, 3, (1, 2, 2), 2, 4, (2, 2), True,
                         torch.nn.InstanceNorm3d, {"affine": True}, None, None, torch.nn.LeakyReLU, deep_supervision=False)


def test_output_layer_starts_near_zero_so_the_first_heat_maps_are_about_zero():
    seed_everything(0)
    net = _unet()
    x = torch.randn(1, 1, 16, 16, 16)
    assert net(x).abs().max() > 1e-2                       # nnU-Net's initialisation: outputs of order 0.1-1
    init_output_layer(net, 1e-4)
    assert net(x).abs().max() < 1e-2
    assert torch.count_nonzero(net.decoder.seg_layers[-1].bias) == 0
    with pytest.raises(TypeError, match="seg_layers"):
        init_output_layer(torch.nn.Conv3d(1, 1, 1), 1e-4)


def test_seeding_makes_initialisation_repeatable():
    seed_everything(5)
    a = _unet().state_dict()
    seed_everything(5)
    b = _unet().state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_defaults_and_ablation_variants(heatmap_module):
    m = heatmap_module
    base = m.nnUNetTrainerOARHeatmap
    assert (base.amsgrad, base.adam_weight_decay, base.output_init_std) == (False, 0.0, 1e-4)
    assert m.nnUNetTrainerOARHeatmap_cpu_amsgrad.amsgrad is True
    assert m.nnUNetTrainerOARHeatmap_cpu_defaultinit.output_init_std is None
    assert m.nnUNetTrainerOARHeatmap_cpu_wd.adam_weight_decay == 3e-5
    old = m.nnUNetTrainerOARHeatmap_cpu_nnunet
    assert (old.amsgrad, old.adam_weight_decay, old.output_init_std) == (True, 3e-5, None)
    # every ablation variant has the CPU budget, so they differ in the one choice only
    for v in ("amsgrad", "defaultinit", "wd", "nnunet"):
        assert getattr(m, f"nnUNetTrainerOARHeatmap_cpu_{v}").budget == m.nnUNetTrainerOARHeatmap_cpu.budget


def test_a_subclass_in_its_own_trainer_folder_imports_the_parent_through_the_package(tmp_path, monkeypatch):
    """nnU-Net puts a trainer folder on sys.path only while scanning it: a user's subclass must import ours
    through the package, and nnU-Net's lookup must find it with only the user's folder configured."""
    folder = tmp_path / "my_trainers"
    folder.mkdir()
    (folder / "MyLocalizer.py").write_text(
        "from nnunet_oar.trainers.nnUNetTrainerOARHeatmap import nnUNetTrainerOARHeatmap\n\n\n"
        "class MyLocalizer(nnUNetTrainerOARHeatmap):\n    budget = (1, 2, 1)\n")
    monkeypatch.setenv("nnUNet_extTrainer", str(folder))
    for name in [n for n in sys.modules if n in ("MyLocalizer", "nnUNetTrainerOARHeatmap")]:
        monkeypatch.delitem(sys.modules, name)
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name   # nnUNetv2_train's lookup
    cls = recursive_find_trainer_class_by_name("MyLocalizer")
    assert cls is not None and cls.budget == (1, 2, 1) and cls.amsgrad is False
    assert str(folder) not in sys.path


def test_the_tests_and_demos_trainers_build_narrow_networks_through_nnunets_hook_and_the_others_the_planned_width(
        heatmap_module, tmp_path):
    from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager
    budget = importlib.import_module("nnUNetTrainerOARBudget")
    arch = {"network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
            "arch_kwargs": {"n_stages": 3, "features_per_stage": [32, 64, 128],
                            "conv_op": "torch.nn.modules.conv.Conv3d",
                            "kernel_sizes": [[3, 3, 3]] * 3, "strides": [[1, 1, 1], [2, 2, 2], [2, 2, 2]],
                            "n_conv_per_stage": [2, 2, 2], "n_conv_per_stage_decoder": [2, 2], "conv_bias": True,
                            "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
                            "norm_op_kwargs": {"eps": 1e-5, "affine": True}, "dropout_op": None,
                            "dropout_op_kwargs": None, "nonlin": "torch.nn.LeakyReLU",
                            "nonlin_kwargs": {"inplace": True}},
            "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]}
    cm = ConfigurationManager({"architecture": arch})

    def widths(trainer):
        # the call nnU-Net's trainer and predictor make
        net = trainer.build_network_architecture(None, cm, 1, 4, enable_deep_supervision=True)
        built = [s[-1].output_channels for s in net.encoder.stages]
        # what reports read back from a checkpoint (nnU-Net saves the state dict): the same network
        path = tmp_path / f"{trainer.__name__}.pth"
        torch.save({"network_weights": net.state_dict(), "trainer_name": trainer.__name__}, path)
        assert network_size(load_checkpoint(path)["network_weights"]) == {
            "features_per_stage": built, "parameters": sum(p.numel() for p in net.parameters())}
        return built

    assert widths(budget.nnUNetTrainerOARTiny) == widths(heatmap_module.nnUNetTrainerOARHeatmap_tiny) == [4, 8, 16]
    assert widths(budget.nnUNetTrainerOARDemo) == widths(heatmap_module.nnUNetTrainerOARHeatmap_demo) == [16, 32, 64]
    for planned in (budget.nnUNetTrainerOARCPU, heatmap_module.nnUNetTrainerOARHeatmap_cpu,
                    heatmap_module.nnUNetTrainerOARHeatmap_150its):
        assert widths(planned) == [32, 64, 128]
    assert cm.network_arch_init_kwargs["features_per_stage"] == [32, 64, 128]      # the plans are not touched


def test_short_budgets_draw_nnunets_progress_plot_at_most_once_a_minute_and_at_the_end(tmp_path, monkeypatch):
    from nnunetv2.training.logging.nnunet_logger import MetaLogger
    from nnunet_oar import training
    logger = MetaLogger(str(tmp_path), False)
    for epoch in range(2):
        for key in ("train_losses", "val_losses", "lrs", "epoch_start_timestamps", "epoch_end_timestamps"):
            logger.log(key, 0.1 * epoch, epoch)
        logger.log("dice_per_class_or_region", [0.5], epoch)
        logger.log("mean_fg_dice", 0.5, epoch)
    clock = [1000.0]
    monkeypatch.setattr(training.time, "monotonic", lambda: clock[0])
    throttled = training.ThrottledPlots(logger, 60.0)
    png = tmp_path / "progress.png"
    throttled.plot_progress_png(str(tmp_path))
    assert not png.exists()                                   # within a minute of the start: skipped
    clock[0] += 61
    throttled.plot_progress_png(str(tmp_path))
    assert png.is_file()
    png.unlink()
    clock[0] += 30
    throttled.plot_progress_png(str(tmp_path))
    assert not png.exists()
    throttled.plot_progress_png(str(tmp_path), force=True)    # after the last epoch
    assert png.is_file()
    # everything else is nnU-Net's logger, including what a checkpoint stores
    assert throttled.get_value("mean_fg_dice", step=None) == [0.5, 0.5]
    assert throttled.get_checkpoint() == logger.get_checkpoint() and throttled.local_logger is logger.local_logger
