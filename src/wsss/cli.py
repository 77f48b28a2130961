"""The ``wsss`` command line.

This module only routes: each command lives in ``wsss.commands.<name>`` with
``add_arguments(parser)`` and ``run(args) -> int``, imported only when that command runs so that
``wsss --help`` answers at once. A :class:`~wsss.errors.WsssError` becomes one line on stderr and
exit status 2 (a check that found several problems lists them beneath it, one a line); anything
else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from typing import Sequence

from wsss import __version__
from wsss.errors import WsssError

# name -> (module, one-line help). The order is the order of the data flow.
COMMANDS: dict[str, tuple[str, str]] = {
    "synth": ("wsss.commands.synth", "generate the benchmark dataset (VOC layout + OoD images)"),
    "check-data": ("wsss.commands.check_data", "validate a dataset: images, masks, labels, boxes"),
    "import-irn-labels": (
        "wsss.commands.import_irn_labels",
        "convert IRN's pickled cls_labels.npy (a file you trust) to wsss's plain label file",
    ),
    "train-classifier": ("wsss.commands.train_classifier", "train the CAM classifier (IRN recipe)"),
    "make-cam": ("wsss.commands.make_cam", "extract multi-scale CAMs into a map store"),
    "make-advcam": ("wsss.commands.make_advcam", "AdvCAM maps (anti-adversarial climbing) into a map store"),
    "eval": ("wsss.commands.eval", "evaluate label maps or a map store (per-class IoU table, sweeps)"),
    "run": ("wsss.commands.run", "run a recipe's stages in a work directory (resumable, sharded)"),
    "report": ("wsss.commands.report", "write a run's results, tables and pictures as one HTML page and Markdown"),
    "overlay": ("wsss.commands.overlay", "draw a map store or a folder of label maps over the dataset's images"),
    "config": ("wsss.commands.config", "print a recipe's resolved configuration"),
    "demo": ("wsss.commands.demo", "generate the benchmark and run every method end to end"),
}


def _command_in(argv: Sequence[str]) -> str | None:
    for token in argv:
        if token in COMMANDS:
            return token
        if not token.startswith("-"):
            return None
    return None


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; only ``command``'s own arguments are loaded (all when ``command`` is '*')."""
    parser = argparse.ArgumentParser(
        prog="wsss",
        description="Weakly supervised semantic segmentation: image labels or boxes in, masks out.",
        epilog="Run 'wsss COMMAND --help' for a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"wsss {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv: debug)")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    for name, (module, help_text) in COMMANDS.items():
        sub = subparsers.add_parser(name, help=help_text, description=help_text)
        # -v after the command too (its own count, added to the one given before it)
        sub.add_argument("-v", "--verbose", dest="command_verbose", action="count", default=0,
                         help="more log output (-vv: debug)")
        if command in (name, "*"):
            importlib.import_module(module).add_arguments(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = _command_in(argv)
    parser = build_parser(command)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    verbose = args.verbose + getattr(args, "command_verbose", 0)
    level = logging.WARNING - 10 * min(verbose, 2) if verbose else logging.INFO
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    module = importlib.import_module(COMMANDS[args.command][0])
    try:
        return int(module.run(args) or 0)
    except WsssError as exc:
        print(f"wsss: error: {exc}", file=sys.stderr)
        for line in exc.details:  # the problems of a check that found several, one a line
            print(f"  {line}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("wsss: interrupted (finished outputs are kept; run again to resume)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
