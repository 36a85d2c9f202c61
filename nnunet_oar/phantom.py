"""Synthetic CT phantoms written in VISCERAL layout, with known truth.

Each case is an abdomen/lower-thorax torso built from analytic shapes in patient (LPS) millimetres:
body outline, subcutaneous fat, muscle wall, visceral fat with bowel and gas, spine with discs,
ribs, pelvis, lungs, and the VISCERAL organs at plausible relative positions and HU. Per case the
anatomy is scaled and shifted, the field of view varies (so some organs are cut or absent), the
spacing is anisotropic in some cases and the direction flipped in others, some structures are left
unannotated, some have two annotators, and the CT carries noise and partial-volume blur.

Coordinates: anatomy is defined at adult size around the centre of L1 (x to patient left, y to
posterior, z to superior, mm) and multiplied by ``scale``; ``scale=0.5`` gives a small torso that a
demo trains on 2 CPU cores in minutes.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import SimpleITK as sitk
from tqdm import tqdm

from nnunet_oar import organs as catalogue
from nnunet_oar.io import InputError, atomic_dir, write_image

MODALITY, REGION = "CTce", "ThAb"

# Organs that the phantom paints (a subset of the VISCERAL catalogue; thyroid and trachea lie above its FOV).
PHANTOM_ORGANS = [
    "liver", "spleen", "pancreas", "gallbladder", "urinary_bladder", "aorta", "lung_right", "lung_left",
    "sternum", "vertebra_L1", "kidney_right", "kidney_left", "adrenal_gland_right", "adrenal_gland_left",
    "psoas_major_right", "psoas_major_left", "rectus_abdominis_right", "rectus_abdominis_left",
]


@dataclass
class _Anatomy:
    """Per-case random variation: body scale per axis (unitless), organ shifts (mm) and sizes (unitless)."""
    body: np.ndarray
    shift: Dict[str, np.ndarray]
    size: Dict[str, float]


def _ellipsoid(c, r):
    def f(x, y, z):
        return ((x - c[0]) / r[0]) ** 2 + ((y - c[1]) / r[1]) ** 2 + ((z - c[2]) / r[2]) ** 2 <= 1
    return f


def _cylinder(cx, cy, rx, ry, z0, z1):
    def f(x, y, z):
        return (((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 <= 1) & (z >= z0) & (z <= z1)
    return f


def _psoas(side: float):
    def f(x, y, z):
        t = np.clip(-z / 230.0, 0, 1)  # 0 at L1, 1 at the pelvis
        r = 10 + 16 * t
        return ((x - side * (32 + 18 * t)) ** 2 + (y - 48) ** 2 <= r ** 2) & (z <= 5) & (z >= -235)
    return f


def _vertebra_l1(x, y, z):
    body = ((x / 22) ** 2 + ((y - 52) / 20) ** 2 <= 1)
    process = (np.abs(x) <= 6) & (y >= 70) & (y <= 100)
    return (body | process) & (np.abs(z) <= 14.5)


def _shapes(a: _Anatomy) -> List[tuple]:
    """Paint list ``(label name or None, HU, shape)`` in paint order, at adult size (mm)."""
    def ell(name, c, r):
        return _ellipsoid(np.asarray(c) + a.shift[name], np.asarray(r) * a.size[name])

    spine = lambda x, y, z: ((x / 22) ** 2 + ((y - 52) / 20) ** 2 <= 1)
    discs = lambda x, y, z: spine(x, y, z) & (np.abs(((z + 17.5) % 35) - 17.5) > 14.5)
    spinous = lambda x, y, z: (np.abs(x) <= 6) & (y >= 70) & (y <= 100) & (np.abs(((z + 17.5) % 35) - 17.5) <= 14.5)
    ribs = lambda x, y, z: ((x / 150) ** 2 + (y / 100) ** 2 <= 1) & ((x / 141) ** 2 + (y / 91) ** 2 > 1) \
        & (z >= 10) & ((z % 25) < 8) & (y > -70)
    pelvis = lambda x, y, z: (z < -120) & (z > -240) & (((np.abs(x) - 95) / 28) ** 2 + ((y - 40) / 50) ** 2 <= 1) \
        & (((np.abs(x) - 95) / 20) ** 2 + ((y - 40) / 42) ** 2 > 1)
    cavity = lambda x, y, z: (x / 140) ** 2 + (y / 90) ** 2 <= 1
    return [
        (None, -100, lambda x, y, z: ((x / 165) ** 2 + ((y - 5) / 115) ** 2 <= 1)),   # body, subcutaneous fat
        (None, 45, lambda x, y, z: (x / 150) ** 2 + (y / 100) ** 2 <= 1),             # muscle wall
        (None, -85, cavity),                                                           # visceral fat
        (None, 30, lambda x, y, z: cavity(x, y, z) & (z < -30) & (np.sin(x / 9) * np.sin(y / 7) * np.sin(z / 11) > 0.05)),
        (None, -900, lambda x, y, z: cavity(x, y, z) & (z < -40) & (np.sin(x / 9 + 1) * np.sin(y / 7) * np.sin(z / 11) > 0.6)),
        ("rectus_abdominis_right", 50, _cylinder(-35, -100, 28, 9, -230, 100)),
        ("rectus_abdominis_left", 50, _cylinder(35, -100, 28, 9, -230, 100)),
        ("lung_right", -820, ell("lung_right", (-75, 15, 150), (62, 75, 115))),
        ("lung_left", -820, ell("lung_left", (75, 15, 150), (62, 75, 115))),
        (None, 300, spine), (None, 80, discs), (None, 300, spinous),
        ("vertebra_L1", 450, _vertebra_l1),
        (None, 500, ribs), (None, 500, pelvis),
        ("sternum", 400, _cylinder(0, -100, 14, 8, 100, 240)),
        ("liver", 60, ell("liver", (-55, 0, 45), (80, 70, 65))),
        ("gallbladder", 10, ell("gallbladder", (-40, -50, 5), (14, 14, 28))),
        ("spleen", 50, ell("spleen", (82, 45, 55), (28, 28, 50))),
        ("kidney_right", 150, ell("kidney_right", (-62, 55, -25), (26, 30, 52))),
        ("kidney_left", 150, ell("kidney_left", (62, 55, -10), (26, 30, 52))),
        ("adrenal_gland_right", 30, ell("adrenal_gland_right", (-45, 45, 38), (9, 13, 16))),
        ("adrenal_gland_left", 30, ell("adrenal_gland_left", (45, 45, 52), (9, 13, 16))),
        ("pancreas", 45, ell("pancreas", (15, 10, 10), (65, 14, 14))),
        ("aorta", 180, _cylinder(18 + a.shift["aorta"][0], 22, 12, 12, -140, 240)),
        (None, 140, _cylinder(-20, 22, 11, 11, -140, 120)),                            # inferior vena cava
        ("psoas_major_right", 55, _psoas(-1.0)),
        ("psoas_major_left", 55, _psoas(1.0)),
        ("urinary_bladder", 15, ell("urinary_bladder", (0, -30, -215), (45, 35, 35))),
    ]


def make_case(rng: np.random.Generator, scale: float = 0.5, spacing_xyz: Sequence[float] = (2.0, 2.0, 2.5),
              flip_xy: bool = False, z_range_mm: Sequence[float] = (-260, 240)):
    """Build one phantom.

    Args:
        rng: random generator (all per-case variation comes from it).
        scale: anatomy size relative to an adult.
        spacing_xyz: voxel size in mm, x,y,z.
        flip_xy: use direction diag(-1, -1, 1) instead of identity.
        z_range_mm: superior-inferior field of view at adult size, relative to L1.

    Returns:
        ``(ct, labels, names)``: CT image (int16 HU), label image (uint8, 0 = background, k = names[k-1])
        on the same grid, and the painted organ names.
    """
    a = _Anatomy(body=rng.uniform(0.9, 1.1, 3),
                 shift={n: rng.normal(0, 6, 3) for n in PHANTOM_ORGANS},
                 size={n: rng.uniform(0.85, 1.15) for n in PHANTOM_ORGANS})
    k = scale * a.body                      # adult mm -> phantom mm, per axis
    half_xy = np.array([180.0, 130.0]) * k[:2]
    lo = np.array([-half_xy[0], -half_xy[1] + 5 * k[1], z_range_mm[0] * k[2]])
    hi = np.array([half_xy[0], half_xy[1] + 5 * k[1], z_range_mm[1] * k[2]])
    spacing = np.asarray(spacing_xyz, dtype=float)
    size = np.ceil((hi - lo) / spacing).astype(int)
    direction = np.diag([-1.0, -1.0, 1.0]) if flip_xy else np.eye(3)
    table = rng.uniform(-30, 30, 3)         # patient position on the table: world = anatomy + table
    origin = table + np.where(np.diag(direction) > 0, lo + spacing / 2, hi - spacing / 2)

    # world coordinates of every voxel, then back to adult anatomy coordinates
    iz, iy, ix = np.meshgrid(*[np.arange(n, dtype=np.float32) for n in size[::-1]], indexing="ij")
    idx = np.stack([ix, iy, iz], -1)
    world = (idx * spacing) @ direction.T + origin
    x, y, z = [((world[..., i] - table[i]) / k[i]).astype(np.float32) for i in range(3)]

    hu = np.full(x.shape, -1000.0, dtype=np.float32)
    lab = np.zeros(x.shape, dtype=np.uint8)
    names = [n for n in PHANTOM_ORGANS]
    for name, value, shape in _shapes(a):
        m = shape(x, y, z)
        if name is not None:
            m &= hu > -950 if name not in ("lung_right", "lung_left") else (x / 140) ** 2 + (y / 90) ** 2 <= 1
            lab[m] = names.index(name) + 1
        hu[m] = value
    ct = sitk.GetImageFromArray(hu)
    ct.SetSpacing(spacing.tolist())
    ct.SetOrigin(origin.tolist())
    ct.SetDirection(direction.ravel().tolist())
    ct = sitk.SmoothingRecursiveGaussian(ct, 0.6 * float(spacing.min()))   # partial volume
    noisy = sitk.GetArrayFromImage(ct) + rng.normal(0, 20, hu.shape).astype(np.float32)
    out = sitk.GetImageFromArray(np.clip(np.round(noisy), -1024, 3071).astype(np.int16))
    out.CopyInformation(ct)
    labels = sitk.GetImageFromArray(lab)
    labels.CopyInformation(ct)
    return out, labels, names


def case_name(index: int) -> str:
    """VISCERAL-style volume stem of phantom ``index``: ``{patient}_{volume}_{modality}_{region}``."""
    return f"{10000100 + index}_1_{MODALITY}_{REGION}"


def write_phantoms(out_dir: Path, n: int, seed: int = 0, scale: float = 0.5,
                   organs: Optional[Sequence[str]] = None, p_unannotated: float = 0.1,
                   p_second_annotator: float = 0.1, progress: bool = True) -> List[str]:
    """Write ``n`` phantoms in VISCERAL layout into ``out_dir`` (replaced atomically).

    Files per case: ``{stem}.nii.gz`` (CT, HU) and one ``{stem}_{radlex}_{annotator}.nii.gz`` mask per
    annotated structure. An annotated structure outside the field of view gets an all-zero mask (known
    absent); an unannotated one gets no file. Deterministic per ``seed``.

    Args:
        out_dir: destination folder.
        n: number of cases.
        seed: random seed.
        scale: anatomy size relative to an adult (0.5 = small and fast).
        organs: structures to annotate (canonical names); default all painted ones.
        p_unannotated: probability that a structure is left unannotated in a case.
        p_second_annotator: probability that a structure gets a second annotator's mask.

    Returns:
        The case stems written.
    """
    organs = list(organs) if organs is not None else list(PHANTOM_ORGANS)
    for name in organs:
        if name not in PHANTOM_ORGANS:
            raise InputError(f"the phantom does not paint {name!r}; it paints {', '.join(PHANTOM_ORGANS)}")
    rng = np.random.default_rng(seed)
    stems = []
    with atomic_dir(out_dir) as tmp:
        for i in tqdm(range(n), desc="phantoms", disable=not progress):
            spacing = (rng.choice([1.5, 2.0]),) * 2 + (float(rng.choice([2.0, 2.5, 3.0])),)
            z_lo = rng.uniform(-260, -200) if rng.random() > 0.2 else rng.uniform(-150, -110)
            z_hi = rng.uniform(200, 240) if rng.random() > 0.15 else rng.uniform(60, 100)
            ct, labels, names = make_case(rng, scale, spacing, flip_xy=rng.random() < 0.3, z_range_mm=(z_lo, z_hi))
            stem = case_name(i)
            write_image(ct, tmp / f"{stem}.nii.gz")
            lab = sitk.GetArrayViewFromImage(labels)
            for name in organs:
                if rng.random() < p_unannotated:
                    continue
                mask = (lab == names.index(name) + 1).astype(np.uint8)
                annotators = [int(rng.integers(1, 9))]
                if rng.random() < p_second_annotator:
                    annotators.append(annotators[0] % 8 + 1)
                for j, annotator in enumerate(annotators):
                    m = sitk.GetImageFromArray(mask)
                    m.CopyInformation(ct)
                    if j:   # a second, more conservative annotator
                        m = sitk.BinaryErode(m, [1, 1, 1])
                    write_image(m, tmp / f"{stem}_{catalogue.get(name).radlex}_{annotator}.nii.gz")
            stems.append(stem)
    return stems
