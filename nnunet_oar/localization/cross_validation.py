"""Out-of-fold localization of the training cases (``nnunet_oar localize --cross-validation``): the organ
networks' training boxes and the calibrated margins that inference reuses."""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk
from tqdm import tqdm

from nnunet_oar.contracts import write_boxes
from nnunet_oar.io import InputError, geometry, read_json, write_json
from nnunet_oar.localization.boxes import DEFAULT_MARGIN_MM, DEFAULT_READOUT, DEFAULT_TAU, organ_box
from nnunet_oar.localization.consistency import check_positions, fit_position
from nnunet_oar.localization.extent import (ENDS, SELF, anchors_z, apply_z_extent, fit_z_extent, found_centroids_z,
                                           learned_ends, organ_facts)
from nnunet_oar.localization.grid import scan_z_mm
from nnunet_oar.localization.localize import Localizer, load_box_stats
from nnunet_oar.localization.margins import calibrate_margin, far_miss_fence, inside_counts
from nnunet_oar.localization.report import score_case, summarize
from nnunet_oar.paths import find_dataset, preprocessed_root, results_root


def localize_cross_validation(dataset_id: int, output: Path, trainer: str = "nnUNetTrainerOARHeatmap",
                              plans: str = "nnUNetPlans", configuration: str = "3d_loc", device: str = "cpu",
                              tau: float = DEFAULT_TAU, readout: str = DEFAULT_READOUT,
                              folds: Optional[Sequence[int]] = None, calibrate_target: float = 0.99,
                              min_margin_mm: float = DEFAULT_MARGIN_MM, max_margin_mm: float = 60.0,
                              step_mm: float = 1.0, exclude_far_misses: bool = True,
                              checkpoint: str = "checkpoint_final.pth") -> dict:
    """Out-of-fold boxes for the training cases, each from the fold that did not train on it, with margins
    calibrated on those same boxes.

    Like nnU-Net's cascade, the crop stage learns on boxes like those it will see at test time. The margin
    is calibrated per organ: the smallest v (``min_margin_mm``, the default margin, to ``max_margin_mm`` in
    ``step_mm`` steps) whose out-of-fold
    boxes hold ``calibrate_target`` of the organ's voxels, pooled over cases. Failures are left out of that
    pool and listed in ``margins.json`` (``failures``): organs not found where contoured, and far misses,
    boxes whose centroid error lies beyond :func:`~nnunet_oar.localization.margins.far_miss_fence` (the
    paper's fixed margin assumes neither; ``exclude_far_misses=False`` pools far misses too). An organ
    with no case left keeps ``min_margin_mm``. The
    ``{case}_boxes.json``
    written here use those margins and the fold ensemble's mean box sizes, and ``margins.json`` records
    the margins, so that ``export-models --margins`` gives inference the box sizes the organ networks
    trained on. (The constant guess of each case takes its mean position from the fold that did not train on
it, and the ensemble's box sizes, as the localizer's boxes do.) Memory is
    bounded by one case: per organ only the voxel counts inside each candidate margin are kept.

    Args:
        folds: the folds to use (default: every fold of ``splits_final.json``; each must be trained). With
            a subset, only those folds' validation cases get boxes (e.g. one fold to calibrate margins).

    Writes ``{case}_boxes.json``, ``margins.json`` and ``localization_summary.json`` (metrics against the
    training labels) to ``output``.

    Returns:
        The summary dict.
    """
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
    pre = find_dataset(preprocessed_root(), dataset_id)
    if pre is None:
        raise InputError(f"{preprocessed_root()}: no preprocessed data set with id {dataset_id}")
    model_folder = results_root() / pre.name / f"{trainer}__{plans}__{configuration}"
    splits_file = pre / "splits_final.json"
    if not splits_file.is_file():
        raise InputError(f"{splits_file}: missing; cross-validation needs nnU-Net's splits (train the folds first)")
    splits = read_json(splits_file)
    folds = list(range(len(splits))) if folds is None else [int(f) for f in folds]
    for fold in folds:
        ckpt = model_folder / f"fold_{fold}" / checkpoint
        if fold >= len(splits) or not ckpt.is_file():
            raise InputError(f"{ckpt}: missing; every fold of the cross-validation must be trained "
                             f"(or name the trained ones with --folds)")
    annotations_file = pre / "annotations.json"
    annotations = read_json(annotations_file) if annotations_file.is_file() else None
    output = Path(output)
    # the box sizes of the fold ensemble, which inference uses: training and inference crops get one size
    sizes = {o: st["mean_size_mm"] for o, st in load_box_stats(model_folder, folds).items()}
    # never below the default margin v: an organ network needs some context around its organ (on phantoms the
    # localizer is so exact that 1-3 mm sufficed, and networks on such tight crops did not learn in 200 iterations)
    grid = np.arange(min_margin_mm, max_margin_mm + step_mm / 2, step_mm)
    found: Dict[str, dict] = {}             # case -> boxes at margin 0 (the centroids are what counts)
    stats_of: Dict[str, dict] = {}          # case -> box_stats of the fold that localized it
    facts: Dict[str, dict] = {}             # case -> scanned extent, the organs' positions and extents along z
    for fold in folds:
        localizer = Localizer(model_folder, [fold], device, 0.0, tau, checkpoint, readout)
        # boxes of the ensemble's size from the start, so that keeping them in the scan moves them as inference will
        localizer.box_stats = {o: {**st, "mean_size_mm": sizes[o]} for o, st in localizer.box_stats.items()}
        labels = localizer.predictor.dataset_json["labels"]
        ending = localizer.predictor.dataset_json["file_ending"]
        folder = pre / localizer.predictor.configuration_manager.data_identifier
        dataset = infer_dataset_class(str(folder))(str(folder), splits[fold]["val"])
        for case in tqdm(splits[fold]["val"], desc=f"fold {fold}"):
            data, _, _, properties = dataset.load_case(case)
            gt = sitk.ReadImage(str(pre / "gt_segmentations" / f"{case}{ending}"))
            data = np.asarray(data[:])
            boxes = localizer.boxes(data, localizer.heatmaps(data), properties, geometry(gt), case)
            found[case], stats_of[case] = boxes, localizer.box_stats
            facts[case] = _facts(gt, labels, _annotated(annotations, case, localizer.organ_names),
                                   boxes.get("scan_z_mm"))
    # the learned extents along z: each fold's rule fitted on the cases it trained on and judged on its
    # validation cases; the rule inference gets is fitted on every case (facts from labels and the scanned
    # extent, read as inference reads it)
    everyone = sorted({c for f in folds for c in (*splits[f]["train"], *splits[f]["val"])} - set(facts))
    dataset = infer_dataset_class(str(folder))(str(folder), everyone)
    p = localizer.predictor
    for case in tqdm(everyone, desc="extents along z"):
        data, _, _, properties = dataset.load_case(case)
        facts[case] = _facts(sitk.ReadImage(str(pre / "gt_segmentations" / f"{case}{ending}")), labels,
                               _annotated(annotations, case, localizer.organ_names),
                               scan_z_mm(np.asarray(data[:]), properties, p.plans_manager, p.configuration_manager))
    fold_pairs = [(splits[f]["train"], splits[f]["val"]) for f in folds]
    positions, moves = check_out_of_fold(facts, fold_pairs, found, sizes, localizer.organ_names)
    extents, compared, fold_rules = choose_z_extents(facts, fold_pairs, found, localizer.organ_names)
    for case, boxes in found.items():
        apply_z_extent(boxes["organs"], fold_rules[case], sizes, boxes["image"], boxes.get("scan_z_mm"))
    failures = calibration_failures(found, facts, localizer.organ_names, exclude_far_misses)
    def masks():           # one case's reference masks at a time: memory stays bounded by one case
        for case, boxes in found.items():
            gt = sitk.ReadImage(str(pre / "gt_segmentations" / f"{case}{ending}"))
            gt_zyx = sitk.GetArrayViewFromImage(gt)
            yield case, boxes, geometry(gt), {o: gt_zyx == labels[o] for o in
                                              _annotated(annotations, case, localizer.organ_names)}
    inside, total, n_cases = pool_inside_counts(masks(), failures, sizes, grid)
    margins = {}
    for o, counts in inside.items():
        # an organ left with no calibration case keeps the default margin: nothing calls for more
        margins[o] = calibrate_margin(counts, total[o], grid, calibrate_target) if n_cases[o] else \
            {"margin_mm": float(grid[0]), "containment": None, "reached": False}
        margins[o].update(n_cases=n_cases[o], failures=failures[o])
    for organ, rule in extents.items():
        margins.setdefault(organ, {"margin_mm": DEFAULT_MARGIN_MM})["z_extent"] = rule
    for organ, rule in positions.items():
        margins.setdefault(organ, {"margin_mm": DEFAULT_MARGIN_MM})["position"] = rule
    margin_of = {o: margins.get(o, {"margin_mm": DEFAULT_MARGIN_MM})["margin_mm"] for o in labels if o != "background"}
    per_case, per_case_guess = {}, {}
    for case, boxes in found.items():          # second pass: the boxes with the calibrated margins
        gt_zyx = sitk.GetArrayFromImage(sitk.ReadImage(str(pre / "gt_segmentations" / f"{case}{ending}")))
        for organ, entry in boxes["organs"].items():
            if entry["status"] == "found":
                entry.update(margin_mm=margin_of[organ], **organ_box(
                    boxes["image"], entry["centroid_mm"], entry.get("size_mm", sizes[organ]), margin_of[organ]))
        write_boxes(boxes, output)
        per_case[case], per_case_guess[case] = score_case(
            boxes, gt_zyx, labels, _annotated(annotations, case, list(boxes["organs"])), stats_of[case], margin_of)
    write_json(margins, output / "margins.json")
    summary = {**summarize(per_case, per_case_guess), "calibrated_margins": margins, "folds": folds,
               "readout": readout, "target": calibrate_target, "z_extent_comparison": compared, "positions_moved": moves}
    write_json(summary, output / "localization_summary.json")
    return summary


