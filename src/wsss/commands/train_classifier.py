"""``wsss train-classifier``: train the CAM classifier on a dataset's image labels."""

from __future__ import annotations

import argparse
import logging

from wsss.errors import ConfigError

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, metavar="ROOT", help="dataset root (VOC layout)")
    parser.add_argument("--split", default="train", help="training split name or split file (default: train)")
    parser.add_argument("--val-split", default=None, metavar="SPLIT",
                        help="split evaluated after every epoch (label accuracy, mAP)")
    parser.add_argument("--out", required=True, metavar="CKPT", help="checkpoint to write")
    parser.add_argument("--recipe", default="irn", choices=["irn", "synth"],
                        help="irn: IRN's VOC recipe (ResNet-50, pass --weights); "
                             "synth: small ResNet from scratch for the generated benchmark (default: irn)")
    parser.add_argument("--weights", default=None, metavar="FILE",
                        help="local backbone weights in torchvision format (.pth/.pt/.safetensors)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (default: auto)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a recipe field, e.g. --set epochs=3 or, as in 'wsss run', "
                             "--set classifier.epochs=3 (repeatable)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def build_config(recipe: str, weights: str | None, overrides: list[str]):
    """The recipe, then ``--weights``, then ``--set`` overrides, validated.

    A key may be bare (``epochs=3``) or carry the recipe section it has in ``wsss run``
    (``classifier.epochs=3``).
    """
    from wsss.config import from_dict, merge, parse_override, to_dict
    from wsss.training.classifier import ClassifierConfig, classifier_recipe

    data = to_dict(classifier_recipe(recipe))
    if weights is not None:
        data["weights"] = str(weights)
    for text in overrides:
        override = parse_override(text)
        if set(override) == {"classifier"} and isinstance(override["classifier"], dict):
            override = override["classifier"]
        data = merge(data, override)
    config = from_dict(ClassifierConfig, data, "classifier")
    config.validate()
    return config


def run(args: argparse.Namespace) -> int:
    from wsss.data.voc import VOCDataset
    from wsss.io import ensure_writable_file
    from wsss.runtime import resolve_device
    from wsss.training.classifier import train_classifier

    config = build_config(args.recipe, args.weights, args.overrides)
    if config.weights is None and config.frozen_stages > 0:
        raise ConfigError(
            f"recipe {args.recipe!r} fine-tunes a pretrained backbone (frozen_stages="
            f"{config.frozen_stages}); pass --weights FILE, or --set frozen_stages=0 "
            "--set freeze_bn=false to train from scratch"
        )
    device = resolve_device(args.device)
    ensure_writable_file(args.out, "checkpoint")  # before training, not after
    train = VOCDataset(args.data, split=args.split)
    val = VOCDataset(args.data, split=args.val_split) if args.val_split else None
    result = train_classifier(train, config, device=device, out=args.out, val_source=val,
                              progress=not args.no_progress)
    last = result.history[-1] if result.history else {}
    summary = f"trained in {result.seconds:.0f} s, final loss {last.get('loss', float('nan')):.4f}"
    if "val" in last:
        summary += (f", val exact match {last['val']['exact_match']:.3f}, "
                    f"label accuracy {last['val']['label_accuracy']:.4f}")
    log.info("%s; checkpoint %s", summary, args.out)
    return 0
