"""The organ catalogue: the one place that knows each structure.

Every stage refers to organs by their canonical name (``liver``, ``parotid_left``). This module maps
those names to the ids used by the source data sets (VISCERAL RadLex ids, OpenKBP ROI file names),
to the label values of the nnU-Net data sets we write, and to their left/right partners.

Label values: an nnU-Net data set needs consecutive labels (background 0, then 1..n). A data set made
from an organ *set* (VISCERAL, OpenKBP) numbers its organs in catalogue order; a subset keeps that
order and is renumbered consecutively. :func:`labels_for` is the only function that does this.

The catalogue is open: :func:`register` adds a user's organs (``--catalogue my_organs.json`` on any
command, or ``$nnunet_oar_catalogue``, which nnU-Net's subprocesses inherit), after the built-in ones in
catalogue order; a models folder records the entries of its organs (``catalogue.json``), so ``predict``
elsewhere names and colours them the same way without the file. Label values stay per data set (nnU-Net
needs them consecutive), so a user file gives none.
"""
from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Tuple

from nnunet_oar.io import InputError


@dataclass(frozen=True)
class Organ:
    """One anatomical structure.

    Attributes:
        name: canonical name, used in dataset.json, file names and JSON outputs.
        organ_set: the source data set family, ``"visceral"`` or ``"openkbp"``.
        radlex: VISCERAL RadLex id (the number in VISCERAL mask file names), if any.
        openkbp_roi: OpenKBP ROI file stem (``Brainstem`` for ``Brainstem.csv``), if any.
        partner: canonical name of the contralateral structure, for paired organs.
        hu: typical CT number in Hounsfield units (used by the synthetic phantoms).
        sct: keyword of the SNOMED CT concept in pydicom's code dictionary (``codes.SCT.<sct>``), used to
            code DICOM SEG segments (laterality comes from :attr:`side`); ``None`` where the dictionary has none.
        tg263: the AAPM TG-263 structure name (``Kidney_L``), the default ROI name in RTSTRUCT and SEG; the
            psoas and rectus abdominis are not in TG-263's table and are named by its rules.
        colour: display colour (r, g, b in 0..255); ``None``: the palette's, by catalogue position.
        snomed: SNOMED CT code value of the structure, for DICOM SEG where ``sct`` has no keyword.
    """

    name: str
    organ_set: str
    radlex: Optional[int] = None
    openkbp_roi: Optional[str] = None
    partner: Optional[str] = None
    hu: float = 40.0
    sct: Optional[str] = None
    tg263: Optional[str] = None
    colour: Optional[Tuple[int, int, int]] = None
    snomed: Optional[str] = None

    @property
    def side(self) -> Optional[str]:
        """``"left"``, ``"right"`` or ``None`` for unpaired structures."""
        if self.partner is None:
            return None
        return "left" if self.name.endswith("_left") or "_left_" in self.name else "right"


