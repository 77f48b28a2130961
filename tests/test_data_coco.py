"""COCODataset on a small hand-written instances JSON (polygons, compressed and raw RLE, crowd)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import make_coco_json, write_jpeg

from wsss.data.coco import COCODataset
from wsss.errors import DataError
from wsss.io import voc_palette


@pytest.fixture
def coco_files(tmp_path):
    annotation_file = tmp_path / "annotations" / "instances_val2017.json"
    image_dir = tmp_path / "val2017"
    document = make_coco_json(annotation_file, image_dir)
    return annotation_file, image_dir, document


@pytest.fixture
def coco(coco_files):
    annotation_file, image_dir, _ = coco_files
    return COCODataset(annotation_file, image_dir)


def expected_mask_9() -> np.ndarray:
    mask = np.zeros((12, 16), dtype=np.uint8)
    mask[9:11, :] = 255  # crowd person
    mask[2:8, 2:10] = 2  # cat
    mask[4:8, 6:10] = 3  # dog, smaller, on top
    return mask


def test_ids_classes_and_contiguous_category_mapping(coco):
    assert coco.ids == ["000000000009", "000000000025"]
    assert len(coco) == 2
    assert coco.classes == ["background", "person", "cat", "dog", "giraffe"]
    assert coco.num_classes == 5
    assert coco.category_ids == [1, 17, 18, 25]
    assert coco.palette == voc_palette()
    assert coco.coco_id("000000000025") == 25 and coco.coco_id(25) == 25
    with pytest.raises(KeyError):
        coco.coco_id("000000000026")


def test_image_labels_and_vectors(coco):
    assert coco.image_labels("000000000009").tolist() == [1, 2, 3]  # crowd person counts
    assert coco.image_labels(25).tolist() == [3]
    assert coco.image_labels("000000000009").dtype == np.int64
    np.testing.assert_array_equal(coco.label_vector("000000000025"), np.array([0, 0, 1, 0], np.float32))
    assert coco.label_vector("000000000009").dtype == np.float32


def test_boxes_convert_xywh_and_skip_crowd_by_default(coco):
    boxes, classes = coco.boxes("000000000009")
    assert boxes.dtype == np.float32 and classes.dtype == np.int64
    np.testing.assert_array_equal(boxes, [[6, 4, 10, 8], [2, 2, 10, 8]])  # annotation 101, 102
    assert classes.tolist() == [3, 2]
    boxes, classes = coco.boxes("000000000009", include_crowd=True)
    np.testing.assert_array_equal(boxes[-1], [0, 9, 16, 11])
    assert classes.tolist() == [3, 2, 1]


def test_instances_decode_polygons_and_both_rle_kinds(coco):
    instances = coco.instances("000000000009")
    assert len(instances) == 3
    assert instances.masks.shape == (3, 12, 16) and instances.masks.dtype == bool
    assert instances.annotation_ids.tolist() == [101, 102, 103]
    assert instances.classes.tolist() == [3, 2, 1]
    assert instances.is_crowd.tolist() == [False, False, True]
    dog, cat, crowd = instances.masks
    expected_dog = np.zeros((12, 16), bool)
    expected_dog[4:8, 6:10] = True
    expected_cat = np.zeros((12, 16), bool)
    expected_cat[2:8, 2:10] = True
    expected_crowd = np.zeros((12, 16), bool)
    expected_crowd[9:11, :] = True
    np.testing.assert_array_equal(dog, expected_dog)  # compressed RLE (string counts)
    np.testing.assert_array_equal(cat, expected_cat)  # polygon
    np.testing.assert_array_equal(crowd, expected_crowd)  # uncompressed RLE
    np.testing.assert_array_equal(instances.boxes[1], [2, 2, 10, 8])


def test_semantic_mask_resolves_overlaps_by_area_and_ignores_crowd(coco):
    np.testing.assert_array_equal(coco.load_mask("000000000009"), expected_mask_9())
    other = np.zeros((10, 8), np.uint8)
    other[1:6, 1:5] = 3
    np.testing.assert_array_equal(coco.load_mask("000000000025"), other)
    assert coco.load_mask("000000000025").dtype == np.uint8


def test_instance_wins_over_overlapping_crowd(coco_files):
    annotation_file, image_dir, document = coco_files
    crowd = document["annotations"][2]
    crowd["segmentation"] = [[0, 6, 16, 6, 16, 11, 0, 11]]  # rows 6..10, overlapping cat and dog
    annotation_file.write_text(json.dumps(document))
    mask = COCODataset(annotation_file, image_dir).load_mask("000000000009")
    expected = expected_mask_9()
    expected[6:11, :] = 255
    expected[6:8, 2:10] = 2
    expected[6:8, 6:10] = 3
    np.testing.assert_array_equal(mask, expected)


def test_images_and_default_image_dir(coco_files):
    annotation_file, image_dir, _ = coco_files
    ds = COCODataset(annotation_file)  # annotations/instances_val2017.json -> val2017/
    assert ds.image_dir == image_dir
    image = ds.load_image("000000000009")
    assert image.shape == (12, 16, 3) and image.dtype == np.uint8
    item = ds[1]
    assert item["id"] == "000000000025" and item["image"].shape == (10, 8, 3)
    assert item["labels"].tolist() == [3]


def test_pycocotools_chatter_stays_off_stdout(coco_files, capsys):
    annotation_file, image_dir, _ = coco_files
    COCODataset(annotation_file, image_dir)
    assert capsys.readouterr().out == ""


def test_validate(coco):
    report = coco.validate()
    assert (report.images, report.annotations, report.crowd) == (2, 4, 1)
    assert report.summary() == "2 images, 4 annotations (1 crowd)"


def test_validate_catches_size_mismatch(coco_files):
    annotation_file, image_dir, _ = coco_files
    write_jpeg(image_dir / "000000000025.jpg", np.zeros((11, 8, 3), np.uint8))
    with pytest.raises(
        DataError, match=r"000000000025.jpg: image is 8x11 but instances_val2017.json says 8x10"
    ):
        COCODataset(annotation_file, image_dir).validate()


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda d: d["annotations"][0].update(category_id=99), "annotation 102 has unknown category 99"),
        (lambda d: d["annotations"][0].update(image_id=7), "annotation 102 refers to unknown image 7"),
        (lambda d: d.pop("categories"), 'no "categories" list'),
        (lambda d: d["categories"].append({"id": 1, "name": "again"}), "duplicate category 1"),
        (
            lambda d: d["images"][1].update(file_name="sub/000000000009.jpg"),
            "two images are named '000000000009'",
        ),
        (lambda d: d["images"][0].pop("height"), "needs id, file_name, height and width"),
    ],
)
def test_malformed_json_structure(coco_files, edit, message):
    annotation_file, image_dir, document = coco_files
    edit(document)
    annotation_file.write_text(json.dumps(document))
    with pytest.raises(DataError, match=message) as caught:
        COCODataset(annotation_file, image_dir)
    assert str(caught.value).startswith(str(annotation_file))


def test_bad_polygon_is_a_data_error(coco_files):
    annotation_file, image_dir, document = coco_files
    document["annotations"][0]["segmentation"] = [[1, 1, 4, 4]]  # two points
    annotation_file.write_text(json.dumps(document))
    ds = COCODataset(annotation_file, image_dir)
    with pytest.raises(DataError, match="annotation 102 has a polygon with fewer than 3 points"):
        ds.load_mask("000000000009")


def test_box_only_annotations_have_labels_and_boxes_but_no_masks(coco_files):
    annotation_file, image_dir, document = coco_files
    for annotation in document["annotations"]:
        annotation.pop("segmentation")
    annotation_file.write_text(json.dumps(document))
    ds = COCODataset(annotation_file, image_dir)
    assert ds.image_labels("000000000009").tolist() == [1, 2, 3]
    assert ds.boxes("000000000025")[0].tolist() == [[1, 5 - 4, 5, 6]]
    with pytest.raises(DataError, match="annotation 201 has no polygon or RLE segmentation"):
        ds.instances("000000000025")


def test_missing_and_invalid_json(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        COCODataset(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2")
    with pytest.raises(DataError, match="not valid JSON"):
        COCODataset(bad)


def test_check_data_on_a_coco_json(coco_files, capsys):
    from wsss.cli import main

    annotation_file, image_dir, _ = coco_files
    assert main(["check-data", "--data", str(annotation_file), "--images", str(image_dir)]) == 0
    out = capsys.readouterr().out.strip()
    assert out == f"ok: {annotation_file}: 2 images, 4 annotations (1 crowd), 4 classes"


def test_offers_what_the_pipeline_calls_on_a_dataset(coco_files):
    from wsss.data.base import ImageDataset

    annotation_file, image_dir, _ = coco_files
    ds = COCODataset(annotation_file, image_dir)
    assert isinstance(ds, ImageDataset)
    assert ds.root == image_dir
    assert ds.image_path("000000000025") == image_dir / "000000000025.jpg"
    assert ds.image_size("000000000009") == (12, 16)
    assert ds.has_masks
    first = ds.ids[0]
    assert ds.load_mask(first).shape == ds.image_size(first) == ds.load_image(first).shape[:2]
    assert ds.label_vector(first).tolist() == [1, 1, 1, 0]


def test_a_missing_image_names_the_file_and_the_json(coco_files):
    annotation_file, image_dir, _ = coco_files
    (image_dir / "000000000025.jpg").unlink()
    ds = COCODataset(annotation_file, image_dir)
    listed = r"000000000025.jpg: no image for id '000000000025' \(listed in .*instances_val2017.json\)"
    with pytest.raises(DataError, match=listed):
        ds.load_image("000000000025")
    with pytest.raises(DataError, match="no image for id"):
        ds.image_size("000000000025")


def test_box_only_json_has_no_masks(coco_files):
    annotation_file, image_dir, document = coco_files
    document["annotations"][1].pop("segmentation")
    annotation_file.write_text(json.dumps(document))
    assert not COCODataset(annotation_file, image_dir).has_masks


def test_a_split_file_selects_ids(coco_files):
    annotation_file, image_dir, _ = coco_files
    (annotation_file.parent / "subset.txt").write_text("000000000025\n")
    ds = COCODataset(annotation_file, image_dir, split="subset.txt")  # relative to the JSON's folder
    assert ds.ids == ["000000000025"] and len(ds) == 1
    assert ds.split_file == annotation_file.parent / "subset.txt"
    assert ds.validate().images == 1
    (annotation_file.parent / "bad.txt").write_text("000000000025\n000000000077\n")
    unknown = r"bad.txt: 1 ids are not images of instances_val2017.json \(first: '000000000077'\)"
    with pytest.raises(DataError, match=unknown):
        COCODataset(annotation_file, image_dir, split=annotation_file.parent / "bad.txt")
    with pytest.raises(DataError, match="train: split file not found"):
        COCODataset(annotation_file, image_dir, split="train")


def test_ground_truth_instances_leave_crowds_to_the_ignore_region(coco):
    assert coco.has_instances
    found = coco.ground_truth_instances("000000000009")
    every = coco.instances("000000000009")
    assert len(found) == int((~every.is_crowd).sum()) == 2 and found.image_id == "000000000009"
    np.testing.assert_array_equal(found.ignore, every.masks[every.is_crowd].any(axis=0))
    assert found.ignore[9:11].all() and found.file_name == coco.image_path("000000000009").name
    assert coco.ground_truth_instances("000000000025").ignore is None
