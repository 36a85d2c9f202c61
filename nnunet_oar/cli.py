"""``nnunet_oar``: one command with subcommands, like git. Each subcommand parses its arguments and
calls one library function; errors in the user's input are printed as one line naming the file."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import List, Optional

from nnunet_oar.io import InputError


def _phantom(a):
    from nnunet_oar.phantom import write_phantoms
    stems = write_phantoms(Path(a.output), a.num, seed=a.seed, scale=a.scale, organs=a.organs)
    print(f"wrote {len(stems)} phantoms to {a.output}")


def _convert_visceral(a):
    from nnunet_oar.conversion.visceral import convert_visceral
    out = convert_visceral(Path(a.input), a.dataset_id, modality=a.modality, organs=a.organs,
                           resample_masks=a.resample_masks)
    print(f"wrote {out}")


def _convert_openkbp(a):
    from nnunet_oar.conversion.openkbp import convert_openkbp
    out = convert_openkbp(Path(a.input), a.dataset_id, organs=a.organs)
    print(f"wrote {out}")


def _trainer_path(a):
    from nnunet_oar.paths import trainer_path
    print(trainer_path())


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nnunet_oar", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("phantom", help="write synthetic CT phantoms in VISCERAL layout")
    s.add_argument("-o", "--output", required=True)
    s.add_argument("-n", "--num", type=int, default=10)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--scale", type=float, default=0.5, help="anatomy size relative to an adult (default 0.5)")
    s.add_argument("--organs", nargs="+", help="structures to annotate (default: all painted)")
    s.set_defaults(func=_phantom)

    s = sub.add_parser("convert-visceral", help="VISCERAL folder -> nnU-Net raw data set")
    add_visceral_args(s)
    s.set_defaults(func=_convert_visceral)

    s = sub.add_parser("convert-openkbp", help="OpenKBP folder or tarball -> nnU-Net raw data set")
    add_openkbp_args(s)
    s.set_defaults(func=_convert_openkbp)

    s = sub.add_parser("trainer-path", help="print the folder to put in nnUNet_extTrainer")
    s.set_defaults(func=_trainer_path)
    return p


def add_visceral_args(s: argparse.ArgumentParser) -> None:
    s.add_argument("-i", "--input", required=True, help="VISCERAL folder")
    s.add_argument("-d", "--dataset-id", type=int, required=True)
    s.add_argument("--modality", default="CTce_ThAb", help="{modality}_{region} to convert (default CTce_ThAb)")
    s.add_argument("--organs", nargs="+", help="canonical names to keep (default: all found)")
    s.add_argument("--resample-masks", action="store_true",
                   help="resample masks whose grid differs from their volume instead of failing")


def add_openkbp_args(s: argparse.ArgumentParser) -> None:
    s.add_argument("-i", "--input", required=True, help="folder of pt_* folders, or the .tar.xz")
    s.add_argument("-d", "--dataset-id", type=int, required=True)
    s.add_argument("--organs", nargs="+", help="canonical names to keep (default: all seven)")


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (InputError, OSError, KeyError, ValueError) as e:
        print(f"nnunet_oar {args.command}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
