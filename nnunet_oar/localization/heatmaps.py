"""Gaussian heat-map targets from label maps, and the masked L2 loss (torch, vectorised, mm-aware).

Target for organ c: y_c(x) = exp(-|x - mu_c|^2 / (2 sigma^2)), x and mu_c in millimetres, mu_c the
centroid (centre of mass) of the organ's voxels in the patch. Because the distance is measured in mm,
an anisotropic grid still gives a round blob in physical space. An organ with no voxel in the patch
gets an all-zero target (annotated and absent, or outside the field of view).
"""
from __future__ import annotations

from typing import Sequence, Tuple

import torch

DEFAULT_SIGMA2_MM2 = 150.0  # the paper's sigma^2


def label_centroids(seg: torch.Tensor, num_organs: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Centroids of labels 1..num_organs in a batch of label maps.

    Args:
        seg: integer label maps, shape (B, 1, X, Y, Z) in the array's own axis order.
        num_organs: labels 1..num_organs are organs (0 is background).

    Returns:
        ``(centroids, present)``: centroids in voxel units, shape (B, num_organs, 3), in the same axis
        order as ``seg``'s spatial axes (undefined where absent); ``present`` (B, num_organs) bool.
    """
    s = seg[:, 0]
    labels = torch.arange(1, num_organs + 1, device=seg.device).view(1, -1, 1, 1, 1)
    onehot = (s.unsqueeze(1) == labels).float()                             # (B, n, X, Y, Z)
    count = onehot.sum(dim=(2, 3, 4))                                       # (B, n)
    cents = []
    for axis in range(3):
        other = tuple(2 + a for a in range(3) if a != axis)
        profile = onehot.sum(dim=other)                                     # (B, n, len(axis))
        idx = torch.arange(profile.shape[-1], device=seg.device, dtype=profile.dtype)
        cents.append((profile * idx).sum(-1) / count.clamp(min=1))
    return torch.stack(cents, -1), count > 0


def gaussian_heatmaps(centroids: torch.Tensor, present: torch.Tensor, shape: Sequence[int],
                      spacing_mm: Sequence[float], sigma2_mm2: float = DEFAULT_SIGMA2_MM2) -> torch.Tensor:
    """Gaussian blobs at given centroids.

    Args:
        centroids: (B, n, 3) voxel coordinates, in the axis order of ``shape``.
        present: (B, n) bool; absent organs get zeros.
        shape: spatial shape (X, Y, Z) of the output.
        spacing_mm: voxel size in mm of each spatial axis, same order as ``shape``.
        sigma2_mm2: Gaussian variance sigma^2 in mm^2.

    Returns:
        Heat maps (B, n, X, Y, Z), float32, peak 1 at each present centroid.
    """
    out = None
    for axis in range(3):
        coord = torch.arange(shape[axis], device=centroids.device, dtype=torch.float32)
        d_mm = (coord.view(1, 1, -1) - centroids[..., axis:axis + 1]) * float(spacing_mm[axis])
        g = torch.exp(-d_mm ** 2 / (2 * sigma2_mm2))                         # (B, n, L) separable factor
        view = [g.shape[0], g.shape[1], 1, 1, 1]
        view[2 + axis] = shape[axis]
        out = g.view(view) if out is None else out * g.view(view)
    return out * present.to(out.dtype).view(*present.shape, 1, 1, 1)


def heatmap_targets(seg: torch.Tensor, num_organs: int, spacing_mm: Sequence[float],
                    sigma2_mm2: float = DEFAULT_SIGMA2_MM2) -> torch.Tensor:
    """Heat-map targets (B, num_organs, X, Y, Z) for a batch of label maps (B, 1, X, Y, Z)."""
    cents, present = label_centroids(seg, num_organs)
    return gaussian_heatmaps(cents, present, seg.shape[2:], spacing_mm, sigma2_mm2)


def masked_l2(pred: torch.Tensor, target: torch.Tensor, annotated: torch.Tensor, fg_weight: float = 0.0
              ) -> torch.Tensor:
    """Mean squared error over voxels and the annotated organ channels only.

    Args:
        pred, target: (B, n, X, Y, Z).
        annotated: (B, n) bool; channels of organs that are not annotated in a case carry no loss.
        fg_weight: 0 gives the paper's plain L2. A value a > 0 weights each voxel by 1 + a * target, so
            the few voxels of a blob are not drowned by the background (faster convergence on short budgets).
    """
    w = annotated.to(pred.dtype).view(*annotated.shape, 1, 1, 1)
    n_vox = pred[0, 0].numel()
    err = (pred - target) ** 2
    if fg_weight:
        err = err * (1 + fg_weight * target)
    return (err * w).sum() / (w.sum() * n_vox).clamp(min=1)


class HeatmapLoss(torch.nn.Module):
    """The localizer's loss as nnU-Net calls it, ``loss(output, target)``.

    ``output`` is the network output (B, 1 + n, X, Y, Z), channel 0 being nnU-Net's background head, which is
    ignored; ``target`` is ``[heat-map targets (B, n, X, Y, Z), annotated (B, n) bool]``.
    """

    def __init__(self, fg_weight: float = 0.0):
        super().__init__()
        self.fg_weight = fg_weight

    def forward(self, output: torch.Tensor, target) -> torch.Tensor:
        heat, annotated = target
        return masked_l2(output[:, 1:], heat, annotated, self.fg_weight)
