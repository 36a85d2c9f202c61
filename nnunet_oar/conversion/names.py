"""Clinical ROI names -> catalogue organs ("Parotid_L", "L Parotid", "PAROTID LT", "Lt_Parotid_Gland").

A name is split into words (at spaces, ``_``, ``-`` and the other dashes, ``.``, ``,``, ``/``, ``:``,
``;``, ``|``, ``·``, brackets of every kind and camel case, after Unicode compatibility normalisation and
with invisible format characters such as a zero-width space or a byte-order mark taken out), its side read
from a word (``L``, ``Lt``, ``Lft``, ``Left``, ``Sin``, ``Sx`` / ``R``, ``Rt``, ``Rgt``, ``Right``,
``Dx``, and the Latin, German, French, Italian and Spanish words in ``SIDES``), and filler words
(``gland``, ``glnd``, ``bone``, ``musc``, ``muscle``, ``OAR``, TG-263's artery prefix ``A``) dropped. It
names an organ when the rest, in any word order or written as one word, equals one of that organ's names:
the catalogue name, its TG-263 name, its OpenKBP ROI, its SNOMED CT concept's keyword (organs without a
side only: ``Lung`` is both lungs) and the few synonyms below (``SYNONYMS``: abbreviations such as
``B Stem``, ``SpCord``, ``Esoph``, and TotalSegmentator's ``vertebrae_L1``). Anything else, a planning
structure such as ``Parotid_L_PRV`` or ``SpinalCord+5mm``
included, stays unmapped and is reported, never guessed: a ``+`` (an expansion, ``Cord+``, or a union) is
a word of its own, and so is a leading ``_``, which TG-263 gives (like a leading ``z``) to structures not
meant for dose evaluation (``_Parotid_L``), so neither ever matches; TG-263's ``~`` (partial structure)
and ``^`` (custom note) are not separators and keep the word they stand in from matching too.

A user file (``--names NAMES.json``: ``{"ROI name": "catalogue name" or null}``) is consulted first: a
key equal to the ROI name (ignoring case and surrounding spaces) decides; then keys written ``re:PATTERN``,
regular expressions that must match the whole name (ignoring case), in file order. Plain keys are never
patterns (``Liver*`` is a name, not "Liver and more"). ``null`` skips the ROI (listed as skipped).
"""
from __future__ import annotations

import re
import unicodedata
from pathlib import Path
from typing import Dict, FrozenSet, Optional, Set, Tuple

from nnunet_oar import organs as catalogue
from nnunet_oar.io import InputError, read_json

# whole words only: one-letter sides other than L and R name other things ("Parotid_D": deep lobe,
# "Parotid_re": re-contoured), so clinics that write "G"/"D" or "li"/"re" map them in NAMES.json
SIDES = {**dict.fromkeys(["l", "lt", "lft", "left", "sin", "sx", "sinister", "sinistra", "sinistro", "links",
                          "gauche", "izq", "izda", "izquierda", "izquierdo"], "left"),
         **dict.fromkeys(["r", "rt", "rgt", "right", "dx", "dex", "dext", "dexter", "dextra", "destra", "destro",
                          "rechts", "droite", "der", "dcha", "derecha", "derecho"], "right")}
FILLER = {"gland", "glnd", "bone", "musc", "muscle", "a", "oar"}
SYNONYMS = {"esophagus": ["oesophagus", "esoph", "oesoph"], "urinary_bladder": ["bladder"],
            "thyroid_gland": ["thyroid"], "spinal_cord": ["cord", "sp cord", "spine cord"],
            "brainstem": ["brain stem", "b stem"], "vertebra_L1": ["vertebrae L1", "vertebral body L1"]}

Key = Tuple[Optional[str], FrozenSet[str]]


