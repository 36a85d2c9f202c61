"""Helpers shared by the command groups."""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Union

from nnunet_oar.io import InputError, read_json


def labels_file(path: str) -> Dict[str, int]:
    """The ``labels`` of a dataset.json or a ``{case}.json``."""
    content = read_json(path, "labels file")
    if not isinstance(content, dict) or not isinstance(content.get("labels"), dict):
        raise InputError(f"{path}: no 'labels' mapping (expected nnU-Net's dataset.json or a {{case}}.json)")
    return content["labels"]


def margins(a) -> Union[float, Dict[str, float]]:
    """``--margin`` (one value, mm) or ``--margins margins.json`` (per organ, from cross-validation)."""
    if a.margins:
        from nnunet_oar.localization.margins import read_margins
        return read_margins(Path(a.margins))
    return a.margin


def fail_on_errors(errors: Dict[str, str]) -> None:
    """Commands over many inputs go on past a bad one and fail at the end, naming every one."""
    if errors:
        raise InputError(f"{len(errors)} input(s) failed: " + "; ".join(errors.values()))
