"""The ``ensemblekit`` command line: a thin layer over ``ensemblekit.runs``.

Commands::

    ensemblekit train CONFIG [--set k=v]... [--out DIR] [--resume] [--overwrite] [--quiet]
    ensemblekit evaluate RUN_DIR [--split test|val] [--json] [--corruptions [NAME ...]] [--severities 1-5]
                         [--ood DATASET]...
    ensemblekit describe CONFIG [--set k=v]... [--json]
    ensemblekit interpolate RUN_DIR [--member A B] [--points N] [--split test|val]
    ensemblekit grow RUN_DIR --children K
    ensemblekit compare RUN_DIR...
    ensemblekit bench SUITE.yaml --out DIR [--resume] [--only NAME]... [--seeds N] [--quiet]
                      [--executor sequential|local|ray] [--jobs N] [--address ADDR]
    ensemblekit report DIR
    ensemblekit list models|methods|datasets
    ensemblekit data check [--root DIR]
    ensemblekit predict RUN_DIR IMAGE_OR_DIR... [--out preds.csv] [--device cpu|cuda]
    ensemblekit export RUN_DIR --format torchscript|onnx|safetensors --out FILE
    ensemblekit data get cifar10|cifar100 [--root DIR] [--quiet]

Every error a user can cause ends with one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ensemblekit.errors import UserError, one_line, shorten

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2
        raise UserError(f"{self.prog}: {message}")


SET_HELP = (
    "override a config field (repeatable); VALUE is parsed as YAML, e.g. --set train.epochs=5 "
    "--set train.milestones=[5,10] --set data.name=synthetic"
)

EXAMPLES = {
    "train": """examples:
  ensemblekit train configs/quick/deep_ensemble.yaml --out runs/de --set method.members=2 --set train.epochs=5
  ensemblekit train configs/quick/deep_ensemble.yaml --out runs/de --set method.members=2 --set train.epochs=5 --resume
  ensemblekit train configs/quick/single.yaml --set data.name=synthetic --set train.epochs=1   # no data needed
continue a finished run with more epochs (single-stage recipes; see docs/configuration.md, "Resuming"):
  ensemblekit train CONFIG --out RUN --resume --set train.epochs=30""",
    "evaluate": """examples:
  ensemblekit evaluate runs/de
  ensemblekit evaluate runs/de --corruptions all --severities 1-5
  ensemblekit evaluate runs/de --ood cifar100         # OOD detection against another data set
  ensemblekit evaluate runs/de6 --ood heldout         # a run trained with data.classes: its held-out classes""",
    "describe": """examples:
  ensemblekit describe configs/paper/cifar100_wrn28_10_deep_ensemble.yaml
  ensemblekit describe configs/quick/fission.yaml --set method.members=4 --json""",
    "interpolate": """example:
  ensemblekit interpolate runs/de --member 0 1 --points 11
BatchNorm: the running statistics of an interpolated network belong to neither end, so every point is
evaluated with BatchNorm in train mode (batch statistics of the evaluation batches), as in MixtureEnsembles
(Savarese & Maire, 2019, section 5.3); the ends therefore differ slightly from the members' own accuracy.""",
    "grow": """example:
  ensemblekit grow runs/subnet --children 2   # anti_random children come in pairs: K must be even""",
    "compare": """example:
  ensemblekit compare runs/single runs/de""",
    "bench": """examples:
  ensemblekit bench configs/suites/quick.yaml --out runs/quick
  ensemblekit bench configs/suites/quick.yaml --out runs/quick --resume --only deep_ensemble
  ensemblekit bench configs/suites/quick.yaml --out runs/quick --executor local --jobs 4
  ensemblekit bench configs/suites/cifar100-wrn28-10.yaml --out runs/c100 --executor ray --address auto""",
    "report": """example:
  ensemblekit report runs/quick""",
    "list": """examples:
  ensemblekit list methods
  ensemblekit list models      # with parameter counts (10 classes)""",
    "data": """examples:
  ensemblekit data check
  ensemblekit data check --root ~/datasets""",
}


