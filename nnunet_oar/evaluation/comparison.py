"""The benchmark's report: each method scored on the held-out cases, the constant-guess floor and cut
organs of the localizer, box plots, and ``report.md`` / ``report.json`` (Table I, per organ,
localization, wall time and peak memory per stage, the commands, the settings)."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from nnunet_oar.io import atomic_path, read_json, write_json


def _localization_floor_and_cuts(models: Path, test_raw: Path, predictions: Path):
    """The constant guess's localization metrics on the held-out cases (the models' box sizes, offsets and
    margins), and per organ the number of held-out cases whose prediction was cut by its box."""
    from nnunet_oar.localization.localize import load_box_stats
    from nnunet_oar.localization.report import score_folder, summarize
    from nnunet_oar.models import read_manifest
    loc = read_manifest(models)["localizer"]
    box_stats = load_box_stats(models / loc["results_folder"], loc["folds"])
    per_case, per_case_guess, cuts = {}, {}, {}
    for case, boxes, _, per_case[case], per_case_guess[case] in score_folder(test_raw, predictions, box_stats,
                                                                             loc["margin_mm"]):
        for organ, entry in boxes["organs"].items():
            cuts[organ] = cuts.get(organ, 0) + bool(entry.get("cut_by_box"))
    return summarize(per_case, per_case_guess)["constant_guess"], cuts


def _fmt(s: dict, digits: int = 3) -> str:
    return "n/a" if s.get("mean") is None else f"{s['mean']:.{digits}f} ± {s['std']:.{digits}f}"


def _num(v, digits: int = 3) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def _fmt_diff(d: dict) -> str:
    """``Δ [low, high] | p`` cells of one :func:`~nnunet_oar.evaluation.statistics.paired_difference`."""
    if d["ci_low"] is None:
        return f"{_num(d['mean_diff'])} | n/a"
    return f"{d['mean_diff']:+.3f} [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}] | {d['p_wilcoxon']:.2g}"


def _reference_baseline(results: Dict[str, dict]) -> Optional[str]:
    """The baseline the others are compared with: of the equal-time baselines (all baselines when none was
    trained at equal time), the one with the highest mean held-out Dice. Choosing on the held-out cases
    favours the baseline, never the two-stage method."""
    baselines = [m for m in results if m.startswith("baseline")]
    pool = [m for m in baselines if m.endswith("_equal_time")] or baselines
    return max(pool, key=lambda m: results[m]["overall"]["dice"]["mean"] or 0.0, default=None)


def _paired_vs_baseline(results: Dict[str, dict], ref: Optional[str]) -> Dict[str, dict]:
    """Every other method's paired Dice differences against the reference baseline (none without one)."""
    from nnunet_oar.evaluation.statistics import compare_methods
    if ref is None:
        return {}
    return {m: compare_methods(r["per_case"], results[ref]["per_case"]) for m, r in results.items() if m != ref}


def _largest_difference_figure(work: Path, test_raw: Path, methods: Dict[str, Path], results: Dict[str, dict],
                               ref: str, k: int = 3) -> Optional[str]:
    """``cases_largest_difference.png``: CT, reference and both methods' contours for the ``k`` held-out
    cases whose two-stage − baseline Dice differs most. Returns the file name (None: no paired case)."""
    import SimpleITK as sitk
    from nnunet_oar.evaluation.evaluate import prediction_labels
    from nnunet_oar.evaluation.statistics import largest_differences
    from nnunet_oar.report import method_comparison_png
    chosen = largest_differences(results["two_stage"]["per_case"], results[ref]["per_case"], k)
    if not chosen:
        return None
    dataset = read_json(test_raw / "dataset.json")
    ref_labels = {o: v for o, v in dataset["labels"].items() if o not in ("background", "ignore")}
    cases = []
    for case, organ, _ in chosen:
        reference = sitk.ReadImage(str(test_raw / "labelsTr" / f"{case}{dataset['file_ending']}"))
        maps = {"reference": reference}
        for m in (ref, "two_stage"):
            pred = sitk.ReadImage(str(methods[m] / f"{case}{dataset['file_ending']}"))
            maps[m] = _relabel(pred, prediction_labels(methods[m], case), ref_labels)
        ct = sitk.ReadImage(str(test_raw / "imagesTr" / f"{case}_0000{dataset['file_ending']}"))
        cases.append((case, ct, maps, organ))
    name = "cases_largest_difference.png"
    method_comparison_png(cases, ref_labels, work / name, "held-out cases with the largest Dice difference, "
                          f"two_stage − {ref}")
    return name


