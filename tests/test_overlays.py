from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from wsss.stores.maps import LocalizationMaps, MapStore
from wsss.viz.overlays import heatmap_overlay, image_grid, label_overlay, seed_grid


def test_heatmap_overlay_blends_and_checks_size() -> None:
    image = np.full((4, 5, 3), 100, np.uint8)
    heat = np.zeros((4, 5))
    heat[0, 0] = 1.0
    out = heatmap_overlay(image, heat, alpha=0.5)
    assert out.shape == (4, 5, 3) and out.dtype == np.uint8
    # jet at 1.0 is dark red, at 0.0 dark blue: the hot pixel is redder than a cold one
    assert out[0, 0, 0] > out[1, 1, 0] and out[0, 0, 2] < out[1, 1, 2]
    assert heatmap_overlay(image, heat, alpha=0.0).tolist() == image.tolist()
    with pytest.raises(ValueError, match="differ in size"):
        heatmap_overlay(image, np.zeros((3, 3)))


def test_label_overlay_leaves_background_alone() -> None:
    image = np.full((2, 2, 3), 50, np.uint8)
    labels = np.array([[0, 1], [0, 0]], np.uint8)
    out = label_overlay(image, labels, alpha=1.0)
    assert out[0, 0].tolist() == [50, 50, 50]
    assert out[0, 1].tolist() == [128, 0, 0]  # VOC colour of class 1


def test_grid_and_seed_grid(tmp_path: Path, voc_dataset) -> None:
    grid = image_grid([[np.zeros((3, 4, 3), np.uint8)] * 2] * 3, ["a", "b"], pad=1, title_height=10)
    assert grid.shape == (10 + 3 * 4 + 1, 2 * 5 + 1, 3)
    store = MapStore(tmp_path / "maps")
    for image_id in voc_dataset.ids:
        h, w = voc_dataset.load_image(image_id).shape[:2]
        keys = voc_dataset.image_labels(image_id)
        store.save(image_id, LocalizationMaps(keys, None, np.random.default_rng(0).random((len(keys), h, w))))
    path = seed_grid(voc_dataset, {"cam": store, "cam2": tmp_path / "maps"}, voc_dataset.ids[:2], tmp_path / "g.png")
    picture = np.asarray(Image.open(path))
    assert picture.shape[0] > 2 * voc_dataset.load_image(voc_dataset.ids[0]).shape[0]
