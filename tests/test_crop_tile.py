"""The tile that takes one organ crop through its network in fewer passes than the trained patch, within the
trained patch's memory (nnunet_oar.segmentation.predict.crop_tile)."""
import numpy as np
from nnunetv2.inference.sliding_window_prediction import compute_steps_for_sliding_window
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager

import pytest

from nnunet_oar.io import InputError
from nnunet_oar.segmentation.predict import MAX_TILE_FACTOR, OARPredictor, coarser_grid, crop_tile


def _configuration(patch, spacing=(1.0, 1.0, 1.0)):
    # total stride 8, 8, 4 (z, y, x)
    strides = [[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 1]][: 4] if len(patch) == 3 else [[1, 1], [2, 2]]
    return ConfigurationManager({"patch_size": list(patch), "spacing": list(spacing),
                                 "architecture": {"network_class_name": "x", "arch_kwargs": {"strides": strides},
                                                  "_kw_requires_import": []}})


def _passes(shape, tile):
    """Network passes of nnU-Net's sliding window (step 0.5) of ``tile`` over ``shape``."""
    return int(np.prod([len(s) for s in compute_steps_for_sliding_window(np.maximum(shape, tile), tile, 0.5)]))


def test_fewer_passes_within_the_patchs_voxels_at_network_spacing():
    # 100 x 100 voxels in-plane against a 64^3 patch: 3 x 3 passes; 6 suffice with tiles that hold no more
    # voxels than the patch (e.g. 56 x 72, stride 8); the axis where the crop is shorter keeps the patch (padded)
    cm = _configuration((64, 64, 64))
    tile = crop_tile((100, 100, 40), (1.0, 1.0, 1.0), cm, (0, 1, 2))
    assert _passes((100, 100, 40), tile) == 6 and _passes((100, 100, 40), (64, 64, 64)) == 9
    assert np.prod(tile) <= 64 ** 3 and tile[2] == 64 and tile[0] % 8 == 0 and tile[1] % 8 == 0
    # the same crop at 2 mm along its first axis: 50 slices -> 100 at the network's 1 mm
    assert crop_tile((50, 100, 40), (2.0, 1.0, 1.0), cm, (0, 1, 2)) == tile
    # nnU-Net's transpose_forward reorders both the shape and the spacing
    assert crop_tile((40, 100, 50), (1.0, 1.0, 2.0), cm, (2, 1, 0)) == tile


def test_a_crop_a_little_longer_than_the_patch_keeps_it_where_no_tile_saves_a_pass():
    # 70 against 64: two passes whatever the tile; a shorter one would only see less
    assert crop_tile((40, 50, 70), (1.0, 1.0, 1.0), _configuration((64, 64, 64)), (0, 1, 2)) is None


def test_a_crop_no_larger_than_the_patch_or_a_2d_network_keeps_the_trained_patch():
    assert crop_tile((5, 6, 3), (1.0, 1.0, 1.0), _configuration((64, 64, 32)), (0, 1, 2)) is None
    assert crop_tile((64, 64, 32), (1.0, 1.0, 1.0), _configuration((64, 64, 32)), (0, 1, 2)) is None
    assert crop_tile((40, 40, 40), (1.0, 1.0, 1.0), _configuration((64, 64)), (0, 1, 2)) is None
    # an architecture without strides (its input size may be fixed, e.g. a transformer's embeddings)
    cm = _configuration((64, 64, 64))
    cm.configuration["architecture"]["arch_kwargs"] = {}
    assert crop_tile((100, 100, 40), (1.0, 1.0, 1.0), cm, (0, 1, 2)) is None


def test_a_large_crop_takes_fewer_passes_and_voxels_than_the_sliding_patch_and_no_more_memory():
    # a liver-like crop at 1 mm against its patch (z, y, x)
    shape, patch = (149, 206, 224), (96, 160, 160)
    tile = crop_tile(shape, (1.0, 1.0, 1.0), _configuration(patch), (0, 1, 2))
    assert np.prod(tile) <= MAX_TILE_FACTOR * np.prod(patch)
    assert _passes(shape, tile) * np.prod(tile) < 0.6 * _passes(shape, patch) * np.prod(patch)
    assert [t % s for t, s in zip(tile, (8, 8, 4))] == [0, 0, 0]          # the network's stride divides it
    assert all(t >= p / 2 for t, p in zip(tile, patch))                    # never a thin slab


def test_a_coarser_grid_keeps_the_patchs_field_of_view_in_strides_of_the_network():
    cm = _configuration((96, 160, 60), spacing=(1.0, 0.8, 0.8))
    coarse = coarser_grid(cm, 1.5)
    assert coarse.spacing == pytest.approx([1.5, 1.2, 1.2])
    # 96 / 1.5 = 64 (a multiple of 8); 160 / 1.5 = 106.7 -> 112; 60 / 1.5 = 40 (a multiple of 4)
    assert coarse.patch_size == [64, 112, 40]
    for t, p, s in zip(coarse.patch_size, cm.patch_size, (8, 8, 4)):
        assert t % s == 0 and t * 1.5 >= p and (t - s) * 1.5 < p       # the smallest such tile that holds it
    assert cm.spacing == [1.0, 0.8, 0.8] and cm.patch_size == [96, 160, 60]       # the trained one untouched
    assert coarser_grid(cm, 1.0) is cm
    # never below one stride; an architecture without strides keeps its patch (its input may be fixed)
    assert coarser_grid(_configuration((8, 8, 4)), 4.0).patch_size == [8, 8, 4]
    # a floating-point hair above a whole number of strides does not take another stride: 84 / 1.4 / 4 = 15
    assert coarser_grid(_configuration((84, 84, 84)), 1.4).patch_size == [64, 64, 60]
    cm.configuration["architecture"]["arch_kwargs"] = {}
    assert coarser_grid(cm, 2.0).patch_size == [96, 160, 60]


def test_a_2d_network_gets_coarser_in_plane():
    coarse = coarser_grid(_configuration((160, 128), spacing=(0.8, 0.8)), 1.5)        # total stride 2, 2
    assert coarse.spacing == pytest.approx([1.2, 1.2]) and coarse.patch_size == [108, 86]


def test_a_grid_finer_than_the_trained_one_is_refused(tmp_path):
    for factor in (0.5, 0.0, float("inf"), float("nan")):
        with pytest.raises(InputError, match="grid_factor must be at least 1"):
            OARPredictor(tmp_path, grid_factor=factor)