def pool_inside_counts(cases: Iterable[Tuple[str, dict, dict, Dict[str, np.ndarray]]], failures: Dict[str, dict],
                       sizes: Dict[str, Sequence[float]], grid: np.ndarray
                       ) -> Tuple[Dict[str, np.ndarray], Dict[str, int], Dict[str, int]]:
    """The margin calibration's pool: per organ, its reference voxels inside the out-of-fold boxes at each
    candidate margin, summed over the cases that are not failures (:func:`calibration_failures`).

    Args:
        cases: ``(case, boxes, geometry record, {organ: reference mask (z, y, x)})`` for each case, the
            organs contoured in it (an empty mask is skipped).
        failures: :func:`calibration_failures`'s output; sizes: mean box sizes (mm); grid: margins (mm).

    Returns:
        ``(inside {organ: counts per margin}, total {organ: voxels}, n_cases {organ: cases pooled})``.
    """
    inside: Dict[str, np.ndarray] = {}
    total: Dict[str, int] = {}
    n_cases: Dict[str, int] = {}
    for case, boxes, geom, masks in cases:
        for organ, mask in masks.items():
            inside.setdefault(organ, np.zeros(len(grid), np.int64))
            total.setdefault(organ, 0)
            n_cases.setdefault(organ, 0)
            left_out = any(f["case"] == case and not f.get("pooled") for f in failures.get(organ, {}).get("cases", []))
            if not mask.any() or left_out:
                continue
            entry = boxes["organs"][organ]
            total[organ] += int(mask.sum())
            n_cases[organ] += 1
            inside[organ] += inside_counts(mask, geom, entry["centroid_mm"], entry.get("size_mm", sizes[organ]), grid)
    return inside, total, n_cases


