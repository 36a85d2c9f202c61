"""End to end: CT -> localize -> boxes -> per-organ nnU-Net on crops -> max-probability merge -> labels.

``predict()`` is the Python API and ``nnunet_oar predict`` its CLI: it reads the inputs (image files or a
DICOM series), runs :class:`~nnunet_oar.segmentation.predict.OARPredictor` with a models folder
(:mod:`nnunet_oar.models`) and writes each case's files as one set.

Outputs per case, all on exactly the input's grid and written atomically:
``{case}.nii.gz`` (multi-label map), ``{case}.json`` (label names), ``{case}_boxes.json``,
``{case}_stats.json`` / ``.csv`` (per organ: status, volume in mL, mean HU, centroid and box in mm),
on request RTSTRUCT, DICOM SEG and a preview (:mod:`nnunet_oar.export`), and last
``{case}_manifest.json`` (the sha256 of each file of the set; readers refuse a set without it).
"""
from __future__ import annotations

import shutil
import tempfile
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import SimpleITK as sitk
from tqdm import tqdm

from nnunet_oar.contracts import (CASE_OUTPUT_SUFFIXES, LABELS_SUFFIX, begin_case_set, case_file, finish_case_set,
                                  read_boxes, write_boxes)
from nnunet_oar.io import (IMAGE_SUFFIXES, InputError, case_id, geometry, list_images,
                           read_image, write_image, write_json)
from nnunet_oar.models import models_folder, read_manifest
from nnunet_oar.preflight import check_memory, check_writable
from nnunet_oar.segmentation.predict import OARPredictor

# predict's peak memory per CT voxel, bytes: a 458 x 379 x 224 CT peaked at 4.0 GB (organ networks loaded one
# at a time) to 6.1 GB (all loaded; docs/results/inference_benchmark.md), 100-160 B per voxel; half of that
# surely does not fit
PEAK_BYTES_PER_VOXEL = 80


def write_reference_boxes(reference: Path, labels: Dict[str, int], models: Path, output: Path,
                          margin_mm: Optional[float] = None) -> int:
    """``{case}_boxes.json`` for every reference label map in ``reference``: the models' box sizes and
    margin centred on the reference centroids, and the reference extent along z for organs with a learned
    extent (:func:`~nnunet_oar.localization.boxes.reference_boxes`).
    Returns the number of cases."""
    from nnunet_oar.localization.boxes import reference_boxes
    from nnunet_oar.localization.localize import load_box_stats
    loc = read_manifest(models)["localizer"]
    box_stats = load_box_stats(Path(models) / loc["results_folder"], loc["folds"])
    margin = loc["margin_mm"] if margin_mm is None else margin_mm
    files = list_images(reference)
    for f in files:
        img = read_image(f, "reference label map")
        write_boxes(reference_boxes(sitk.GetArrayFromImage(img), geometry(img), labels, box_stats, margin, case_id(f),
                                    loc.get("z_extent", {})), Path(output))
    return len(files)


def _inputs(inputs: Path) -> List[Tuple[str, Path]]:
    """``[(case, path)]``: one DICOM series folder (case = folder name), one image file, or a folder of images."""
    from nnunet_oar.dicom.series import is_dicom_folder
    inputs = Path(inputs)
    if is_dicom_folder(inputs) and not any(f.name.endswith(IMAGE_SUFFIXES)
                                           for f in inputs.iterdir()):
        return [(inputs.name, inputs)]
    return [(case_id(f), f) for f in list_images(inputs)]


def _refuse_overwriting_inputs(sources: List[Tuple[str, Path]], output: Path) -> None:
    """No output may replace an input or sit beside one: an output folder holding the inputs (``-o`` = the
    input's folder) is refused before any model is loaded, naming the input an output would overwrite where
    there is one."""
    out = output.resolve()
    for case, path in sources:
        inputs = set(p.resolve() for p in (path.iterdir() if path.is_dir() else [path]))
        for suffix in CASE_OUTPUT_SUFFIXES:
            if out / f"{case}{suffix}" in inputs:
                raise InputError(f"{path if path.is_file() else out / (case + suffix)}: an input that the output "
                                 f"{case}{suffix} would overwrite; choose another output folder (-o)")
    for case, path in sources:
        # outputs beside the inputs: a rerun would take the label maps for CTs (or refuse them as inputs)
        if (path if path.is_dir() else path.parent).resolve() == out:
            raise InputError(f"{path}: the output folder {out} holds this input, and outputs are never written "
                             "beside the inputs; choose another output folder (-o)")


