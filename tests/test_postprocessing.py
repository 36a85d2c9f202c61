"""Per-organ postprocessing before the merge: nnU-Net's largest-component function, nnU-Net's own
postprocessing.pkl (read with an allow-list), and what each removed."""
import pickle

import numpy as np
import pytest

from nnunet_oar.io import InputError
from nnunet_oar.segmentation import postprocessing


def _two_blobs():
    m = np.zeros((10, 20, 20), bool)
    m[2:8, 2:8, 2:8] = True          # 216 voxels
    m[2:4, 12:14, 12:14] = True      # 8 voxels, apart
    return m


def test_largest_component_removes_the_small_piece_and_counts_it():
    kept, record = postprocessing.apply(_two_blobs(), postprocessing.largest_component(), "largest component")
    assert kept.sum() == 216 and record == {"method": "largest component", "removed_voxels": 8}
    assert postprocessing.apply(np.zeros((3, 3, 3), bool), postprocessing.largest_component(), "x")[1] is None


def test_nnunet_postprocessing_pkl_is_applied(tmp_path):
    from batchgenerators.utilities.file_and_folder_operations import save_pickle
    from nnunetv2.postprocessing.remove_connected_components import remove_all_but_largest_component_from_segmentation
    save_pickle(([remove_all_but_largest_component_from_segmentation], [{"labels_or_regions": 1}]),
                str(tmp_path / "postprocessing.pkl"))
    fn = postprocessing.nnunet_postprocessing(tmp_path / "postprocessing.pkl")
    assert postprocessing.apply(_two_blobs(), fn, "pkl")[1]["removed_voxels"] == 8


class _Evil:
    def __reduce__(self):
        import os
        return os.system, ("echo pwned",)


def test_a_postprocessing_pkl_that_would_run_code_is_refused(tmp_path):
    (tmp_path / "postprocessing.pkl").write_bytes(pickle.dumps(([_Evil()], [{}])))
    with pytest.raises(InputError, match="postprocessing.pkl: refused"):
        postprocessing.nnunet_postprocessing(tmp_path / "postprocessing.pkl")
