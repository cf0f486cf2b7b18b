"""The ``evaluate`` command's robustness options: ``--corruptions``, ``--severities``, ``--ood`` and friends."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ensemblekit.data.corruptions import parse_severities, resolve_corruptions
from ensemblekit.errors import UserError


def add_evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the robustness options to the ``evaluate`` sub-parser."""
    parser.add_argument(
        "--corruptions",
        nargs="*",
        metavar="NAME",
        help="evaluate on corrupted test images: names (comma or space separated), 'all' (default) or 'extra'; "
        "writes corruptions.json",
    )
    parser.add_argument("--severities", metavar="LIST", help="severities, e.g. 1-5 (default), 3 or 1,3,5")
    parser.add_argument("--corruption-seed", type=int, default=0, metavar="N", help="seed of the corruptions")
    parser.add_argument(
        "--corruption-max-images",
        type=int,
        metavar="N",
        help="corrupt a seeded stratified subset of N test images (faster estimate; default: the whole test split)",
    )
    parser.add_argument(
        "--ood",
        action="append",
        metavar="DATASET",
        help="OOD detection against 'heldout', a data set name (NAME[:ROOT]) or an image folder; repeatable; "
        "writes ood.json",
    )
    parser.add_argument("--ood-max-images", type=int, metavar="N", help="use at most N images of each OOD set")
    parser.add_argument(
        "--precision",
        choices=["32", "bf16"],
        default="32",
        help="forward passes of the corruption/OOD evaluation in float32 (default) or under bfloat16 autocast "
        "(faster forward passes on CPUs with AVX512-BF16 and on GPUs)",
    )


def check_evaluate_arguments(args: argparse.Namespace) -> None:
    """Refuse bad corruption names, severities and sizes (one line, exit 2) before anything is computed."""
    if args.corruptions is not None:
        resolve_corruptions(args.corruptions)
    parse_severities(args.severities)
    if args.severities is not None and args.corruptions is None:
        raise UserError("--severities needs --corruptions")
    for option, value, hi in (
        ("--corruption-max-images", args.corruption_max_images, 1 << 40),
        ("--ood-max-images", args.ood_max_images, 1 << 40),
        ("--corruption-seed", args.corruption_seed, 2**32 - 1),
    ):
        if value is not None and not (0 if option == "--corruption-seed" else 1) <= value <= hi:
            raise UserError(f"{option} must be between {0 if option == '--corruption-seed' else 1} and {hi:,}")


def run_robustness(args: argparse.Namespace) -> dict[str, Any]:
    """Run what ``--corruptions``/``--ood`` ask for (nothing when neither is given)."""
    if args.corruptions is None and not args.ood:
        return {}
    from ensemblekit.evaluation import evaluate_robustness

    return evaluate_robustness(
        args.run_dir,
        corruptions=args.corruptions,
        severities=parse_severities(args.severities),
        ood=args.ood,
        seed=args.corruption_seed,
        max_ood_images=args.ood_max_images,
        max_corrupted_images=args.corruption_max_images,
        precision=args.precision,
        progress=None if args.json else lambda line: print(line, file=sys.stderr, flush=True),
    )


def summary_lines(run_dir: str | Path, extra: dict[str, Any]) -> list[str]:
    """Human-readable summary of :func:`run_robustness`'s result."""
    lines = []
    c = extra.get("corruptions")
    if c:
        m = c["mean"]
        lines.append(
            f"corrupted ({len(c['corruptions'])} corruptions x {len(c['severities'])} severities): "
            f"accuracy {m['accuracy']:.4f}  nll {m['nll']:.4f}  ece {m['ece']:.4f}"
        )
        for s, v in c["per_severity"].items():
            lines.append(f"  severity {s}: accuracy {v['accuracy']:.4f}  nll {v['nll']:.4f}  ece {v['ece']:.4f}")
        lines.append(f"wrote {Path(run_dir) / 'corruptions.json'}")
    o = extra.get("ood")
    if o:
        for spec, r in o["results"].items():
            lines.append(f"OOD {spec} ({r['num_images']} images):")
            for score in o["scores"]:
                v = r[score]
                lines.append(
                    f"  {score:18s} auroc {v['auroc']:.4f}  aupr_in {v['aupr_in']:.4f}  "
                    f"aupr_out {v['aupr_out']:.4f}  fpr95 {v['fpr95']:.4f}"
                )
        lines.append(f"wrote {Path(run_dir) / 'ood.json'}")
    return lines
