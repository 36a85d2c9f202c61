"""Conversion: phantoms, VISCERAL, OpenKBP and a clinic's DICOM (CT + RTSTRUCT) to nnU-Net raw data sets,
and the ignore-label copy."""
from __future__ import annotations

from pathlib import Path


def _phantom(a) -> None:
    from nnunet_oar.phantom import write_phantoms
    stems = write_phantoms(Path(a.output), a.num, seed=a.seed, scale=a.scale, organs=a.organs)
    print(f"wrote {len(stems)} phantoms to {a.output}")


def _convert_visceral(a) -> None:
    from nnunet_oar.conversion.visceral import convert_visceral
    out = convert_visceral(Path(a.input), a.dataset_id, modality=a.modality, organs=a.organs,
                           resample_masks=a.resample_masks)
    print(f"wrote {out}")


def _convert_openkbp(a) -> None:
    from nnunet_oar.conversion.openkbp import convert_openkbp
    print(f"wrote {convert_openkbp(Path(a.input), a.dataset_id, organs=a.organs)}")


def _convert_dicom(a) -> None:
    from nnunet_oar.conversion.dicom_rt import convert_dicom
    out = convert_dicom(Path(a.input), a.dataset_id, names=Path(a.names) if a.names else None, organs=a.organs,
                        rtstruct_label=a.rtstruct_label, keep_ids=a.keep_ids, dataset_name=a.name)
    print(f"wrote {out}")


def _ignore_label(a) -> None:
    from nnunet_oar.conversion.ignore import with_ignore_label
    print(f"wrote {with_ignore_label(a.dataset_id, a.target_id, body_hu=a.body_hu, region=a.region)}")


def register(sub) -> None:
    s = sub.add_parser("phantom", help="write synthetic CT phantoms in VISCERAL layout")
    s.add_argument("-o", "--output", required=True)
    s.add_argument("-n", "--num", type=int, default=10)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--scale", type=float, default=0.5, help="anatomy size relative to an adult (default 0.5)")
    s.add_argument("--organs", nargs="+", help="structures to annotate (default: all painted)")
    s.set_defaults(func=_phantom)

    s = sub.add_parser("convert-visceral", help="VISCERAL folder -> nnU-Net raw data set")
    s.add_argument("-i", "--input", required=True, help="VISCERAL folder")
    s.add_argument("-d", "--dataset-id", type=int, required=True)
    s.add_argument("--modality", default="CTce_ThAb", help="{modality}_{region} to convert (default CTce_ThAb)")
    s.add_argument("--organs", nargs="+", help="canonical names to keep (default: all found)")
    s.add_argument("--resample-masks", action="store_true",
                   help="resample masks whose grid differs from their volume instead of failing")
    s.set_defaults(func=_convert_visceral)

    s = sub.add_parser("convert-openkbp", help="OpenKBP folder or tarball -> nnU-Net raw data set")
    s.add_argument("-i", "--input", required=True, help="folder of pt_* folders, or the .tar.xz")
    s.add_argument("-d", "--dataset-id", type=int, required=True)
    s.add_argument("--organs", nargs="+", help="canonical names to keep (default: all seven)")
    s.set_defaults(func=_convert_openkbp)

    s = sub.add_parser("convert-dicom", help="CT series with their RTSTRUCTs (any folder tree) -> nnU-Net raw data set",
                       description="ROI names map to catalogue organs by TG-263 names and common variants "
                       "(Parotid_L, L Parotid, PAROTID LT, Lt_Parotid_Gland); planning structures (PRV, +5mm) and "
                       "names without a side for paired organs stay unmapped and are listed in "
                       "conversion_report.json. A --names file is consulted first.")
    s.add_argument("-i", "--input", required=True, help="folder holding the CT series and RTSTRUCTs (searched recursively)")
    s.add_argument("-d", "--dataset-id", type=int, required=True)
    s.add_argument("--name", default="Clinic", help="data set name: Dataset{ID}_{NAME} (default Clinic)")
    s.add_argument("--names", help='JSON {"ROI name" or "re:PATTERN": "catalogue name" or null (skip)}; exact names first')
    s.add_argument("--organs", nargs="+", help="catalogue names to keep (default: every organ found)")
    s.add_argument("--rtstruct-label", help="StructureSetLabel to take where a CT has several RTSTRUCTs "
                   "(default: the newest)")
    s.add_argument("--keep-ids", action="store_true",
                   help="map case ids back to patient ids, UIDs and folders in conversion_report.json")
    s.set_defaults(func=_convert_dicom)

    s = sub.add_parser("ignore-label", help="partially annotated data set -> copy with nnU-Net's ignore label "
                                           "(for a single multi-organ network)")
    s.add_argument("-d", "--dataset-id", type=int, required=True, help="source raw data set (with annotations.json)")
    s.add_argument("-t", "--target-id", type=int, required=True, help="id of the data set to write")
    s.add_argument("--body-hu", type=float, default=-500.0,
                   help="voxels above this HU are body; in-body background of partial cases is ignored (default -500)")
    s.add_argument("--region", choices=["body", "likely"], default="body",
                   help="body: ignore all in-body background of a partial case (default); likely: only inside the "
                        "box where each missing organ is likely to lie (its mean position and size + 3 SD)")
    s.set_defaults(func=_ignore_label)