def calibration_failures(found: Dict[str, dict], facts: Dict[str, dict], organs: Sequence[str],
                         exclude_far_misses: bool = True) -> Dict[str, dict]:
    """Per organ, the out-of-fold cases that margin calibration leaves out: the organ contoured but not found,
    and (with ``exclude_far_misses``) far misses, found beyond the organ's
    :func:`~nnunet_oar.localization.margins.far_miss_fence` from its contour's centroid.

    Args:
        found: out-of-fold boxes per case (centroids as calibrated); facts: per case, the contoured organs'
            ``position_mm`` (:func:`~nnunet_oar.localization.extent.organ_facts`).

    Returns:
        ``{organ: {"fence_mm": float or None (no found case), "cases": [{"case", "status": "missed" |
        "far_miss", "error_mm"}]}}``; with ``exclude_far_misses=False`` far misses are listed with
        ``"pooled": True``.
    """
    out = {}
    for organ in organs:
        errors, missed = {}, []
        for case, boxes in found.items():
            truth, entry = facts[case]["organs"].get(organ), boxes["organs"].get(organ)
            if truth is None or entry is None:
                continue
            if entry["status"] != "found":
                missed.append({"case": case, "status": "missed"})
            else:
                errors[case] = float(np.linalg.norm(np.subtract(entry["centroid_mm"], truth["position_mm"])))
        fence = far_miss_fence(list(errors.values())) if errors else None
        far = [{"case": c, "status": "far_miss", "error_mm": round(e, 1), **({} if exclude_far_misses else
                {"pooled": True})} for c, e in errors.items() if fence is not None and e > fence]
        out[organ] = {"fence_mm": None if fence is None else round(fence, 1), "cases": missed + far}
    return out