def _relabel(pred, pred_labels: Dict[str, int], ref_labels: Dict[str, int]):
    """A predicted label map in the reference's label values (organs the reference lacks dropped)."""
    import SimpleITK as sitk
    import numpy as np
    arr = sitk.GetArrayViewFromImage(pred)
    out = np.zeros(arr.shape, np.uint8)
    for organ, value in ref_labels.items():
        if organ in pred_labels:
            out[arr == pred_labels[organ]] = value
    img = sitk.GetImageFromArray(out)
    img.CopyInformation(pred)
    return img


def _is_two_stage_training(label: str) -> bool:
    return label.startswith(("localizer: train", "organs: train")) or label.startswith("organ network") \
        and label.endswith(": train")


def _budget_lines(trainers: dict, stages: Dict[str, dict], unfinished: Sequence[str] = ()) -> list:
    """How long each baseline trained against the two-stage method (equal iterations per network, and
    equal total training time when that baseline was trained)."""
    two_stage = sum(v["wall_s"] for k, v in stages.items() if _is_two_stage_training(k))
    partial = " (the finished ones only)" if any(map(_is_two_stage_training, unfinished)) else ""
    lines = ["", f"Budgets: `baseline` gets the organ networks' trainer (equal iterations per network); "
             f"the two-stage method's trainings (localizer folds + organ networks){partial} took {two_stage:.0f} s."]
    if "baseline_equal_time" in trainers:
        lines[-1] += (f" The equal-time baselines (`{trainers['baseline_equal_time']}`) were trained for "
                      f"{trainers['baseline_equal_time_rule']}.")
        for key, seconds in trainers.items():
            if key.endswith("_equal_time_training_s"):
                lines[-1] += (f" `{key[:-len('_training_s')]}` trained {seconds:.0f} s by the same measure, "
                              f"{seconds / max(trainers['two_stage_training_s'], 1e-9):.2f}× the two-stage method.")
    lines.append("Partial contours (`nnunet_oar ignore-label --region`): `baseline*` ignores the in-body "
                 "background of partially contoured cases, `baseline_likely*` only inside the box where each "
                 "missing organ is likely to lie. The reference baseline of the paired statistics is the "
                 "(equal-time, when trained) baseline with the best held-out Dice, a choice that favours the baseline.")
    return lines


def _network_lines(sizes: Optional[dict]) -> List[str]:
    """The trained networks' widths and sizes, as their checkpoints hold them (``{role: {name: size}}``)."""
    if not sizes:
        return []
    parts = []
    for role, named in sizes.items():
        nets = [n for n in named.values() if "parameters" in n]
        unreadable = [name for name, n in named.items() if "parameters" not in n]
        text = role
        if nets:
            widths = sorted({tuple(n["features_per_stage"]) for n in nets}, key=len)
            params = sorted(n["parameters"] / 1e6 for n in nets)
            count = f"{params[0]:.1f}" if params[-1] - params[0] < 0.05 else f"{params[0]:.1f}-{params[-1]:.1f}"
            text += f" {' or '.join(str(list(w)) for w in widths)} features per stage, {count} M parameters"
        if unreadable:
            text += f" (checkpoint unreadable: {', '.join(unreadable)})"
        parts.append(text)
    return ["Networks, as their checkpoints hold them: " + "; ".join(parts) + ".", ""]