def _words(name: str) -> list:
    name = "".join(c for c in unicodedata.normalize("NFKC", name) if unicodedata.category(c) != "Cf").strip()
    lead = ["_"] if name.startswith("_") else []                # "_Parotid_L": TG-263's not-for-dose prefix
    name = name.replace("+", " + ")                             # "Cord+", "SpinalCord+5mm": "+" stays a word
    name = re.sub(r"([a-z])([A-Z])", r"\1 \2", name)            # SpinalCord -> Spinal Cord
    name = re.sub(r"([A-Z]+)([A-Z][a-z])", r"\1 \2", name)      # LParotid -> L Parotid
    return lead + [w for w in re.split(r"[\s_\-\u2010-\u2015\u2212.,/()\[\]{}<>:;|\u00b7]+", name.lower()) if w]


def keys(name: str) -> Set[Key]:
    """The forms a name can match under: ``(side or None, words)`` with the words as a set and as one
    word (in either order), after the side and filler words are taken out."""
    words = _words(name)
    sides = {SIDES[w] for w in words if w in SIDES}
    if len(sides) > 1:
        return set()                                              # "L R Parotid": no side to trust
    side = next(iter(sides), None)
    rest = [w for w in words if w not in SIDES and w not in FILLER]
    if not rest:
        return set()
    return {(side, frozenset(rest)), (side, frozenset({"".join(rest)})), (side, frozenset({"".join(rest[::-1])}))}


def _catalogue_keys() -> Dict[Key, Set[str]]:
    out: Dict[Key, Set[str]] = {}
    for organ in catalogue.ORGANS.values():
        names = [organ.name, organ.tg263, organ.openkbp_roi, *SYNONYMS.get(organ.name, [])]
        if organ.partner is None:       # SNOMED CT's concepts carry no side ("Lung" is both lungs)
            names.append(organ.sct)
        for n in filter(None, names):
            for k in keys(n):
                out.setdefault(k, set()).add(organ.name)
    return out



class NameMap:
    """ROI name -> catalogue organ, with the user's file first.

    Args:
        user: ``{"ROI name" or "re:PATTERN": "catalogue name" or None}``.
        where: what to name in errors (the file).
    """

    def __init__(self, user: Optional[Dict[str, Optional[str]]] = None, where: str = "names"):
        self.exact: Dict[str, Optional[str]] = {}
        self.patterns = []
        for key, organ in (user or {}).items():
            if organ is not None:
                catalogue.get(organ)                    # an unknown target is the user's error, named
            if key.startswith("re:"):
                try:
                    self.patterns.append((re.compile(key[3:], re.IGNORECASE), organ))
                except re.error as e:
                    raise InputError(f"{where}: {key!r} is not a regular expression ({e})") from None
            else:
                self.exact[key.strip().lower()] = organ
        self.catalogue = _catalogue_keys()          # the catalogue as it is now (user organs included)

    @classmethod
    def from_file(cls, path: Optional[Path]) -> "NameMap":
        """Read ``NAMES.json`` (or none: the built-in rules only)."""
        if path is None:
            return cls()
        content = read_json(Path(path))
        if not isinstance(content, dict) or not all(isinstance(v, (str, type(None))) for v in content.values()):
            raise InputError(f"{path}: expected {{\"ROI name or regex\": \"catalogue name\" or null}}")
        return cls(content, str(path))

    def __call__(self, roi_name: str) -> Tuple[Optional[str], str]:
        """``(organ or None, how)``: ``how`` is ``"user"``, ``"skip"`` (user null), ``"rule"``,
        ``"ambiguous: a, b"`` or ``"unmapped"``."""
        name = roi_name.strip()
        if name.lower() in self.exact:
            organ = self.exact[name.lower()]
            return organ, "user" if organ else "skip"
        for regex, organ in self.patterns:
            if regex.fullmatch(name):
                return organ, "user" if organ else "skip"
        found: Set[str] = set()
        for k in keys(name):
            found |= self.catalogue.get(k, set())
        if len(found) == 1:
            return next(iter(found)), "rule"
        return None, ("ambiguous: " + ", ".join(sorted(found))) if found else "unmapped"
