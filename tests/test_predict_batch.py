"""Batch prediction's schedule (`nnunet_oar.pipeline.predict` on a folder): the next case is read and the
last one written while the networks run on the current one. The networks are replaced by a stand-in
that takes a fixed time, so that only the schedule is under test; the real networks run in
tests/test_pipeline_integration.py."""
import threading
import time

import numpy as np
import SimpleITK as sitk

from nnunet_oar import pipeline
from nnunet_oar.contracts import check_case_set
from nnunet_oar.io import geometry


class SlowNetworks:
    """Stands in for OARPredictor: 'segments' every voxel above 0 HU as organ 1, taking NET_S seconds."""
    NET_S = 1.0
    labels = {"liver": 1}

    def __init__(self, *args, **kwargs):
        self.events = EVENTS

    def predict_image(self, ct, image_file, case, given=None):
        self.events.append(("net start", case, time.perf_counter()))
        time.sleep(self.NET_S)
        seg = sitk.Cast(ct > 0, sitk.sitkUInt8)
        seg.CopyInformation(ct)
        self.events.append(("net end", case, time.perf_counter()))
        return seg, {"case": case, "image": geometry(ct), "organs": {"liver": {"status": "absent", "peak": 0.0}}}


EVENTS = []


def test_reading_and_writing_overlap_the_networks_and_a_bad_case_does_not_stop_the_rest(tmp_path, monkeypatch):
    src = tmp_path / "in"
    src.mkdir()
    rng = np.random.default_rng(0)
    for name in ("a", "b", "c", "d"):
        img = sitk.GetImageFromArray(rng.integers(-1000, 1000, (40, 64, 64)).astype(np.int16))
        img.SetSpacing((1.5, 1.5, 3.0))
        sitk.WriteImage(img, str(src / f"{name}.nii.gz"))
    (src / "b.nii.gz").write_bytes(b"\x00" * 10)          # a broken case among good ones
    EVENTS.clear()
    read, write = pipeline.read_image, pipeline.write_image

    def timed_read(path, what):
        EVENTS.append(("read", threading.current_thread().name, time.perf_counter()))
        return read(path, what)

    def timed_write(image, path):
        EVENTS.append(("write", threading.current_thread().name, time.perf_counter()))
        return write(image, path)

    monkeypatch.setattr(pipeline, "OARPredictor", SlowNetworks)
    monkeypatch.setattr(pipeline, "models_folder", lambda m: m)
    monkeypatch.setattr(pipeline, "read_image", timed_read)
    monkeypatch.setattr(pipeline, "write_image", timed_write)
    errors = pipeline.predict(src, tmp_path / "out", tmp_path / "models")

    assert list(errors) == ["b"] and "b.nii.gz" in errors["b"]
    for case in ("a", "c", "d"):
        check_case_set(tmp_path / "out", case)                 # every good case is a whole set
    main = threading.main_thread().name
    assert all(thread != main for kind, thread, _ in EVENTS if kind in ("read", "write"))
    nets = {(kind, case): t for kind, case, t in EVENTS if kind.startswith("net")}
    reads = sorted(t for kind, _, t in EVENTS if kind == "read")
    writes = sorted(t for kind, _, t in EVENTS if kind == "write")
    # case d was read before the network finished c (not after it, as in a sequential loop), and a's label
    # map was written while the networks ran
    assert reads[-1] < nets[("net end", "c")]
    assert writes[0] < nets[("net end", "c")]
