"""From nnU-Net's preprocessed grid back to the original image, analytically.

nnU-Net preprocessing (DefaultPreprocessor) takes the reader's array (z, y, x for SimpleITK; our data sets
use SimpleITKIOWithReorient, so that array is the image reoriented to RAS), transposes
it by ``transpose_forward``, crops it to the non-zero bounding box and resamples the crop to the target
spacing with an align-corners=False mapping (skimage ``resize``, and torch's ``interpolate`` in the
torch resampling the localizer's plans name). Inverting those three steps maps a
continuous voxel coordinate of a preprocessed array (e.g. a heat-map centroid on the 3 mm grid) to a
continuous index of the image the reader produced, and so to a world point in mm, with no resampling of
any array. World points do not depend on the orientation; voxel boxes are then computed on the original
image's own grid.

The same mapping gives the scanned extent (:func:`scanned_extent_mm`): the world extent of the voxels that
hold the patient, which boxes are kept in along the body axis (:func:`nnunet_oar.localization.boxes.into_scan`).
"""
from __future__ import annotations

import itertools
from typing import Dict, Optional, Sequence, Tuple

import numpy as np

from nnunet_oar.geometry import index_to_world


def reader_geometry(properties: dict, transpose_forward: Sequence[int]) -> Dict[str, list]:
    """Geometry record (x,y,z order) of the image as nnU-Net's reader delivered it (reoriented, for
    SimpleITKIOWithReorient), from the case properties."""
    s = properties["sitk_stuff"]
    size_xyz = np.asarray(properties["shape_before_cropping"])[np.argsort(transpose_forward)][::-1]
    return {"size_xyz": [int(v) for v in size_xyz], "spacing_xyz": list(s["spacing"]),
            "origin_xyz": list(s["origin"]), "direction": list(s["direction"])}


def preprocessed_to_original_index(coord: np.ndarray, preprocessed_shape: Sequence[int], properties: dict,
                                   transpose_forward: Sequence[int]) -> np.ndarray:
    """Continuous preprocessed voxel coordinates -> continuous SimpleITK index of the reader's image.

    Args:
        coord: (..., 3) coordinates in the preprocessed array's axis order.
        preprocessed_shape: spatial shape of the preprocessed array.
        properties: nnU-Net's properties of the case (bbox, shapes).
        transpose_forward: the plans' ``transpose_forward``.

    Returns:
        (..., 3) continuous index in SimpleITK x,y,z order.
    """
    coord = np.asarray(coord, float)
    cropped_shape = np.asarray(properties["shape_after_cropping_and_before_resampling"], float)
    scale = cropped_shape / np.asarray(preprocessed_shape, float)
    cropped = (coord + 0.5) * scale - 0.5
    bbox_start = np.array([b[0] for b in properties["bbox_used_for_cropping"]], float)
    transposed = cropped + bbox_start
    zyx = transposed[..., np.argsort(transpose_forward)]                      # undo transpose_forward
    return zyx[..., ::-1]


def preprocessed_to_world(coord: np.ndarray, preprocessed_shape: Sequence[int], properties: dict,
                          transpose_forward: Sequence[int]) -> np.ndarray:
    """Continuous preprocessed voxel coordinates (..., 3) -> world points (..., 3) in mm."""
    index = preprocessed_to_original_index(coord, preprocessed_shape, properties, transpose_forward)
    return index_to_world(reader_geometry(properties, transpose_forward), index)


# above air and a scanner's padding (-1024), below soft tissue and bone (lung lies below it, but no slice
# through a patient is all lung): a slice with voxels above it holds the patient
BODY_HU = -500.0


def body_threshold(plans_manager, configuration_manager) -> Optional[float]:
    """:data:`BODY_HU` in the preprocessed (normalised) intensities of a CT-normalised configuration;
    ``None`` for other normalisations (no scanned extent is then taken).

    nnU-Net's ``CTNormalization`` clips to the foreground's 0.5-99.5 percentiles before it normalises; where
    that floor lies above ``BODY_HU``, the threshold is 50 HU above the floor, clear of the overshoot of
    nnU-Net's cubic resampling at the edge of the scan.
    """
    if configuration_manager.normalization_schemes[0] != "CTNormalization":
        return None
    p = plans_manager.foreground_intensity_properties_per_channel["0"]
    hu = max(BODY_HU, p["percentile_00_5"] + 50.0)
    return (hu - p["mean"]) / max(p["std"], 1e-8)


def scanned_extent_mm(data: np.ndarray, threshold: float, properties: dict, transpose_forward: Sequence[int]
                      ) -> Optional[Tuple[np.ndarray, np.ndarray]]:
    """World extent of the voxels of a preprocessed case above ``threshold`` (:func:`body_threshold`).

    Args:
        data: preprocessed case (channels, *spatial), channel 0 the CT.
        threshold: preprocessed intensity that separates the patient from air and padding.
        properties: nnU-Net's properties of the case; transpose_forward: the plans' ``transpose_forward``.

    Returns:
        ``(min_mm, max_mm)``, each (3,) world x,y,z in mm, voxel cells included; ``None`` when no voxel is
        above the threshold.
    """
    body = np.asarray(data[0]) > threshold
    if not body.any():
        return None
    # (3, 2): per axis, the first and last voxel holding the patient, then their outer cell edges
    ends = np.array([np.flatnonzero(body.any(axis=tuple(a for a in range(3) if a != k)))[[0, -1]] for k in range(3)])
    edges = ends + np.array([-0.5, 0.5])
    corners = np.array([[edges[k, b] for k, b in enumerate(bits)] for bits in itertools.product((0, 1), repeat=3)])
    world = preprocessed_to_world(corners, body.shape, properties, transpose_forward)
    return world.min(0), world.max(0)


def scan_z_mm(data: np.ndarray, properties: dict, plans_manager, configuration_manager
              ) -> Optional[Tuple[float, float]]:
    """World z extent ``(min, max)`` in mm of the patient in a preprocessed case (:func:`scanned_extent_mm`
    at :func:`body_threshold`), or ``None`` when it cannot be told."""
    threshold = body_threshold(plans_manager, configuration_manager)
    extent = None if threshold is None else scanned_extent_mm(data, threshold, properties,
                                                              plans_manager.transpose_forward)
    return None if extent is None else (float(extent[0][2]), float(extent[1][2]))
