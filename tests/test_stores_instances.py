"""The instance store (``wsss.stores.instances``): COCO JSON round trips, ignore regions, checks on read."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import make_coco_json, write_jpeg
from pycocotools.coco import COCO

from wsss.data.coco import COCODataset
from wsss.errors import DataError
from wsss.stores.instances import ImageInstances, InstanceStore, encode_mask

CLASSES = ["background", "cat", "dog", "person"]


def _box_mask(size: tuple[int, int], box: tuple[int, int, int, int]) -> np.ndarray:
    mask = np.zeros(size, bool)
    x0, y0, x1, y1 = box
    mask[y0:y1, x0:x1] = True
    return mask


def _images() -> list[ImageInstances]:
    size = (12, 16)
    first_boxes = [(2, 2, 10, 8), (6, 4, 10, 8)]
    masks = np.stack([_box_mask(size, box) for box in first_boxes])
    masks[0, 2, 2] = False  # not a whole box: masks are stored, not derived
    unsure = np.zeros_like(masks)
    unsure[0, 2:4, 2:10] = True  # instance 2 has no unsure pixels
    ignore = _box_mask(size, (0, 10, 16, 12))
    first = ImageInstances("000000000009", boxes=np.array(first_boxes, np.float32) + 0.25,
                           classes=[1, 2], masks=masks, ignore=ignore, instance_ignore=unsure)
    second = ImageInstances("000000000025", boxes=[[1, 1, 5, 6]], classes=[2],
                            masks=_box_mask((10, 8), (1, 1, 5, 6))[None])
    empty = ImageInstances("000000000030", boxes=[], classes=[], masks=np.zeros((0, 5, 7), bool),
                           file_name="sub/000000000030.png")
    return [first, second, empty]


def _assert_same(back: ImageInstances, given: ImageInstances) -> None:
    assert back.image_id == given.image_id and back.file_name == given.file_name
    assert back.boxes.dtype == np.float32 and back.classes.dtype == np.int64 and back.masks.dtype == bool
    np.testing.assert_array_equal(back.boxes, given.boxes)
    np.testing.assert_array_equal(back.classes, given.classes)
    np.testing.assert_array_equal(back.masks, given.masks)
    for name in ("ignore", "instance_ignore"):
        expected = getattr(given, name)
        if expected is None:
            assert getattr(back, name) is None
        else:
            np.testing.assert_array_equal(getattr(back, name), expected)


def test_round_trip(tmp_path: Path) -> None:
    store = InstanceStore(tmp_path / "pseudo" / "instances.json")
    assert not store.exists()
    images = _images()
    store.save(images, CLASSES)
    assert store.exists() and [p.name for p in store.path.parent.iterdir()] == ["instances.json"]
    read = store.load(CLASSES)
    assert read.ids == store.ids() == ["000000000009", "000000000025", "000000000030"]
    assert read.classes == CLASSES and read.num_classes == 4 and len(read) == 3
    assert read.image_size("000000000030") == (5, 7) and read.file_name("000000000030") == "sub/000000000030.png"
    for given in images:
        _assert_same(read[given.image_id], given)
    assert dict(read).keys() == {image.image_id for image in images}
    with pytest.raises(KeyError, match="no image 'nope'"):
        read["nope"]


@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # pycocotools' own decode
def test_the_file_is_plain_coco(tmp_path: Path) -> None:
    store = InstanceStore(tmp_path / "instances.json")
    store.save(_images(), CLASSES)
    document = json.loads(store.path.read_text())
    assert document["categories"] == [{"id": c, "name": CLASSES[c]} for c in (1, 2, 3)]
    first = document["annotations"][0]
    assert first["bbox"] == [2.25, 2.25, 8.0, 6.0] and first["iscrowd"] == 0 and first["area"] == 47.0
    assert isinstance(first["segmentation"]["counts"], str) and "ignore" in first
    assert "ignore" in document["images"][0] and "ignore" not in document["images"][1]
    coco = COCO(str(store.path))  # pycocotools reads it as it is
    assert coco.annToMask(coco.anns[2]).sum() == 16
    # and so does the dataset reader, with the same class ids
    for image in _images()[:2]:
        write_jpeg(tmp_path / "images" / image.file_name, np.zeros((*image.image_size, 3), np.uint8))
    dataset = COCODataset(store.path, image_dir=tmp_path / "images")
    boxes, classes = dataset.boxes("000000000009")
    np.testing.assert_array_equal(boxes, _images()[0].boxes)
    assert classes.tolist() == [1, 2] and dataset.classes == CLASSES


def test_crowd_annotations_of_other_files_join_the_ignore_region(tmp_path: Path) -> None:
    annotation_file = tmp_path / "instances_val2017.json"
    make_coco_json(annotation_file, tmp_path / "val2017")
    read = InstanceStore(annotation_file).load()
    assert read.classes == ["background", "person", "cat", "dog", "giraffe"]
    first = read["000000000009"]
    assert first.classes.tolist() == [3, 2]  # the crowd person is no instance
    expected_ignore = np.zeros((12, 16), bool)
    expected_ignore[9:11, :] = True
    np.testing.assert_array_equal(first.ignore, expected_ignore)
    assert first.instance_ignore is None
    np.testing.assert_array_equal(first.masks[1], _box_mask((12, 16), (2, 2, 10, 8)))  # a polygon
    assert read["000000000025"].ignore is None


def _edited(tmp_path: Path, edit) -> InstanceStore:
    store = InstanceStore(tmp_path / "instances.json")
    store.save(_images(), CLASSES)
    document = json.loads(store.path.read_text())
    edit(document)
    store.path.write_text(json.dumps(document))
    return store


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda d: d["annotations"][0].update(bbox=[10, 2, 8, 6]),
         r"annotation 1 of image '000000000009': box .* lies outside the 16x12 image"),
        (lambda d: d["annotations"][0].update(bbox=[2, 2, -1, 6]), r"annotation 1 .* x1 < x0"),
        (lambda d: d["annotations"][2].update(segmentation=encode_mask(np.zeros((12, 16), bool))),
         r"annotation 3: RLE size \[12, 16\] differs from the image's \[10, 8\]"),
        (lambda d: d["images"][0].update(ignore=encode_mask(np.zeros((4, 4), bool))),
         r"image '000000000009' ignore: RLE size"),
        (lambda d: d["annotations"][1].update(ignore=encode_mask(np.zeros((4, 4), bool))),
         r"annotation 2 ignore: RLE size"),
        (lambda d: d["annotations"][0].update(category_id=9), "annotation 1 has unknown category 9"),
        (lambda d: d["images"][1].update(file_name="000000000009.png"), "two images are named '000000000009'"),
        (lambda d: d.pop("images"), 'no "images" list'),
        (lambda d: d["annotations"][0].pop("bbox"), r"annotation 1 has no \[x, y, w, h\] bbox"),
    ],
)
def test_malformed_files_are_data_errors_naming_the_file(tmp_path: Path, edit, message: str) -> None:
    store = _edited(tmp_path, edit)
    with pytest.raises(DataError, match=message) as caught:
        store.load()
    assert str(caught.value).startswith(str(store.path))


def test_classes_must_match_and_corrupt_masks_fail_on_access(tmp_path: Path) -> None:
    store = _edited(tmp_path, lambda d: d["annotations"][2]["segmentation"].update(counts="0"))
    with pytest.raises(DataError, match=r"categories \(cat, dog, person, \.\.\.\) differ from the classes given"):
        store.load(["background", "dog", "cat", "person"])
    read = store.load(CLASSES)  # checks what it can without decoding every mask
    with pytest.raises(DataError, match="image '000000000025', instance 1: corrupt RLE"):
        read["000000000025"]
    store = _edited(tmp_path, lambda d: d["annotations"][2]["segmentation"].update(counts="%%%"))
    with pytest.raises(DataError, match="instance 1: corrupt RLE"):
        store.load()["000000000025"]
    with pytest.raises(DataError, match="file not found"):
        InstanceStore(tmp_path / "none.json").load()


def test_save_refuses_bad_instances(tmp_path: Path) -> None:
    store = InstanceStore(tmp_path / "instances.json")
    mask = _box_mask((10, 8), (1, 1, 5, 6))[None]
    with pytest.raises(DataError, match=r"instances.json: image 'a': class id 4 outside 1..3"):
        store.save([ImageInstances("a", boxes=[[1, 1, 5, 6]], classes=[4], masks=mask)], CLASSES)
    with pytest.raises(DataError, match=r"image 'a': box 1 .* lies outside the 8x10 image"):
        store.save([ImageInstances("a", boxes=[[1, 1, 9, 6]], classes=[1], masks=mask)], CLASSES)
    same = ImageInstances("a", boxes=[[1, 1, 5, 6]], classes=[1], masks=mask)
    with pytest.raises(DataError, match="image 'a' given twice"):
        store.save([same, same], CLASSES)
    assert not store.exists()
    with pytest.raises(ValueError, match="1 masks need boxes"):
        ImageInstances("a", boxes=np.zeros((2, 4)), classes=[1], masks=mask)
    with pytest.raises(ValueError, match="ignore must be"):
        ImageInstances("a", boxes=[[1, 1, 5, 6]], classes=[1], masks=mask, ignore=np.zeros((3, 3), bool))
