"""End-to-end evaluation of a prediction folder: what ``wsss eval`` does, as a library call.

A prediction folder holds either ``<id>.png`` label maps (pseudo masks, segmentation outputs)
or a map store of ``<id>.npz`` localization maps (seeds). Labels are scored as they are; maps
are scored at a fixed threshold, at a label-free threshold and over a threshold sweep, each
number labelled with the protocol that produced it. Results print as the papers' table and are
written as JSON, CSV and a sweep plot, all atomically and only once everything is computed.
"""

from __future__ import annotations

import logging
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import wsss
from wsss.errors import ConfigError, DataError
from wsss.evaluation.semantic import (
    GroundTruth,
    SegmentationScores,
    evaluate_labels,
)
from wsss.evaluation.sweep import (
    DEFAULT_SWEEP,
    IRN_THRESHOLD,
    SweepResult,
    evaluate_maps,
    format_threshold,
)
from wsss.evaluation.tables import format_details, format_table, write_table_csv
from wsss.io import write_json
from wsss.refine.thresholds import RULE_NAMES
from wsss.stores.maps import MapStore
from wsss.stores.masks import MaskStore

log = logging.getLogger(__name__)

LABELS = "labels"
MAPS = "maps"


def detect_prediction_kind(pred_dir: str | Path) -> str:
    """``"maps"`` if the folder holds ``.npz`` map files, ``"labels"`` if ``.png`` label maps.

    Raises:
        DataError: the folder is missing or holds neither.
    """
    pred_dir = Path(pred_dir)
    if not pred_dir.is_dir():
        raise DataError("prediction folder not found", pred_dir)
    if MapStore.looks_like_store(pred_dir):
        if MaskStore.looks_like_store(pred_dir):
            log.info("%s holds both .npz and .png files; evaluating the .npz maps", pred_dir)
        return MAPS
    if MaskStore.looks_like_store(pred_dir):
        return LABELS
    raise DataError("prediction folder is empty (no .png label maps or .npz map files)", pred_dir)


@dataclass
class EvalReport:
    """What an evaluation produced.

    Attributes:
        kind: ``"labels"`` or ``"maps"``.
        results: the headline scores, each with its protocol (for maps: fixed, label-free,
            oracle, in that order, those requested).
        sweep: the full sweep for maps, else None.
    """

    kind: str
    pred_dir: Path
    classes: tuple[str, ...]
    results: list[SegmentationScores]
    sweep: SweepResult | None = None
    dataset_root: str | None = None
    split: str | None = None
    num_images: int = 0

    def text(self) -> str:
        """The report printed by ``wsss eval``."""
        where = f"split {self.split}" if self.split else "dataset"
        title = f"{self.pred_dir} ({self.kind}) on {where}, {self.num_images} images"
        parts = [format_table(self.results, self.classes, title=title)]
        if self.kind == LABELS:
            parts.append(format_details(self.results[0], header=False))
        if self.sweep is not None and self.sweep.thresholds.size:
            thresholds, mious = self.sweep.curve
            best = self.sweep.best_threshold
            points = "  ".join(
                f"{format_threshold(t)}:{100 * m:.1f}" for t, m in zip(thresholds, mious)
            )
            spec = f" {self.sweep.sweep_spec}" if self.sweep.sweep_spec else ""
            parts.append(
                f"sweep{spec}, t:mIoU\n"
                + textwrap.fill(points, width=100, initial_indent="  ", subsequent_indent="  ")
                + f"\nbest t={format_threshold(best) if best is not None else '-'} "
                "(chosen on the ground truth: an oracle, not a result)"
            )
        return "\n\n".join(parts)

    def to_dict(self) -> dict[str, Any]:
        """The JSON document: provenance, units, then every result with its protocol."""
        document: dict[str, Any] = {
            "wsss_version": wsss.__version__,
            "units": "percent (0-100) for every ratio",
            "dataset": {
                "root": self.dataset_root,
                "split": self.split,
                "num_images": self.num_images,
                "classes": list(self.classes),
            },
            "prediction": {
                "path": str(self.pred_dir),
                "kind": self.kind,
                **({"maps_array": "high_res"} if self.kind == MAPS else {}),
            },
            "results": [scores.to_dict() for scores in self.results],
        }
        if self.sweep is not None:
            document["sweep"] = self.sweep.to_dict()
        return document


def _dataset_info(dataset: GroundTruth) -> tuple[str | None, str | None]:
    root = getattr(dataset, "root", None)
    split = getattr(dataset, "split", None)
    return (None if root is None else str(root)), (None if split is None else str(split))


