"""Write one cropped nnU-Net data set per organ; same as `nnunet_oar crop-rois`.

    python dataset_conversion/crop_rois.py -d SOURCE_ID --boxes BOXES_DIR [--organs ...] --first-id N
"""
import sys

from nnunet_oar.cli import main

if __name__ == "__main__":
    sys.exit(main(["crop-rois", *sys.argv[1:]]))