def _facts(gt: sitk.Image, labels: Dict[str, int], annotated: Sequence[str], scan: Optional[Sequence[float]]) -> dict:
    """One case's facts for the learned rules: its scanned extent and its annotated organs' positions and
    extents along z."""
    return {"scan_z_mm": scan, "organs": organ_facts(sitk.GetArrayViewFromImage(gt), geometry(gt),
                                                 {o: labels[o] for o in annotated})}


def check_out_of_fold(facts: Dict[str, dict], folds: Sequence[Tuple[Sequence[str], Sequence[str]]],
                      found: Dict[str, dict], sizes: Dict[str, Sequence[float]], organs: Sequence[str]
                      ) -> Tuple[Dict[str, dict], List[dict]]:
    """Anatomical consistency (:mod:`~nnunet_oar.localization.consistency`) of the out-of-fold boxes, in place:
    each fold's rules, fitted on the cases it trained on, check its validation cases.

    Args:
        facts: every case's ``{"organs": organ_facts}``; folds: per fold, (its training cases, its
            validation cases); found: out-of-fold boxes of the validation cases; sizes: mean box sizes (mm).

    Returns:
        ``({organ: rule fitted on every case} (inference's), [{"case", "organ", "peak", "distance_mm", "anchors",
        "error_mm": [before, after] (when contoured)}])``.
    """
    moves = []
    for train, val in folds:
        rules = {o: r for o in organs if (r := fit_position([facts[c] for c in train], o)) is not None}
        for case in val:
            if case not in found:
                continue
            boxes = found[case]
            check_positions(boxes["organs"], rules, sizes, boxes["image"], boxes.get("scan_z_mm"))
            for organ, entry in boxes["organs"].items():
                if "position_check" in entry:
                    check = entry["position_check"]
                    move = {"case": case, "organ": organ, "peak": entry["peak"],
                            "distance_mm": check["distance_mm"], "anchors": check["anchors"]}
                    truth = facts[case]["organs"].get(organ)
                    if truth is not None:
                        move["error_mm"] = [round(float(np.linalg.norm(np.subtract(c, truth["position_mm"]))), 1)
                                            for c in (check["heatmap_centroid_mm"], entry["centroid_mm"])]
                    moves.append(move)
    everyone = list(facts.values())
    return {o: r for o in organs if (r := fit_position(everyone, o)) is not None}, moves