def _add_examples(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """End every subcommand's help with its examples (``EXAMPLES``); its one-line help becomes its description."""
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    helps = {action.dest: action.help for action in sub._choices_actions}
    for name, command in sub.choices.items():
        if name in EXAMPLES:
            command.epilog = EXAMPLES[name]
            command.formatter_class = argparse.RawDescriptionHelpFormatter
        if command.description is None:
            command.description = helps.get(name)
    return parser


def _parser() -> argparse.ArgumentParser:
    from ensemblekit import __version__

    p = _Parser(prog="ensemblekit", description="Low-cost deep ensembles: train, evaluate, compare.")
    p.add_argument("--version", action="version", version=f"ensemblekit {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    t = sub.add_parser("train", help="train and evaluate a run")
    t.add_argument("config", help="YAML config")
    t.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help=SET_HELP)
    t.add_argument("--out", help="run directory (default runs/<method>-<model>-<data>-<n>)")
    t.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    t.add_argument("--overwrite", action="store_true", help="replace the run in --out")
    t.add_argument("--quiet", action="store_true", help="no progress output")

    e = sub.add_parser("evaluate", help="evaluate a finished run; writes eval.json")
    e.add_argument("run_dir")
    e.add_argument("--split", choices=["test", "val"], default="test")
    e.add_argument("--json", action="store_true", help="print JSON instead of a table")
    from ensemblekit.evaluation.cli import add_evaluate_arguments

    add_evaluate_arguments(e)

    d = sub.add_parser("describe", help="build the ensemble and print its parameters and FLOPs")
    d.add_argument("config")
    d.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help=SET_HELP)
    d.add_argument("--json", action="store_true")

    ip = sub.add_parser("interpolate", help="accuracy along the line between two members' parameters")
    ip.add_argument("run_dir")
    ip.add_argument(  # --members: the old spelling, kept so that existing scripts run
        "--member",
        "--members",
        dest="member_indices",
        type=int,
        nargs=2,
        default=[0, 1],
        metavar=("A", "B"),
        help="indices of the two members (default: 0 1)",
    )
    ip.add_argument("--points", type=int, default=11)
    ip.add_argument("--split", choices=["test", "val"], default="test")

    g = sub.add_parser("grow", help="add K tuned children to a finished subnetwork run (existing ones unchanged)")
    g.add_argument("run_dir")
    g.add_argument("--children", type=int, required=True, metavar="K", help="children to add (anti-random: even)")
    g.add_argument("--quiet", action="store_true", help="no progress output")

    c = sub.add_parser("compare", help="print a comparison table of finished runs (from their metrics.json)")
    c.add_argument("run_dirs", nargs="+")

    b = sub.add_parser("bench", help="run a benchmark suite at equal training budget; write results and report")
    b.add_argument("suite", help="suite YAML (see configs/suites/)")
    b.add_argument("--out", required=True, help="output directory of the suite")
    b.add_argument("--resume", action="store_true", help="skip finished runs, continue interrupted ones")
    b.add_argument("--only", action="append", default=None, metavar="NAME", help="run only these runs (repeatable)")
    b.add_argument("--seeds", type=int, default=None, help="seeds per run (default: the suite's)")
    b.add_argument("--quiet", action="store_true", help="no per-epoch progress output")
    b.add_argument(
        "--executor",
        choices=["sequential", "local", "ray"],
        default="sequential",
        help="where the runs train: one after another here (default), --jobs N local processes, or Ray tasks",
    )
    b.add_argument("--jobs", type=int, default=None, metavar="N", help="runs at once with --executor local")
    b.add_argument(
        "--address", default=None, metavar="ADDR", help="Ray cluster (e.g. auto, ray://head:10001); default: local"
    )

    r = sub.add_parser("report", help="write results.md, plots and report.html of a suite's output directory")
    r.add_argument("out", help="output directory of ensemblekit bench")

    li = sub.add_parser("list", help="list registered models, methods or data sets")
    li.add_argument("what", choices=["models", "methods", "datasets"])

    pr = sub.add_parser(
        "predict", help="predict images with a finished run; CSV of classes, probabilities, uncertainty"
    )
    pr.add_argument("run_dir")
    pr.add_argument("images", nargs="+", metavar="IMAGE_OR_DIR", help="image files or folders (searched recursively)")
    pr.add_argument("--out", help="CSV file to write (default: print the CSV)")
    pr.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    pr.add_argument("--batch-size", type=int, default=256)

    ex = sub.add_parser("export", help="export a finished run as TorchScript, ONNX or safetensors weights")
    ex.add_argument("run_dir")
    ex.add_argument("--format", dest="fmt", required=True, choices=["torchscript", "onnx", "safetensors"])
    ex.add_argument("--out", required=True, help="file to write")

    da = sub.add_parser("data", help="data utilities")
    da_sub = da.add_subparsers(dest="action", required=True, parser_class=_Parser)
    dc = da_sub.add_parser("check", help="report where each data set is found and whether its checksums match")
    dc.add_argument("--root", help="data root (default: ENSEMBLEKIT_DATA or ./data)")
    dg = da_sub.add_parser("get", help="download (if missing) and verify a data set, without training")
    dg.add_argument("dataset", choices=["cifar10", "cifar100"])
    dg.add_argument("--root", help="data root (default: ENSEMBLEKIT_DATA or ./data)")
    dg.add_argument("--quiet", action="store_true", help="no download progress")
    return p


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


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``ensemblekit`` command; returns the exit code."""
    try:
        args = _add_examples(_parser()).parse_args(argv)
        return COMMANDS[args.command](args)
    except UserError as exc:
        _print_error(f"error: {exc}")
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        _print_error("interrupted")
        return EXIT_INTERRUPTED
    except OSError as exc:
        _print_error(f"error: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "))
        return EXIT_USER_ERROR


def _print_error(text: str) -> None:
    """Print one line to stderr, whatever it holds (undecodable file names are shown escaped)."""
    line = one_line(text).encode("utf-8", "backslashreplace").decode("utf-8")
    try:
        print(line, file=sys.stderr, flush=True)
    except (OSError, ValueError):  # stderr closed or broken: nothing more can be said
        pass


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
