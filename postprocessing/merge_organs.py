"""Merge per-organ crop predictions into full-image label maps; same as `nnunet_oar merge`.

    python postprocessing/merge_organs.py -i PRED_LIVER PRED_SPLEEN ... -o OUT
"""
import sys

from nnunet_oar.cli import main

if __name__ == "__main__":
    sys.exit(main(["merge", *sys.argv[1:]]))
