"""The ``ensemblekit`` argument parser: every command, its options, its help and its examples."""

from __future__ import annotations

import argparse

from ensemblekit.errors import UserError


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
