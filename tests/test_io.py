from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from wsss.errors import DataError
from wsss.io import (atomic_write, read_image, read_label_png, voc_palette, write_image,
                     write_label_png)


def test_atomic_write_leaves_nothing_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_write(target, "w") as handle:
            handle.write("half")
            raise RuntimeError("killed")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


def test_label_png_round_trip_with_palette(tmp_path: Path) -> None:
    labels = np.array([[0, 1, 255], [20, 3, 0]], dtype=np.uint8)
    write_label_png(tmp_path / "m.png", labels)
    assert Image.open(tmp_path / "m.png").mode == "P"
    np.testing.assert_array_equal(read_label_png(tmp_path / "m.png"), labels)


def test_voc_palette_known_colours() -> None:
    palette = voc_palette()
    assert palette[0:3] == [0, 0, 0]
    assert palette[3:6] == [128, 0, 0]        # aeroplane
    assert palette[15 * 3 : 15 * 3 + 3] == [192, 128, 128]  # person
    assert palette[255 * 3 :] == [224, 224, 192]


def test_corrupt_and_wrong_mode_images(tmp_path: Path) -> None:
    image = np.zeros((8, 8, 3), np.uint8)
    write_image(tmp_path / "ok.jpg", image)
    assert read_image(tmp_path / "ok.jpg").shape == (8, 8, 3)
    data = (tmp_path / "ok.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="cut.jpg: corrupt or unreadable image"):
        read_image(tmp_path / "cut.jpg")
    with pytest.raises(DataError, match="nope.png: image file not found"):
        read_label_png(tmp_path / "nope.png")
    with pytest.raises(DataError, match="ok.jpg: label map must be a palette or greyscale PNG"):
        read_label_png(tmp_path / "ok.jpg")
