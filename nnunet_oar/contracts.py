"""The per-case files the stages hand each other: their names, their JSON layouts and the rule that
makes a case's output set whole. The README's "Outputs" section describes the same records.

``{case}_boxes.json`` (:class:`CaseBoxes`) - written by ``localize`` (and ``localize --cross-validation``,
``reference-boxes``, the localizer trainer's validation), read by ``crop-rois --boxes``, ``predict --boxes``,
``evaluate`` and the reports::

    {"case": "pt_201",
     "image": {"size_xyz": [...], "spacing_xyz": [...], "origin_xyz": [...], "direction": [9 values]},
     "organs": {"brainstem": {"status": "found", "peak": 0.83, "centroid_mm": [x, y, z], "margin_mm": 10.0,
                              "box_index_xyz": {"start": [x, y, z], "stop": [x, y, z]},
                              "box_mm": {"min": [x, y, z], "max": [x, y, z]}, "clipped": false,
                              "cut_by_box": ["z-"]},
                "larynx": {"status": "absent", "peak": 0.04},
                "mandible": {"status": "not_requested"}},
     "scan_z_mm": [-180.5, 207.6]}

``image`` is the geometry of the original CT (:func:`nnunet_oar.io.geometry`): boxes are voxel indices
of that image in SimpleITK's x, y, z order, ``start`` inclusive and ``stop`` exclusive; ``*_mm`` are
world (LPS) millimetres. ``scan_z_mm`` (localizer boxes of CT-normalised models only) is the world z extent
of the scanned patient; ``centroid_mm`` is the box centre after any move into it, and a moved box says by
how much (``moved_into_scan_mm``: the heat map's z was ``centroid_mm[2] - moved_into_scan_mm``, to 0.1 mm,
except for an organ moved by anatomical consistency, below;
a move larger than half the box means the network put the organ outside the scan: worth a look). An
organ boxed by its learned extent along z (:mod:`nnunet_oar.localization.extent`, chosen in ``margins.json``)
records ``size_mm`` (the box without margin), and ``z_extent``: the box's ends along z (``ends_mm``), the
anchor of each end and the heat map's own z (``heatmap_z_mm``); its ``centroid_mm`` is the box centre.
An organ whose heat map put it far from where the other organs place it was moved there
(:mod:`nnunet_oar.localization.consistency`) and says so in ``position_check``: the heat map's centroid
(``heatmap_centroid_mm``), how far it was from the vote (``distance_mm``) and the organs that voted (its
``moved_into_scan_mm``, if any, counts from the vote).
``predict`` adds its findings per organ (``cut_by_box``: faces of the box the
organ touches inside the image; ``tile``: how its crop went through its network; ``grid_factor``: how much
coarser than trained that network's grid was, where it was; ``implausible``, ``flags``, ``postprocessing``)
and the case's ``input_warnings``.

A prediction folder holds, per case, the files of :data:`CASE_OUTPUT_SUFFIXES`: the label map
``{case}.nii.gz`` on the input's grid, ``{case}.json`` naming its labels (``{"labels": {organ: value}}``),
the boxes, ``{case}_stats.json``/``.csv`` (volume, mean HU, centroid, box and status per organ), the
optional clinical files, and last ``{case}_manifest.json``, the sha256 of each file of the set
(:func:`finish_case_set`); a set without it was interrupted.
"""
from __future__ import annotations

import datetime
from pathlib import Path
from typing import Dict, List, Sequence, TypedDict

from nnunet_oar.io import InputError, read_json, sha256_file, write_json

BOXES_SUFFIX = "_boxes.json"
STATS_SUFFIX = "_stats.json"
LABELS_SUFFIX = ".json"
MANIFEST_SUFFIX = "_manifest.json"
# every file `predict` may write for one case: ``{case}{suffix}`` in the output folder
CASE_OUTPUT_SUFFIXES = (".nii.gz", LABELS_SUFFIX, BOXES_SUFFIX, STATS_SUFFIX, "_stats.csv", "_rtstruct.dcm",
                        "_seg.dcm", "_preview.png", MANIFEST_SUFFIX)
STATUSES = ("found", "absent", "not_requested")


class IndexBox(TypedDict):
    start: List[int]        # x, y, z voxels, inclusive
    stop: List[int]         # x, y, z voxels, exclusive


class OrganBox(TypedDict, total=False):
    status: str             # one of STATUSES
    peak: float             # the heat map's maximum (found, absent)
    centroid_mm: List[float]
    margin_mm: float
    box_index_xyz: IndexBox
    box_mm: Dict[str, List[float]]     # {"min": [x, y, z], "max": [x, y, z]}, world mm
    clipped: bool           # the box was clipped to the image
    moved_into_scan_mm: float   # z move (mm) that kept the box in the scanned extent
    size_mm: List[float]    # the box without margin, where it is not the mean size (a learned extent)
    z_extent: dict          # a learned extent along z: {"ends_mm", "anchors", "heatmap_z_mm"}
    position_check: dict    # moved by anatomical consistency: {"heatmap_centroid_mm", "distance_mm", "anchors"}
    cut_by_box: List[str]   # faces ("x-", ..., "z+") the predicted organ touches inside the image
    tile: str               # how predict tiled the crop ("trained patch [...]", "tile [...]", its grid)
    grid_factor: float      # predict ran the organ network on a grid this much coarser than trained (> 1)


