"""Pictures of maps and masks over images: the figures people look at before the tables.

:func:`draw_grid` draws the papers' figure layout: one row per image, columns image, ground
truth, then one column per store: a map store's localization map (max over the image's classes)
as a heat map, a mask store's label map in the palette's colours (ignored pixels white).
:func:`seed_grid` and :func:`mask_grid` write such a grid of maps or of label maps as a PNG;
:func:`map_panels` and :func:`mask_picture` draw one image's maps (a panel per class) or label map.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from matplotlib import colormaps
from PIL import Image, ImageDraw

from wsss.errors import DataError
from wsss.io import ensure_writable_folder, voc_palette, write_bytes
from wsss.stores.maps import LocalizationMaps, MapStore
from wsss.stores.masks import MaskStore


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


def png_bytes(image: np.ndarray) -> bytes:
    """An RGB array as PNG file contents."""
    import io

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def save_png(path: str | Path, image: np.ndarray) -> None:
    """Write an RGB array as PNG, atomically."""
    write_bytes(path, png_bytes(image))


def fit_within(image: np.ndarray, max_side: int | None) -> np.ndarray:
    """``image`` shrunk (bilinear) so that its long side is at most ``max_side`` (None: as it is)."""
    if max_side is None or max(image.shape[:2]) <= max_side:
        return image
    scale = max_side / max(image.shape[:2])
    size = (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))
    return np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR))


def mask_palette(palette: Sequence[int] | None = None) -> list[int]:
    """A palette of 256 colours for label maps: ``palette`` (default VOC's) with 255 white."""
    colours = list(palette or voc_palette())
    return (colours + [0] * 768)[:765] + [255, 255, 255]


def max_heat(maps: LocalizationMaps) -> np.ndarray:
    """The maps' maximum over channels at image size, zero where an image has no channel."""
    if len(maps.high_res):
        return np.asarray(maps.high_res, dtype=np.float32).max(axis=0)
    return np.zeros(maps.image_size, np.float32)


def _missing(shape: tuple[int, ...]) -> np.ndarray:
    """A light grey cell: nothing of this column for this image."""
    return np.full(shape, 224, np.uint8)


def draw_grid(dataset, columns: Mapping[str, MapStore | MaskStore], ids: Sequence[str], *,
              ground_truth: bool = True, map_alpha: float = 0.5, mask_alpha: float = 0.6,
              max_side: int | None = None) -> np.ndarray:
    """Image | ground truth | one column per store, one row per id; an RGB array.

    Args:
        dataset: gives the images (``load_image``), and masks where it has them (``mask_path``,
            ``load_mask``) and its ``palette``.
        columns: title -> a :class:`MapStore` (its maps' maximum over classes as a heat map) or a
            :class:`MaskStore` (label map in the palette's colours, 255 white).
        ids: the images, one row each; an image a store lacks gets a grey cell.
        ground_truth: add the ground-truth column (where the dataset has a mask of every id).
        max_side: shrink every cell so that its long side is at most this.
    """
    palette = mask_palette(getattr(dataset, "palette", None))
    with_truth = ground_truth and hasattr(dataset, "mask_path") and all(
        dataset.mask_path(image_id) is not None for image_id in ids)
    rows = []
    for image_id in ids:
        image = dataset.load_image(image_id)
        row = [image]
        if with_truth:
            row.append(label_overlay(image, dataset.load_mask(image_id), mask_alpha, palette))
        for store in columns.values():
            if not store.has(image_id):
                row.append(_missing(image.shape))
            elif isinstance(store, MapStore):
                row.append(heatmap_overlay(image, max_heat(store.load(image_id)), map_alpha))
            else:
                row.append(label_overlay(image, store.load(image_id, image_size=image.shape[:2]), mask_alpha,
                                         palette))
        rows.append([fit_within(cell, max_side) for cell in row])
    titles = ["image", *(["ground truth"] if with_truth else []), *columns]
    return image_grid(rows, titles)


def seed_grid(dataset, stores: Mapping[str, MapStore | str | Path], ids: Sequence[str],
              path: str | Path, alpha: float = 0.5) -> Path:
    """Image | ground truth | each method's map (max over the image's classes), one row per id."""
    stores = {name: s if isinstance(s, MapStore) else MapStore(s) for name, s in stores.items()}
    save_png(path, draw_grid(dataset, stores, ids, map_alpha=alpha))
    return Path(path)


def mask_grid(dataset, folders: Mapping[str, str | Path], ids: Sequence[str], path: str | Path,
              alpha: float = 0.6) -> Path:
    """Image | ground truth | each folder's label map (``<id>.png``, a MaskStore's), one row per
    id; ignored pixels (255) are drawn white."""
    stores = {name: MaskStore(folder) for name, folder in folders.items()}
    save_png(path, draw_grid(dataset, stores, ids, mask_alpha=alpha))
    return Path(path)


def map_panels(image: np.ndarray, maps: LocalizationMaps, classes: Sequence[str] | None = None,
               alpha: float = 0.5) -> tuple[list[np.ndarray], list[str]]:
    """One image's maps: the maximum over its channels, then each channel, as heat maps over it.

    Returns:
        The panels and their titles (``"max"``, then each channel's class name, or its id where
        ``classes`` does not name it).
    """
    if maps.image_size != image.shape[:2]:
        raise ValueError(f"maps of size {maps.image_size} and image {image.shape[:2]} differ in size")
    panels = [heatmap_overlay(image, max_heat(maps), alpha)]
    titles = ["max"]
    for key, channel in zip(maps.keys, maps.high_res):
        panels.append(heatmap_overlay(image, np.asarray(channel, dtype=np.float32), alpha))
        titles.append(str(classes[key]) if classes is not None and 0 <= key < len(classes) else str(key))
    return panels, titles


def mask_picture(image: np.ndarray, labels: np.ndarray, palette: Sequence[int] | None = None,
                 alpha: float = 0.6) -> np.ndarray:
    """One label map over its image: classes in the palette's colours, 255 white."""
    return label_overlay(image, labels, alpha, mask_palette(palette))


def overlay_source_kind(source: str | Path) -> str:
    """``"maps"`` for a map store (``<id>.npz``), ``"masks"`` for a folder of label maps (``<id>.png``).

    Raises:
        DataError: not a folder, or neither kind (or both) inside it.
    """
    source = Path(source)
    if not source.exists():
        raise DataError("folder not found", source)
    if not source.is_dir():
        raise DataError("not a folder (give a map store or a folder of label PNGs)", source)
    has_maps = any(source.glob("*.npz"))
    has_masks = any(source.glob("*.png"))
    if has_maps and has_masks:
        raise DataError("holds both maps (.npz) and label maps (.png): give one kind", source)
    if not (has_maps or has_masks):
        raise DataError("neither a map store (<id>.npz) nor a folder of label maps (<id>.png)", source)
    return "maps" if has_maps else "masks"


def write_overlays(dataset, source: str | Path, out: str | Path, *, limit: int | None = None,
                   alpha: float | None = None, progress: bool = True) -> list[Path]:
    """Draw each image of ``dataset`` that ``source`` holds into ``out/<id>.png``, atomically.

    A map store gives one row per image: the image, its maps' maximum, then each channel, titled
    with its class. A folder of label maps gives the image and its label map over it.

    Args:
        dataset: the images (``ids``, ``load_image``, ``classes``, ``palette``).
        source: a map store or a folder of ``<id>.png`` label maps (:func:`overlay_source_kind`).
        out: the folder for the pictures.
        limit: draw at most this many images (the first of the split that ``source`` holds).
        alpha: the overlay's opacity (default 0.5 for maps, 0.6 for label maps).

    Returns:
        The pictures written.

    Raises:
        DataError: ``source`` is not a store, holds no image of the split, or a file in it does
            not fit its image (each message names the file).
    """
    from tqdm import tqdm

    kind = overlay_source_kind(source)
    store = MapStore(source) if kind == "maps" else MaskStore(source)
    ids = [image_id for image_id in dataset.ids if store.has(image_id)]
    if not ids:
        split = getattr(dataset, "split", None)
        raise DataError(f"holds no image of split {str(split)!r} ({len(dataset.ids)} images, e.g. "
                        f"{dataset.ids[0]!r}; another split?)" if dataset.ids else "the split is empty", source)
    if limit is not None:
        ids = ids[:limit]
    out = ensure_writable_folder(out, "output folder")  # checked before the first picture
    classes = list(getattr(dataset, "classes", []) or []) or None
    palette = getattr(dataset, "palette", None)
    num_classes = getattr(dataset, "num_classes", None)
    written = []
    for image_id in tqdm(ids, desc=f"overlays of {Path(source).name}", disable=not progress):
        image = dataset.load_image(image_id)
        if kind == "maps":
            maps = store.load(image_id)
            if maps.image_size != image.shape[:2]:
                raise DataError(f"maps of size {maps.image_size} for an image of size {image.shape[:2]}",
                                store.path(image_id))
            panels, titles = map_panels(image, maps, classes, 0.5 if alpha is None else alpha)
        else:
            labels = store.load(image_id, image_size=image.shape[:2], num_classes=num_classes)
            panels, titles = [mask_picture(image, labels, palette, 0.6 if alpha is None else alpha)], ["labels"]
        path = out / f"{image_id}.png"
        save_png(path, image_grid([[image, *panels]], [image_id, *titles]))
        written.append(path)
    return written
