"""Shared machinery of every stage: device, seeds, the torchrun process group, sharded loops.

Nothing here knows about a method, a model or a dataset; every trainer, method and stage uses it:

* **Device and seeds**: :func:`resolve_device` (``"auto"``: CUDA when available) and
  :func:`seed_everything`, the one place seeds are set.
* **Processes**: :class:`DistInfo` (this process's rank under ``torchrun``),
  :func:`distributed_context` (joins and leaves the process group: NCCL on CUDA, gloo on CPU),
  :func:`barrier`, :func:`mean_over_processes`.
* **Per-image loops**: :func:`run_per_image` runs ``work(id)`` on this rank's unfinished ids
  (:func:`shard`: every ``world_size``-th id), so a killed run resumes and ranks split the work;
  :func:`run_per_image_batched` hands the same ids over in groups (same-size images batched on
  one device); :func:`run_per_image_parallel` spreads them over worker processes (CPU-bound
  work such as the dense CRF).
* **Model mode**: :func:`eval_mode` puts a model in eval mode for a block and restores the mode
  it had, whatever happens inside.
* **Fast paths**: :class:`FastPaths`, how a network computes (channels-last memory format,
  bfloat16 autocast), from the recipe's ``runtime`` section to the trainers and inference.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import multiprocessing
import os
import random
import sys
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Literal, Sequence, TypeVar

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from wsss.errors import ConfigError

log = logging.getLogger(__name__)

__all__ = [
    "AUTOCAST_MODES",
    "PIPELINE_TIMEOUT",
    "AutocastMode",
    "DistInfo",
    "FastPaths",
    "barrier",
    "dist_info_from_env",
    "distributed_context",
    "eval_mode",
    "mean_over_processes",
    "pending",
    "resolve_device",
    "run_per_image",
    "run_per_image_batched",
    "run_per_image_parallel",
    "seed_everything",
    "shard",
]

M = TypeVar("M", bound=nn.Module)


# --------------------------------------------------------------------------------- device, seeds
def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices): the one place seeds are set."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def native_bfloat16() -> bool:
    """Whether this CPU computes in bfloat16 natively (AVX512-BF16 or AMX). Where it does not,
    PyTorch emulates bfloat16 and a bfloat16 pass is slower than a float32 one, so the options
    that trade precision for speed on the CPU (``advcam.bfloat16``, ``rib.bfloat16``,
    ``runtime.autocast: bf16``) only pay where this is true."""
    checks = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    try:
        return any(bool(check()) for check in checks if check is not None)
    except RuntimeError:  # a build without the CPU probes
        return False


def resolve_device(name: str | torch.device | None = "auto") -> torch.device:
    """``"auto"``/``None`` -> CUDA if available else CPU; otherwise ``torch.device(name)``.

    Raises:
        ConfigError: an unknown device name, or CUDA asked for where there is none.
    """
    if isinstance(name, torch.device):
        return name
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ConfigError(f"invalid device {name!r} ({exc})") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} requested but CUDA is not available")
    return device


AutocastMode = Literal["none", "bf16"]
AUTOCAST_MODES: tuple[str, ...] = ("none", "bf16")


@dataclass(frozen=True)
class FastPaths:
    """How a network computes: the memory format of its weights and inputs, the forward pass's dtype.

    Both are the CPU's own fast paths (oneDNN); measured on the demo's networks in
    ``docs/speed.md`` ("Training and inference on the CPU", ``benchmarks/cpu_fast_paths.py``).

    Attributes:
        channels_last: weights and 4-D inputs in ``torch.channels_last`` (NHWC). The same
            computation in another order: outputs equal float32's up to rounding.
        autocast: ``"none"`` (float32) or ``"bf16"``: forward passes under
            ``torch.autocast(device, dtype=torch.bfloat16)`` (convolutions and matrix products in
            bfloat16, 8 bits of mantissa; losses and weights stay float32). It changes results,
            so the stages that use it count it in their fingerprints.
    """

    channels_last: bool = False
    autocast: str = "none"

    def __post_init__(self) -> None:
        if self.autocast not in AUTOCAST_MODES:
            raise ConfigError(f"runtime.autocast must be one of {', '.join(AUTOCAST_MODES)}, got {self.autocast!r}")
        if not isinstance(self.channels_last, bool):
            raise ConfigError(f"runtime.channels_last must be true or false, got {self.channels_last!r}")

    @property
    def bf16(self) -> bool:
        """Forward passes run under bfloat16 autocast."""
        return self.autocast == "bf16"

    @property
    def dependency(self) -> dict[str, Any]:
        """Fingerprint entries of a stage run with these paths: ``{"autocast": "bf16"}`` under
        bfloat16, none in float32 (what such a stage computed before the setting existed); the
        memory format changes no result beyond rounding, so it is not one."""
        return {"autocast": self.autocast} if self.bf16 else {}

    def prepare(self, model: M) -> M:
        """``model`` (moved in place) in the memory format; unchanged when ``channels_last`` is off."""
        return model.to(memory_format=torch.channels_last) if self.channels_last else model

    def inputs(self, images: torch.Tensor) -> torch.Tensor:
        """A 4-D input batch in the memory format (other tensors as they are)."""
        if self.channels_last and images.ndim == 4:
            return images.contiguous(memory_format=torch.channels_last)
        return images

    def autocast_on(self, device: torch.device | str) -> contextlib.AbstractContextManager:
        """The forward pass's autocast context on ``device`` (a no-op in float32)."""
        if not self.bf16:
            return contextlib.nullcontext()
        return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)


