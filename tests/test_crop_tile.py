"""The tile that covers one organ crop in a single pass (nnunet_oar.segmentation.predict.crop_tile)."""
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager

from nnunet_oar.segmentation.predict import MAX_TILE_FACTOR, crop_tile


def _configuration(patch, spacing=(1.0, 1.0, 1.0)):
    strides = [[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 1]][: 4] if len(patch) == 3 else [[1, 1], [2, 2]]
    return ConfigurationManager({"patch_size": list(patch), "spacing": list(spacing),
                                 "architecture": {"network_class_name": "x", "arch_kwargs": {"strides": strides},
                                                  "_kw_requires_import": []}})


def test_the_tile_is_the_crop_at_network_spacing_rounded_up_to_the_stride_never_below_the_patch():
    # 30 slices at 1.5 mm -> 45 at 1 mm -> 48 (stride 8); 50 -> 56 (stride 8); 70 -> 72 (stride 4)
    assert crop_tile((30, 50, 70), (1.5, 1.0, 1.0), _configuration((32, 32, 48)), (0, 1, 2)) == [48, 56, 72]
    # nnU-Net's transpose_forward reorders both the shape and the spacing
    assert crop_tile((70, 50, 30), (1.0, 1.0, 1.5), _configuration((32, 32, 48)), (2, 1, 0)) == [48, 56, 72]
    # an axis where the crop is smaller than the trained patch keeps the patch (padded as in training)
    assert crop_tile((30, 50, 70), (1.5, 1.0, 1.0), _configuration((64, 64, 32)), (0, 1, 2)) == [64, 64, 72]
    assert crop_tile((5, 6, 3), (1.0, 1.0, 1.0), _configuration((64, 64, 32)), (0, 1, 2)) == [64, 64, 32]


def test_a_crop_beyond_the_memory_factor_or_a_2d_network_keeps_the_trained_patch():
    cm = _configuration((32, 32, 32))
    side = int((MAX_TILE_FACTOR * 32 ** 3) ** (1 / 3)) + 8          # just over the limit once rounded up
    assert crop_tile((side, side, side), (1.0, 1.0, 1.0), cm, (0, 1, 2)) is None
    assert crop_tile((40, 40, 40), (1.0, 1.0, 1.0), cm, (0, 1, 2)) == [40, 40, 40]
    assert crop_tile((20, 20, 20), (1.0, 1.0, 1.0), cm, (0, 1, 2)) == [32, 32, 32]
    assert crop_tile((40, 40, 40), (1.0, 1.0, 1.0), _configuration((64, 64)), (0, 1, 2)) is None
