"""Pictures a person looks at: three orthogonal planes with contours, localization boxes and a legend.

Whatever the file's direction, planes are shown in radiological convention: the images are reoriented
to LPS, so the axial plane has the patient's right on the viewer's left and anterior up, and coronal
and sagittal planes have superior up. Boxes are drawn from their world coordinates (``box_mm``).
Colours are the catalogue's (:func:`nnunet_oar.organs.colour`), as in RTSTRUCT and SEG.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import SimpleITK as sitk

from nnunet_oar import organs as catalogue
from nnunet_oar.geometry import world_to_index
from nnunet_oar.io import atomic_path, geometry

PLANES = ("axial", "coronal", "sagittal")


def _rgb(organ: str) -> Tuple[float, float, float]:
    r, g, b = catalogue.colour(organ) if organ in catalogue.ORGANS else (255, 0, 0)
    return r / 255, g / 255, b / 255


def _draw_row(axes, hu: np.ndarray, lab: np.ndarray, spacing_xyz, geom: dict, organs: Dict[str, int],
              boxes: Optional[dict], centre_zyx: np.ndarray, window_zyx: Optional[Tuple[np.ndarray, np.ndarray]],
              label: str = "") -> None:
    """Axial, coronal and sagittal planes through ``centre_zyx`` (LPS arrays), cropped to ``window_zyx``."""
    from matplotlib.patches import Rectangle
    sx, sy, sz = spacing_xyz
    lo_w, hi_w = window_zyx if window_zyx is not None else (np.zeros(3, int), np.array(lab.shape))
    # (plane, row axis, column axis in zyx, aspect, superior up)
    specs = [(0, 1, 2, sy / sx, False), (1, 0, 2, sz / sx, True), (2, 0, 1, sz / sy, True)]
    for ax, name, (plane_axis, row_axis, col_axis, aspect, superior_up) in zip(axes, PLANES, specs):
        index = [slice(None)] * 3
        index[plane_axis] = int(centre_zyx[plane_axis])
        img, seg = hu[tuple(index)], lab[tuple(index)]
        rs, cs = slice(lo_w[row_axis], hi_w[row_axis]), slice(lo_w[col_axis], hi_w[col_axis])
        img, seg = img[rs, cs], seg[rs, cs]
        ax.imshow(img, cmap="gray", vmin=-400, vmax=400, aspect=aspect, origin="lower" if superior_up else "upper",
                  interpolation="nearest")
        for organ, v in organs.items():
            if (seg == v).any():
                ax.contour(seg == v, levels=[0.5], colors=[_rgb(organ)], linewidths=1.2)
            entry = (boxes or {}).get("organs", {}).get(organ, {})
            if entry.get("status") != "found":
                continue
            corners = world_to_index(geom, np.array([entry["box_mm"]["min"], entry["box_mm"]["max"]]))[:, ::-1]
            lo, hi = corners.min(0) - lo_w, corners.max(0) - lo_w                 # continuous (z, y, x)
            if lo[plane_axis] + lo_w[plane_axis] <= centre_zyx[plane_axis] <= hi[plane_axis] + lo_w[plane_axis]:
                ax.add_patch(Rectangle((lo[col_axis], lo[row_axis]), hi[col_axis] - lo[col_axis],
                                       hi[row_axis] - lo[row_axis], fill=False, ls="--", ec=_rgb(organ), lw=1))
        ax.set_xlim(-0.5, img.shape[1] - 0.5)
        ax.set_ylim(*((-0.5, img.shape[0] - 0.5) if superior_up else (img.shape[0] - 0.5, -0.5)))
        ax.set_title(f"{label} {name}".strip(), fontsize=9)
        ax.axis("off")


def _prepare(ct: sitk.Image, labels: sitk.Image, names: Dict[str, int]):
    ct, labels = sitk.DICOMOrient(ct, "LPS"), sitk.DICOMOrient(labels, "LPS")
    lab = sitk.GetArrayFromImage(labels)
    organs = {n: v for n, v in names.items() if n not in ("background", "ignore") and v != 0}
    counts = {n: int((lab == v).sum()) for n, v in organs.items()}
    return ct, sitk.GetArrayFromImage(ct), lab, organs, counts


def _legend_and_save(fig, organs: Dict[str, int], counts: Dict[str, int], spacing_xyz, title: str, dst: Path,
                     key: str = "solid: segmentation, dashed: localization box; radiological view") -> None:
    from matplotlib.patches import Patch
    voxel_ml = float(np.prod(spacing_xyz)) / 1000
    handles = [Patch(color=_rgb(n), label=f"{n} ({counts[n] * voxel_ml:.1f} mL)" if counts[n] else f"{n} (absent)")
               for n in organs]
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 4), frameon=False, fontsize=9)
    fig.suptitle(f"{title}  ({key})", fontsize=10)
    with atomic_path(dst) as tmp:
        fig.savefig(tmp, dpi=90, bbox_inches="tight", format="png")


def organ_montage_png(ct: sitk.Image, labels: sitk.Image, names: Dict[str, int], boxes: Optional[dict], dst: Path,
                      title: str = "", context_mm: float = 40.0) -> List[str]:
    """QA montage: one row per found organ, three planes through that organ's centroid, zoomed to its
    extent plus ``context_mm`` on each side, with every organ's contour and box. Returns the organs shown
    (none found: a single full-size row through the image centre)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    ct, hu, lab, organs, counts = _prepare(ct, labels, names)
    found = [n for n in organs if counts[n]]
    spacing_zyx = np.array(ct.GetSpacing()[::-1])
    fig, axes = plt.subplots(max(len(found), 1), 3, figsize=(11, 3.6 * max(len(found), 1) + 0.8), squeeze=False)
    if not found:
        _draw_row(axes[0], hu, lab, ct.GetSpacing(), geometry(ct), organs, boxes, np.array(lab.shape) // 2, None,
                  "no organ found:")
    for row, organ in zip(axes, found):
        zyx = np.argwhere(lab == organs[organ])
        pad = np.ceil(context_mm / spacing_zyx).astype(int)
        window = (np.maximum(zyx.min(0) - pad, 0), np.minimum(zyx.max(0) + 1 + pad, lab.shape))
        _draw_row(row, hu, lab, ct.GetSpacing(), geometry(ct), organs, boxes, zyx.mean(0).round().astype(int),
                  window, organ)
    _legend_and_save(fig, organs, counts, ct.GetSpacing(), title, dst)
    plt.close(fig)
    return found


