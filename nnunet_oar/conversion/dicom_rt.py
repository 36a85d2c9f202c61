"""A clinic's DICOM (CT series + RTSTRUCT) -> nnU-Net raw data set (``nnunet_oar convert-dicom``).

The input is any tree of DICOM files. Each RTSTRUCT is tied to its CT series by UIDs (the series its
``ReferencedFrameOfReferenceSequence`` names), never by file or folder names; several RTSTRUCTs on one CT
are narrowed to the one labelled ``rtstruct_label``, else the newest (StructureSetDate/Time), and the
choice is reported. The CT is read by the same reader as ``predict`` (:mod:`nnunet_oar.dicom.series`, with
its refusals); each ROI is rasterised on it with the even-odd rule (:func:`~nnunet_oar.dicom.rtstruct_reader.rasterize_rois`,
the reading ``predict --rtstruct`` writes for) and named by :mod:`nnunet_oar.conversion.names`.

Only the ROIs whose names map to a wanted organ are rasterised. What does not convert is reported, not
fatal: an ROI (empty, open contours, malformed contour data, off-slice or outside the image, another frame
of reference, an unmapped or ambiguous name, two ROIs naming one organ) is left out of its patient, whose
other organs convert, and contours of 1-2 points or on one line are left out of their ROI, noted; a
patient (no RTSTRUCT, a CT the reader refuses, an RTSTRUCT whose series is missing or whose frame holds
several CT series, an RTSTRUCT that cannot be read) is skipped. An organ not contoured for a patient is not annotated for it
(``annotations.json``), as with OpenKBP. Overlaps: the smaller structure wins, counted.

No patient-identifying field reaches the data set: the case id is a hash of the study and series UIDs
(stable when patients are added), and ``conversion_report.json`` maps it back to patient id, UIDs and
folder only with ``keep_ids``.
"""
from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from tqdm import tqdm

from nnunet_oar import organs as catalogue
from nnunet_oar.conversion.dataset import build_dataset
from nnunet_oar.conversion.names import NameMap
from nnunet_oar.dicom.rtstruct_reader import rasterize_rois, referenced_series, roi_names
from nnunet_oar.dicom.series import ct_from_files, is_ct_volume, scan_series
from nnunet_oar.io import InputError


def case_id(study_uid: str, series_uid: str) -> str:
    """Stable, non-identifying case id of one CT series."""
    return "ct_" + hashlib.sha256(f"{study_uid}/{series_uid}".encode()).hexdigest()[:12]


def _automatic(ds) -> bool:
    """A structure set a program made: ours (``predict --rtstruct``) or one whose every ROI says AUTOMATIC."""
    rois = list(getattr(ds, "StructureSetROISequence", []))
    return (str(getattr(ds, "Manufacturer", "")) == "nnunet_oar"
            or (bool(rois) and all(str(getattr(r, "ROIGenerationAlgorithm", "")) == "AUTOMATIC" for r in rois)))


def _choose(candidates: List[Tuple[Path, object]], label: Optional[str]) -> Tuple[Optional[Tuple[Path, object]], str]:
    """One RTSTRUCT of those on a CT: the one labelled ``label``; else, among the clinical sets (automatic
    ones, our own predictions included, only when there is nothing else), the approved before the
    unapproved, then the newest. Returns it (or None) and what was chosen among what; no date, time or
    file name (they could identify the patient)."""
    if label is not None:
        named = [c for c in candidates if str(getattr(c[1], "StructureSetLabel", "")) == label]
        if not named:
            found = ", ".join(f"'{getattr(d, 'StructureSetLabel', '')}'" for _, d in candidates)
            return None, f"no RTSTRUCT labelled '{label}' (found {found})"
        candidates = named
    clinical = [c for c in candidates if not _automatic(c[1])]
    pool = clinical or candidates
    chosen = max(pool, key=lambda c: (str(getattr(c[1], "ApprovalStatus", "")) == "APPROVED",
                                      str(getattr(c[1], "StructureSetDate", "") or ""),
                                      str(getattr(c[1], "StructureSetTime", "") or ""), str(c[0])))
    ds = chosen[1]
    how = (f"RTSTRUCT '{getattr(ds, 'StructureSetLabel', '')}'"
           f"{' (approved)' if str(getattr(ds, 'ApprovalStatus', '')) == 'APPROVED' else ''}")
    if len(candidates) > 1:
        how += f", the {'approved or ' if len(pool) > 1 else ''}newest of {len(pool)}"
        if len(pool) < len(candidates):
            how += f"; {len(candidates) - len(pool)} automatic set(s) (e.g. nnunet_oar's own) passed over"
    elif _automatic(ds):
        how += " (automatic contours: check before training on them)"
    return chosen, how


