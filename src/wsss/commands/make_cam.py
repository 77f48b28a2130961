"""``wsss make-cam``: multi-scale CAMs of a split into a map store (resumable, sharded).

The store's folder records what made its maps (``manifest.json``: the checkpoint's SHA-256 and
the settings that change the maps); a second run with the same ones resumes, one with others
is refused unless ``--overwrite``. ``make-advcam`` shares this.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, metavar="ROOT", help="dataset root (VOC layout)")
    parser.add_argument("--split", default="train", help="split name or split file (default: train)")
    parser.add_argument("--checkpoint", required=True, metavar="CKPT",
                        help="classifier checkpoint from 'wsss train-classifier'")
    parser.add_argument("--out", required=True, metavar="DIR", help="map store directory")
    parser.add_argument("--overwrite", action="store_true",
                        help="delete maps already in --out (made with another checkpoint or settings) "
                             "and start over; without it such a folder is refused, a matching one resumed")
    parser.add_argument("--scales", type=float, nargs="+", default=None, metavar="S",
                        help="image scales (default: IRN's 1.0 0.5 1.5 2.0)")
    parser.add_argument("--no-flip", action="store_true", help="do not add horizontal flips")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (default: auto)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def prepare_output(args: argparse.Namespace) -> None:
    """Check before any work that ``--out`` can be written, and that ``--overwrite`` runs alone."""
    from wsss.errors import ConfigError
    from wsss.io import ensure_writable_folder
    from wsss.runtime import dist_info_from_env

    if args.overwrite and dist_info_from_env().world_size > 1:
        raise ConfigError("--overwrite deletes maps that other processes may be writing: run it in one "
                          "process (or delete the folder first)")
    ensure_writable_folder(args.out, "output folder")


def claim_store(args: argparse.Namespace, dataset: Any, made_by: dict[str, Any]) -> None:
    """Record in ``--out`` what makes its maps (the checkpoint's digest plus ``made_by``), or refuse
    a folder holding maps made otherwise (see :meth:`wsss.stores.maps.MapStore.claim`)."""
    from wsss.io import file_digest
    from wsss.stores.maps import MapStore

    store = MapStore(args.out)
    made_by = {**made_by, "checkpoint_sha256": file_digest(args.checkpoint)}
    about = {"checkpoint": str(Path(args.checkpoint).resolve()), "data": str(Path(dataset.root).resolve()),
             "split": str(args.split)}
    kept = store.claim(made_by, overwrite=args.overwrite, what="map files", about=about,
                       advice="pass another --out, or --overwrite to delete them and start over")
    if kept:
        log.info("%s: %d map files made with this checkpoint and these settings are kept", args.out, kept)


def run(args: argparse.Namespace) -> int:
    from wsss.attribution.cam import CAM_SCALES, make_cams
    from wsss.data.voc import VOCDataset
    from wsss.errors import ConfigError
    from wsss.models.cam_net import load_cam_net_for
    from wsss.runtime import resolve_device

    scales = tuple(args.scales) if args.scales else CAM_SCALES
    if any(not s > 0 or s == float("inf") for s in scales):
        raise ConfigError(f"--scales must be positive and finite, got {list(scales)}")
    device = resolve_device(args.device)
    prepare_output(args)
    dataset = VOCDataset(args.data, split=args.split)
    model = load_cam_net_for(args.checkpoint, dataset, device)
    claim_store(args, dataset, {"maps": "cam", "scales": list(scales), "flip": not args.no_flip})
    started = time.perf_counter()
    done = make_cams(model, dataset, args.out, device=device, scales=scales, flip=not args.no_flip,
                     progress=not args.no_progress)
    seconds = time.perf_counter() - started
    per_image = f" ({1000 * seconds / done:.0f} ms per image)" if done else ""
    log.info("wrote %d map files to %s in %.1f s%s", done, args.out, seconds, per_image)
    return 0
