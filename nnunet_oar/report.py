"""Pictures and reports a person looks at: the three-plane preview with contours and boxes."""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional

import numpy as np
import SimpleITK as sitk

from nnunet_oar.geometry import world_to_index
from nnunet_oar.io import atomic_path, geometry


def preview_png(ct: sitk.Image, labels: sitk.Image, names: Dict[str, int], boxes: Optional[dict], dst: Path,
                title: str = "") -> None:
    """Axial, coronal and sagittal planes with each organ's predicted contour, its localization box where
    the plane cuts it, and a legend with volumes.

    Whatever the file's direction, the planes are shown in radiological convention (the images are
    reoriented to LPS: axial with the patient's right on the viewer's left and anterior up, coronal and
    sagittal with superior up). Boxes are drawn from their world coordinates (``box_mm``). The planes pass
    through the centroid of the largest predicted organ (the image centre if none).
    """
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch, Rectangle

    ct, labels = sitk.DICOMOrient(ct, "LPS"), sitk.DICOMOrient(labels, "LPS")
    hu, lab, geom = sitk.GetArrayFromImage(ct), sitk.GetArrayFromImage(labels), geometry(ct)
    sx, sy, sz = ct.GetSpacing()
    organs = {n: v for n, v in names.items() if v != 0}
    colours = {n: plt.cm.tab10(i % 10) for i, n in enumerate(organs)}
    counts = {n: int((lab == v).sum()) for n, v in organs.items()}
    biggest = max(counts, key=counts.get) if counts and max(counts.values()) else None
    centre = (np.argwhere(lab == organs[biggest]).mean(0).round().astype(int) if biggest
              else np.array(lab.shape) // 2)                                   # (z, y, x)
    # (name, 2D slice, row axis, column axis in zyx, aspect, superior-up flip)
    planes = [("axial", hu[centre[0]], lab[centre[0]], 1, 2, sy / sx, False),
              ("coronal", hu[:, centre[1]], lab[:, centre[1]], 0, 2, sz / sx, True),
              ("sagittal", hu[:, :, centre[2]], lab[:, :, centre[2]], 0, 1, sz / sy, True)]
    fig, axes = plt.subplots(1, 3, figsize=(15, 5.5))
    for ax, (name, img, seg, row_axis, col_axis, aspect, superior_up) in zip(axes, planes):
        origin = "lower" if superior_up else "upper"
        ax.imshow(img, cmap="gray", vmin=-400, vmax=400, aspect=aspect, origin=origin, interpolation="nearest")
        plane_axis = ({0, 1, 2} - {row_axis, col_axis}).pop()
        for organ, v in organs.items():
            if (seg == v).any():
                ax.contour(seg == v, levels=[0.5], colors=[colours[organ]], linewidths=1.2)
            entry = (boxes or {}).get("organs", {}).get(organ, {})
            if entry.get("status") != "found":
                continue
            corners = world_to_index(geom, np.array([entry["box_mm"]["min"], entry["box_mm"]["max"]]))[:, ::-1]
            lo, hi = corners.min(0), corners.max(0)                            # continuous (z, y, x)
            if lo[plane_axis] <= centre[plane_axis] <= hi[plane_axis]:
                ax.add_patch(Rectangle((lo[col_axis], lo[row_axis]), hi[col_axis] - lo[col_axis],
                                       hi[row_axis] - lo[row_axis], fill=False, ls="--", ec=colours[organ], lw=1))
        ax.set_title(name)
        ax.axis("off")
    voxel_ml = sx * sy * sz / 1000
    handles = [Patch(color=colours[n], label=f"{n} ({counts[n] * voxel_ml:.0f} mL)") for n in organs]
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 5), frameon=False)
    fig.suptitle(title + "  (solid: segmentation, dashed: localization box; radiological view)")
    with atomic_path(dst) as tmp:
        fig.savefig(tmp, dpi=90, bbox_inches="tight")
    plt.close(fig)