_ORGANS: List[Organ] = [
    # VISCERAL Anatomy 3 structures (RadLex id -> name), in the order of their RadLex ids.
    Organ("liver", "visceral", radlex=58, hu=60, sct="Liver", tg263="Liver"),
    Organ("spleen", "visceral", radlex=86, hu=50, sct="Spleen", tg263="Spleen"),
    Organ("pancreas", "visceral", radlex=170, hu=45, sct="Pancreas", tg263="Pancreas"),
    Organ("gallbladder", "visceral", radlex=187, hu=10, sct="Gallbladder", tg263="Gallbladder"),
    Organ("urinary_bladder", "visceral", radlex=237, hu=15, sct="Bladder", tg263="Bladder"),
    Organ("aorta", "visceral", radlex=480, hu=180, sct="Aorta", tg263="A_Aorta"),
    Organ("trachea", "visceral", radlex=1247, hu=-900, sct="Trachea", tg263="Trachea"),
    Organ("lung_right", "visceral", radlex=1302, partner="lung_left", hu=-820, sct="Lung", tg263="Lung_R"),
    Organ("lung_left", "visceral", radlex=1326, partner="lung_right", hu=-820, sct="Lung", tg263="Lung_L"),
    Organ("sternum", "visceral", radlex=2473, hu=400, sct="Sternum", tg263="Sternum"),
    Organ("thyroid_gland", "visceral", radlex=7578, hu=90, sct="Thyroid", tg263="Glnd_Thyroid"),
    Organ("vertebra_L1", "visceral", radlex=29193, hu=450, sct="L1Vertebra", tg263="VB_L1"),
    Organ("kidney_right", "visceral", radlex=29662, partner="kidney_left", hu=150, sct="Kidney", tg263="Kidney_R"),
    Organ("kidney_left", "visceral", radlex=29663, partner="kidney_right", hu=150, sct="Kidney", tg263="Kidney_L"),
    Organ("adrenal_gland_right", "visceral", radlex=30324, partner="adrenal_gland_left", hu=30, sct="AdrenalGland",
          tg263="Glnd_Adrenal_R"),
    Organ("adrenal_gland_left", "visceral", radlex=30325, partner="adrenal_gland_right", hu=30, sct="AdrenalGland",
          tg263="Glnd_Adrenal_L"),
    Organ("psoas_major_right", "visceral", radlex=32248, partner="psoas_major_left", hu=55, tg263="Musc_Psoas_R"),
    Organ("psoas_major_left", "visceral", radlex=32249, partner="psoas_major_right", hu=55, tg263="Musc_Psoas_L"),
    Organ("rectus_abdominis_right", "visceral", radlex=40357, partner="rectus_abdominis_left", hu=50,
          tg263="Musc_RectusAbdominis_R"),
    Organ("rectus_abdominis_left", "visceral", radlex=40358, partner="rectus_abdominis_right", hu=50,
          tg263="Musc_RectusAbdominis_L"),
    # OpenKBP head-and-neck OARs (ROI file stem -> name).
    Organ("brainstem", "openkbp", openkbp_roi="Brainstem", hu=35, sct="BrainStem", tg263="Brainstem"),
    Organ("spinal_cord", "openkbp", openkbp_roi="SpinalCord", hu=35, sct="SpinalCord", tg263="SpinalCord"),
    Organ("parotid_right", "openkbp", openkbp_roi="RightParotid", partner="parotid_left", hu=10, sct="ParotidGland",
          tg263="Parotid_R"),
    Organ("parotid_left", "openkbp", openkbp_roi="LeftParotid", partner="parotid_right", hu=10, sct="ParotidGland",
          tg263="Parotid_L"),
    Organ("esophagus", "openkbp", openkbp_roi="Esophagus", hu=40, sct="Esophagus", tg263="Esophagus"),
    Organ("larynx", "openkbp", openkbp_roi="Larynx", hu=30, sct="Larynx", tg263="Larynx"),
    Organ("mandible", "openkbp", openkbp_roi="Mandible", hu=900, sct="Mandible", tg263="Bone_Mandible"),
]

ORGANS: Dict[str, Organ] = {o.name: o for o in _ORGANS}
BY_RADLEX: Dict[int, Organ] = {o.radlex: o for o in _ORGANS if o.radlex is not None}
BY_OPENKBP_ROI: Dict[str, Organ] = {o.openkbp_roi: o for o in _ORGANS if o.openkbp_roi is not None}


class UnknownOrganError(InputError, KeyError):
    """A name that is not in the catalogue (a ``KeyError`` too, for lookups)."""

    __str__ = InputError.__str__       # KeyError would quote the message


def get(name: str) -> Organ:
    """Return the catalogue entry for a canonical name; raise :class:`UnknownOrganError` that lists the
    valid names."""
    try:
        return ORGANS[name]
    except KeyError:
        raise UnknownOrganError(f"unknown organ {name!r}; known organs: {', '.join(ORGANS)} "
                                "(add your own with --catalogue)") from None


def organ_set(set_name: str) -> List[str]:
    """Canonical names of one organ set (``"visceral"`` or ``"openkbp"``), in catalogue order."""
    names = [o.name for o in _ORGANS if o.organ_set == set_name]
    if not names:
        raise InputError(f"unknown organ set {set_name!r}; known: visceral, openkbp")
    return names


def labels_for(names: Iterable[str]) -> Dict[str, int]:
    """nnU-Net ``labels`` dict for a set of organs: background 0, organs 1..n in catalogue order.

    Args:
        names: canonical organ names, in any order; duplicates are an error.

    Returns:
        ``{"background": 0, organ: label, ...}``, ready for dataset.json.
    """
    names = list(names)
    if len(set(names)) != len(names):
        raise InputError(f"duplicate organ names in {names}")
    for n in names:
        get(n)
    order = [o.name for o in _ORGANS if o.name in set(names)]
    return {"background": 0, **{n: i + 1 for i, n in enumerate(order)}}


