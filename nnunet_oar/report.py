"""Pictures and reports a person looks at: the three-plane preview with contours and boxes."""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional

import numpy as np
import SimpleITK as sitk

from nnunet_oar.io import atomic_path


def preview_png(ct: sitk.Image, labels: sitk.Image, names: Dict[str, int], boxes: Optional[dict], dst: Path,
                title: str = "") -> None:
    """Axial, coronal and sagittal planes of a CT (numpy index space, aspect from the spacing), with each
    organ's predicted contour and its localization box where the plane cuts it, and a legend.

    The planes pass through the centroid of the largest predicted organ (the image centre if none).
    """
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch, Rectangle

    hu = sitk.GetArrayFromImage(ct)
    lab = sitk.GetArrayFromImage(labels)
    sx, sy, sz = ct.GetSpacing()
    organs = {n: v for n, v in names.items() if v != 0}
    colours = {n: plt.cm.tab10(i % 10) for i, n in enumerate(organs)}
    counts = {n: int((lab == v).sum()) for n, v in organs.items()}
    biggest = max(counts, key=counts.get) if counts and max(counts.values()) else None
    z, y, x = (np.argwhere(lab == organs[biggest]).mean(0).round().astype(int) if biggest
               else np.array(lab.shape) // 2)
    planes = [("axial", hu[z], lab[z], sy / sx, (0, 1)), ("coronal", hu[:, y], lab[:, y], sz / sx, (0, 2)),
              ("sagittal", hu[:, :, x], lab[:, :, x], sz / sy, (1, 2))]
    fig, axes = plt.subplots(1, 3, figsize=(15, 5.5))
    for ax, (name, img, seg, aspect, (row_axis, col_axis)) in zip(axes, planes):
        ax.imshow(img, cmap="gray", vmin=-400, vmax=400, aspect=aspect, origin="lower", interpolation="nearest")
        for organ, v in organs.items():
            if (seg == v).any():
                ax.contour(seg == v, levels=[0.5], colors=[colours[organ]], linewidths=1.2, origin="lower")
            entry = (boxes or {}).get("organs", {}).get(organ, {})
            if entry.get("status") == "found":
                start = entry["box_index_xyz"]["start"][::-1]       # z, y, x
                stop = entry["box_index_xyz"]["stop"][::-1]
                plane_axis = ({0, 1, 2} - {row_axis, col_axis}).pop()
                pos = (z, y, x)[plane_axis]
                if start[plane_axis] <= pos < stop[plane_axis]:
                    r0, r1 = start[row_axis], stop[row_axis]
                    c0, c1 = start[col_axis], stop[col_axis]
                    ax.add_patch(Rectangle((c0 - 0.5, r0 - 0.5), c1 - c0, r1 - r0, fill=False, ls="--",
                                           ec=colours[organ], lw=1))
        ax.set_title(f"{name}")
        ax.axis("off")
    handles = [Patch(color=colours[n], label=f"{n} ({counts[n] * sx * sy * sz / 1000:.0f} mL)") for n in organs]
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 5), frameon=False)
    fig.suptitle(title + "  (solid: segmentation, dashed: localization box)")
    with atomic_path(dst) as tmp:
        fig.savefig(tmp, dpi=90, bbox_inches="tight")
    plt.close(fig)
