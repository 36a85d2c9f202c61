"""Evaluation: metrics of label maps against references, and the comparison with one network (the
benchmark and its demo)."""
from __future__ import annotations

from pathlib import Path

from nnunet_oar.cli.common import labels_file
from nnunet_oar.io import read_json


def _evaluate(a) -> None:
    from nnunet_oar.evaluation.evaluate import evaluate_folders, write_metrics
    result = evaluate_folders(Path(a.reference), Path(a.prediction),
                              annotations=read_json(a.annotations, "annotations") if a.annotations else None,
                              tolerance_mm=a.tolerance_mm, ref_labels=labels_file(a.labels) if a.labels else None)
    write_metrics(result, Path(a.output))
    for organ, m in result["per_organ"].items():
        d, h, n = m["dice"], m["hd95_mm"], m["nsd"]
        print(f"{organ:16s} Dice {d['mean'] or 0:.3f} ± {d['std'] or 0:.3f}  HD95 {h['mean'] or 0:6.1f} mm  "
              f"NSD {n['mean'] or 0:.3f}  (n={d['n']})")
    o = result["overall"]["dice"]
    print(f"overall Dice {o['mean'] or 0:.3f} ± {o['std'] or 0:.3f} over {o['n']} (case, organ) pairs; "
          f"wrote {a.output} and {Path(a.output).with_suffix('.csv')}")


def _print_overall(report: dict) -> None:
    for method, o in report["overall"].items():
        print(f"{method:10s} Dice {o['dice']['mean']:.3f} ± {o['dice']['std']:.3f}")


def _benchmark(a) -> None:
    from nnunet_oar.evaluation.benchmark import run_benchmark
    from nnunet_oar.evaluation.settings import settings_for
    s = settings_for(a.dataset, a.budget)
    s.device = a.device
    if a.test_id:
        s.test_id = a.test_id
    if a.phantoms:
        s.phantoms.update(train=a.phantoms[0], test=a.phantoms[1])
    for key in ("organs", "openkbp", "organ_boxes", "baseline_budget"):
        if getattr(a, key):
            setattr(s, key, getattr(a, key))
    _print_overall(run_benchmark(Path(a.work), s, jobs=a.jobs, report_only=a.report_only))
    print(f"see {Path(a.work) / 'report.md'}")


def _demo(a) -> None:
    from nnunet_oar.demo import run_demo
    _print_overall(run_demo(Path(a.output), n_train=a.train, n_test=a.test, seed=a.seed))
    print(f"see {Path(a.output) / 'report.md'} and {Path(a.output) / 'preview.png'}")


def register(sub) -> None:
    s = sub.add_parser("evaluate", help="Dice, HD95, NSD, volume difference (+ localization) per case and organ")
    s.add_argument("-r", "--reference", required=True, help="folder of reference label maps")
    s.add_argument("-p", "--prediction", required=True, help="folder of predicted label maps (same names and grids)")
    s.add_argument("--annotations", help="annotations.json: organs annotated per case (others are skipped)")
    s.add_argument("--labels", help="dataset.json naming the reference labels (default: beside or above -r)")
    s.add_argument("--tolerance-mm", type=float, default=2.0, help="NSD tolerance in mm (default 2)")
    s.add_argument("-o", "--output", required=True,
                   help="metrics JSON; NAME.csv (per case and organ) and NAME_summary.csv are written beside it")
    s.set_defaults(func=_evaluate)

    s = sub.add_parser("benchmark", help="train + score the single-network baseline and the two-stage method")
    s.add_argument("--dataset", required=True, help="phantoms, openkbp, or the id of a converted raw data set "
                                                    "(held-out cases: id + 1, or --test-id)")
    s.add_argument("--work", required=True, help="work folder (own nnU-Net folders); a rerun resumes")
    s.add_argument("--budget", default="cpu", choices=["tiny", "demo", "cpu", "gpu", "full"])
    s.add_argument("--test-id", type=int)
    s.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    s.add_argument("--jobs", type=int, default=1,
                   help="trainings at a time, sharing the data-augmentation workers (default 1; a GPU fits several)")
    s.add_argument("--phantoms", type=int, nargs=2, metavar=("TRAIN", "TEST"),
                   help="number of training and held-out phantoms (default 30 3; the demo budget 20 3)")
    s.add_argument("--organs", nargs="+", help="organs to train and score (default: the data set's)")
    s.add_argument("--openkbp", help="folder with openkbp-train.tar.xz and openkbp-validation.tar.xz "
                                     "(needed, except in the project's workspace checkout)")
    s.add_argument("--organ-boxes", choices=["oof", "reference"],
                   help="the organ networks' training crops: out-of-fold localizer boxes with calibrated margins "
                        "(oof, the paper's; default) or shifted reference boxes (reference)")
    s.add_argument("--baseline-budget", choices=["iterations", "time"],
                   help="iterations: the baseline trains as many iterations as each organ network; time: also a "
                        "baseline trained as long as all two-stage trainings together (default: time for openkbp, "
                        "iterations for phantoms)")
    s.add_argument("--report-only", action="store_true",
                   help="run nothing: score the methods whose held-out predictions have finished and write the "
                        "report, naming the stages that have not (a run stopped by a time cap, or one under way)")
    s.set_defaults(func=_benchmark)

    s = sub.add_parser("demo", help="benchmark on phantoms: two-stage vs one network, trained briefly on CPU")
    s.add_argument("-o", "--output", required=True)
    s.add_argument("--train", type=int, default=20, help="training phantoms (default 20)")
    s.add_argument("--test", type=int, default=3, help="held-out phantoms (default 3)")
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=_demo)