# 20 colours that stay distinct from each other and from the grey of CT (Trubetskoy's list without grey,
# dark blue swapped for sky blue, and its beige, mint and white, which vanish on the white background of
# a planning system's structure list, swapped for violet-red, slate blue and dark green), so an organ has
# one colour in every picture and in RTSTRUCT / SEG
_PALETTE = [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
            (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (220, 190, 255),
            (170, 110, 40), (199, 21, 133), (128, 0, 0), (106, 90, 205), (128, 128, 0), (255, 215, 180),
            (0, 191, 255), (0, 100, 0)]


def roi_name(name: str, style: str = "tg263") -> str:
    """The name an organ gets in RTSTRUCT and SEG: ``"tg263"`` (``Kidney_L``, the default; the catalogue
    name where it has none) or ``"catalogue"`` (``kidney_left``). Names outside the catalogue stay."""
    if style not in ROI_NAME_STYLES:
        raise InputError(f"ROI name style must be one of {ROI_NAME_STYLES}, got {style!r}")
    organ = ORGANS.get(name)
    return organ.tg263 if style == "tg263" and organ is not None and organ.tg263 else name


ROI_NAME_STYLES = ("tg263", "catalogue")


def colour(name: str) -> Tuple[int, int, int]:
    """Display colour (r, g, b in 0..255) of an organ: its own, else the palette's (distinct within each
    organ set)."""
    organ = get(name)
    if organ.colour is not None:
        return tuple(organ.colour)
    return _PALETTE[[o.name for o in _ORGANS].index(organ.name) % len(_PALETTE)]


def organs_from_labels(labels: Dict[str, int]) -> Dict[int, str]:
    """Invert a dataset.json ``labels`` dict: ``{label value: organ name}`` without background."""
    return {int(v): k for k, v in labels.items() if k != "background" and int(v) != 0}


CATALOGUE_ENV = "nnunet_oar_catalogue"
_FIELDS = {f.name for f in dataclasses.fields(Organ)}


def register(entries: Iterable[dict], replace: bool = False, where: str = "catalogue") -> List[str]:
    """Add organs to the catalogue (in this process).

    Args:
        entries: one dict per organ with :class:`Organ`'s fields (``name`` required; ``organ_set``
            defaults to ``"user"``). An entry equal to a known organ is a no-op; a different one for a
            known name is an error unless ``replace``.
        replace: drop every organ not in ``entries`` first (the file replaces the built-in catalogue).
        where: the file, named in errors.

    Returns:
        The names registered, in order.
    """
    new = []
    for e in entries:
        if not isinstance(e, dict) or "name" not in e:
            raise InputError(f"{where}: every organ needs a name; got {e!r}")
        unknown = sorted(set(e) - _FIELDS)
        if unknown:
            raise InputError(f"{where}: {e['name']}: unknown fields {unknown} (known: {', '.join(sorted(_FIELDS))})")
        if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", str(e["name"])):
            raise InputError(f"{where}: organ name {e['name']!r}: letters, digits and _ only (it names files)")
        c = e.get("colour")
        if c is not None and not (isinstance(c, (list, tuple)) and len(c) == 3
                                  and all(isinstance(v, int) and 0 <= v <= 255 for v in c)):
            raise InputError(f"{where}: {e['name']}: colour must be [r, g, b] integers 0..255, got {c!r}")
        organ = Organ(**{"organ_set": "user", **e, **({"colour": tuple(c)} if c is not None else {})})
        known = ORGANS.get(organ.name)
        if known is not None and known != organ and not replace:
            raise InputError(f"{where}: {organ.name} is already in the catalogue with other fields "
                             '(a file with "replace": true replaces the whole catalogue)')
        new.append(organ)
    if replace:
        merged = new
    else:               # known organs keep their place (and so their label order and colour)
        merged = _ORGANS + [o for o in new if o.name not in ORGANS]
    by_name = {o.name: o for o in merged}
    for o in merged:
        if o.partner is not None and (o.partner not in by_name or by_name[o.partner].partner != o.name):
            raise InputError(f"{where}: {o.name}'s partner {o.partner} must be in the catalogue with partner {o.name}")
    _ORGANS[:] = merged
    for table, key in ((ORGANS, "name"), (BY_RADLEX, "radlex"), (BY_OPENKBP_ROI, "openkbp_roi")):
        table.clear()
        table.update({getattr(o, key): o for o in merged if getattr(o, key) is not None})
    return [o.name for o in new]


def read_catalogue(path: Path) -> Tuple[List[dict], bool]:
    """A catalogue file: ``{"organs": [{...}, ...], "replace": false}`` or just the list. Returns
    ``(entries, replace)``."""
    from nnunet_oar.io import read_json
    content = read_json(Path(path), "organ catalogue")
    if isinstance(content, list):
        return content, False
    if not isinstance(content, dict) or not isinstance(content.get("organs"), list):
        raise InputError(f"{path}: expected a list of organs or {{\"organs\": [...], \"replace\": false}}")
    return content["organs"], bool(content.get("replace", False))


def load_catalogue(path: Path) -> List[str]:
    """Register a catalogue file (see :func:`read_catalogue`); returns the names it holds."""
    entries, replace = read_catalogue(path)
    return register(entries, replace, str(path))


def entries(names: Iterable[str]) -> List[dict]:
    """The catalogue entries of ``names`` as JSON-ready dicts (what a models folder records)."""
    return [{k: v for k, v in dataclasses.asdict(get(n)).items() if v is not None} for n in names]


if os.environ.get(CATALOGUE_ENV):
    load_catalogue(Path(os.environ[CATALOGUE_ENV]))
