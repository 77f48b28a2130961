"""Pseudo masks: every image's maps walked over its IRN boundary map (IRN ``make_sem_seg_labels``).

Reads a map store (:class:`~wsss.stores.maps.MapStore`) and a boundary-map store
(:class:`~wsss.stores.edges.EdgeStore`, written by :func:`wsss.training.irn.make_edges`) and
writes label maps into a :class:`~wsss.stores.masks.MaskStore`; resumable and sharded by rank
like every per-image stage.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

from wsss.config import check_scale
from wsss.errors import ConfigError, DataError
from wsss.io import image_size
from wsss.refine.random_walk import BETA, BG_THRESHOLD, EXP_TIMES, RADIUS, propagate_to_labels
from wsss.runtime import DistInfo, run_per_image
from wsss.stores.edges import EdgeStore
from wsss.stores.maps import MapStore
from wsss.stores.masks import MaskStore


def make_pseudo_masks(
    dataset: Any,
    maps_dir: str | os.PathLike,
    edge_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    cam_power: float = 1.0,
    bg_threshold: float = BG_THRESHOLD,
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
    Errors name the file: maps or boundary
    map missing, maps of another size than the image, maps of classes the image is not labelled
    with (a map file for another image), NaN.
    """
    check_scale(scale)
    if cam_power <= 0 or not 0 <= bg_threshold <= 1:
        raise ConfigError(f"cam_power must be positive and bg_threshold in [0, 1], got {cam_power}, {bg_threshold}")
    store, edges = MapStore(maps_dir), EdgeStore(edge_dir)
    out = MaskStore(out_dir, getattr(dataset, "palette", None))

    def work(image_id: str) -> None:
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
        label = propagate_to_labels(
            maps.strided.astype("float32"), maps.keys, edge, (height, width), cam_power=cam_power,
            bg_threshold=bg_threshold, beta=beta, exp_times=exp_times, radius=radius, scale=scale, device=device,
            where=edges.path(image_id),
        )
        out.save(image_id, label)

    out.directory.mkdir(parents=True, exist_ok=True)
    return run_per_image(list(dataset.ids if ids is None else ids), work, out.has, desc="pseudo masks",
                         dist=dist, progress=progress)
