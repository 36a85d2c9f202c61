"""The models folder: one self-contained, portable folder per trained method.

``models.json`` (the manifest, :data:`MANIFEST`) names the localizer's and each organ's nnU-Net results
folder, relative to itself, so the folder can be copied to another machine; with them the localizer's
margins, threshold and read-out, each organ's folds and the volume range of its training organs (for
the plausibility checks). :func:`export_models` writes it from nnU-Net's results; :func:`read_manifest`
reads it back.

A models folder travels as one zip (:func:`write_package`, ``export-models --zip``), in the spirit of
nnU-Net's ``nnUNetv2_export_model_to_zip``: the folder's files (its ``catalogue.json`` included) and
:data:`PACKAGE` (a sha256 per file and the versions of nnunetv2, torch and this package that made it).
:func:`install_package` (``install-models``) checks it before anything is written; :func:`models_folder`
lets ``predict -m models.zip`` use a zip directly (installed once into a cache folder).
"""
from __future__ import annotations

import json
import os
import shutil
import zipfile
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

from nnunet_oar import organs as catalogue
from nnunet_oar.io import InputError, atomic_dir, read_json, sha256_file, write_json
from nnunet_oar.localization.boxes import DEFAULT_MARGIN_MM, DEFAULT_READOUT, DEFAULT_TAU
from nnunet_oar.localization.localize import available_folds
from nnunet_oar.localization.margins import read_margins, read_positions, read_z_extents
from nnunet_oar.paths import find_dataset, raw_root, results_root

MANIFEST = "models.json"
PACKAGE = "package.json"
POSTPROCESSING = "postprocessing.pkl"   # nnU-Net's, per organ network, where it determined one
CATALOGUE = "catalogue.json"     # the catalogue entries of the models' organs (user organs included)
_KEEP = ("plans.json", "dataset.json", "dataset_fingerprint.json")
_KEEP_FOLD = ("box_stats.json",)


def read_manifest(models: Path) -> dict:
    """``models.json`` of a models folder (:class:`InputError` naming it when there is none); the organs
    its ``catalogue.json`` records join this process's catalogue."""
    path = Path(models) / MANIFEST
    if not path.is_file():
        raise InputError(f"{path}: no models manifest (write one with `nnunet_oar export-models`)")
    if (Path(models) / CATALOGUE).is_file():
        catalogue.register(read_json(Path(models) / CATALOGUE, "organ catalogue"), where=str(Path(models) / CATALOGUE))
    return read_json(path, "models manifest")


def _copy_results(src: Path, dst: Path, folds: Sequence, checkpoint: str) -> None:
    """The files inference needs: plans, dataset, fingerprint, and per fold the chosen checkpoint (and the
    localizer's box statistics); no training logs or validation outputs."""
    dst.mkdir(parents=True, exist_ok=True)
    for name in _KEEP:
        shutil.copy2(src / name, dst / name)
    for f in folds:
        (dst / f"fold_{f}").mkdir(exist_ok=True)
        if not (src / f"fold_{f}" / checkpoint).is_file():
            raise InputError(f"{src / f'fold_{f}' / checkpoint}: missing")
        for name in (checkpoint, *_KEEP_FOLD):
            if (src / f"fold_{f}" / name).is_file():
                shutil.copy2(src / f"fold_{f}" / name, dst / f"fold_{f}" / name)


