"""Curves as PNG files: threshold sweeps (the papers' seed mIoU vs background threshold).

Figures are built on matplotlib's Agg canvas directly (no pyplot, no global backend switch) and
written atomically through :mod:`wsss.io`.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from wsss.io import write_bytes


def plot_sweep(
    curves: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    path: str | Path,
    *,
    title: str | None = None,
    markers: Mapping[str, float] | None = None,
    xlabel: str = "background threshold t",
    ylabel: str = "mIoU (%)",
    percent: bool = True,
    dpi: int = 120,
) -> Path:
    """Draw mIoU against threshold for one or several methods in one figure.

    Args:
        curves: name -> (thresholds, mIoU). mIoU as fractions in [0, 1] (what
            ``SweepResult.curve`` returns); drawn in percent unless ``percent`` is False. Each
            curve's best point is marked.
        path: the PNG to write.
        title: the figure title.
        markers: label -> threshold, drawn as dashed vertical lines (e.g. the fixed and the
            label-free thresholds).

    Returns:
        ``path``.
    """
    if not curves:
        raise ValueError("plot_sweep needs at least one curve")
    figure = Figure(figsize=(6.0, 4.0), dpi=dpi)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 1, 1)
    scale = 100.0 if percent else 1.0
    for name, (thresholds, mious) in curves.items():
        x = np.asarray(thresholds, dtype=np.float64)
        y = np.asarray(mious, dtype=np.float64) * scale
        if x.shape != y.shape or x.ndim != 1:
            raise ValueError(f"curve '{name}': thresholds and mIoU must be 1-D of equal length")
        (line,) = axes.plot(x, y, marker=".", markersize=3, linewidth=1.5, label=name)
        if x.size and not np.isnan(y).all():
            best = int(np.nanargmax(y))
            axes.plot([x[best]], [y[best]], "o", color=line.get_color(), label=f"{name}: best (oracle)")
            axes.annotate(
                f"{y[best]:.1f} @ {x[best]:.2f}",
                (x[best], y[best]),
                textcoords="offset points",
                xytext=(4, 6),
                fontsize=8,
                color=line.get_color(),
            )
    for index, (label, threshold) in enumerate((markers or {}).items()):
        axes.axvline(float(threshold), linestyle="--", linewidth=1, color=f"C{(index + len(curves)) % 10}",
                     label=label)
    axes.margins(y=0.12)  # room for the best-point labels
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    if title:
        axes.set_title(title, fontsize=10)
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    path = Path(path)
    write_bytes(path, buffer.getvalue())
    return path
