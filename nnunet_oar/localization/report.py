"""Scoring a localizer against reference labels, always beside the constant guess.

The constant guess puts every organ at its training-set mean position relative to the image centre
(:func:`~nnunet_oar.localization.boxes.constant_guess_boxes`), with the localizer's own box sizes and
margins. A localizer that does not beat it by far has learned the population's average and little more,
whatever its loss says; every localization summary therefore carries both.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Iterator, Optional, Sequence, Tuple, Union

import numpy as np
import SimpleITK as sitk

from nnunet_oar.contracts import read_boxes
from nnunet_oar.io import read_image, read_json
from nnunet_oar.localization.boxes import constant_guess_boxes
from nnunet_oar.evaluation.metrics import localization_metrics, summarize_localization


def score_case(boxes: dict, label_zyx: np.ndarray, labels: Dict[str, int], organs: Sequence[str],
               box_stats: Dict[str, dict], margin_mm: Union[float, Dict[str, float]]) -> Tuple[dict, dict]:
    """Localization metrics of one case's boxes and of the constant guess on the same case (kept in the
    scanned extent the boxes record, as the localizer's boxes are).

    Args:
        boxes: the case's ``{case}_boxes.json`` content (its ``image`` is the label map's geometry).
        label_zyx: reference label map (z, y, x) on that grid.
        labels: ``{organ: label value}``.
        organs: the organs annotated in this case (others are not scored).
        box_stats: the localizer's ``box_stats`` (mean sizes and ``mean_offset_mm``).
        margin_mm: the margins the localizer's boxes used (one value or per organ).

    Returns:
        ``(localizer, constant_guess)``, each ``{organ: localization_metrics(...)}``; the guess is left out
        when ``box_stats`` has no offsets (a model trained before the guess existed).
    """
    geom = boxes["image"]
    guess = constant_guess_boxes(geom, box_stats, margin_mm, boxes.get("case", ""), boxes.get("scan_z_mm"))["organs"]
    loc, ref = {}, {}
    for organ in organs:
        mask = label_zyx == labels[organ]
        loc[organ] = localization_metrics(mask, geom, boxes["organs"].get(organ))
        if organ in guess:
            ref[organ] = localization_metrics(mask, geom, guess[organ])
    return loc, ref


def score_folder(raw: Path, boxes_dir: Path, box_stats: Dict[str, dict],
                 margin_mm: Union[float, Dict[str, float]]) -> Iterator[Tuple[str, dict, np.ndarray, dict, dict]]:
    """Score the ``{case}_boxes.json`` in ``boxes_dir`` against a raw nnU-Net data set's reference labels,
    case by case (only the organs ``annotations.json`` lists, when the data set has one).

    Yields:
        ``(case, boxes, label_zyx, localizer metrics, constant-guess metrics)`` (see :func:`score_case`).
    """
    raw, boxes_dir = Path(raw), Path(boxes_dir)
    dataset = read_json(raw / "dataset.json")
    labels = {k: v for k, v in dataset["labels"].items() if k not in ("background", "ignore")}
    annotations = read_json(raw / "annotations.json") if (raw / "annotations.json").is_file() else None
    for label_file in sorted((raw / "labelsTr").glob(f"*{dataset['file_ending']}")):
        case = label_file.name[:-len(dataset["file_ending"])]
        organs = annotations[case] if annotations is not None else list(labels)
        boxes = read_boxes(boxes_dir, case)
        label_zyx = sitk.GetArrayFromImage(read_image(label_file, "reference label map"))
        loc, guess = score_case(boxes, label_zyx, labels, organs, box_stats, margin_mm)
        yield case, boxes, label_zyx, loc, guess


def summarize(per_case: Dict[str, dict], per_case_guess: Dict[str, dict]) -> dict:
    """``{"per_organ", "constant_guess", "per_case", "per_case_constant_guess"}`` (see
    :func:`~nnunet_oar.evaluation.metrics.summarize_localization`)."""
    return {"per_organ": summarize_localization(per_case),
            "constant_guess": summarize_localization(per_case_guess),
            "per_case": per_case, "per_case_constant_guess": per_case_guess}


def markdown_table(summary: dict, margins: Optional[Dict[str, dict]] = None) -> str:
    """One row per organ: detection, median centroid error beside the constant guess's and their ratio,
    median box IoU, mean / minimum containment (localizer, then guess), and the margin."""
    rows = ["| organ | n | detected | centroid error mm (median) | constant guess mm | ratio | box IoU (median) "
            "| containment mean / min | guess containment mean / min | margin mm |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    guess = summary.get("constant_guess", {})
    for organ, s in summary["per_organ"].items():
        g = guess.get(organ, {})
        err = s.get("centroid_error_mm", {}).get("median", float("nan"))
        gerr = g.get("centroid_error_mm", {}).get("median", float("nan"))
        c, gc = s.get("containment", {}), g.get("containment", {})
        margin = margins[organ]["margin_mm"] if margins and organ in margins else float("nan")
        rows.append(f"| {organ} | {s['n']} | {s['detection']['tp']}/{s['detection']['tp'] + s['detection']['fn']} "
                    f"| {err:.1f} | {gerr:.1f} | {err / gerr if gerr else float('nan'):.2f} "
                    f"| {s.get('iou', {}).get('median', float('nan')):.2f} "
                    f"| {c.get('mean', float('nan')):.3f} / {c.get('min', float('nan')):.3f} "
                    f"| {gc.get('mean', float('nan')):.3f} / {gc.get('min', float('nan')):.3f} | {margin:.0f} |")
    return "\n".join(rows) + "\n"
