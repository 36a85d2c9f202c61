"""Helpers shared by the command groups."""
from __future__ import annotations

from typing import Dict

from nnunet_oar.io import InputError, read_json


def labels_file(path: str) -> Dict[str, int]:
    """The ``labels`` of a dataset.json or a ``{case}.json``."""
    content = read_json(path, "labels file")
    if not isinstance(content, dict) or not isinstance(content.get("labels"), dict):
        raise InputError(f"{path}: no 'labels' mapping (expected nnU-Net's dataset.json or a {{case}}.json)")
    return content["labels"]


def fail_on_errors(errors: Dict[str, str]) -> None:
    """Commands over many inputs go on past a bad one and fail at the end, naming every one."""
    if errors:
        raise InputError(f"{len(errors)} input(s) failed: " + "; ".join(errors.values()))