class CaseBoxes(TypedDict, total=False):
    case: str
    image: Dict[str, list]  # geometry record of the original image
    organs: Dict[str, OrganBox]
    scan_z_mm: List[float]  # world z (min, max) mm of the voxels that hold the patient
    source: str             # who made the boxes, when not the localizer (e.g. the constant guess)
    input_warnings: List[str]


def case_file(folder: Path, case: str, suffix: str) -> Path:
    """``folder / f"{case}{suffix}"``: where a case's file of one kind lives."""
    return Path(folder) / f"{case}{suffix}"


def read_boxes(folder: Path, case: str) -> CaseBoxes:
    """Read and check a case's ``{case}_boxes.json``.

    Raises:
        InputError: naming the file, when it is missing or not in the layout above.
    """
    path = case_file(folder, case, BOXES_SUFFIX)
    boxes = read_json(path, "localization boxes")
    check_boxes(boxes, path)
    return boxes


def check_boxes(boxes: dict, where: Path) -> None:
    """Raise :class:`InputError` naming ``where`` unless ``boxes`` has the :class:`CaseBoxes` layout."""
    def bad(what: str) -> InputError:
        return InputError(f"{where}: not a boxes file ({what})")
    if not isinstance(boxes, dict) or not isinstance(boxes.get("organs"), dict):
        raise bad("no 'organs' mapping")
    image = boxes.get("image")
    if not isinstance(image, dict) or any(k not in image for k in ("size_xyz", "spacing_xyz", "origin_xyz",
                                                                     "direction")):
        raise bad("'image' must hold size_xyz, spacing_xyz, origin_xyz and direction")
    for organ, entry in boxes["organs"].items():
        status = entry.get("status") if isinstance(entry, dict) else None
        if status not in STATUSES:
            raise bad(f"{organ}: status {status!r} is not one of {', '.join(STATUSES)}")
        if status == "found":
            box = entry.get("box_index_xyz")
            if not isinstance(box, dict) or any(len(box.get(k) or []) != 3 for k in ("start", "stop")) \
                    or len(entry.get("centroid_mm") or []) != 3:
                raise bad(f"{organ}: a found organ needs centroid_mm and box_index_xyz start/stop (x, y, z)")


def write_boxes(boxes: CaseBoxes, folder: Path) -> Path:
    """Write ``{case}_boxes.json`` into ``folder`` (atomically); returns its path."""
    path = case_file(folder, boxes["case"], BOXES_SUFFIX)
    write_json(boxes, path)
    return path


def begin_case_set(output: Path, case: str) -> None:
    """Before a case's files are (re)written: drop its manifest, so that until the new one is written
    last, the set reads as incomplete (an interrupted run leaves no set that looks whole)."""
    case_file(output, case, MANIFEST_SUFFIX).unlink(missing_ok=True)


def finish_case_set(output: Path, case: str, files: Sequence[Path]) -> Path:
    """Write ``{case}_manifest.json`` naming the run and the sha256 of each of its files; files of an
    earlier run of this case that this run did not write are removed (they would be taken for its own)."""
    output = Path(output)
    names = {Path(f).name for f in files}
    for suffix in CASE_OUTPUT_SUFFIXES:
        old = case_file(output, case, suffix)
        if suffix != MANIFEST_SUFFIX and old.name not in names and old.is_file():
            old.unlink()
    manifest = case_file(output, case, MANIFEST_SUFFIX)
    write_json({"case": case, "written": datetime.datetime.now().isoformat(timespec="seconds"),
                "files": {name: sha256_file(output / name) for name in sorted(names)}}, manifest)
    return manifest


def check_case_set(folder: Path, case: str) -> None:
    """Refuse a case whose output set is incomplete (no manifest beside ``predict``'s files: the run was
    interrupted) or was changed after it was written (a checksum differs). nnU-Net's own prediction
    folders, which have none of our side files, pass.

    Raises:
        InputError: naming the file and what is wrong.
    """
    folder = Path(folder)
    manifest = case_file(folder, case, MANIFEST_SUFFIX)
    if not manifest.is_file():
        side = [case_file(folder, case, s) for s in (BOXES_SUFFIX, STATS_SUFFIX) if case_file(folder, case, s).is_file()]
        if side:
            raise InputError(f"{manifest}: missing beside {side[0].name}: the output set of {case} is incomplete "
                             "(an interrupted run?); run predict again")
        return
    for name, digest in read_json(manifest, "output manifest").get("files", {}).items():
        if not (folder / name).is_file():
            raise InputError(f"{folder / name}: listed in {manifest.name} but missing")
        if sha256_file(folder / name) != digest:
            raise InputError(f"{folder / name}: changed since the run that wrote {manifest.name}")
