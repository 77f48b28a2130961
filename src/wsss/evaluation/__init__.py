"""Scores as the papers report them: the per-class IoU table, threshold sweeps, label-free thresholds."""
