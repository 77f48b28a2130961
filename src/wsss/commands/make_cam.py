"""``wsss make-cam``: multi-scale CAMs of a split into a map store (resumable, sharded)."""

from __future__ import annotations

import argparse
import logging
import time

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, metavar="ROOT", help="dataset root (VOC layout)")
    parser.add_argument("--split", default="train", help="split name or split file (default: train)")
    parser.add_argument("--checkpoint", required=True, metavar="CKPT",
                        help="classifier checkpoint from 'wsss train-classifier'")
    parser.add_argument("--out", required=True, metavar="DIR", help="map store directory")
    parser.add_argument("--scales", type=float, nargs="+", default=None, metavar="S",
                        help="image scales (default: IRN's 1.0 0.5 1.5 2.0)")
    parser.add_argument("--no-flip", action="store_true", help="do not add horizontal flips")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (default: auto)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    from wsss.attribution.cam import CAM_SCALES, make_cams
    from wsss.data.voc import VOCDataset
    from wsss.errors import ConfigError
    from wsss.models.cam_net import load_cam_net_for
    from wsss.runtime import resolve_device

    scales = tuple(args.scales) if args.scales else CAM_SCALES
    if any(s <= 0 for s in scales):
        raise ConfigError(f"--scales must be positive, got {list(scales)}")
    device = resolve_device(args.device)
    dataset = VOCDataset(args.data, split=args.split)
    model = load_cam_net_for(args.checkpoint, dataset, device)
    started = time.perf_counter()
    done = make_cams(model, dataset, args.out, device=device, scales=scales, flip=not args.no_flip,
                     progress=not args.no_progress)
    seconds = time.perf_counter() - started
    per_image = f" ({1000 * seconds / done:.0f} ms per image)" if done else ""
    log.info("wrote %d map files to %s in %.1f s%s", done, args.out, seconds, per_image)
    return 0