@contextlib.contextmanager
def eval_mode(model: M) -> Iterator[M]:
    """``model`` in eval mode for the block; its previous mode is restored on exit."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


# --------------------------------------------------------------------------------- processes
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


PIPELINE_TIMEOUT = datetime.timedelta(days=2)
"""Collective timeout for a whole pipeline run: ranks wait at a barrier while rank 0 trains."""


@contextlib.contextmanager
def distributed_context(device: torch.device, timeout: datetime.timedelta | None = None
                        ) -> Iterator[tuple[DistInfo, torch.device]]:
    """This process's place among ``torchrun`` workers, and the device it works on.

    With ``WORLD_SIZE`` > 1 in the environment, joins the default process group (NCCL for CUDA,
    gloo for CPU) and leaves it on exit; a CUDA device becomes ``cuda:LOCAL_RANK``. A group the
    caller already initialised is used as it is and left alone. Without those variables: one
    process, no group. ``timeout`` bounds collective waits (torch's default when None); a
    pipeline whose other ranks wait while rank 0 trains a classifier needs hours
    (:data:`PIPELINE_TIMEOUT`).

    Raises:
        ConfigError: ``WORLD_SIZE`` > 1 without torchrun's rendezvous variables.
    """
    if dist.is_available() and dist.is_initialized():
        info = DistInfo(rank=dist.get_rank(), world_size=dist.get_world_size(),
                        local_rank=dist_info_from_env().local_rank)
        if device.type == "cuda":
            device = torch.device("cuda", info.local_rank)
        yield info, device
        return
    try:
        info = dist_info_from_env()
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if info.world_size == 1:
        yield info, device
        return
    missing = [name for name in ("MASTER_ADDR", "MASTER_PORT") if name not in os.environ]
    if missing:
        verb = "is" if len(missing) == 1 else "are"
        raise ConfigError(f"WORLD_SIZE={info.world_size} is set but {' and '.join(missing)} {verb} not "
                          "set: launch distributed training with torchrun")
    if device.type == "cuda":
        device = torch.device("cuda", info.local_rank)
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                            **({} if timeout is None else {"timeout": timeout}))
    log.info("rank %d of %d joined the process group (%s) on %s",
             info.rank, info.world_size, dist.get_backend(), device)
    try:
        yield info, device
    finally:
        dist.destroy_process_group()


def barrier() -> None:
    """Wait for all ranks when a process group is initialised; otherwise do nothing."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def mean_over_processes(value: torch.Tensor, world_size: int) -> float:
    """The mean of a scalar tensor over ``world_size`` processes (itself with one)."""
    if world_size > 1:
        value = value.detach().clone()
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
        value /= world_size
    return float(value.item())


# --------------------------------------------------------------------------------- per-image loops
def shard(ids: Sequence[str], rank: int, world_size: int) -> list[str]:
    """This rank's share of ``ids``: every ``world_size``-th id starting at ``rank``.

    Strided rather than contiguous so that ranks get a similar mix of image sizes.
    """
    return list(ids[rank::world_size])


def pending(ids: Sequence[str], is_done: Callable[[str], bool], *, desc: str = "images",
            dist: DistInfo | None = None) -> list[str]:
    """This rank's ids whose output does not exist yet (logging how many are done already)."""
    dist = dist or dist_info_from_env()
    mine = shard(ids, dist.rank, dist.world_size)
    todo = [image_id for image_id in mine if not is_done(image_id)]
    if len(mine) > len(todo):
        log.info("%s: %d of %d already done, resuming", desc, len(mine) - len(todo), len(mine))
    return todo


def run_per_image(
    ids: Sequence[str],
    work: Callable[[str], object],
    is_done: Callable[[str], bool],
    *,
    desc: str = "images",
    dist: DistInfo | None = None,
    progress: bool = True,
) -> int:
    """Run ``work`` on this rank's unfinished ids; return how many were processed now.

    ``work(image_id)`` writes one output atomically and ``is_done(image_id)`` says whether it
    exists, so a killed run loses at most the image it was working on.
    """
    todo = pending(ids, is_done, desc=desc, dist=dist)
    for image_id in tqdm(todo, desc=desc, disable=not progress or not todo, leave=False):
        work(image_id)
    return len(todo)


def run_per_image_batched(
    ids: Sequence[str],
    work: Callable[[list[str]], object],
    is_done: Callable[[str], bool],
    group: Callable[[list[str]], list[list[str]]],
    *,
    desc: str = "images",
    dist: DistInfo | None = None,
    progress: bool = True,
) -> int:
    """:func:`run_per_image` for work done on batches of images.

    ``group(ids)`` splits *all* the ids into the batches ``work(batch)`` takes (e.g. same-size
    images, a few at a time); the batches, not the ids, are sharded by rank, and a batch runs
    again whole unless every one of its outputs exists. So every image is computed in the same
    batch whatever the number of processes and however often the run was resumed: batched
    arithmetic (which may differ from one-by-one in the last bits) gives the same bytes. ``work``
    writes one output per id, atomically; a killed run loses at most one batch.

    Returns:
        How many images were processed in this call.
    """
    dist = dist or dist_info_from_env()
    mine = shard(group(list(ids)), dist.rank, dist.world_size)
    todo = [batch for batch in mine if not all(is_done(image_id) for image_id in batch)]
    total = sum(len(batch) for batch in mine)
    count = sum(len(batch) for batch in todo)
    if total > count:
        log.info("%s: %d of %d already done, resuming", desc, total - count, total)
    with tqdm(total=count, desc=desc, disable=not progress or not todo, leave=False) as bar:
        for batch in todo:
            work(batch)
            bar.update(len(batch))
    return count


_WORKER_FUNCTION: Callable[[str], object] | None = None


def _init_worker(work: Callable[[str], object]) -> None:
    global _WORKER_FUNCTION
    _WORKER_FUNCTION = work
    # Each worker runs one image at a time on one core; torch, if the work uses it, should not
    # start a thread per core in every worker.
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)