def choose_z_extents(facts: Dict[str, dict], folds: Sequence[Tuple[Sequence[str], Sequence[str]]],
                     found: Dict[str, dict], organs: Sequence[str], min_cases: int = 5
                     ) -> Tuple[Dict[str, dict], Dict[str, dict], Dict[str, Dict[str, dict]]]:
    """The organs that get a learned extent along z, judged out of fold.

    Args:
        facts: every case's ``{"scan_z_mm", "organs": organ_facts}``.
        folds: per fold, (the cases it trained on, its validation cases); each fold's rule is fitted on the
            first and judged on the second.
        found: out-of-fold boxes (mean-size boxes) of the validation cases.
        organs: the localizer's organs.
        min_cases: out-of-fold cases (organ contoured, it and its anchors found) needed to decide.

    Returns:
        ``({organ: rule fitted on every case}, {organ: {"n", "median_z_error_mm": {"mean_size_box",
        "learned_extent", "learned_extent_exact_anchors"}, "judged_rules": the folds' rules}}, {validation
        case: {organ: its fold's rule}})``. An organ keeps its learned extent where the median error of its
        centroid along z over the validation cases is below the mean-size box's; the rules of the last dict
        are those of the kept organs. ``learned_extent_exact_anchors`` is the rule's floor: the same
        rule with every other anchor at its contour's centroid and the true scanned extent (the organ's own
        centroid as found), so what remains is how much the contours' ends vary around their anchors.
    """
    errors: Dict[str, Tuple[list, list]] = {}
    floor: Dict[str, list] = {}
    rules_of: Dict[str, Dict[str, dict]] = {}
    judged: Dict[str, list] = {}
    for train, val in folds:
        for organ in organs:
            rule = fit_z_extent([facts[c] for c in train], organ)
            if rule is None or all(rule[end]["anchor"] == SELF for end in ENDS):
                continue
            judged.setdefault(organ, []).append(rule)
            own, learned = errors.setdefault(organ, ([], []))
            for case in val:
                boxes, truth = found.get(case), facts[case]["organs"].get(organ)
                if boxes is None or truth is None:
                    continue
                rules_of.setdefault(case, {})[organ] = rule
                centroids = found_centroids_z(boxes["organs"])
                scan = boxes.get("scan_z_mm")
                ends = learned_ends(rule, centroids[organ], anchors_z(scan, centroids), scan) \
                    if organ in centroids else None
                if ends is not None:
                    own.append(abs(centroids[organ] - truth["centroid_mm"]))
                    learned.append(abs((ends[0] + ends[1]) / 2 - truth["centroid_mm"]))
                    # the rule's floor: the other anchors where the contours put them, and the true
                    # scanned extent; what is left is the contours' own spread of where they end
                    true_scan = facts[case].get("scan_z_mm")
                    exact = learned_ends(rule, centroids[organ], anchors_z(true_scan, {
                        o: f["centroid_mm"] for o, f in facts[case]["organs"].items() if o != organ}), true_scan)
                    if exact is not None:
                        floor.setdefault(organ, []).append(abs((exact[0] + exact[1]) / 2 - truth["centroid_mm"]))
    chosen, compared = {}, {}
    everyone = list(facts.values())
    for organ, (own, learned) in errors.items():
        if len(own) < min_cases:
            continue
        err = {"mean_size_box": round(float(np.median(own)), 2), "learned_extent": round(float(np.median(learned)), 2)}
        if len(floor.get(organ, [])) >= min_cases:
            err["learned_extent_exact_anchors"] = round(float(np.median(floor[organ])), 2)
        compared[organ] = {"n": len(own), "median_z_error_mm": err, "judged_rules": judged[organ]}
        rule = fit_z_extent(everyone, organ)
        if err["learned_extent"] < err["mean_size_box"] and rule is not None:
            chosen[organ] = {**rule, **compared[organ]}
    fold_rules = {case: {o: r for o, r in rules.items() if o in chosen} for case, rules in rules_of.items()}
    return chosen, compared, {case: fold_rules.get(case, {}) for case in found}


def _annotated(annotations: Optional[dict], case: str, organs: Sequence[str]) -> List[str]:
    """The organs annotated in a case (all when the data set has no ``annotations.json``)."""
    return [o for o in organs if annotations is None or o in annotations.get(case, [])]
