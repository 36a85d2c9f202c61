import tracemalloc

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_oar.geometry import crop_image, crop_zyx, paste_zyx
from nnunet_oar.segmentation.merge import MaxProbabilityMerger, merge_arrays


def test_highest_probability_above_half_wins_else_background():
    shape = (4, 4, 4)
    a = np.full((2, 2, 2), 0.6, np.float32)
    b = np.full((2, 2, 2), 0.7, np.float32)
    b[0, 0, 0] = 0.55                                         # a wins here (0.6 > 0.55)
    low = np.full((2, 2, 2), 0.49, np.float32)               # never above 0.5: stays background
    out = merge_arrays(shape, [(1, a, (0, 0, 0)), (2, b, (1, 1, 1)), (3, low, (2, 2, 2))])
    assert out[0, 0, 0] == 1                                  # only a
    assert out[1, 1, 1] == 1                                  # overlap voxel, a=0.6 vs b=0.55
    assert out[1, 1, 2] == 2 and out[2, 2, 2] == 2            # b=0.7 beats a=0.6 / low
    assert out[3, 3, 3] == 0                                  # only low (0.49)
    order_swapped = merge_arrays(shape, [(3, low, (2, 2, 2)), (2, b, (1, 1, 1)), (1, a, (0, 0, 0))])
    assert np.array_equal(out, order_swapped)                 # the rule does not depend on the order


def test_merge_memory_does_not_grow_with_the_number_of_organs():
    shape = (64, 64, 64)

    def peak(n_organs):
        rng = np.random.default_rng(0)
        tracemalloc.start()
        merger = MaxProbabilityMerger(shape)
        for k in range(n_organs):
            crop = rng.random((32, 32, 32), dtype=np.float32)   # one crop alive at a time
            merger.add(k + 1, crop, (16, 16, 16))
            del crop
        p = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        return p

    assert peak(20) < 1.1 * peak(2)


@pytest.mark.parametrize("direction", [(1, 0, 0, 0, 1, 0, 0, 0, 1), (-1, 0, 0, 0, -1, 0, 0, 0, 1),
                                       (1, 0, 0, 0, 1, 0, 0, 0, -1)])
def test_crop_and_paste_round_trip_is_exact_on_anisotropic_flipped_grids(direction):
    rng = np.random.default_rng(1)
    arr = rng.integers(0, 1000, (17, 23, 29)).astype(np.int16)        # (z, y, x)
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((0.8, 1.1, 3.0))
    img.SetOrigin((-12.5, 40.0, 7.0))
    img.SetDirection(direction)
    start, stop = (3, 5, 2), (20, 18, 11)                                # x, y, z
    crop = crop_image(img, start, stop)
    assert crop.GetSize() == (17, 13, 9) and crop.GetSpacing() == img.GetSpacing()
    assert crop.GetDirection() == img.GetDirection()
    # the crop's voxel (0,0,0) sits exactly where the source voxel `start` sits in the world
    assert np.allclose(crop.TransformIndexToPhysicalPoint((0, 0, 0)), img.TransformIndexToPhysicalPoint(start))
    assert np.array_equal(sitk.GetArrayFromImage(crop), crop_zyx(arr, start, stop))
    back = np.zeros_like(arr)
    paste_zyx(back, sitk.GetArrayFromImage(crop), start)
    assert np.array_equal(crop_zyx(back, start, stop), crop_zyx(arr, start, stop))
    assert back.sum() == crop_zyx(arr, start, stop).sum()