def _structure_sets_by_ct(groups: Dict[str, list], cts: Dict[str, list]) -> Tuple[Dict[str, list], List[dict]]:
    """``({CT series uid: [(file, RTSTRUCT)]}, [skipped])``: each RTSTRUCT goes to the CT series it references,
    or, where it names none (some planning systems omit it), to the one CT series in its frame of reference."""
    on_ct: Dict[str, list] = {}
    skipped: List[dict] = []
    for f, ds in (item for items in groups.values() for item in items):
        if getattr(ds, "Modality", None) != "RTSTRUCT":
            continue
        refs = referenced_series(ds)
        hit = [u for u in refs if u in cts]
        reason = f"references series {refs or 'none'}, which is not a CT series under the input folder"
        if not refs:
            frame = {str(getattr(r, "FrameOfReferenceUID", "")) for r in getattr(ds, "ReferencedFrameOfReferenceSequence", [])}
            hit = [u for u, items in cts.items() if str(getattr(items[0][1], "FrameOfReferenceUID", "")) in frame]
            if len(hit) > 1:
                reason = (f"names no series, and its frame of reference holds {len(hit)} CT series ({', '.join(hit)}): "
                          "which one it was drawn on cannot be told")
                hit = []
        if hit:
            on_ct.setdefault(hit[0], []).append((f, ds))
        else:
            skipped.append({"rtstruct_file": str(f), "reason": reason})
    return on_ct, skipped


_PATH = re.compile(r"(?:[A-Za-z]:)?[/\\][^\s,;'()\[\]]+")
_UID = re.compile(r"\b\d+(?:\.\d+){3,}\b")


def _scrub(record: dict, keep_ids: bool) -> dict:
    """The report's text without paths, file names or UIDs (folders are often named after the patient),
    unless ``keep_ids``."""
    if keep_ids:
        return record
    def clean(v):
        if isinstance(v, str):
            return _UID.sub("<uid>", _PATH.sub("<file>", v))
        return {k: clean(x) for k, x in v.items()} if isinstance(v, dict) else v
    return {k: clean(v) for k, v in record.items() if k != "rtstruct_file"}


