"""Per-image stages: sharding by rank, resuming, progress.

A per-image stage is a function ``work(image_id)`` that writes one output file atomically, and a
predicate ``is_done(image_id)`` that says whether that file exists. :func:`run_per_image`
selects this rank's slice of the ids, skips the finished ones and runs the rest with a progress
bar, so that a killed run resumes where it stopped and ``torchrun`` ranks split the work.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Callable, Sequence

from tqdm import tqdm

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits among ``torchrun`` workers (one process: rank 0 of 1)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def dist_info_from_env(environ: dict[str, str] | None = None) -> DistInfo:
    """Read ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` as set by ``torchrun``."""
    env = os.environ if environ is None else environ
    world = int(env.get("WORLD_SIZE", "1"))
    rank = int(env.get("RANK", "0"))
    local = int(env.get("LOCAL_RANK", str(rank)))
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"invalid RANK={rank} / WORLD_SIZE={world}")
    return DistInfo(rank=rank, world_size=world, local_rank=local)


def shard(ids: Sequence[str], rank: int, world_size: int) -> list[str]:
    """This rank's share of ``ids``: every ``world_size``-th id starting at ``rank``.

    Strided rather than contiguous so that ranks get a similar mix of image sizes.
    """
    return list(ids[rank::world_size])


def run_per_image(
    ids: Sequence[str],
    work: Callable[[str], object],
    is_done: Callable[[str], bool],
    *,
    desc: str = "images",
    dist: DistInfo | None = None,
    progress: bool = True,
) -> int:
    """Run ``work`` on this rank's unfinished ids; return how many were processed now."""
    dist = dist or dist_info_from_env()
    mine = shard(ids, dist.rank, dist.world_size)
    todo = [image_id for image_id in mine if not is_done(image_id)]
    skipped = len(mine) - len(todo)
    if skipped:
        log.info("%s: %d of %d already done, resuming", desc, skipped, len(mine))
    for image_id in tqdm(todo, desc=desc, disable=not progress or not todo, leave=False):
        work(image_id)
    return len(todo)
