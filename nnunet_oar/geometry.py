"""Boxes in voxel and world coordinates, and the crop / paste helpers.

Conventions (they meet SimpleITK here, so they are spelled out):
- ``*_xyz`` arrays are in SimpleITK order (x, y, z); ``*_zyx`` arrays in numpy order (z, y, x), as
  returned by ``sitk.GetArrayFromImage``.
- Index boxes are ``start_xyz`` (inclusive) and ``stop_xyz`` (exclusive), in voxels.
- World boxes are axis-aligned ``min_mm`` / ``max_mm`` in the image's physical (LPS) frame.
- A geometry record is the dict of :func:`nnunet_oar.io.geometry`.
"""
from __future__ import annotations

import itertools
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk


def _matrix(geom: Dict[str, list]) -> Tuple[np.ndarray, np.ndarray]:
    direction = np.asarray(geom["direction"], dtype=float).reshape(3, 3)
    m = direction * np.asarray(geom["spacing_xyz"], dtype=float)[None, :]
    return m, np.asarray(geom["origin_xyz"], dtype=float)


def index_to_world(geom: Dict[str, list], index_xyz: np.ndarray) -> np.ndarray:
    """Continuous voxel index (..., 3) in x,y,z order -> world point (..., 3) in mm."""
    m, origin = _matrix(geom)
    return np.asarray(index_xyz, dtype=float) @ m.T + origin


def world_to_index(geom: Dict[str, list], point_mm: np.ndarray) -> np.ndarray:
    """World point (..., 3) in mm -> continuous voxel index (..., 3) in x,y,z order."""
    m, origin = _matrix(geom)
    return (np.asarray(point_mm, dtype=float) - origin) @ np.linalg.inv(m).T


def mask_bbox_xyz(mask_zyx: np.ndarray) -> Optional[Tuple[np.ndarray, np.ndarray]]:
    """Bounding box of a non-empty boolean mask.

    Args:
        mask_zyx: boolean array (z, y, x).

    Returns:
        ``(start_xyz, stop_xyz)`` voxel indices (stop exclusive), or ``None`` for an empty mask.
    """
    if not mask_zyx.any():
        return None
    start, stop = [], []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        nz = np.flatnonzero(mask_zyx.any(axis=other))
        start.append(nz[0])
        stop.append(nz[-1] + 1)
    return np.array(start[::-1]), np.array(stop[::-1])


def index_box_to_world(geom: Dict[str, list], start_xyz: Sequence[int], stop_xyz: Sequence[int]
                       ) -> Tuple[np.ndarray, np.ndarray]:
    """World (mm) axis-aligned extent of the voxels ``start..stop-1``, voxel cells included.

    Returns:
        ``(min_mm, max_mm)``, each (3,) in world x,y,z.
    """
    lo = np.asarray(start_xyz, dtype=float) - 0.5
    hi = np.asarray(stop_xyz, dtype=float) - 0.5
    corners = np.array([[(lo, hi)[c][a] for a, c in enumerate(bits)] for bits in itertools.product((0, 1), repeat=3)])
    world = index_to_world(geom, corners)
    return world.min(0), world.max(0)


def world_box_to_index(geom: Dict[str, list], min_mm: Sequence[float], max_mm: Sequence[float]
                       ) -> Tuple[np.ndarray, np.ndarray, bool]:
    """Voxels whose centres lie in a world box, clipped to the image.

    Args:
        geom: geometry record of the image.
        min_mm, max_mm: world box corners (3,), mm.

    Returns:
        ``(start_xyz, stop_xyz, clipped)``: voxel indices (stop exclusive, at least one voxel wide) and
        whether the box had to be clipped to the image bounds.
    """
    lo, hi = np.asarray(min_mm, dtype=float), np.asarray(max_mm, dtype=float)
    corners = np.array([[(lo, hi)[c][a] for a, c in enumerate(bits)] for bits in itertools.product((0, 1), repeat=3)])
    ci = world_to_index(geom, corners)
    # small tolerance so a box edge exactly on a voxel centre includes that voxel
    start = np.ceil(ci.min(0) - 1e-6).astype(int)
    stop = np.floor(ci.max(0) + 1e-6).astype(int) + 1
    size = np.asarray(geom["size_xyz"], dtype=int)
    c_start, c_stop = np.clip(start, 0, size), np.clip(stop, 0, size)
    clipped = bool((c_start != start).any() or (c_stop != stop).any())
    c_stop = np.maximum(c_stop, np.minimum(c_start + 1, size))
    c_start = np.minimum(c_start, c_stop - 1)
    return c_start, c_stop, clipped


def crop_image(image: sitk.Image, start_xyz: Sequence[int], stop_xyz: Sequence[int]) -> sitk.Image:
    """Crop an image to an index box; the crop keeps spacing and direction and gets the matching origin,
    so it lies exactly where it was in world space."""
    start = [int(v) for v in start_xyz]
    size = [int(b - a) for a, b in zip(start_xyz, stop_xyz)]
    return sitk.RegionOfInterest(image, size, start)


def crop_zyx(array_zyx: np.ndarray, start_xyz: Sequence[int], stop_xyz: Sequence[int]) -> np.ndarray:
    """The numpy view (z, y, x) of an index box given in x,y,z order."""
    (x0, y0, z0), (x1, y1, z1) = start_xyz, stop_xyz
    return array_zyx[z0:z1, y0:y1, x0:x1]


def paste_zyx(full_zyx: np.ndarray, crop: np.ndarray, start_xyz: Sequence[int]) -> None:
    """Write ``crop`` (z, y, x) into ``full_zyx`` in place at ``start_xyz`` (x, y, z)."""
    stop_xyz = np.asarray(start_xyz) + np.asarray(crop.shape[::-1])
    crop_zyx(full_zyx, start_xyz, stop_xyz)[...] = crop


def centroid_mm(geom: Dict[str, list], mask_zyx: np.ndarray) -> Optional[np.ndarray]:
    """World centroid (mm, x,y,z) of a boolean mask (z, y, x), or ``None`` if it is empty."""
    zyx = np.argwhere(mask_zyx)
    if len(zyx) == 0:
        return None
    return index_to_world(geom, zyx.mean(0)[::-1])
