"""The label-map store (``wsss.stores.masks``): palette PNGs written as ``wsss.io`` writes them, checked reads."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from wsss.errors import DataError
from wsss.io import voc_palette, write_label_png
from wsss.stores.masks import MaskStore, label_value_problem


def _labels() -> np.ndarray:
    labels = np.zeros((6, 9), np.uint8)
    labels[1:4, 2:6] = 3
    labels[5, :] = 255
    return labels


def test_round_trip_and_bytes_equal_write_label_png(tmp_path: Path) -> None:
    palette = [(7 * i) % 256 for i in range(768)]
    store = MaskStore(tmp_path / "pseudo", palette)
    store.save("a", _labels())
    assert store.ids() == ["a"] and store.has("a") and not store.has("b")
    np.testing.assert_array_equal(store.load("a"), _labels())
    write_label_png(tmp_path / "direct.png", _labels(), palette)
    assert store.path("a").read_bytes() == (tmp_path / "direct.png").read_bytes()
    with Image.open(store.path("a")) as image:
        assert image.mode == "P" and image.getpalette()[:9] == palette[:9]
    MaskStore(tmp_path / "voc").save("a", _labels())  # default: VOC's colours
    with Image.open(tmp_path / "voc" / "a.png") as image:
        assert image.getpalette()[3 * 3 : 3 * 4] == voc_palette()[3 * 3 : 3 * 4]
    assert [p.name for p in store.directory.iterdir()] == ["a.png"]  # no temporary files


def test_checked_loads_name_the_file(tmp_path: Path) -> None:
    store = MaskStore(tmp_path)
    store.save("a", _labels())
    assert store.load("a", image_size=(6, 9), num_classes=4).dtype == np.uint8
    with pytest.raises(DataError, match=r"a.png: mask is 9x6 but its image x.jpg is 9x7"):
        store.load("a", image_size=(7, 9), image_name="x.jpg")
    with pytest.raises(DataError, match=r"a.png: mask is 9x6 but its image is 9x7"):
        store.load("a", image_size=(7, 9))
    with pytest.raises(DataError, match=r"a.png: label value 3 is above K=2 \(allowed: 0..2 and 255 = ignore\)"):
        store.load("a", num_classes=3)
    with pytest.raises(DataError, match="b.png: no label map for id 'b'"):
        store.load("b")
    store.path("bad").write_bytes(b"not a png")
    with pytest.raises(DataError, match="bad.png: corrupt or unreadable image"):
        store.load("bad")


def test_save_refuses_what_is_not_a_label_map(tmp_path: Path) -> None:
    store = MaskStore(tmp_path)
    with pytest.raises(ValueError, match="2-D"):
        store.save("a", np.zeros((2, 3, 3), np.uint8))
    with pytest.raises(ValueError, match="0..255"):
        store.save("a", np.full((2, 3), 256, np.int64))
    assert store.ids() == []


def test_label_value_problem() -> None:
    assert label_value_problem(_labels(), 4) is None
    assert label_value_problem(_labels(), 3) == "label value 3 is above K=2 (allowed: 0..2 and 255 = ignore)"
