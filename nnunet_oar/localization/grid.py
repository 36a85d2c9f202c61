"""From nnU-Net's preprocessed grid back to the original image, analytically.

nnU-Net preprocessing (DefaultPreprocessor) takes the reader's array (z, y, x for SimpleITK; our data sets
use SimpleITKIOWithReorient, so that array is the image reoriented to RAS), transposes
it by ``transpose_forward``, crops it to the non-zero bounding box and resamples the crop to the target
spacing with an align-corners=False mapping (skimage ``resize``). Inverting those three steps maps a
continuous voxel coordinate of a preprocessed array (e.g. a heat-map centroid on the 3 mm grid) to a
continuous index of the image the reader produced, and so to a world point in mm, with no resampling of
any array. World points do not depend on the orientation; voxel boxes are then computed on the original
image's own grid.
"""
from __future__ import annotations

from typing import Dict, Sequence

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
