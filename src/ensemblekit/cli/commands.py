"""What each ``ensemblekit`` command does: a thin layer over :mod:`ensemblekit.runs`, ``bench`` and ``evaluation``.

Each ``_cmd_<name>(args)`` returns the exit code; :data:`COMMANDS` maps a command name to it. Heavy modules are
imported inside the commands, so ``ensemblekit --help`` starts without torch.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ensemblekit.errors import UserError, shorten

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


def check_range(option: str, value: int | None, lo: int, hi: int) -> None:
    """Refuse an integer option outside ``[lo, hi]`` in one line (huge values would overflow or run forever)."""
    if value is not None and not lo <= value <= hi:
        raise UserError(f"{option} must be between {lo:,} and {hi:,}, got {shorten(value, 30)}")


def _table(rows: list[tuple[str, Any]]) -> str:
    width = max(len(k) for k, _ in rows)
    out = []
    for k, v in rows:
        if isinstance(v, float):
            v = f"{v:.4f}" if abs(v) < 1e4 else f"{v:.4g}"
        elif isinstance(v, int) and v >= 10000:
            v = f"{v:,}"
        out.append(f"{k.ljust(width)}  {v}")
    return "\n".join(out)


def _cmd_train(args: argparse.Namespace) -> int:
    from ensemblekit.resolve import load_config
    from ensemblekit.runs import default_out_dir, train

    cfg = load_config(args.config, args.overrides)
    out = Path(args.out) if args.out else default_out_dir(cfg)
    from ensemblekit.training.steps import TrainingInterrupted

    try:
        record = train(cfg, out, resume=args.resume, overwrite=args.overwrite, quiet=args.quiet)
    except TrainingInterrupted as exc:
        sets = "".join(f" --set {o}" for o in args.overrides)
        print(
            f"{exc}; checkpoint saved. Resume with: ensemblekit train {args.config}{sets} --out {out} --resume",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    if not args.quiet:
        print(train_summary(record, out))
    return 0


def train_summary(record: dict[str, Any], out: Path) -> str:
    """The end of ``train``: ensemble beside member accuracy and NLL, the costs, and where the results are."""
    m, c = record["metrics"], record["costs"]
    member_metrics = record.get("members") or []  # metrics.json's per-member list
    lines = ["", f"{'':12s} {'accuracy':>9s} {'nll':>8s}", f"{'ensemble':12s} {m['accuracy']:9.4f} {m['nll']:8.4f}"]
    if len(member_metrics) > 1:
        lines.append(f"{'member mean':12s} {m['member_accuracy_mean']:9.4f} {m['member_nll_mean']:8.4f}")
        for i, member in enumerate(member_metrics[:8]):
            lines.append(f"{f'member {i}':12s} {member['accuracy']:9.4f} {member['nll']:8.4f}")
        if len(member_metrics) > 8:
            lines.append(f"... {len(member_metrics) - 8} more members in metrics.json")
        gain = m["accuracy"] - m["member_accuracy_mean"]
        lines.append(f"ensemble gain over the mean member: {gain * 100:+.2f} points of accuracy")
    lines.append("")
    lines.append(
        _table(
            [
                ("ece", m["ece"]),
                ("disagreement", m["disagreement"]),
                ("params", c["params"]),
                ("inference_flops_vs_single", c["inference_flops_vs_single"]),
                ("train_epoch_equivalents", c["train_epoch_equivalents"]),
                ("train_seconds", c["train_seconds"]),
            ]
        )
    )
    lines += ["", f"run directory: {out}", f"metrics: {out / 'metrics.json'} (ensemblekit compare {out} for a table)"]
    return "\n".join(lines)


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from ensemblekit.evaluation.cli import check_evaluate_arguments, run_robustness
    from ensemblekit.runs import evaluate

    check_evaluate_arguments(args)  # bad corruption names or severities fail before any work
    record = evaluate(args.run_dir, args.split)
    extra = run_robustness(args)
    if args.json:
        print(json.dumps({**record, **extra}, indent=2))
        return 0
    m = record["metrics"]
    keys = [
        "accuracy",
        "nll",
        "ece",
        "brier",
        "member_accuracy_mean",
        "disagreement",
        "normalized_disagreement",
    ]
    keys += [k for k in ("calibrated_nll", "temperature") if k in m]
    print(f"{record['method']} ({record['num_members']} members) on {args.split}")
    print(_table([(k, m[k]) for k in keys if k in m]))
    print(f"wrote {Path(args.run_dir) / 'eval.json'}")
    from ensemblekit.evaluation.cli import summary_lines

    for line in summary_lines(args.run_dir, extra):
        print(line)
    return 0


def _cmd_describe(args: argparse.Namespace) -> int:
    from ensemblekit.resolve import load_config
    from ensemblekit.runs import describe

    info = describe(load_config(args.config, args.overrides))
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        print(_table(list(info.items())))
    return 0


def _cmd_interpolate(args: argparse.Namespace) -> int:
    from ensemblekit.runs import interpolate

    check_range("--points", args.points, 2, 1001)
    a, b = args.member_indices
    for index in (a, b):
        check_range("--member", index, 0, 1 << 20)
    record = interpolate(args.run_dir, a, b, args.points, args.split)
    rows = [(f"lambda {p['lambda']:.2f}", f"acc {p['accuracy']:.4f}  nll {p['nll']:.4f}") for p in record["curve"]]
    print(_table(rows))
    print(f"wrote {Path(args.run_dir) / 'interpolation.json'}")
    return 0


def _cmd_grow(args: argparse.Namespace) -> int:
    from ensemblekit.config import MAX_MEMBERS
    from ensemblekit.runs.grow import grow

    check_range("--children", args.children, 1, MAX_MEMBERS)
    record = grow(args.run_dir, args.children, quiet=args.quiet)
    m, c = record["metrics"], record["costs"]
    rows = [("members", record["num_members"]), ("accuracy", m["accuracy"]), ("nll", m["nll"]), ("ece", m["ece"])]
    print(_table([*rows, ("train_epoch_equivalents", c["train_epoch_equivalents"])]))
    print(f"metrics: {Path(args.run_dir) / 'metrics.json'}")
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from ensemblekit.bench.tables import comparison_table

    print(comparison_table(args.run_dirs))
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from ensemblekit.bench.run_suite import run_suite
    from ensemblekit.training.steps import TrainingInterrupted

    check_range("--seeds", args.seeds, 1, 1000)
    check_range("--jobs", args.jobs, 1, 1024)
    try:
        status = run_suite(
            args.suite,
            args.out,
            resume=args.resume,
            only=args.only,
            seeds=args.seeds,
            quiet=args.quiet,
            executor=args.executor,
            jobs=args.jobs,
            address=args.address,
        )
    except TrainingInterrupted as exc:
        print(f"{exc}; resume with: ensemblekit bench {args.suite} --out {args.out} --resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    failed = [k for k, e in status["runs"].items() if e.get("state") == "failed"]
    print(f"results: {Path(args.out) / 'results.md'}; report: {Path(args.out) / 'report.html'}")
    if failed:
        print(f"{len(failed)} run(s) failed: {', '.join(failed)} (see suite.json)", file=sys.stderr)
        return 1
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from ensemblekit.bench.report import write_all

    summary = write_all(args.out)
    out = Path(args.out)
    print((out / "results.md").read_text())
    print(f"wrote {out / 'results.csv'}, {out / 'results.md'}, {out / 'report.md'}, {out / 'report.html'}")
    print(f"plots: {', '.join(summary['figures']) or 'none'}")
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    if args.what == "models":
        names = _model_lines()
    elif args.what == "methods":
        from ensemblekit.methods import METHODS

        names = [f"{n:16s} {METHODS.get(n).summary}" for n in METHODS.names()]
    else:
        from ensemblekit.data import list_datasets

        names = list_datasets()
    print("\n".join(names))
    return 0


def _model_lines() -> list[str]:
    """One line per registered model: its name and parameter count for 10 classes (built on the meta device)."""
    import torch

    from ensemblekit.metrics import count_parameters
    from ensemblekit.models import create_model, list_models

    lines = []
    for name in list_models():
        with torch.device("meta"):  # shapes only: no memory, no initialisation
            params = count_parameters(create_model(name, num_classes=10))["unique_params"]
        lines.append(f"{name:18s} {params / 1e6:7.2f}M params ({params:,}; 10 classes)")
    return lines


def _cmd_data(args: argparse.Namespace) -> int:
    if args.action == "get":
        from ensemblekit.data.get import get_dataset, report_lines

        print("\n".join(report_lines(get_dataset(args.dataset, args.root, progress="quiet" if args.quiet else "auto"))))
        return 0
    from ensemblekit.data import check_data

    for entry in check_data(args.root):
        found = entry.get("found")
        line = f"{entry['dataset']:10s} "
        if entry.get("format") == "generated":
            line += (
                f"built in (generated from its seed on demand, no files): {entry.get('train_images')} train / "
                f"{entry.get('test_images')} test images, {entry.get('classes')} classes"
            )
        elif found:
            line += (
                f"found ({entry.get('format')}) at {entry.get('location')}: "
                f"{entry.get('train_images')} train / {entry.get('test_images')} test, checksum {entry.get('checksum')}"
            )
        else:
            line += f"not found ({entry.get('location') or 'looked in the data root'})"
        print(line)
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from ensemblekit.data.images import image_files
    from ensemblekit.predictor import load, prediction_csv

    check_range("--batch-size", args.batch_size, 1, 65536)
    files = image_files(args.images)  # missing files fail before the model is loaded
    predictor = load(args.run_dir, args.device)
    text = prediction_csv(predictor.predict([str(f) for f in files], args.batch_size), [str(f) for f in files])
    if args.out:
        from ensemblekit.atomic import atomic_write_bytes

        atomic_write_bytes(Path(args.out), lambda f: f.write(text.encode()))
        print(f"wrote {len(files)} predictions to {args.out}")
    else:
        print(text, end="")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from ensemblekit.export import export

    path = export(args.run_dir, args.fmt, args.out)
    print(f"wrote {path} ({args.fmt}; input: float images [B, 3, H, W] in [0, 1]; outputs: probs, member_probs)")
    return 0


COMMANDS = {
    "train": _cmd_train,
    "evaluate": _cmd_evaluate,
    "describe": _cmd_describe,
    "interpolate": _cmd_interpolate,
    "grow": _cmd_grow,
    "compare": _cmd_compare,
    "bench": _cmd_bench,
    "report": _cmd_report,
    "list": _cmd_list,
    "data": _cmd_data,
    "predict": _cmd_predict,
    "export": _cmd_export,
}