def export_models(output: Path, localizer_id: int, organ_ids: Sequence[int],
                  localizer_trainer: str = "nnUNetTrainerOARHeatmap", organ_trainer: str = "nnUNetTrainer",
                  plans: str = "nnUNetPlans", margins: Union[float, Dict[str, float], Path] = DEFAULT_MARGIN_MM,
                  tau: float = DEFAULT_TAU, readout: str = DEFAULT_READOUT, organ_configuration: str = "3d_fullres",
                  organ_plans: Optional[str] = None, organ_checkpoint: str = "checkpoint_final.pth",
                  z_extent: Optional[Dict[str, dict]] = None, positions: Optional[Dict[str, dict]] = None) -> Path:
    """Copy trained results into a self-contained models folder with a ``models.json`` manifest.

    Args:
        output: models folder to write (replaced atomically).
        localizer_id: data set id of the localizer.
        organ_ids: data set ids of the organ networks (each a cropped data set with one organ).
        localizer_trainer, organ_trainer, plans: names in the nnU-Net results folders.
        organ_configuration, organ_plans, organ_checkpoint: the organ networks' nnU-Net configuration
            (``3d_fullres``, ``2d``, ...), plans identifier (default ``plans``; e.g. ``nnUNetResEncUNetMPlans``)
            and checkpoint (``checkpoint_final.pth`` or ``checkpoint_best.pth``), as ``nnUNetv2_predict``
            takes them; recorded per organ in ``models.json``.
        margins: margin v in mm, one for all organs or per organ, or the ``margins.json`` of
            ``localize --cross-validation`` (its calibrated margins, learned extents and consistency rules;
            refused if it names an organ the localizer does not have).
        tau: the localizer's detection threshold.
        readout: the localizer's centroid read-out (``midpoint`` or ``weighted``).
        z_extent: ``{organ: rule}``: organs boxed by their learned extent along z (``margins.json``'s, see
            :mod:`nnunet_oar.localization.extent`).
        positions: ``{organ: rule}``: anatomical-consistency rules (``margins.json``'s, see
            :mod:`nnunet_oar.localization.consistency`).
    """
    loc_name = find_dataset(results_root(), localizer_id)
    if loc_name is None:
        raise FileNotFoundError(f"{results_root()}: no results for data set {localizer_id}")
    loc_src = loc_name / f"{localizer_trainer}__{plans}__3d_loc"
    loc_folds = available_folds(loc_src)
    if not loc_folds:
        raise FileNotFoundError(f"{loc_src}: no trained fold")
    loc_labels = read_json(loc_src / "dataset.json")["labels"]
    if isinstance(margins, Path):
        path, margins = margins, read_margins(margins, [o for o in loc_labels if o != "background"])
        z_extent, positions = z_extent or read_z_extents(path), positions or read_positions(path)
    manifest = {"localizer": {"results_folder": "localizer", "configuration": "3d_loc", "trainer": localizer_trainer,
                              "folds": loc_folds, "margin_mm": margins, "tau": tau, "readout": readout,
                              **({"z_extent": z_extent} if z_extent else {}),
                              **({"position": positions} if positions else {})},
                "organs": {}}
    with atomic_dir(output) as tmp:
        _copy_results(loc_src, tmp / "localizer", loc_folds, "checkpoint_final.pth")
        for dataset_id in organ_ids:
            folder = find_dataset(results_root(), dataset_id)
            if folder is None:
                raise FileNotFoundError(f"{results_root()}: no results for organ data set {dataset_id}")
            src = folder / f"{organ_trainer}__{organ_plans or plans}__{organ_configuration}"
            if not src.is_dir():
                raise FileNotFoundError(f"{src}: no such results folder (trainer, plans and configuration as "
                                        "given to nnUNetv2_train)")
            labels = read_json(src / "dataset.json")["labels"]
            organ = next(n for n in labels if n != "background")
            folds = available_folds(src)
            if not folds:
                raise FileNotFoundError(f"{src}: no trained fold")
            _copy_results(src, tmp / "organs" / organ, folds, organ_checkpoint)
            pp = _postprocessing_file(src, folds)
            if pp is not None:
                shutil.copy2(pp, tmp / "organs" / organ / POSTPROCESSING)
            manifest["organs"][organ] = {"results_folder": f"organs/{organ}", "configuration": organ_configuration,
                                         "plans": organ_plans or plans, "trainer": organ_trainer, "folds": folds,
                                         "checkpoint": organ_checkpoint,
                                         "postprocessing": POSTPROCESSING if pp is not None else None,
                                         "volume_ml": _trained_volume_range(dataset_id)}
        organs = [*loc_labels, *manifest["organs"]]
        write_json(catalogue.entries(dict.fromkeys(o for o in organs if o in catalogue.ORGANS)), tmp / CATALOGUE)
        write_json(manifest, tmp / MANIFEST)
    return Path(output)


