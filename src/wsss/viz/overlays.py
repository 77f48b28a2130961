"""Pictures of maps and masks over images: the figures people look at before the tables.

:func:`seed_grid` draws the papers' figure layout: one row per image, columns image, ground
truth, then each method's localization map (max over the image's classes) as a heat map.
:func:`mask_grid` draws label maps (pseudo masks) the same way, in the palette's colours.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from matplotlib import colormaps
from PIL import Image, ImageDraw

from wsss.io import voc_palette, write_bytes
from wsss.stores.maps import MapStore


def heatmap_overlay(image: np.ndarray, heat: np.ndarray, alpha: float = 0.5, colormap: str = "jet") -> np.ndarray:
    """Blend a [0, 1] heat map (H, W) over an RGB ``uint8`` image (H, W, 3)."""
    if heat.shape != image.shape[:2]:
        raise ValueError(f"heat map {heat.shape} and image {image.shape[:2]} differ in size")
    colours = colormaps[colormap](np.clip(heat, 0.0, 1.0))[..., :3] * 255.0
    return (alpha * colours + (1.0 - alpha) * image.astype(np.float64)).round().astype(np.uint8)


def label_overlay(image: np.ndarray, labels: np.ndarray, alpha: float = 0.6,
                  palette: Sequence[int] | None = None) -> np.ndarray:
    """Blend a label map's palette colours over an image; background (0) is left as it is."""
    if labels.shape != image.shape[:2]:
        raise ValueError(f"labels {labels.shape} and image {image.shape[:2]} differ in size")
    table = np.asarray(palette if palette is not None else voc_palette(), dtype=np.float64).reshape(-1, 3)
    colours = table[labels]
    out = image.astype(np.float64)
    painted = labels > 0
    out[painted] = alpha * colours[painted] + (1.0 - alpha) * out[painted]
    return out.round().astype(np.uint8)


def image_grid(rows: Sequence[Sequence[np.ndarray]], column_titles: Sequence[str] = (),
               pad: int = 2, title_height: int = 14) -> np.ndarray:
    """Tile equally tall RGB images into rows, with optional column titles on top."""
    if not rows:
        raise ValueError("no rows to draw")
    cell_h = max(img.shape[0] for row in rows for img in row)
    cell_w = max(img.shape[1] for row in rows for img in row)
    ncols = max(len(row) for row in rows)
    top = title_height if column_titles else 0
    canvas = np.full((top + len(rows) * (cell_h + pad) + pad, ncols * (cell_w + pad) + pad, 3), 255, np.uint8)
    for r, row in enumerate(rows):
        for c, img in enumerate(row):
            y = top + pad + r * (cell_h + pad)
            x = pad + c * (cell_w + pad)
            canvas[y : y + img.shape[0], x : x + img.shape[1]] = img
    picture = Image.fromarray(canvas)
    if column_titles:
        draw = ImageDraw.Draw(picture)
        for c, title in enumerate(column_titles):
            draw.text((pad + c * (cell_w + pad) + 2, 1), str(title), fill=(0, 0, 0))
    return np.asarray(picture)


def save_png(path: str | Path, image: np.ndarray) -> None:
    """Write an RGB array as PNG, atomically."""
    import io

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    write_bytes(path, buffer.getvalue())


def seed_grid(dataset, stores: Mapping[str, MapStore | str | Path], ids: Sequence[str],
              path: str | Path, alpha: float = 0.5) -> Path:
    """Image | ground truth | each method's map (max over the image's classes), one row per id."""
    stores = {name: s if isinstance(s, MapStore) else MapStore(s) for name, s in stores.items()}
    rows = []
    for image_id in ids:
        image = dataset.load_image(image_id)
        row = [image]
        mask_path = dataset.mask_path(image_id) if hasattr(dataset, "mask_path") else None
        if mask_path is not None:
            mask = dataset.load_mask(image_id)
            row.append(label_overlay(image, np.where(mask == 255, 0, mask), palette=dataset.palette))
        for store in stores.values():
            maps = store.load(image_id).high_res
            row.append(heatmap_overlay(image, maps.max(axis=0) if len(maps) else np.zeros(image.shape[:2]), alpha))
        rows.append(row)
    titles = ["image", "ground truth", *stores]
    save_png(path, image_grid(rows, titles))
    return Path(path)


def mask_grid(dataset, folders: Mapping[str, str | Path], ids: Sequence[str], path: str | Path,
              alpha: float = 0.6) -> Path:
    """Image | ground truth | each folder's label map (``<id>.png``, a MaskStore's), one row per
    id; ignored pixels (255) are drawn white."""
    from wsss.stores.masks import MaskStore

    stores = {name: MaskStore(folder) for name, folder in folders.items()}
    palette = list(getattr(dataset, "palette", None) or voc_palette())
    palette = (palette + [0] * 768)[:765] + [255, 255, 255]  # 255: white
    rows = []
    for image_id in ids:
        image = dataset.load_image(image_id)
        row = [image]
        mask_path = dataset.mask_path(image_id) if hasattr(dataset, "mask_path") else None
        if mask_path is not None:
            row.append(label_overlay(image, dataset.load_mask(image_id), alpha, palette))
        for store in stores.values():
            row.append(label_overlay(image, store.load(image_id), alpha, palette))
        rows.append(row)
    titles = ["image", "ground truth", *stores] if rows and len(rows[0]) == len(stores) + 2 else ["image", *stores]
    save_png(path, image_grid(rows, titles))
    return Path(path)
