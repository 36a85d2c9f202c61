"""Convert VISCERAL data to an nnU-Net raw data set; same as `nnunet_oar convert-visceral`."""
import sys

from nnunet_oar.cli import main

if __name__ == "__main__":
    sys.exit(main(["convert-visceral", *sys.argv[1:]]))
