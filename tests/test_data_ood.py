"""OoDImages: a list file of image paths relative to the list's folder (or to ``root``)."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import write_jpeg
from PIL import Image

from wsss.data.ood import OoDImages
from wsss.errors import DataError


@pytest.fixture
def ood_folder(tmp_path):
    folder = tmp_path / "ood"
    write_jpeg(folder / "OoD_images" / "a.jpg", np.full((6, 9, 3), 200, np.uint8))
    write_jpeg(folder / "OoD_images" / "sub" / "b.jpg", np.full((7, 5, 3), 10, np.uint8))
    Image.fromarray(np.full((4, 3), 77, np.uint8), mode="L").save(folder / "OoD_images" / "grey.png")
    return folder


def test_paths_relative_to_the_list_folder(ood_folder):
    listing = ood_folder / "ood_list.txt"
    listing.write_text("OoD_images/a.jpg\n\n# a comment\nOoD_images/sub/b.jpg\n  OoD_images/grey.png  \n")
    ood = OoDImages(listing)
    assert len(ood) == 3
    assert ood.paths == [
        ood_folder / "OoD_images" / "a.jpg",
        ood_folder / "OoD_images" / "sub" / "b.jpg",
        ood_folder / "OoD_images" / "grey.png",
    ]
    first = ood.load_image(0)
    assert first.shape == (6, 9, 3) and first.dtype == np.uint8
    assert abs(int(first.mean()) - 200) <= 2
    assert ood[1].shape == (7, 5, 3)
    grey = ood.load_image(2)  # greyscale is expanded to three equal channels
    assert grey.shape == (4, 3, 3)
    np.testing.assert_array_equal(grey, np.full((4, 3, 3), 77, np.uint8))


def test_root_override_as_w_ood_ood_root(ood_folder, tmp_path):
    listing = tmp_path / "lists" / "ood_list.txt"
    listing.parent.mkdir()
    listing.write_text("a.jpg\nsub/b.jpg\n")
    ood = OoDImages(listing, root=ood_folder / "OoD_images")
    assert [p.name for p in ood.paths] == ["a.jpg", "b.jpg"]
    assert ood.root == ood_folder / "OoD_images"


def test_missing_image_names_file_and_line(ood_folder):
    listing = ood_folder / "ood_list.txt"
    listing.write_text("OoD_images/a.jpg\nOoD_images/missing.jpg\n")
    with pytest.raises(DataError) as caught:
        OoDImages(listing)
    assert str(caught.value) == (
        f"{ood_folder / 'OoD_images' / 'missing.jpg'}: OoD image on line 2 of {listing} not found"
    )


def test_empty_list(ood_folder):
    listing = ood_folder / "ood_list.txt"
    listing.write_text("\n# nothing\n\n")
    with pytest.raises(DataError) as caught:
        OoDImages(listing)
    assert str(caught.value) == f"{listing}: OoD image list is empty"


def test_missing_list(tmp_path):
    with pytest.raises(DataError, match="OoD image list not found"):
        OoDImages(tmp_path / "nope.txt")


def test_corrupt_ood_image(ood_folder):
    (ood_folder / "OoD_images" / "bad.jpg").write_bytes(b"\xff\xd8garbage")
    listing = ood_folder / "ood_list.txt"
    listing.write_text("OoD_images/bad.jpg\n")
    ood = OoDImages(listing)
    with pytest.raises(DataError, match="bad.jpg: corrupt or unreadable image"):
        ood.load_image(0)