def _call_worker(image_id: str) -> str:
    assert _WORKER_FUNCTION is not None
    _WORKER_FUNCTION(image_id)
    return image_id


def run_per_image_parallel(
    ids: Sequence[str],
    work: Callable[[str], object],
    is_done: Callable[[str], bool],
    *,
    workers: int = 0,
    desc: str = "images",
    dist: DistInfo | None = None,
    progress: bool = True,
) -> int:
    """:func:`run_per_image` with the work spread over processes.

    This rank's shard of ``ids`` is computed and finished ids are skipped exactly as in
    ``run_per_image``; the rest go to a pool of ``workers`` processes started with ``spawn``
    (safe with torch and threads, and the same on every OS; a script calling this needs the
    usual ``if __name__ == "__main__":`` guard). ``work`` is pickled once per worker, so it
    must be a module-level function or a picklable callable object (e.g. a
    ``functools.partial`` of one) whose state (dataset, paths, settings) pickles. Each call must
    write its output atomically, as in ``run_per_image``; an error in any worker stops the run
    and is raised here (outputs already written stay, so a rerun resumes).

    Args:
        ids: all image ids of the stage.
        work: ``work(image_id)``, writing one output.
        is_done: ``is_done(image_id)``, whether that output exists.
        workers: number of processes; 0 runs in this process (no pickling needed).
        desc: progress-bar label.
        dist: this process's rank (default: from ``RANK``/``WORLD_SIZE``).
        progress: show a progress bar.

    Returns:
        How many images were processed in this call.
    """
    workers = int(workers)
    if workers < 0:
        raise ConfigError(f"workers must be >= 0, got {workers}")
    if workers == 0:
        return run_per_image(ids, work, is_done, desc=desc, dist=dist, progress=progress)
    todo = pending(ids, is_done, desc=desc, dist=dist)
    if not todo:
        return 0
    context = multiprocessing.get_context("spawn")
    # concurrent.futures rather than multiprocessing.Pool: a worker that dies (e.g. a script
    # without an ``if __name__ == "__main__":`` guard, which spawn re-imports) fails the run with
    # BrokenProcessPool instead of hanging forever.
    with ProcessPoolExecutor(min(workers, len(todo)), mp_context=context, initializer=_init_worker,
                             initargs=(work,)) as pool:
        futures = [pool.submit(_call_worker, image_id) for image_id in todo]
        try:
            for future in tqdm(as_completed(futures), total=len(todo), desc=desc,
                               disable=not progress, leave=False):
                future.result()
        except BaseException:
            for future in futures:
                future.cancel()
            raise
    return len(todo)