def _machine(device: str) -> str:
    import torch
    mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024 ** 3
    text = f"{os.cpu_count()} CPU cores, {mem_gb:.0f} GB RAM"
    if device == "cuda" and torch.cuda.is_available():
        text += f", GPU {torch.cuda.get_device_name(0)}"
    return text


def write_comparison(work: Path, test_raw: Path, methods: Dict[str, Path], stages: Dict[str, dict], settings: dict,
                     trainers: dict, tolerance_mm: float = 2.0, unfinished: Sequence[str] = ()) -> dict:
    """Score each method's predictions on the held-out cases; write ``metrics_{method}.json/.csv``,
    ``boxplot_dice.png``, ``boxplot_hd95.png``, ``report.json`` and ``report.md`` into ``work``.
    ``unfinished`` names the stages a partial report (``--report-only``) leaves out."""
    from nnunet_oar.evaluation.evaluate import box_plots, evaluate_folders, write_metrics
    annotations = read_json(test_raw / "annotations.json")
    if settings.get("organs"):
        # --organs: a data set converted with more organs (OpenKBP's seven) is scored on those trained
        annotations = {case: [o for o in organs if o in settings["organs"]] for case, organs in annotations.items()}
    results = {}
    for method, folder in methods.items():
        results[method] = evaluate_folders(test_raw / "labelsTr", folder, annotations, tolerance_mm, progress=False)
        write_metrics(results[method], work / f"metrics_{method}.json")
    box_plots(results, work / "boxplot_dice.png", "dice")
    box_plots(results, work / "boxplot_hd95.png", "hd95_mm")
    reference = _reference_baseline(results)
    paired = _paired_vs_baseline(results, reference)
    report = {"settings": settings, "trainers": trainers, "machine": _machine(settings["device"]),
              "test_cases": len(annotations), "tolerance_mm": tolerance_mm,
              "overall": {m: r["overall"] for m, r in results.items()},
              "per_organ": {m: r["per_organ"] for m, r in results.items()},
              "localization": results.get("two_stage", {}).get("localization"), "stages": stages,
              "paired_vs_baseline": paired, "unfinished_stages": list(unfinished)}
    if "two_stage" in methods:
        report["constant_guess"], report["cut_by_box"] = _localization_floor_and_cuts(
            work / "models", test_raw, methods["two_stage"])
    write_json(report, work / "report.json")
    lines = [f"# Baseline vs two-stage on `{settings['dataset']}` (budget `{settings['budget']}`)", "",
             f"Machine: {report['machine']}. Held-out cases: {len(annotations)} (raw data set {test_raw.name}); "
             f"training cases: the raw data set {settings['train_id']}. Trainers: localizer `{trainers['localizer']}`, "
             f"baseline and organ networks `{trainers['networks']}`; baseline configuration "
             f"`{trainers['baseline_config']}`. NSD tolerance {tolerance_mm} mm.", "",
             *_network_lines(trainers.get("network_sizes")),
             *([f"**A partial report** (`--report-only`): these stages had not finished and their methods are "
                f"not scored: {', '.join(unfinished)}.", ""] if unfinished else []),
             "## Table I: mean ± std over scored (case, organ) pairs", "",
             (f"Δ Dice: the mean paired difference (method − {reference}) over the (case, organ) "
              "pairs both scored, with its bootstrap 95 % interval (BCa, 10,000 resamples) and the Wilcoxon "
              "signed-rank p-value." if reference else "Δ Dice: no baseline is scored yet."),
             *_budget_lines(trainers, stages, unfinished), "",
             "| method | Dice | HD95 (mm) | NSD | pairs | Δ Dice vs baseline [95 % CI] | p (Wilcoxon) |",
             "|---|---|---|---|---|---|---|"]
    for m, r in results.items():
        o = r["overall"]
        lines.append(f"| {m} | {_fmt(o['dice'])} | {_fmt(o['hd95_mm'], 1)} | {_fmt(o['nsd'])} | {o['dice']['n']} | "
                     + (_fmt_diff(paired[m]["overall"]) if m in paired else "- | -") + " |")
    names = list(results)
    for m, stats in paired.items():
        lines += ["", f"### Paired Dice difference per organ: {m} − {reference}", "",
                  f"| organ | pairs | Dice {reference} | Dice {m} | Δ Dice [95 % CI] | p (Wilcoxon) |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {organ} | {d['n']} | {_num(d['mean_b'])} | {_num(d['mean_a'])} | {_fmt_diff(d)} |"
                  for organ, d in stats["per_organ"].items()]
    if "two_stage" in paired:
        figure = _largest_difference_figure(work, test_raw, methods, results, reference)
        if figure:
            lines += ["", "### The three held-out cases where the two methods differ most (the paper's Fig. 4)", "",
                      f"![{figure}]({figure})"]
    lines += ["", "## Per organ", "",
              "| organ | " + " | ".join(f"Dice {m}" for m in names) + " | " + " | ".join(f"HD95 {m}" for m in names)
              + " | " + " | ".join(f"NSD {m}" for m in names) + " | outcomes tp/fn/fp/tn " + " / ".join(names) + " |",
              "|---" * (3 * len(names) + 2) + "|"]
    for organ in results[names[0]]["per_organ"]:
        po = [results[m]["per_organ"].get(organ, {}) for m in names]
        out = " ; ".join("/".join(str(p.get("outcomes", {}).get(k, 0)) for k in ("tp", "fn", "fp", "tn")) for p in po)
        lines.append(f"| {organ} | " + " | ".join(_fmt(p.get("dice", {})) for p in po) + " | "
                     + " | ".join(_fmt(p.get("hd95_mm", {}), 1) for p in po) + " | "
                     + " | ".join(_fmt(p.get("nsd", {})) for p in po) + f" | {out} |")
    lines += ["", "![Dice per organ](boxplot_dice.png)", "", "![HD95 per organ](boxplot_hd95.png)", ""]
    if report["localization"]:
        lines += ["## Localization (two-stage, held-out cases)", "",
                  "The constant guess puts each organ at its training-set mean position relative to the image "
                  "centre, boxed the same way; cut = organs whose prediction touches a face of its box inside "
                  "the image (`cut_by_box`).", "",
                  "| organ | n | detection tp/fn/fp/tn | centroid error mm (median) | constant guess mm | "
                  "box IoU (median) | containment (mean / min) | guess containment (mean / min) | cut |",
                  "|---|---|---|---|---|---|---|---|---|"]
        nan = float("nan")
        for organ, s in report["localization"].items():
            d, c = s["detection"], s.get("containment", {})
            g = report.get("constant_guess", {}).get(organ, {})
            gc = g.get("containment", {})
            lines.append(f"| {organ} | {s['n']} | {d['tp']}/{d['fn']}/{d['fp']}/{d['tn']} | "
                         f"{s.get('centroid_error_mm', {}).get('median', nan):.1f} | "
                         f"{g.get('centroid_error_mm', {}).get('median', nan):.1f} | "
                         f"{s.get('iou', {}).get('median', nan):.2f} | "
                         f"{c.get('mean', nan):.3f} / {c.get('min', nan):.3f} | "
                         f"{gc.get('mean', nan):.3f} / {gc.get('min', nan):.3f} | "
                         f"{report.get('cut_by_box', {}).get(organ, 0)} |")
        lines.append("")
    lines += ["## Wall time and peak memory per stage", "", "| stage | wall (s) | peak RSS (GB) |", "|---|---|---|"]
    lines += [f"| {k} | {v['wall_s']:.0f} | {v.get('peak_rss_gb', float('nan')):.1f} |" for k, v in stages.items()]
    lines += ["", "## Commands (in order; each stage's record is in `stages/`)", "", "```"]
    lines += [c for v in stages.values() for c in v["commands"]]
    lines += ["```", "", "## Settings", "", "```json", json.dumps(settings, indent=2), "```", ""]
    with atomic_path(work / "report.md") as tmp:
        tmp.write_text("\n".join(lines))
    return report
