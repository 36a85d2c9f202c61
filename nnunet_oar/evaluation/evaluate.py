"""``nnunet_oar evaluate``: score label maps against references, per case and organ, and the benchmark report.

Label values are matched by organ name, so the reference and the prediction may number organs
differently: reference names come from the ``dataset.json`` beside or above the reference folder (or
``ref_labels``), prediction names from ``{case}.json`` (written by ``nnunet_oar predict``) or the
``dataset.json`` that ``nnUNetv2_predict`` leaves in its output folder.

Rules: an organ a case does not annotate (``annotations.json``) is skipped, not scored; an organ the
prediction's model does not know is skipped; absent in both is a true negative (no overlap metric,
kept out of the means); missed and hallucinated organs score Dice 0, NSD 0 and HD95 = the image
diagonal (see :func:`nnunet_oar.evaluation.metrics.organ_metrics`). Means are over the scored (case, organ) pairs.
"""
from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import SimpleITK as sitk
from tqdm import tqdm

from nnunet_oar.contracts import BOXES_SUFFIX, case_file, check_case_set, read_boxes
from nnunet_oar.io import IMAGE_SUFFIXES, InputError, atomic_path, geometry, read_image, read_json, same_geometry, write_json
from nnunet_oar.evaluation.metrics import localization_metrics, organ_metrics, summarize_localization

METRICS = ("dice", "hd95_mm", "nsd", "volume_diff_ml")
NOT_ORGANS = ("background", "ignore")


def _labels_near(folder: Path) -> Optional[Dict[str, int]]:
    for f in (folder / "dataset.json", folder.parent / "dataset.json"):
        if f.is_file():
            return read_json(f)["labels"]
    return None


ENDINGS = IMAGE_SUFFIXES


def _cases(ref_dir: Path) -> Dict[str, Path]:
    cases = {f.name[:-len(e)]: f for f in sorted(ref_dir.iterdir()) for e in ENDINGS if f.name.endswith(e)}
    if not cases:
        raise InputError(f"{ref_dir}: no reference label maps ({', '.join(ENDINGS)})")
    return cases


def _prediction_file(pred_dir: Path, case: str) -> Path:
    for ext in ENDINGS:
        if (pred_dir / f"{case}{ext}").is_file():
            return pred_dir / f"{case}{ext}"
    raise InputError(f"{pred_dir}: no prediction for reference case {case}")


def prediction_labels(pred_dir: Path, case: str, default: Optional[Dict[str, int]] = None) -> Dict[str, int]:
    """``{organ: value}`` of one predicted label map: its ``{case}.json`` (``nnunet_oar predict``), else
    ``default`` or the dataset.json beside or above ``pred_dir`` (``nnUNetv2_predict``)."""
    case_json = Path(pred_dir) / f"{case}.json"
    labels = read_json(case_json)["labels"] if case_json.is_file() else default or _labels_near(Path(pred_dir))
    if labels is None:
        raise InputError(f"{pred_dir}: no {case}.json or dataset.json naming the predicted labels")
    return labels


def _mean_std(values: Sequence[float]) -> Dict[str, float]:
    v = np.asarray([x for x in values if x is not None], float)
    if v.size == 0:
        return {"mean": None, "std": None, "n": 0}
    return {"mean": float(v.mean()), "std": float(v.std()), "n": int(v.size)}


