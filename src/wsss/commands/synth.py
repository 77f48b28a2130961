"""``wsss synth ROOT``: write the generated benchmark (see :mod:`wsss.data.synth`)."""

from __future__ import annotations

import argparse
import dataclasses
import time
from typing import Any, Sequence

from wsss import config as wconfig
from wsss.data import synth

_DEFAULTS = synth.SynthConfig()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the options of ``wsss synth``."""
    parser.description = (
        "Write the generated benchmark in the PASCAL VOC layout: images, class and instance masks, "
        "VOC XML boxes, train/val lists, an OoD image set for W-OoD (ROOT/ood), part and context "
        "maps for diagnosis, and ROOT/synth.json (config, class descriptions, statistics), written "
        "last. Re-running with the same options resumes an interrupted run or does nothing."
    )
    parser.add_argument("root", metavar="ROOT",
                        help="output folder: new or empty, or a partial run to resume")
    parser.add_argument("--seed", type=int, default=_DEFAULTS.seed,
                        help="random seed; the same seed and options give byte-identical files "
                             "(default: %(default)s)")
    parser.add_argument("--train", type=int, default=_DEFAULTS.train, metavar="N",
                        help="number of training images (default: %(default)s)")
    parser.add_argument("--val", type=int, default=_DEFAULTS.val, metavar="N",
                        help="number of validation images (default: %(default)s)")
    parser.add_argument("--ood", type=int, default=_DEFAULTS.ood, metavar="N",
                        help="number of OoD images: contexts and clutter, no object (default: %(default)s)")
    parser.add_argument("--size", type=int, default=_DEFAULTS.size, metavar="PX",
                        help="image side in pixels (default: %(default)s); --set size_range=[LOW,HIGH] draws "
                             "each image's side instead, e.g. [320,500] for VOC's geometry")
    parser.add_argument("--classes", type=int, default=_DEFAULTS.classes, metavar="K",
                        help=f"number of foreground classes, 2..{len(synth.CLASS_NAMES)}; the first K of "
                             f"{', '.join(synth.CLASS_NAMES[:4])}, ... (default: %(default)s)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
                        help="set any other SynthConfig field, e.g. --set body_evidence=0.5 or "
                             "--set part_fraction=[0.08,0.15] (YAML values; repeatable; fields: "
                             f"{', '.join(_tunable_fields())}; documented in wsss.data.synth.SynthConfig)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def _tunable_fields() -> list[str]:
    direct = {"seed", "train", "val", "ood", "size", "classes"}
    return [f.name for f in dataclasses.fields(synth.SynthConfig) if f.name not in direct]


def build_config(args: argparse.Namespace) -> synth.SynthConfig:
    """The :class:`~wsss.data.synth.SynthConfig` that ``args`` describe, validated.

    ``--set`` values are parsed as YAML by :mod:`wsss.config` and checked against the field
    types; ``synth.`` in front of a field name is accepted, as in a recipe's ``synth`` section.
    """
    data: dict[str, Any] = {k: getattr(args, k) for k in ("seed", "train", "val", "ood", "size", "classes")}
    for text in args.overrides:
        override = wconfig.parse_override(text)
        if set(override) == {"synth"} and isinstance(override["synth"], dict):
            override = override["synth"]
        data = wconfig.merge(data, override)
    config = synth.SynthConfig.from_dict(data)
    config.validate()
    return config


def _summary(manifest: dict[str, Any], seconds: float | None) -> Sequence[str]:
    stats = manifest["statistics"]
    contexts = ", ".join(
        f"{name}/{c['context']} {c['rate_with_class']:.2f} with vs {c['rate_without_class']:.2f} without"
        for name, c in stats["context"].items()
        if c["rate_with_class"] is not None and c["rate_without_class"] is not None
    )
    images = stats["images"]
    lines = [
        f"classes: {', '.join(manifest['classes'][1:])}",
        f"images: {images['train']} train, {images['val']} val, {images['ood']} ood; "
        f"{stats['objects_per_image']} objects and {stats['classes_per_image']} classes per image",
        f"part fraction {stats['part_fraction']}, mask/box fill {stats['fill_ratio']}, "
        f"foreground fraction {stats['foreground_fraction']}",
    ]
    if contexts:
        lines.append(f"context rate: {contexts}")
    if seconds is not None:
        lines.append(f"done in {seconds:.1f} s")
    return lines


def run(args: argparse.Namespace) -> int:
    """Generate (or resume, or confirm) the set; print a short summary. Returns the exit code."""
    from wsss import io as wio

    config = build_config(args)
    state = synth.existing_state(args.root, config)
    if state == "complete":
        print(f"wsss synth: {args.root} already holds this set (synth.json matches); nothing to do")
        return 0
    wio.ensure_writable_folder(args.root, "dataset folder")  # before the first image, not at it
    if state == "partial":
        print(f"wsss synth: resuming the partial set in {args.root}")
    start = time.perf_counter()
    root = synth.generate(args.root, config, progress=not args.no_progress)
    seconds = time.perf_counter() - start
    manifest = wio.read_json(root / synth.MANIFEST_NAME)
    print(f"wsss synth: wrote {root}")
    for line in _summary(manifest, seconds):
        print(f"  {line}")
    return 0