def convert_dicom(source: Path, dataset_id: int, names: Optional[Path] = None, organs: Optional[Sequence[str]] = None,
                  rtstruct_label: Optional[str] = None, keep_ids: bool = False, dataset_name: str = "Clinic",
                  raw: Optional[Path] = None, progress: bool = True) -> Path:
    """Convert CT series with their RTSTRUCTs to ``$nnUNet_raw/Dataset{ID}_{dataset_name}``.

    Args:
        source: a folder; every DICOM file under it is considered.
        dataset_id: nnU-Net data set id.
        names: a ``NAMES.json`` (see :mod:`nnunet_oar.conversion.names`), consulted before the built-in rules.
        organs: catalogue names to keep (default: every organ some patient has).
        rtstruct_label: StructureSetLabel to take where a CT has several RTSTRUCTs.
        keep_ids: map case ids back to patient id, UIDs and folders in ``conversion_report.json``.
        raw: nnU-Net raw root (default ``$nnUNet_raw``).

    Returns:
        The data set folder.
    """
    source = Path(source)
    if not source.is_dir():
        raise InputError(f"{source}: not a folder")
    name_map = NameMap.from_file(names)
    damaged: List[Tuple[Path, str]] = []
    groups = scan_series(source, damaged)
    cts = {u: items for u, items in groups.items() if is_ct_volume(items)}      # not scouts or dose screens
    if not cts:
        raise InputError(f"{source}: no CT series among {len(groups)} DICOM series"
                         + (f" ({len(damaged)} damaged files, e.g. {damaged[0][0]}: {damaged[0][1]})" if damaged else ""))
    on_ct, skipped = _structure_sets_by_ct(groups, cts)
    patients = []
    for uid, items in cts.items():
        header = items[0][1]
        case = case_id(str(getattr(header, "StudyInstanceUID", "")), uid)
        ids = {"patient_id": str(getattr(header, "PatientID", "")), "study_uid": str(getattr(header, "StudyInstanceUID", "")),
               "series_uid": uid, "folder": str(items[0][0].parent)} if keep_ids else {}
        chosen, how = _choose(on_ct[uid], rtstruct_label) if uid in on_ct else (None, "no RTSTRUCT references it")
        # a damaged file beside a CT series may be one of its slices: that patient is refused, not the others
        folders = {f.parent for f, _ in items}
        beside = [f for f, _ in damaged if f.parent in folders]
        if beside:          # the console names them (file names may name the patient)
            chosen, how = None, f"{len(beside)} damaged DICOM file(s) beside its slices; one may be a missing slice"
        if chosen is None:
            skipped.append({"case": case, "reason": how, **ids})
        else:
            patients.append((case, items, chosen, how, ids))
    # the data set's organs, from the names alone (rasterising comes later, one patient at a time)
    mapped = {name_map(roi)[0] for _, _, (_, ds), _, _ in patients for roi in roi_names(ds)}
    wanted = [o for o in catalogue.ORGANS if o in mapped] if organs is None else list(organs)
    if not wanted:
        raise InputError(f"{source}: no ROI name maps to a catalogue organ; see the names in "
                         "`nnunet_oar convert-dicom --help` and give a --names file")
    unmapped: Dict[str, int] = {}
    with build_dataset(dataset_id, dataset_name, wanted, f"CT + RTSTRUCT from {source.name}", raw) as builder:
        for case, items, (rt_file, rt), how, ids in tqdm(patients, desc="convert DICOM", disable=not progress):
            where = str(items[0][0].parent)
            try:
                ct, series = ct_from_files(items, where)
            except InputError as e:
                skipped.append({"case": case, "reason": str(e).replace(f"{where}: ", ""), **ids})
                continue
            try:
                # only the ROIs that name a wanted organ are rasterised (a plan's others would cost a mask each)
                rois, refused, notes = rasterize_rois(rt, ct, str(getattr(series.headers[0], "FrameOfReferenceUID", "")),
                                                      keep=lambda roi: name_map(roi)[0] in wanted)
            except (AttributeError, IndexError, KeyError, TypeError, ValueError) as e:
                # a structure set malformed in a way the reader does not foresee: that patient, not the rest
                skipped.append({"case": case, "reason": f"its RTSTRUCT could not be read ({type(e).__name__}: {e})",
                                "rtstruct_file": str(rt_file), **ids})
                continue
            masks, named, unmapped_here, skipped_here = {}, {}, {}, []
            for roi in dict.fromkeys(roi_names(rt)):
                organ, rule = name_map(roi)
                if rule == "skip":
                    skipped_here.append(roi)
                elif organ is None:
                    unmapped_here[roi] = rule
                    unmapped[roi] = unmapped.get(roi, 0) + 1
                elif roi in rois:
                    named.setdefault(organ, []).append(roi)
                    masks[organ] = rois[roi]
            for organ, rois_of in named.items():
                if len(rois_of) > 1:             # which one the clinic meant is not ours to guess
                    del masks[organ]
                    refused.update({r: f"{len(rois_of)} ROIs name {organ}: {', '.join(rois_of)}" for r in rois_of})
            if not masks:
                skipped.append({"case": case, "reason": "no ROI converted: " + "; ".join(
                    f"{r}: {why}" for r, why in {**refused, **unmapped_here}.items()), **ids})
                continue
            builder.add_case(case, ct, masks, _scrub({
                "rtstruct": how, "roi_to_organ": {r[0]: o for o, r in named.items() if o in masks},
                "refused_rois": refused, "unmapped_rois": unmapped_here, "skipped_rois": skipped_here,
                "roi_notes": notes}, keep_ids) | ids)
        for s in skipped:           # the console names the files; the report does so only with --keep-ids
            print(f"skipped {s.get('case') or s.get('rtstruct_file')}: {s['reason']}")
        for f, why in damaged:
            print(f"damaged DICOM file {f}: {why}")
        builder.extra_report = {"skipped": [_scrub(s, keep_ids) for s in skipped],
                                "damaged_files": len(damaged),
                                "unmapped_names": dict(sorted(unmapped.items())),
                                "names_file": str(names) if names else None, "keep_ids": keep_ids}
        if unmapped:
            print(f"{len(unmapped)} ROI names map to no organ (conversion_report.json lists them; map them with "
                  "--names): " + ", ".join(f"{n} ({c})" for n, c in sorted(unmapped.items(), key=lambda x: -x[1])[:15]))
    return builder.destination
