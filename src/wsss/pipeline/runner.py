"""Chaining stages in a work directory.

The runner holds no method logic. A :class:`Stage` says what it does (``run``), which part of
the configuration its result depends on (``depends_on``), and how to clear a stale result
(``clear``). After a stage finishes, the runner writes a marker ``<workdir>/.stages/<name>.json``
holding a fingerprint of its configuration chained with the fingerprints of the stages before
it. On the next run a stage whose marker matches is skipped; one whose configuration (or an
upstream stage's) changed is cleared and run again. Per-image stages also resume inside
themselves (see :func:`wsss.runtime.run_per_image`), so a killed run loses at most the
image it was working on.

Under ``torchrun`` every rank runs every stage (per-image stages shard their ids by rank); the
ranks meet at a barrier after each stage and only rank 0 writes markers. A stage with
``main_only=True`` (evaluation, reports) runs on rank 0 alone.

On one machine without ``torchrun``, ``jobs`` > 1 runs independent stages at the same time
(:meth:`Runner.run`): each in one of ``jobs`` worker processes, as soon as the stages it needs are
done, with the process's threads shared out among the workers. The stages are the same, and each
stage's results are those of a run with its worker's thread count; what changes is that a CPU with
few cores is kept busy during the parts of a stage that use one core (Python, data loading, CRFs,
walks), and that small networks, which gain little from a second thread, train two at a time. A
worker ends when the main process is gone (killed), so no stage runs on unsupervised.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from wsss.config import dump_yaml, to_dict
from wsss.io import read_json, write_json, write_text
from wsss.methods.base import Stage
from wsss.runtime import DistInfo, barrier, dist_info_from_env

log = logging.getLogger(__name__)


def fingerprint(value: Any) -> str:
    """A stable short hash of a JSON-able value (dataclasses allowed)."""
    text = json.dumps(to_dict(value), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def stage_needs(stages: list[Stage]) -> dict[str, tuple[str, ...]]:
    """The stages each stage needs: its ``needs``, or the stage before it when ``needs`` is None."""
    needs: dict[str, tuple[str, ...]] = {}
    previous: tuple[str, ...] = ()
    for stage in stages:
        needs[stage.name] = previous if stage.needs is None else tuple(stage.needs)
        previous = (stage.name,)
    return needs


def start_priorities(stages: list[Stage]) -> dict[str, int]:
    """Each stage's priority in a parallel run: the highest ``priority`` of the stage and of the
    stages that need it, directly or not (a chain's priority reaches its first stage)."""
    needs = stage_needs(stages)
    priority = {stage.name: stage.priority for stage in stages}
    for stage in reversed(stages):  # the stages a stage needs come before it
        for name in needs[stage.name]:
            priority[name] = max(priority[name], priority[stage.name])
    return priority


def start_order(stages: list[Stage]) -> list[str]:
    """The stage names in the order a parallel run considers them: the highest
    :func:`start_priorities` first, then the list's order (each starts once its needs are done)."""
    priority = start_priorities(stages)
    return sorted((stage.name for stage in stages), key=lambda name: -priority[name])


def chain_keys(stages: list[Stage]) -> dict[str, str]:
    """Each stage's key: its fingerprint chained with those of the stages it needs.

    Raises:
        ValueError: a stage needs one that does not run before it.
    """
    keys: dict[str, str] = {}
    needs = stage_needs(stages)
    for stage in stages:
        unknown = [name for name in needs[stage.name] if name not in keys]
        if unknown:
            raise ValueError(f"stage {stage.name} needs {unknown}, which do not run before it")
        keys[stage.name] = fingerprint([[keys[name] for name in needs[stage.name]], stage.name, stage.depends_on])
    return keys


def read_marker(workdir: Path, name: str) -> dict[str, Any] | None:
    """Stage ``name``'s marker in ``workdir``, or None (none, or unreadable: counts as none)."""
    path = Path(workdir) / ".stages" / f"{name}.json"
    if not path.is_file():
        return None
    try:
        data = read_json(path)
    except Exception:  # an unreadable marker counts as no marker
        return None
    return data if isinstance(data, dict) else None


def finished_stages(workdir: Path, stages: list[Stage]) -> set[str]:
    """The stages a run in ``workdir`` would skip: done already with the same configuration."""
    finished = set()
    for name, key in chain_keys(stages).items():
        marker = read_marker(workdir, name)
        if marker and marker.get("key") == key and marker.get("state") == "done":
            finished.add(name)
    return finished


STAGE_STATES = {
    "new": "to run",
    "done": "done: skipped",
    "unfinished": "unfinished: resumes",
    "changed": "done with other settings: cleared and run again",
}
"""What a run in a work folder does with each stage (:func:`stage_states`), in words."""


def stage_states(workdir: Path, stages: list[Stage]) -> dict[str, str]:
    """What a run in ``workdir`` would do with each stage, from its marker (as :class:`Runner`
    decides): ``new`` (no marker), ``done`` (same fingerprint, finished: skipped),
    ``unfinished`` (same fingerprint, not finished: resumed) or ``changed`` (another
    fingerprint: its outputs are cleared and it runs again)."""
    states = {}
    for name, key in chain_keys(stages).items():
        marker = read_marker(workdir, name)
        if marker is None:
            states[name] = "new"
        elif marker.get("key") != key:
            states[name] = "changed"
        else:
            states[name] = "done" if marker.get("state") == "done" else "unfinished"
    return states


@dataclass
class StageResult:
    name: str
    skipped: bool
    seconds: float
    value: Any = None


@dataclass
class Runner:
    """Runs stages in order in ``workdir``, skipping those already done with the same config."""

    workdir: Path
    config: Any = None
    dist: DistInfo = field(default_factory=dist_info_from_env)

    def __post_init__(self) -> None:
        self.workdir = Path(self.workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self.config is not None and self.dist.is_main:
            # The resolved configuration is logged beside the outputs it produced.
            write_text(self.workdir / "config.yaml", dump_yaml(self.config))

    def marker(self, name: str) -> Path:
        return self.workdir / ".stages" / f"{name}.json"

    def read_marker(self, name: str) -> dict[str, Any] | None:
        return read_marker(self.workdir, name)

    def run(self, stages: list[Stage], *, jobs: int = 1,
            rebuild: Callable[[], list[Stage]] | None = None) -> dict[str, StageResult]:
        """Run ``stages``; returns each stage's result (``value`` is None if skipped).

        Args:
            stages: in an order where every stage comes after those it needs.
            jobs: how many stages may run at once (worker processes). Above 1 it needs
                ``rebuild`` and a single process (no ``torchrun``); otherwise stages run one after
                another in this process.
            rebuild: a picklable callable that makes the same list of stages in a worker process
                (e.g. :class:`wsss.pipeline.recipes.StageFactory`): stages hold closures, which
                cannot be sent to another process.
        """
        keys = chain_keys(stages)
        if jobs > 1 and rebuild is not None and self.dist.world_size == 1:
            return self._run_parallel(stages, keys, jobs, rebuild)
        return {stage.name: self.run_stage(stage, keys[stage.name]) for stage in stages}

    def is_done(self, name: str, key: str) -> bool:
        marker = self.read_marker(name)
        return bool(marker and marker.get("key") == key and marker.get("state") == "done")

    def run_stage(self, stage: Stage, key: str) -> StageResult:
        """Run one stage whose chained fingerprint is ``key``: skipped if its marker says it is
        done with that key, its old outputs cleared first if the marker holds another key."""
        if self.is_done(stage.name, key):
            log.info("stage %s: done already, skipped", stage.name)
            marker = self.read_marker(stage.name) or {}
            return StageResult(stage.name, skipped=True, seconds=float(marker.get("seconds", 0.0)))
        marker = self.read_marker(stage.name)
        if marker and marker.get("key") != key:
            # Outputs made under another configuration (finished or not) are stale.
            log.info("stage %s: configuration changed, clearing and running again", stage.name)
            if stage.clear is not None and self.dist.is_main:
                stage.clear()
        elif marker:
            log.info("stage %s: resuming an unfinished run", stage.name)
        if self.dist.is_main:
            write_json(self.marker(stage.name), {"key": key, "state": "running"})
        barrier()
        start = time.perf_counter()
        value = None
        if self.dist.is_main or not stage.main_only:
            log.info("stage %s: running", stage.name)
            value = stage.run()
        barrier()
        seconds = time.perf_counter() - start
        if self.dist.is_main:
            write_json(self.marker(stage.name), {
                "key": key, "state": "done", "seconds": round(seconds, 3),
                "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
            })
        return StageResult(stage.name, skipped=False, seconds=seconds, value=value)

    def _run_parallel(self, stages: list[Stage], keys: dict[str, str], jobs: int,
                      rebuild: Callable[[], list[Stage]]) -> dict[str, StageResult]:
        """Stages in ``jobs`` worker processes, each started once the stages it needs are done,
        in :func:`start_order` among those ready. A failed stage lets the running ones finish, starts
        no other, and its error is raised here."""
        results: dict[str, StageResult] = {}
        for stage in stages:
            if self.is_done(stage.name, keys[stage.name]):
                results[stage.name] = self.run_stage(stage, keys[stage.name])
        todo = [name for name in start_order(stages) if name not in results]
        if not todo:
            return results
        needs = stage_needs(stages)
        import torch

        threads = max(1, torch.get_num_threads() // jobs)
        log.info("running %d stages in %d worker processes, %d thread(s) each", len(todo), jobs, threads)
        running: dict[Future, str] = {}
        failure: BaseException | None = None
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(min(jobs, len(todo)), mp_context=context, initializer=_start_stage_worker,
                                 initargs=(rebuild, str(self.workdir), keys, threads,
                                           logging.getLogger().getEffectiveLevel())) as pool:
            while True:
                if failure is None:
                    for name in [n for n in todo if all(need in results for need in needs[n])]:
                        if len(running) >= jobs:
                            break
                        todo.remove(name)
                        running[pool.submit(_run_in_worker, name)] = name
                if not running:
                    break
                finished, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in finished:
                    name = running.pop(future)
                    try:
                        results[name] = future.result()
                    except BaseException as exc:  # re-raised once the running stages are done
                        failure = failure or exc
        if failure is not None:
            raise failure
        return {stage.name: results[stage.name] for stage in stages}


_WORKER: tuple[Runner, dict[str, Stage], dict[str, str]] | None = None


def _start_stage_worker(rebuild: Callable[[], list[Stage]], workdir: str, keys: dict[str, str],
                        threads: int, log_level: int) -> None:
    """A worker process of :meth:`Runner.run` with ``jobs`` > 1: its threads, its logging and the
    stages rebuilt, checked to be the ones the main process fingerprinted."""
    global _WORKER
    import torch

    _exit_with_parent()
    torch.set_num_threads(threads)
    logging.basicConfig(level=log_level, format="%(levelname)s %(name)s: %(message)s")
    stages = rebuild()
    if chain_keys(stages) != keys:
        raise RuntimeError("the stages rebuilt in a worker process differ from the main process's")
    _WORKER = (Runner(Path(workdir), None, DistInfo(0, 1, 0)), {stage.name: stage for stage in stages}, keys)


def _exit_with_parent(poll: float = 1.0) -> None:
    """End this worker process when the process that started it is gone (killed with SIGKILL or
    SIGTERM, which do not reach the workers): it would otherwise finish its stage unsupervised
    while a rerun may start the same stage."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def _run_in_worker(name: str) -> StageResult:
    assert _WORKER is not None
    runner, stages, keys = _WORKER
    return runner.run_stage(stages[name], keys[name])
