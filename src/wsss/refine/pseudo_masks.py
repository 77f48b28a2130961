"""Pseudo masks: every image's maps walked over its IRN boundary map (IRN ``make_sem_seg_labels``).

Reads a map store (:class:`~wsss.stores.maps.MapStore`) and a boundary-map store
(:class:`~wsss.stores.edges.EdgeStore`, written by :func:`wsss.training.irn.make_edges`) and
writes label maps into a :class:`~wsss.stores.masks.MaskStore`; resumable and sharded by rank
like every per-image stage.

The background threshold is a number (IRN's ``sem_seg_bg_thres``) or, label-free, the name of
a rule of :mod:`wsss.refine.thresholds`: the threshold is then chosen on the walked scores of
all the images (their histogram, or for ``edges`` their contours against the images' edges),
which no mask enters. That takes two passes: the first walks each image and writes its
statistics (``<out>/.bg_statistics/<id>.npy``, resumable like the masks); the second, once every
process has finished the first, walks again and thresholds. The chosen value is written to
``<out>/.bg_threshold.json``.
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from wsss.config import check_scale
from wsss.errors import ConfigError, DataError
from wsss.io import image_size, write_bytes, write_text
from wsss.refine.random_walk import BETA, BG_THRESHOLD, EXP_TIMES, RADIUS, propagate_scores, scores_to_labels
from wsss.refine.thresholds import (
    EDGE_GRID,
    HISTOGRAM_BINS,
    EdgeAlignment,
    RULE_NAMES,
    check_rule,
    histogram_edges,
    histogram_threshold,
    score_histogram,
)
from wsss.runtime import DistInfo, barrier, dist_info_from_env, run_per_image
from wsss.stores.edges import EdgeStore
from wsss.stores.maps import MapStore
from wsss.stores.masks import MaskStore

log = logging.getLogger(__name__)

STATISTICS_DIR = ".bg_statistics"
THRESHOLD_FILE = ".bg_threshold.json"


def make_pseudo_masks(
    dataset: Any,
    maps_dir: str | os.PathLike,
    edge_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    cam_power: float = 1.0,
    bg_threshold: float | str = BG_THRESHOLD,
    beta: float = BETA,
    exp_times: int = EXP_TIMES,
    radius: int = RADIUS,
    scale: str = "reference",
    device: Any = "cpu",
    ids: Sequence[str] | None = None,
    dist: DistInfo | None = None,
    progress: bool = True,
) -> int:
    """Write a pseudo mask for every image of ``dataset``; return how many were written now.

    ``cam_power`` (1.0 IRN, 1.3 RIB, 1.5 AdvCAM), ``bg_threshold`` (IRN's ``sem_seg_bg_thres``),
    ``beta``, ``exp_times``, ``radius`` and ``scale`` (``"image"``: steps in proportion to each
    image's stride-4 grid) are those of :func:`wsss.refine.random_walk.propagate_to_labels`.
    ``bg_threshold`` may instead name a label-free rule (``"edges"``, ``"li"``, ``"otsu"``,
    ``"triangle"``): the threshold is then chosen over all of ``ids`` from the walked scores and
    the images alone (module docstring; :func:`chosen_bg_threshold` reads it back).
    Errors name the file: maps or boundary map missing, maps of another size than the image, maps of classes the image is not labelled
    with (a map file for another image), NaN.
    """
    check_scale(scale)
    rule = check_rule(bg_threshold) if isinstance(bg_threshold, str) else None
    if cam_power <= 0 or (rule is None and not 0 <= bg_threshold <= 1):
        raise ConfigError(f"cam_power must be positive and bg_threshold in [0, 1] or a label-free rule, "
                          f"got {cam_power}, {bg_threshold}")
    store, edges = MapStore(maps_dir), EdgeStore(edge_dir)
    out = MaskStore(out_dir, getattr(dataset, "palette", None))
    ids = list(dataset.ids if ids is None else ids)

    def scores(image_id: str) -> tuple[Any, Any, tuple[int, int]]:
        if not store.has(image_id):
            raise DataError(f"no maps for image {image_id!r}", store.path(image_id))
        if not edges.has(image_id):
            raise DataError(f"no boundary map for image {image_id!r}", edges.path(image_id))
        maps = store.load(image_id)
        height, width = maps.image_size
        expected = image_size(dataset.image_path(image_id))
        if (height, width) != expected:
            raise DataError(f"maps are {height}x{width} but image {image_id!r} is {expected[0]}x{expected[1]} "
                            "(a map file for another image?)", store.path(image_id))
        labelled = set(int(c) for c in dataset.image_labels(image_id))
        if not set(int(k) for k in maps.keys) <= labelled:
            raise DataError(f"maps hold classes {sorted(int(k) for k in maps.keys)} but image {image_id!r} "
                            f"is labelled {sorted(labelled)} (a map file for another image?)", store.path(image_id))
        if maps.strided is None:
            raise DataError("maps have no stride-4 array (the random walk needs it)", store.path(image_id))
        edge, _ = edges.load(image_id)
        walked = propagate_scores(
            maps.strided.astype("float32"), maps.keys, edge, (height, width), cam_power=cam_power,
            beta=beta, exp_times=exp_times, radius=radius, scale=scale, device=device, where=edges.path(image_id),
        )
        return walked, maps.keys, (height, width)

    out.directory.mkdir(parents=True, exist_ok=True)
    threshold = float(bg_threshold) if rule is None else _label_free_threshold(
        dataset, ids, scores, out.directory, rule, dist=dist, progress=progress)

    def work(image_id: str) -> None:
        walked, keys, size = scores(image_id)
        out.save(image_id, scores_to_labels(walked, keys, size, threshold))

    return run_per_image(ids, work, out.has, desc="pseudo masks", dist=dist, progress=progress)


def _label_free_threshold(dataset: Any, ids: list[str], scores: Any, out_dir: Path, rule: str, *,
                          dist: DistInfo | None, progress: bool) -> float:
    """Pass 1 of a label-free background threshold: every image's statistics of its walked
    scores (resumable) -- their histogram, or for ``edges`` their contours against the image's
    edges -- summed once all processes are done; the rule's threshold on the sum."""
    folder = out_dir / STATISTICS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    shape = (2, EDGE_GRID.size) if rule == "edges" else (HISTOGRAM_BINS,)

    def path(image_id: str) -> Path:
        return folder / f"{image_id}.npy"

    def work(image_id: str) -> None:
        walked, keys, size = scores(image_id)
        if rule == "edges":
            alignment = EdgeAlignment()
            if walked is not None:
                best, channel = walked.max(dim=0)
                alignment.update(dataset.load_image(image_id), best.cpu().numpy(), np.asarray(keys)[channel.cpu().numpy()])
            stats = np.stack([alignment.sums, alignment.counts])
        else:
            best = np.zeros(0) if walked is None else walked.max(dim=0).values.cpu().numpy()
            stats = score_histogram(best, HISTOGRAM_BINS).astype(np.float64)
        buffer = io.BytesIO()
        np.save(buffer, stats, allow_pickle=False)
        write_bytes(path(image_id), buffer.getvalue())

    run_per_image(ids, work, lambda image_id: path(image_id).exists(), desc="walked scores",
                  dist=dist, progress=progress)
    barrier()  # every process sees every image's statistics
    total = np.zeros(shape, dtype=np.float64)
    for image_id in ids:
        try:
            stats = np.load(path(image_id), allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise DataError(f"unreadable walked-score statistics ({exc}); delete it to recompute", path(image_id))
        if stats.shape != shape:
            raise DataError(f"walked-score statistics of shape {stats.shape}, expected {shape}; "
                            "delete it to recompute", path(image_id))
        total += stats
    if rule == "edges":
        alignment = EdgeAlignment()
        alignment.sums, alignment.counts, alignment.num_images = total[0], total[1], len(ids)
        value = alignment.threshold()
    else:
        value = histogram_threshold(total, histogram_edges(HISTOGRAM_BINS), rule)
    if math.isnan(value):
        value = BG_THRESHOLD
        log.warning("label-free background threshold: too few distinct walked scores for the %s rule; "
                    "using IRN's %g", RULE_NAMES[rule], value)
    else:
        log.info("label-free background threshold (%s rule on %d images' walked scores): %.4f",
                 RULE_NAMES[rule], len(ids), value)
    if (dist or dist_info_from_env()).is_main:
        write_text(out_dir / THRESHOLD_FILE, json.dumps(
            {"rule": rule, "bg_threshold": value, "images": len(ids), "uses_ground_truth": False}, indent=2) + "\n")
    return value


def chosen_bg_threshold(out_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The record a label-free run of :func:`make_pseudo_masks` wrote into ``out_dir`` (rule,
    threshold, image count), or None after a run with a numeric threshold."""
    path = Path(out_dir) / THRESHOLD_FILE
    return json.loads(path.read_text()) if path.exists() else None
