"""``wsss config``: print a recipe's resolved configuration (defaults + file + overrides), or
list the packaged recipes (``--list``)."""

from __future__ import annotations

import argparse

from wsss.config import dump_yaml


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("recipe", nargs="?", default=None,
                        help="a recipe YAML file or a packaged name such as synth/demo (default: built-in "
                             "defaults; --list shows the packaged ones)")
    parser.add_argument("--list", action="store_true", help="list the packaged recipes with their first comment line")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one setting, e.g. --set classifier.epochs=3 (repeatable)")


def recipe_summary(name: str) -> str:
    """The first sentence of a packaged recipe's opening comment (what it is for), or ''."""
    from wsss.config import recipe_path

    words = []
    for line in recipe_path(name).read_text(encoding="utf-8").splitlines():
        text = line.strip()
        if not text.startswith("#"):
            break
        words += text.lstrip("#").split()
    text = " ".join(words)
    end = text.find(". ")
    return text if end < 0 else text[:end + 1]


def run(args: argparse.Namespace) -> int:
    from wsss.config import packaged_recipes
    from wsss.errors import ConfigError
    from wsss.pipeline.recipes import load_recipe

    if args.list:
        if args.recipe or args.overrides:
            raise ConfigError("--list takes no recipe and no --set")
        names = packaged_recipes()
        width = max(len(name) for name in names)
        for name in names:
            print(f"{name:<{width}}  {recipe_summary(name)}".rstrip())
        return 0
    print(dump_yaml(load_recipe(args.recipe, args.overrides)), end="")
    return 0