def method_comparison_png(cases: List[Tuple[str, sitk.Image, Dict[str, sitk.Image], str]], names: Dict[str, int],
                          dst: Path, title: str = "", context_mm: float = 40.0) -> None:
    """Methods side by side (the paper's Fig. 4): per case two rows (axial, coronal plane through the
    centroid of the organ that differs most), one column per label map (the reference first), each with
    every organ's contour on the CT.

    Args:
        cases: ``[(case, ct, {source: label map on the CT grid}, organ)]``; sources in column order, e.g.
            ``{"reference": ..., "baseline": ..., "two_stage": ...}``.
        names: ``{organ: label value}``, shared by every label map.
    """
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    sources = list(cases[0][2])
    fig, axes = plt.subplots(2 * len(cases), len(sources), figsize=(3.6 * len(sources), 6.6 * len(cases) + 0.8),
                             squeeze=False)
    counts: Dict[str, int] = {}
    for i, (case, ct_image, maps, organ) in enumerate(cases):
        prepared = {s: _prepare(ct_image, m, names) for s, m in maps.items()}
        ct, hu, ref, organs, counts = prepared[sources[0]]
        union = np.argwhere(np.any([p[2] == organs[organ] for p in prepared.values()], axis=0))
        if not len(union):        # the organ is in no map (cannot happen for a scored difference): image centre
            union = np.array([np.array(ref.shape) // 2])
        pad = np.ceil(context_mm / np.array(ct.GetSpacing()[::-1])).astype(int)
        window = (np.maximum(union.min(0) - pad, 0), np.minimum(union.max(0) + 1 + pad, ref.shape))
        centre = np.argwhere(ref == organs[organ]).mean(0) if (ref == organs[organ]).any() else union.mean(0)
        for col, source in enumerate(sources):
            _draw_row(axes[2 * i:2 * i + 2, col], hu, prepared[source][2], ct.GetSpacing(), geometry(ct), organs,
                      None, centre.round().astype(int), window, f"{case} {organ}: {source}")
    _legend_and_save(fig, {o: v for o, v in names.items() if o in counts}, counts, cases[0][1].GetSpacing(), title, dst,
                     "contours; volumes of the last case's reference; radiological view")
    plt.close(fig)
