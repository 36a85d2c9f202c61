"""Paired comparison of two methods on the same (case, organ) pairs: Table I's statistics.

Both methods are scored on the same held-out cases, so their metrics pair up per (case, organ). The
difference ``a - b`` is summarised by its mean, a bootstrap 95 % interval of that mean (SciPy's BCa
bootstrap over pairs) and the Wilcoxon signed-rank test's two-sided p-value (SciPy), which assumes
nothing about the differences' distribution (Dice differences are bounded and skewed).
"""
from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import numpy as np

N_RESAMPLES = 10000
SEED = 0            # the interval of a report is reproducible


def paired_values(per_case_a: Dict[str, Dict[str, dict]], per_case_b: Dict[str, Dict[str, dict]],
                  metric: str = "dice", organ: Optional[str] = None) -> List[Tuple[str, str, float, float]]:
    """The (case, organ) pairs both methods scored, with their two values.

    Args:
        per_case_a, per_case_b: ``evaluate_folders(...)["per_case"]`` of the two methods:
            ``{case: {organ: {metric: value, "outcome": "tp"|"fn"|"fp"|"tn"}}}``.
        metric: the metric to pair (``dice``, ``hd95_mm``, ``nsd``).
        organ: one organ only (default: all).

    Returns:
        ``[(case, organ, value_a, value_b)]``; a pair is left out when either value is missing (e.g. an
        organ absent in both prediction and reference, which no metric scores).
    """
    out = []
    for case in sorted(set(per_case_a) & set(per_case_b)):
        for o in sorted(set(per_case_a[case]) & set(per_case_b[case])):
            if organ is not None and o != organ:
                continue
            va, vb = per_case_a[case][o].get(metric), per_case_b[case][o].get(metric)
            if va is not None and vb is not None:
                out.append((case, o, float(va), float(vb)))
    return out


def paired_difference(a: np.ndarray, b: np.ndarray, confidence: float = 0.95) -> dict:
    """Mean paired difference ``a - b`` with its bootstrap interval and the Wilcoxon signed-rank p-value.

    Args:
        a, b: shape (n,), the two methods' values on the same n pairs.

    Returns:
        ``{"n", "mean_a", "mean_b", "mean_diff", "ci_low", "ci_high", "p_wilcoxon"}``; with fewer than two
        pairs the interval and p are ``None``; when every difference is zero, p = 1 and the interval is
        the point [0, 0] (nothing differs, SciPy's test is undefined there).
    """
    from scipy import stats
    a, b = np.asarray(a, float), np.asarray(b, float)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired values need equal 1-D shapes, got {a.shape} and {b.shape}")
    d = a - b
    out = {"n": int(d.size), "mean_a": _mean(a), "mean_b": _mean(b), "mean_diff": _mean(d),
           "ci_low": None, "ci_high": None, "p_wilcoxon": None}
    if d.size < 2:
        return out
    if np.allclose(d, d[0]):
        # a constant difference: the bootstrap has no spread (BCa is undefined), the interval is the point
        out.update(ci_low=float(d[0]), ci_high=float(d[0]),
                   p_wilcoxon=1.0 if d[0] == 0 else float(stats.wilcoxon(d).pvalue))
        return out
    ci = stats.bootstrap((d,), np.mean, confidence_level=confidence, n_resamples=N_RESAMPLES,
                         method="BCa", random_state=np.random.default_rng(SEED)).confidence_interval
    out.update(ci_low=float(ci.low), ci_high=float(ci.high), p_wilcoxon=float(stats.wilcoxon(d).pvalue))
    return out


def format_difference(d: dict) -> str:
    """One :func:`paired_difference` as ``+0.001 [-0.003, +0.004], p = 0.62`` (``n/a`` without an interval)."""
    if d["ci_low"] is None:
        return "n/a"
    return f"{d['mean_diff']:+.3f} [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}], p = {d['p_wilcoxon']:.2g}"


def compare_methods(per_case_a: Dict[str, Dict[str, dict]], per_case_b: Dict[str, Dict[str, dict]],
                    metric: str = "dice") -> dict:
    """:func:`paired_difference` overall and per organ: ``{"overall": {...}, "per_organ": {organ: {...}}}``."""
    pairs = paired_values(per_case_a, per_case_b, metric)
    organs = sorted({p[1] for p in pairs})
    result = {"metric": metric, "overall": _diff(pairs), "per_organ": {}}
    for organ in organs:
        result["per_organ"][organ] = _diff([p for p in pairs if p[1] == organ])
    return result


def largest_differences(per_case_a: Dict[str, Dict[str, dict]], per_case_b: Dict[str, Dict[str, dict]],
                        k: int = 3, metric: str = "dice") -> List[Tuple[str, str, float]]:
    """The ``k`` cases whose mean paired difference ``a - b`` is largest in absolute value, each with the
    organ that differs most in it: ``[(case, organ, case mean difference)]``, largest first."""
    by_case: Dict[str, list] = {}
    for case, organ, va, vb in paired_values(per_case_a, per_case_b, metric):
        by_case.setdefault(case, []).append((organ, va - vb))
    ranked = sorted(by_case.items(), key=lambda kv: -abs(np.mean([d for _, d in kv[1]])))
    return [(case, max(rows, key=lambda r: abs(r[1]))[0], float(np.mean([d for _, d in rows])))
            for case, rows in ranked[:k]]


def _diff(pairs: List[Tuple[str, str, float, float]]) -> dict:
    return paired_difference(np.array([p[2] for p in pairs]), np.array([p[3] for p in pairs]))


def _mean(v: np.ndarray) -> Optional[float]:
    return float(v.mean()) if v.size else None
