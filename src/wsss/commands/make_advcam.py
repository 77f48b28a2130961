"""``wsss make-advcam``: AdvCAM maps of a split into a map store (resumable, sharded).

The options of ``make-cam`` plus AdvCAM's; every AdvCAM default is the reference's
(``wsss.attribution.advcam.AdvCamConfig``). Like ``make-cam``, the folder records what made its
maps and refuses to mix in others (``--overwrite`` starts over).
"""

from __future__ import annotations

import argparse
import logging
import time

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from wsss.commands.make_cam import add_arguments as add_cam_arguments

    add_cam_arguments(parser)
    group = parser.add_argument_group("AdvCAM (defaults: the reference's)")
    group.add_argument("--iterations", type=int, default=None, metavar="T",
                       help="climbing steps per scale (default: 27; above 10, scale 0.5 gets T // 2)")
    group.add_argument("--step-size", type=float, default=None, metavar="XI",
                       help="step size xi in normalised-image units (default: 0.08)")
    group.add_argument("--mask-weight", type=float, default=None, metavar="LAMBDA",
                       help="weight lambda of the mask regulariser (default: 7)")
    group.add_argument("--mask-threshold", type=float, default=None, metavar="TAU",
                       help="threshold tau of the regularised region, relative to the map's max "
                            "(default: 0.5)")
    group.add_argument("--half-iteration-scales", type=float, nargs="*", default=None, metavar="S",
                       help="scales climbed with half the steps and weight 2 (default: 0.5)")
    group.add_argument("--intended-scale-weight", action="store_true",
                       help="weight the half-iteration scales x2 and the others x1, as the reference "
                            "meant (default: the reference's computation, every scale x2, which "
                            "produced the published numbers; docs/quirks.md)")
    group.add_argument("--bfloat16", action="store_true",
                       help="run the climb's network passes under bfloat16 autocast: faster on CPUs with "
                            "bfloat16 instructions, maps within a few percent (not the reference's; "
                            "docs/speed.md)")
    group.add_argument("--images-per-batch", type=int, default=None, metavar="N",
                       help="same-size images climbing together (speed only; default: 1)")
    group.add_argument("--max-batch-pairs", type=int, default=None, metavar="N",
                       help="at most N flip pairs per forward pass, to bound GPU memory (default: no cap)")


def settings_from_args(args: argparse.Namespace) -> dict:
    """The AdvCAM settings given on the command line (the others keep their defaults)."""
    settings = {
        "iterations": args.iterations,
        "step_size": args.step_size,
        "mask_weight": args.mask_weight,
        "mask_threshold": args.mask_threshold,
        "images_per_batch": args.images_per_batch,
        "max_batch_pairs": args.max_batch_pairs,
        "scales": tuple(args.scales) if args.scales else None,
        "half_iteration_scales": (tuple(args.half_iteration_scales)
                                  if args.half_iteration_scales is not None else None),
    }
    settings = {k: v for k, v in settings.items() if v is not None}
    if args.no_flip:
        settings["flip"] = False
    if args.intended_scale_weight:
        settings["reference_scale_weight"] = False
    if args.bfloat16:
        settings["bfloat16"] = True
    return settings


def run(args: argparse.Namespace) -> int:
    from wsss.attribution.advcam import AdvCamConfig, make_advcams
    from wsss.commands.make_cam import claim_store, prepare_output
    from wsss.config import result_settings, with_settings
    from wsss.data.voc import VOCDataset
    from wsss.models.cam_net import load_cam_net_for
    from wsss.runtime import resolve_device

    config = with_settings(None, AdvCamConfig, settings_from_args(args), "advcam")
    device = resolve_device(args.device)
    prepare_output(args)
    dataset = VOCDataset(args.data, split=args.split)
    model = load_cam_net_for(args.checkpoint, dataset, device)
    # the maps depend on every AdvCAM setting but the run-only ones (batching)
    claim_store(args, dataset, {"maps": "advcam", **result_settings(config)})
    started = time.perf_counter()
    done = make_advcams(model, dataset, args.out, config=config, device=device, progress=not args.no_progress)
    seconds = time.perf_counter() - started
    per_image = f" ({seconds / done:.2f} s per image)" if done else ""
    log.info("wrote %d map files to %s in %.1f s%s", done, args.out, seconds, per_image)
    return 0