def predict(inputs: Path, output: Path, models: Path, folds: Optional[Sequence] = None, device: str = "cpu",
            organs: Optional[Sequence[str]] = None, tta: bool = True, step_size: float = 0.5,
            series_uid: Optional[str] = None, rtstruct: bool = False, dicom_seg: bool = False,
            preview: bool = False, boxes_dir: Optional[Path] = None, roi_names: str = "tg263",
            largest_component: Sequence[str] = (), keep_networks: Optional[int] = 1, tile: str = "trained",
            one_fold: bool = False, grid_factor: float = 1.0) -> Dict[str, str]:
    """Segment every CT in ``inputs`` into ``output``.

    Args:
        inputs: a CT image file, a folder of them, or a DICOM CT series folder (read with
            :func:`nnunet_oar.dicom.series.read_ct_series`; ``series_uid`` picks one of several).
        output: output folder (nothing is written beside the inputs).
        models: a models folder (``models.json``) or a models zip (``export-models --zip``).
        rtstruct, dicom_seg: also write ``{case}_rtstruct.dcm`` / ``{case}_seg.dcm`` (DICOM input only).
        preview: also write ``{case}_preview.png`` (one row of planes per found organ).
        boxes_dir: take each case's boxes from ``{boxes_dir}/{case}_boxes.json`` instead of the localizer
            (e.g. ``nnunet_oar reference-boxes``: the organ stage alone).
        roi_names: ROI / segment names in RTSTRUCT and SEG: ``"tg263"`` (``Kidney_L``) or ``"catalogue"``.
        largest_component: organs to keep to their largest connected component, where their network
            brings no nnU-Net ``postprocessing.pkl`` (which is applied whenever it does).
        keep_networks: organ networks kept loaded at once, each loaded when its crop comes (``None``: all;
            docs/results/inference_benchmark.md measures the memory each choice takes).
        tile, one_fold, grid_factor: see :class:`~nnunet_oar.segmentation.predict.OARPredictor`
            (``predict --tile``, ``--preset fast``, ``--preset fastest`` / ``--grid-factor``).

    Returns:
        ``{case: error}`` for inputs that could not be processed; the other cases are written.
    """
    sources = _inputs(inputs)
    if (rtstruct or dicom_seg) and not any(p.is_dir() for _, p in sources):
        raise InputError(f"{inputs}: RTSTRUCT and DICOM SEG reference the CT's DICOM slices; give a DICOM series "
                         "folder (or convert a label map with `nnunet_oar export --ct DICOM_FOLDER`)")
    _refuse_overwriting_inputs(sources, Path(output))
    check_writable(output)
    predictor = OARPredictor(models_folder(models), folds, device, organs, tta, step_size, largest_component,
                             keep_networks, tile=tile, one_fold=one_fold, grid_factor=grid_factor)
    output = Path(output)
    clinical = {"rtstruct": rtstruct, "dicom_seg": dicom_seg, "preview": preview, "roi_names": roi_names}
    errors = {}
    # the next case is read and the last one written while the networks run (SimpleITK and the compression
    # release the GIL): one case ahead, one behind, so at most three CTs are in memory
    with ThreadPoolExecutor(1) as reader, ThreadPoolExecutor(1) as writer:
        ahead = reader.submit(_read_case, *sources[0], series_uid, boxes_dir) if sources else None
        written = None
        for k, (case, path) in enumerate(tqdm(sources, desc="predict")):
            current, ahead = ahead, (reader.submit(_read_case, *sources[k + 1], series_uid, boxes_dir)
                                     if k + 1 < len(sources) else None)
            try:
                with current.result() as (ct, image_file, series, given):
                    seg, boxes = predictor.predict_image(ct, image_file, case, given)
            except InputError as e:
                errors[case] = str(e)
                tqdm.write(f"skipped: {e}")
                continue
            if written is not None:
                _collect(*written, errors)
            written = case, writer.submit(_write_case, output, case, ct, seg, boxes, series, predictor.labels,
                                          clinical)
        if written is not None:
            _collect(*written, errors)
    return errors


@contextmanager
def _opened(ct: sitk.Image, image_file: Path, series, given: Optional[dict], tmp: Optional[str] = None):
    try:
        yield ct, image_file, series, given
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def _read_case(case: str, path: Path, series_uid: Optional[str], boxes_dir: Optional[Path]):
    """One input, read for :func:`predict`: a context of ``(ct, image file for nnU-Net, DICOM series or
    None, given boxes or None)``; a DICOM series goes to a temporary NIfTI (nnU-Net reads files), never
    beside the input, removed when the context closes."""
    from nnunet_oar.dicom.series import read_ct_series
    given = read_boxes(boxes_dir, case) if boxes_dir is not None else None
    if not path.is_dir():
        check_memory(path, PEAK_BYTES_PER_VOXEL, "CT")
        return _opened(read_image(path, "CT"), path, None, given)
    ct, series = read_ct_series(path, series_uid)
    tmp = tempfile.mkdtemp(prefix="nnunet_oar_")
    image_file = Path(tmp) / f"{case}_0000.nii.gz"
    sitk.WriteImage(ct, str(image_file))
    return _opened(ct, image_file, series, given, tmp)


def _write_case(output: Path, case: str, ct: sitk.Image, seg: sitk.Image, boxes: dict, series,
                labels: Dict[str, int], clinical: dict) -> Optional[str]:
    """Write one case's files as one set (its manifest goes first and comes back last). Returns the
    reason its RTSTRUCT / SEG could not be written (the label map and statistics still are), or None."""
    from nnunet_oar.export import write_outputs
    problem, dicom = None, clinical["rtstruct"] or clinical["dicom_seg"]
    if dicom:
        try:
            series.require_uids("RTSTRUCT/SEG")
        except InputError as e:
            problem, dicom = str(e), False
            tqdm.write(f"warning: {e}")
    begin_case_set(output, case)
    files = [output / f"{case}.nii.gz", case_file(output, case, LABELS_SUFFIX)]
    write_image(seg, files[0])
    write_json({"labels": labels, "image": geometry(ct)}, files[1])
    files.append(write_boxes({**boxes, "case": case}, output))
    written = write_outputs(ct, seg, labels, case, output, boxes, series, clinical["rtstruct"] and dicom,
                            clinical["dicom_seg"] and dicom, clinical["preview"], clinical["roi_names"])
    finish_case_set(output, case, files + list(written.values()))
    return problem


def _collect(case: str, written: Future, errors: Dict[str, str]) -> None:
    """Wait for a case's files (a failed write raises here, as it would have in line)."""
    problem = written.result()
    if problem is not None:
        errors[case] = problem
