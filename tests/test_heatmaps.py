import numpy as np
import torch

from nnunet_oar.localization.heatmaps import (HeatmapLoss, gaussian_heatmaps, heatmap_targets, label_centroids,
                                              masked_l2)


def _seg(shape=(20, 24, 28)):
    seg = torch.zeros((1, 1, *shape), dtype=torch.int16)
    seg[0, 0, 4:9, 6:11, 10:15] = 1          # centroid (6, 8, 12)
    seg[0, 0, 12:14, 2:4, 20:26] = 2         # centroid (12.5, 2.5, 22.5)
    return seg


def test_centroids_of_known_masks_and_absent_organ():
    cents, present = label_centroids(_seg(), 3)
    assert torch.allclose(cents[0, 0], torch.tensor([6.0, 8.0, 12.0]))
    assert torch.allclose(cents[0, 1], torch.tensor([12.5, 2.5, 22.5]))
    assert present.tolist() == [[True, True, False]]


def test_target_peaks_at_the_centroid_and_absent_organ_is_zero():
    t = heatmap_targets(_seg(), 3, (1.0, 1.0, 1.0), 150.0)
    assert t.shape == (1, 3, 20, 24, 28)
    assert tuple(np.unravel_index(int(t[0, 0].argmax()), t.shape[2:])) == (6, 8, 12)
    assert abs(float(t[0, 0, 6, 8, 12]) - 1.0) < 1e-6
    assert float(t[0, 2].abs().max()) == 0.0


def test_sigma_is_physical_on_anisotropic_grids():
    spacing = (4.0, 2.0, 1.0)
    t = heatmap_targets(_seg(), 3, spacing, 150.0)[0, 0]
    expected = np.exp(-8.0 ** 2 / (2 * 150.0))          # 8 mm away along any axis
    for value in (t[6 + 2, 8, 12], t[6, 8 + 4, 12], t[6, 8, 12 + 8]):
        assert abs(float(value) - expected) < 1e-5


def test_matches_a_direct_evaluation():
    seg = _seg()
    spacing, s2 = (1.5, 2.0, 3.0), 150.0
    t = heatmap_targets(seg, 2, spacing, s2)[0, 1].numpy()
    idx = np.argwhere(seg[0, 0].numpy() == 2).mean(0)
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in seg.shape[2:]], indexing="ij"), -1)
    d2 = (((grid - idx) * np.asarray(spacing)) ** 2).sum(-1)
    assert np.allclose(t, np.exp(-d2 / (2 * s2)), atol=1e-5)


def test_unannotated_organs_carry_no_loss():
    target = gaussian_heatmaps(torch.tensor([[[5.0, 5, 5], [2, 2, 2]]]), torch.tensor([[True, True]]),
                               (10, 10, 10), (1, 1, 1))
    pred = target.clone()
    pred[:, 1] = 7.0                                        # garbage in channel 1
    assert float(masked_l2(pred, target, torch.tensor([[True, False]]))) == 0.0
    assert float(masked_l2(pred, target, torch.tensor([[True, True]]))) > 1.0
    # nnU-Net's call signature: background head first, ignored
    out = torch.cat([torch.full_like(target[:, :1], 9.0), target], 1)
    assert float(HeatmapLoss()(out, [target, torch.tensor([[True, True]])])) == 0.0


def test_foreground_weight_zero_is_plain_l2_and_positive_weights_blob_errors_more():
    target = gaussian_heatmaps(torch.tensor([[[5.0, 5, 5]]]), torch.tensor([[True]]), (10, 10, 10), (1, 1, 1))
    pred = torch.zeros_like(target)
    ann = torch.tensor([[True]])
    plain = float(((pred - target) ** 2).mean())
    assert abs(float(masked_l2(pred, target, ann)) - plain) < 1e-9
    assert float(masked_l2(pred, target, ann, fg_weight=10.0)) > 5 * plain
