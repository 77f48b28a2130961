"""``wsss config``: print a recipe's resolved configuration (defaults + file + overrides)."""

from __future__ import annotations

import argparse

from wsss.config import dump_yaml


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("recipe", nargs="?", default=None,
                        help="a recipe YAML file or a packaged name such as synth/demo (default: built-in defaults)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one setting, e.g. --set classifier.epochs=3 (repeatable)")


def run(args: argparse.Namespace) -> int:
    from wsss.pipeline.recipes import load_recipe

    print(dump_yaml(load_recipe(args.recipe, args.overrides)), end="")
    return 0
