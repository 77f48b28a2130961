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
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
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


def chain_keys(stages: list[Stage]) -> dict[str, str]:
    """Each stage's key: its fingerprint chained with those of the stages it needs.

    Raises:
        ValueError: a stage needs one that does not run before it.
    """
    keys: dict[str, str] = {}
    previous: tuple[str, ...] = ()
    for stage in stages:
        needs = previous if stage.needs is None else stage.needs
        unknown = [name for name in needs if name not in keys]
        if unknown:
            raise ValueError(f"stage {stage.name} needs {unknown}, which do not run before it")
        keys[stage.name] = fingerprint([[keys[name] for name in needs], stage.name, stage.depends_on])
        previous = (stage.name,)
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

    def run(self, stages: list[Stage]) -> dict[str, StageResult]:
        """Run ``stages`` in order; returns each stage's result (``value`` is None if skipped)."""
        results: dict[str, StageResult] = {}
        keys = chain_keys(stages)
        for stage in stages:
            chain = keys[stage.name]
            marker = self.read_marker(stage.name)
            if marker and marker.get("key") == chain and marker.get("state") == "done":
                log.info("stage %s: done already, skipped", stage.name)
                results[stage.name] = StageResult(
                    stage.name, skipped=True, seconds=float(marker.get("seconds", 0.0))
                )
                continue
            if marker and marker.get("key") != chain:
                # Outputs made under another configuration (finished or not) are stale.
                log.info("stage %s: configuration changed, clearing and running again", stage.name)
                if stage.clear is not None and self.dist.is_main:
                    stage.clear()
            elif marker:
                log.info("stage %s: resuming an unfinished run", stage.name)
            if self.dist.is_main:
                write_json(self.marker(stage.name), {"key": chain, "state": "running"})
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
                    "key": chain, "state": "done", "seconds": round(seconds, 3),
                    "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
                })
            results[stage.name] = StageResult(stage.name, skipped=False, seconds=seconds, value=value)
        return results
