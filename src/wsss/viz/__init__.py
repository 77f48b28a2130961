"""Pictures: map and mask overlays, figure grids, curves."""