def _postprocessing_file(src: Path, folds: Sequence) -> Optional[Path]:
    """The ``postprocessing.pkl`` nnU-Net determined for these folds (``nnUNetv2_find_best_configuration``
    writes it to ``crossval_results_folds_*``), else one beside the results, else ``None``."""
    for candidate in (src / f"crossval_results_folds_{'_'.join(map(str, folds))}" / POSTPROCESSING, src / POSTPROCESSING):
        if candidate.is_file():
            return candidate
    return None


def _trained_volume_range(dataset_id: int) -> Optional[List[float]]:
    """[min, max] organ volume (mL) over an organ data set's training crops (``crops.json``), or ``None``
    when the raw data set is not on this machine or predates the record."""
    raw = find_dataset(raw_root(), dataset_id)
    if raw is None or not (raw / "crops.json").is_file():
        return None
    volumes = [c["organ_volume_ml"] for c in read_json(raw / "crops.json").values() if c.get("organ_volume_ml")]
    return [min(volumes), max(volumes)] if volumes else None



def _versions() -> Dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version
    out = {}
    for name in ("nnunet_oar", "nnunetv2", "torch"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "unknown"
    return out


def write_package(models: Path, dst: Path) -> Path:
    """Zip a models folder (see the module docstring); written to a temporary name, then renamed."""
    from nnunet_oar.io import atomic_path
    models = Path(models)
    read_manifest(models)
    files = sorted(p for p in models.rglob("*") if p.is_file() and p.name != PACKAGE)
    package = {"format": 1, "versions": _versions(),
               "files": {p.relative_to(models).as_posix(): sha256_file(p) for p in files}}
    with atomic_path(dst) as tmp:
        # checkpoints hardly compress; stored, they unpack at disk speed
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as z:
            for p in files:
                z.write(p, p.relative_to(models).as_posix())
            z.writestr(PACKAGE, json.dumps(package, indent=2) + "\n")       # last: a zip cut short lacks it
    return Path(dst)


def install_package(package: Path, output: Path) -> Path:
    """Unpack a models zip into ``output`` (replaced atomically) after checking it: a complete zip, no
    member outside the folder or not listed, every listed file present with its sha256.

    Raises:
        InputError: naming the zip and what is wrong.
    """
    package = Path(package)
    try:
        with zipfile.ZipFile(package) as z:
            names = z.namelist()
            if PACKAGE not in names:
                raise InputError(f"{package}: no {PACKAGE}; not a models package (or cut short)")
            listed = json.loads(z.read(PACKAGE))["files"]
            for name in names:
                parts = Path(name).parts
                if name.startswith("/") or ".." in parts or (parts and ":" in parts[0]):
                    raise InputError(f"{package}: member {name!r} would be written outside the models folder")
                if name != PACKAGE and name not in listed:
                    raise InputError(f"{package}: member {name!r} is not listed in {PACKAGE}")
            missing = sorted(set(listed) - set(names))
            if missing:
                raise InputError(f"{package}: {len(missing)} listed files are missing ({', '.join(missing[:3])})")
            with atomic_dir(output) as tmp:
                for name, digest in listed.items():
                    target = tmp / name
                    target.parent.mkdir(parents=True, exist_ok=True)
                    with z.open(name) as src, open(target, "wb") as dst:
                        shutil.copyfileobj(src, dst)
                    if sha256_file(target) != digest:
                        raise InputError(f"{package}: {name} does not match its sha256 (damaged)")
                (tmp / PACKAGE).write_bytes(z.read(PACKAGE))
                read_manifest(tmp)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, ValueError, KeyError) as e:
        raise InputError(f"{package}: not a complete models zip ({e})") from None
    return Path(output)


def models_folder(models: Path) -> Path:
    """A models folder, or a models zip installed once into ``$nnunet_oar_cache`` (default
    ``~/.cache/nnunet_oar``) under its own sha256, so that ``predict -m models.zip`` works."""
    models = Path(models)
    if not (models.is_file() and zipfile.is_zipfile(models)):
        return models
    cache = Path(os.environ.get("nnunet_oar_cache", Path.home() / ".cache" / "nnunet_oar")) / "models"
    folder = cache / sha256_file(models)[:16]
    if not (folder / PACKAGE).is_file():
        install_package(models, folder)
    return folder
