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

Every error a user can cause ends with one line on stderr and exit code 2. The parser is in
:mod:`ensemblekit.cli.parser`, the commands in :mod:`ensemblekit.cli.commands`.
"""

from __future__ import annotations

import sys

from ensemblekit.cli.commands import COMMANDS, EXIT_INTERRUPTED, EXIT_USER_ERROR, train_summary
from ensemblekit.cli.parser import EXAMPLES, _add_examples, _parser
from ensemblekit.errors import UserError, one_line

__all__ = ["COMMANDS", "EXAMPLES", "EXIT_INTERRUPTED", "EXIT_USER_ERROR", "main", "train_summary"]


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