def evaluate_folders(ref_dir: Path, pred_dir: Path, annotations: Optional[Dict[str, List[str]]] = None,
                     tolerance_mm: float = 2.0, ref_labels: Optional[Dict[str, int]] = None,
                     progress: bool = True) -> dict:
    """Score every reference case in ``ref_dir`` against the prediction of the same name in ``pred_dir``.

    Args:
        ref_dir: reference label maps ``{case}.nii.gz``.
        pred_dir: predicted label maps on exactly the reference grids; ``{case}_boxes.json`` beside them
            (from ``nnunet_oar predict``) adds the localization metrics.
        annotations: ``{case: [organs annotated]}``; default: every organ annotated in every case.
        tolerance_mm: NSD tolerance in mm.
        ref_labels: ``{name: value}`` of the references (default: the nearest dataset.json).

    Returns:
        ``{"per_case": {case: {organ: metrics}}, "per_organ": {organ: {metric: {mean, std, n}, outcomes}},
        "overall": {metric: {mean, std, n}}, "localization": {...} (if boxes), "skipped": {...}}``.
    """
    ref_dir, pred_dir = Path(ref_dir), Path(pred_dir)
    ref_labels = ref_labels or _labels_near(ref_dir)
    if ref_labels is None:
        raise InputError(f"{ref_dir}: no dataset.json here or one level up naming the labels")
    pred_default = _labels_near(pred_dir)
    per_case: Dict[str, Dict[str, dict]] = {}
    loc: Dict[str, Dict[str, dict]] = {}
    skipped: Dict[str, Dict[str, str]] = {}
    for case, ref_file in tqdm(_cases(ref_dir).items(), desc="evaluate", disable=not progress):
        pred_file = _prediction_file(pred_dir, case)
        check_case_set(pred_dir, case)
        pred_labels = prediction_labels(pred_dir, case, pred_default)
        ref_img, pred_img = read_image(ref_file, "reference"), read_image(pred_file, "prediction")
        if not same_geometry(ref_img, pred_img):
            raise InputError(f"{pred_file}: grid differs from the reference {ref_file} "
                             f"({geometry(pred_img)} vs {geometry(ref_img)})")
        ref, pred = sitk.GetArrayFromImage(ref_img), sitk.GetArrayFromImage(pred_img)
        spacing_zyx = ref_img.GetSpacing()[::-1]
        boxes = read_boxes(pred_dir, case)["organs"] if case_file(pred_dir, case, BOXES_SUFFIX).is_file() else None
        ref_geom = geometry(ref_img)
        annotated = annotations.get(case) if annotations is not None else None
        per_case[case], skipped[case] = {}, {}
        for organ, value in ref_labels.items():
            if organ in NOT_ORGANS:
                continue
            if annotated is not None and organ not in annotated:
                skipped[case][organ] = "not annotated"
                continue
            if organ not in pred_labels:
                skipped[case][organ] = "not predicted by this model"
                continue
            r = ref == value
            per_case[case][organ] = organ_metrics(r, pred == pred_labels[organ], spacing_zyx, tolerance_mm)
            if boxes is not None:
                loc.setdefault(case, {})[organ] = localization_metrics(r, ref_geom, boxes.get(organ))
    if not any(per_case.values()):
        # nothing matched: names differ between the two sides, or no organ was annotated
        raise InputError(f"{pred_dir}: no (case, organ) pair to score against {ref_dir} ({len(per_case)} cases); "
                         f"reference organs: {', '.join(o for o in ref_labels if o not in NOT_ORGANS)}; "
                         f"predicted organs: {', '.join(o for o in pred_labels if o not in NOT_ORGANS)}")
    organs = sorted({o for c in per_case.values() for o in c}, key=list(ref_labels).index)
    per_organ = {}
    for organ in organs:
        rows = [c[organ] for c in per_case.values() if organ in c]
        scored = [r for r in rows if r["outcome"] != "tn"]
        per_organ[organ] = {m: _mean_std([r[m] for r in scored]) for m in METRICS}
        per_organ[organ]["outcomes"] = {k: sum(r["outcome"] == k for r in rows) for k in ("tp", "fn", "fp", "tn")}
    scored = [r for c in per_case.values() for r in c.values() if r["outcome"] != "tn"]
    out = {"tolerance_mm": tolerance_mm, "per_case": per_case, "per_organ": per_organ,
           "overall": {m: _mean_std([r[m] for r in scored]) for m in METRICS},
           "skipped": {c: s for c, s in skipped.items() if s}}
    if loc:
        out["localization"] = summarize_localization(loc)
    return out


def metrics_csv(result: dict) -> str:
    """One row per scored (case, organ): outcome and every metric."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["case", "organ", "outcome", *METRICS, "volume_ref_ml", "volume_pred_ml"])
    for case, organs in result["per_case"].items():
        for organ, m in organs.items():
            w.writerow([case, organ, m["outcome"], *(m[k] for k in METRICS), m["volume_ref_ml"], m["volume_pred_ml"]])
    return buf.getvalue()


def summary_csv(result: dict) -> str:
    """One row per organ and one ``overall`` row: mean and std of every metric, and the outcome counts."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["organ", *(f"{m}_{k}" for m in METRICS for k in ("mean", "std")), "n", "tp", "fn", "fp", "tn"])
    rows = [(o, s, s["outcomes"]) for o, s in result["per_organ"].items()] + [("overall", result["overall"], {})]
    for organ, s, outcomes in rows:
        w.writerow([organ, *(s[m][k] for m in METRICS for k in ("mean", "std")), s["dice"]["n"],
                    *(outcomes.get(k, "") for k in ("tp", "fn", "fp", "tn"))])
    return buf.getvalue()


def write_metrics(result: dict, dst: Path) -> None:
    """``dst`` (JSON), the same name with ``.csv`` (one row per case and organ) and ``_summary.csv``
    (mean and std per organ and overall)."""
    dst = Path(dst)
    write_json(result, dst)
    with atomic_path(dst.with_suffix(".csv")) as tmp:
        tmp.write_text(metrics_csv(result))
    with atomic_path(dst.with_name(dst.stem + "_summary.csv")) as tmp:
        tmp.write_text(summary_csv(result))


def box_plots(results: Dict[str, dict], dst: Path, metric: str = "dice") -> None:
    """Fig. 3 style: per organ, one box per method of ``metric`` over the held-out cases."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    methods = list(results)
    organs = [o for o in next(iter(results.values()))["per_organ"]]
    fig, ax = plt.subplots(figsize=(max(6, 1.3 * len(organs) * len(methods) / 2 + 2), 4.2))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    width = 0.8 / len(methods)
    for k, method in enumerate(methods):
        data = [[m[metric] for m in (c.get(o) for c in results[method]["per_case"].values())
                 if m is not None and m["outcome"] != "tn"] for o in organs]
        pos = np.arange(len(organs)) + (k - (len(methods) - 1) / 2) * width
        bp = ax.boxplot([d if d else [np.nan] for d in data], positions=pos, widths=width * 0.9, patch_artist=True,
                        showfliers=True)
        for patch in bp["boxes"]:
            patch.set_facecolor(colours[k % len(colours)])
            patch.set_alpha(0.6)
        ax.plot([], [], color=colours[k % len(colours)], lw=8, alpha=0.6, label=method)
    ax.set_xticks(np.arange(len(organs)))
    ax.set_xticklabels(organs, rotation=30, ha="right")
    ax.set_ylabel({"dice": "Dice", "hd95_mm": "HD95 (mm)", "nsd": "NSD"}.get(metric, metric))
    if metric in ("dice", "nsd"):
        ax.set_ylim(0, 1.02)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=len(methods), frameon=False)
    fig.tight_layout()
    with atomic_path(dst) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