def evaluate_predictions(
    dataset: GroundTruth,
    pred_dir: str | Path,
    *,
    ids: Sequence[str] | None = None,
    sweep: str | Sequence[float] | None = None,
    threshold: float | None = None,
    label_free: str | None = "edges",
    unlabelled: str | None = None,
    no_sweep: bool = False,
    no_threshold: bool = False,
    progress: bool = True,
) -> EvalReport:
    """Detect what ``pred_dir`` holds and score it against ``dataset``.

    Args:
        dataset: ground truth (``ids``, ``classes``, ``num_classes``, ``load_mask``).
        pred_dir: label PNGs or a map store.
        ids: images to score (default: the dataset's).
        sweep: maps only; thresholds to sweep (default ``DEFAULT_SWEEP``).
        threshold: maps only; the threshold fixed a priori (default IRN's 0.15).
        label_free: maps only; a rule of :data:`wsss.refine.thresholds.LABEL_FREE_RULES` or None.
        unlabelled: labels only; ``"background"`` (default) or ``"exclude"``.
        no_sweep / no_threshold: maps only; skip the sweep / the fixed threshold.

    Raises:
        DataError: bad or missing predictions (see :func:`evaluate_labels`, :func:`evaluate_maps`).
        ConfigError: options that do not apply to what the folder holds.
    """
    pred_dir = Path(pred_dir)
    kind = detect_prediction_kind(pred_dir)
    root, split = _dataset_info(dataset)
    if kind == LABELS:
        given = {"--sweep": sweep is not None or no_sweep, "--threshold": threshold is not None or no_threshold}
        map_options = [name for name, present in given.items() if present]
        if map_options:
            raise ConfigError(
                f"{pred_dir} holds label PNGs; {' and '.join(map_options)}: only for map stores (.npz)"
            )
        scores = evaluate_labels(
            dataset, pred_dir, ids, unlabelled=unlabelled or "background", progress=progress
        )
        return EvalReport(
            kind=kind,
            pred_dir=pred_dir,
            classes=tuple(dataset.classes),
            results=[scores],
            dataset_root=root,
            split=split,
            num_images=scores.num_images,
        )
    if unlabelled is not None:
        raise ConfigError(f"{pred_dir} holds maps; --unlabelled: only for label PNGs")
    result = evaluate_maps(
        dataset,
        MapStore(pred_dir),
        ids,
        thresholds=None if no_sweep else (DEFAULT_SWEEP if sweep is None else sweep),
        fixed_threshold=None if no_threshold else (IRN_THRESHOLD if threshold is None else threshold),
        label_free=label_free,
        progress=progress,
    )
    return EvalReport(
        kind=kind,
        pred_dir=pred_dir,
        classes=tuple(dataset.classes),
        results=result.results(),
        sweep=result,
        dataset_root=root,
        split=split,
        num_images=result.num_images,
    )


def split_label(split: str | None) -> str:
    """A split as a picture names it: the name, or a split file's stem (``seed_split``), never a
    long path that a title would cut at the edge."""
    if not split:
        return "split"
    text = str(split)
    if "/" in text or "\\" in text or text.endswith((".txt", ".json")):
        return f"split {Path(text).stem}"
    return f"split {text}"


def default_csv_path(json_path: str | Path) -> Path:
    return Path(json_path).with_suffix(".csv")


def default_plot_path(json_path: str | Path) -> Path:
    json_path = Path(json_path)
    return json_path.with_name(f"{json_path.stem}_sweep.png")


def write_report(
    report: EvalReport,
    json_path: str | Path | None = None,
    csv_path: str | Path | None = None,
    plot_path: str | Path | None = None,
) -> list[Path]:
    """Write the JSON, the CSV (default beside the JSON) and, for a sweep, the plot.

    Every file is written atomically; the JSON comes last, so its presence means the others
    were written too.

    Returns:
        The paths written.
    """
    has_curve = report.sweep is not None and report.sweep.thresholds.size > 0
    if plot_path is not None and not has_curve:
        raise ConfigError("--plot needs a threshold sweep over a map store")
    if json_path is not None:
        csv_path = csv_path if csv_path is not None else default_csv_path(json_path)
        if plot_path is None and has_curve:
            plot_path = default_plot_path(json_path)
    written: list[Path] = []
    if plot_path is not None:
        from wsss.viz.plots import plot_sweep  # matplotlib only when a plot is asked for

        sweep = report.sweep
        assert sweep is not None
        markers = {}
        if sweep.fixed_threshold is not None:
            markers[f"fixed t={format_threshold(sweep.fixed_threshold)} (no GT)"] = sweep.fixed_threshold
        if sweep.label_free_threshold is not None:
            rule = RULE_NAMES.get(str(sweep.label_free_method), str(sweep.label_free_method))
            markers[f"{rule} t={format_threshold(sweep.label_free_threshold)} (no GT)"] = (
                sweep.label_free_threshold
            )
        written.append(
            plot_sweep(
                {report.pred_dir.name or str(report.pred_dir): sweep.curve},
                plot_path,
                title=f"{split_label(report.split)} ({report.num_images} images): mIoU vs background threshold",
                markers=markers,
            )
        )
    if csv_path is not None:
        write_table_csv(csv_path, report.results)
        written.append(Path(csv_path))
    if json_path is not None:
        write_json(json_path, report.to_dict())
        written.append(Path(json_path))
    return written
