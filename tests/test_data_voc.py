"""VOCDataset: root forms, split dialects, classes.txt, labels from masks / XML / label file."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import VOC_NAMES, make_voc, write_palette_png

import wsss.data.voc as voc_module
from wsss.data.voc import VOC_CLASSES, VOCDataset, read_split_file
from wsss.errors import ConfigError, DataError
from wsss.io import voc_palette


def test_voc_class_names_match_the_helper():
    assert list(VOC_CLASSES) == VOC_NAMES
    assert len(VOC_CLASSES) == 21


@pytest.mark.parametrize("form", ["voc2012", "devkit", "above_devkit"])
def test_root_forms_resolve_to_the_folder_with_jpegimages(tmp_path, form):
    fixture = make_voc(tmp_path, devkit=True)
    given = {
        "voc2012": fixture.root,
        "devkit": fixture.devkit,
        "above_devkit": tmp_path,
    }[form]
    ds = VOCDataset(given, split="train")
    assert ds.root == fixture.root
    assert ds.ids == fixture.ids
    assert ds.image_path("2007_000032") == fixture.root / "JPEGImages" / "2007_000032.jpg"


def test_basic_contract(voc_fixture, voc_dataset):
    ds = voc_dataset
    assert ds.split == "train"
    assert ds.split_file == voc_fixture.split_file
    assert len(ds) == 4
    assert ds.classes == VOC_NAMES and ds.num_classes == 21
    assert ds.palette == voc_palette() and len(ds.palette) == 768
    assert ds.has_masks
    for index, image_id in enumerate(ds.ids):
        height, width = voc_fixture.sizes[image_id]
        image = ds.load_image(image_id)
        assert image.dtype == np.uint8 and image.shape == (height, width, 3)
        mask = ds.load_mask(image_id)
        np.testing.assert_array_equal(mask, voc_fixture.mask(image_id))
        assert ds.mask_path(image_id) == voc_fixture.root / "SegmentationClass" / f"{image_id}.png"
        labels = ds.image_labels(image_id)
        assert labels.dtype == np.int64
        assert labels.tolist() == voc_fixture.labels[image_id]
        vector = ds.label_vector(image_id)
        assert vector.dtype == np.float32 and vector.shape == (20,)
        assert np.flatnonzero(vector).tolist() == [c - 1 for c in voc_fixture.labels[image_id]]
        item = ds[index]
        assert item["id"] == image_id and item["image"].shape == image.shape
        assert item["labels"].tolist() == voc_fixture.labels[image_id]
    # the exact classes of the generator: image 0 has aeroplane (1) and bird (3)
    assert ds.image_labels("2007_000032").tolist() == [1, 3]
    assert ds.image_labels("2008_000002").tolist() == [4, 18]


def test_boxes_are_zero_based_pixels_from_the_xml(voc_fixture, voc_dataset):
    boxes, classes = voc_dataset.boxes("2007_000039")
    assert boxes.dtype == np.float32 and classes.dtype == np.int64
    # image 1 is 21x30: objects (2, 2,2,15,11) and (8, 16,10,28,20); XML says xmin=3 .. xmax=15
    np.testing.assert_array_equal(boxes, [[2, 2, 15, 11], [16, 10, 28, 20]])
    assert classes.tolist() == [2, 8]
    for image_id in voc_fixture.ids:
        boxes, classes = voc_dataset.boxes(image_id)
        expected = voc_fixture.objects[image_id]
        np.testing.assert_array_equal(boxes, [o[1:] for o in expected])
        assert classes.tolist() == [o[0] for o in expected]


def test_split_dialect_one_id_per_line_with_comments_and_blank_lines(tmp_path):
    fixture = make_voc(tmp_path)
    split = tmp_path / "mine.txt"
    split.write_text("# my subset\n\n2007_000063\n  2007_000032  \n\n")
    ds = VOCDataset(tmp_path, split=split)
    assert ds.ids == ["2007_000063", "2007_000032"]
    assert ds.image_labels("2007_000063").tolist() == fixture.labels["2007_000063"]


def test_split_dialect_two_columns_of_paths(tmp_path):
    fixture = make_voc(tmp_path, dialect="paths")
    assert fixture.split_file.read_text().splitlines()[0] == (
        "/JPEGImages/2007_000032.jpg /SegmentationClassAug/2007_000032.png"
    )
    ds = VOCDataset(tmp_path, split="train")
    assert ds.ids == fixture.ids
    assert ds.image_path("2007_000032") == tmp_path / "JPEGImages" / "2007_000032.jpg"
    assert ds.mask_path("2007_000032") == tmp_path / "SegmentationClassAug" / "2007_000032.png"
    assert ds.has_masks
    for image_id in fixture.ids:
        np.testing.assert_array_equal(ds.load_mask(image_id), fixture.mask(image_id))
        assert ds.image_labels(image_id).tolist() == fixture.labels[image_id]


def test_two_column_listed_mask_is_used_when_the_standard_folders_lack_it(tmp_path):
    fixture = make_voc(tmp_path, dialect="paths")
    moved = tmp_path / "elsewhere"
    moved.mkdir()
    (tmp_path / "SegmentationClassAug" / "2007_000039.png").rename(moved / "m.png")
    split = tmp_path / "custom.txt"
    split.write_text(f"/JPEGImages/2007_000039.jpg {moved / 'm.png'}\n")
    ds = VOCDataset(tmp_path, split=split)
    assert ds.mask_path("2007_000039") == moved / "m.png"
    np.testing.assert_array_equal(ds.load_mask("2007_000039"), fixture.mask("2007_000039"))


def test_split_dialect_aug_ids_without_masks_take_labels_from_xml(tmp_path):
    fixture = make_voc(tmp_path, dialect="aug", split="train_aug")
    ds = VOCDataset(tmp_path, split="train_aug")
    assert fixture.mask_ids == ["2007_000032", "2007_000039"]
    assert ds.mask_path("2007_000032") == tmp_path / "SegmentationClassAug" / "2007_000032.png"
    assert ds.mask_path("2007_000063") is None
    assert not ds.has_masks
    for image_id in fixture.ids:  # masks for the first half, XML for the rest, same answer
        assert ds.image_labels(image_id).tolist() == fixture.labels[image_id]
    with pytest.raises(DataError, match="no mask for id '2007_000063'"):
        ds.load_mask("2007_000063")


def test_segmentation_class_wins_over_segmentation_class_aug(tmp_path):
    fixture = make_voc(tmp_path)
    other = np.full(fixture.sizes["2007_000032"], 5, dtype=np.uint8)
    write_palette_png(tmp_path / "SegmentationClassAug" / "2007_000032.png", other)
    ds = VOCDataset(tmp_path)
    np.testing.assert_array_equal(ds.load_mask("2007_000032"), fixture.mask("2007_000032"))
    assert ds.image_labels("2007_000032").tolist() == [1, 3]


def test_split_given_as_path_relative_to_root(tmp_path):
    make_voc(tmp_path, split="val")
    ds = VOCDataset(tmp_path, split="ImageSets/Segmentation/val.txt")
    assert ds.split_file == tmp_path / "ImageSets" / "Segmentation" / "val.txt"
    assert len(ds) == 4


def test_split_in_segmentation_aug_folder(tmp_path):
    make_voc(tmp_path)
    folder = tmp_path / "ImageSets" / "SegmentationAug"
    folder.mkdir(parents=True)
    (folder / "train_aug.txt").write_text("/JPEGImages/2007_000039.jpg /SegmentationClass/2007_000039.png\n")
    ds = VOCDataset(tmp_path, split="train_aug")
    assert ds.ids == ["2007_000039"]


def test_read_split_file_records_listed_paths(tmp_path):
    split = tmp_path / "s.txt"
    split.write_text("/JPEGImages/a.jpg /SegmentationClassAug/a.png\nJPEGImages/b.jpg\nc\n")
    parsed = read_split_file(split)
    assert parsed.ids == ["a", "b", "c"]
    assert parsed.listed_images == {"a": "/JPEGImages/a.jpg", "b": "JPEGImages/b.jpg"}
    assert parsed.listed_masks == {"a": "/SegmentationClassAug/a.png"}


def test_voc_main_per_class_lists_keep_ids_and_drop_the_flag(tmp_path):
    split = tmp_path / "aeroplane_train.txt"
    split.write_text("2008_000008 -1\n2008_000015  1\n2008_000019  0\n")
    parsed = read_split_file(split)
    assert parsed.ids == ["2008_000008", "2008_000015", "2008_000019"]
    assert parsed.listed_images == {} and parsed.listed_masks == {}


def test_missing_split_hint_is_capped(tmp_path):
    make_voc(tmp_path)
    main = tmp_path / "ImageSets" / "Main"
    main.mkdir(parents=True)
    for k in range(20):
        (main / f"class{k:02d}_train.txt").write_text("2007_000032  1\n")
    with pytest.raises(DataError) as caught:
        VOCDataset(tmp_path, "nope")
    assert str(caught.value).endswith(
        "split 'nope' not found; available splits: class00_train, class01_train, class02_train, "
        "class03_train, class04_train, class05_train, class06_train, class07_train, class08_train, "
        "class09_train, class10_train, class11_train and 9 more"
    )


def test_repeated_id_in_split_is_an_error(tmp_path):
    split = tmp_path / "s.txt"
    split.write_text("a\nb\na\n")
    with pytest.raises(DataError, match="line 3 repeats id 'a'"):
        read_split_file(split)


def test_three_columns_is_an_error(tmp_path):
    split = tmp_path / "s.txt"
    split.write_text("a b c\n")
    with pytest.raises(DataError, match="line 1 has 3 columns"):
        read_split_file(split)


@pytest.mark.parametrize("num_foreground", [3, 25])
def test_custom_classes_txt(tmp_path, num_foreground):
    names = ["background"] + [f"thing{k}" for k in range(1, num_foreground + 1)]
    ids = [f"img{k:02d}" for k in range(6)]
    fixture = make_voc(tmp_path, ids=ids, classes=names)
    ds = VOCDataset(tmp_path)
    assert ds.classes == names
    assert ds.num_classes == num_foreground + 1
    assert ds.classes_file == tmp_path / "classes.txt"
    for image_id in ids:
        assert ds.image_labels(image_id).tolist() == fixture.labels[image_id]
        assert ds.label_vector(image_id).shape == (num_foreground,)
        np.testing.assert_array_equal(ds.load_mask(image_id), fixture.mask(image_id))
        boxes, classes = ds.boxes(image_id)
        assert classes.tolist() == [o[0] for o in fixture.objects[image_id]]
    all_ids_labels = {tuple(v) for v in fixture.labels.values()}
    if num_foreground == 3:
        # img00: classes 1 and 3; img01: class 2 only (both objects draw class 2)
        assert fixture.labels["img00"] == [1, 3] and fixture.labels["img01"] == [2]
    else:
        # classes above 20 occur, so nothing assumes VOC's 20
        assert max(max(v) for v in all_ids_labels) > 20
        xml_ds = VOCDataset(tmp_path, label_source="xml")
        assert {i: xml_ds.image_labels(i).tolist() for i in ids} == fixture.labels
    report = ds.validate(boxes=True)
    assert (report.images, report.masks, report.labelled, report.xml_files) == (6, 6, 6, 6)


def test_classes_txt_at_the_devkit_level_is_found(tmp_path):
    names = ["background", "a", "b", "c"]
    fixture = make_voc(tmp_path, devkit=True, classes=names)
    (fixture.root / "classes.txt").rename(fixture.devkit / "classes.txt")
    ds = VOCDataset(fixture.devkit)
    assert ds.classes == names


def test_labels_from_masks_xml_and_file_agree(tmp_path):
    fixture = make_voc(tmp_path, label_file=True)
    from_masks = VOCDataset(tmp_path, label_source="masks")
    from_xml = VOCDataset(tmp_path, label_source="xml")
    from_file = VOCDataset(tmp_path, label_source="file")
    from_path = VOCDataset(tmp_path, label_source=tmp_path / "image_labels.json")
    auto = VOCDataset(tmp_path)
    assert auto.label_file is not None and auto.label_file.path == tmp_path / "image_labels.json"
    for image_id in fixture.ids:
        expected = fixture.labels[image_id]
        for ds in (from_masks, from_xml, from_file, from_path, auto):
            assert ds.image_labels(image_id).tolist() == expected, (ds.label_source, image_id)


def test_auto_prefers_the_label_file_and_falls_back_per_id(tmp_path):
    fixture = make_voc(tmp_path)
    document = {
        "format": "wsss-image-labels",
        "version": 1,
        "classes": VOC_NAMES,
        "labels": {"2007_000032": [15]},  # deliberately different from the mask's [1, 3]
    }
    (tmp_path / "image_labels.json").write_text(json.dumps(document))
    auto = VOCDataset(tmp_path)
    assert auto.image_labels("2007_000032").tolist() == [15]
    assert auto.image_labels("2007_000039").tolist() == fixture.labels["2007_000039"]  # from the mask
    strict = VOCDataset(tmp_path, label_source="file")
    with pytest.raises(DataError, match="no labels for id '2007_000039' in the label file"):
        strict.image_labels("2007_000039")
    assert VOCDataset(tmp_path, label_source="masks").image_labels("2007_000032").tolist() == [1, 3]


def test_label_file_with_other_classes_is_rejected(tmp_path):
    make_voc(tmp_path)
    document = {"format": "wsss-image-labels", "version": 1, "classes": ["background", "cat"], "labels": {}}
    (tmp_path / "image_labels.json").write_text(json.dumps(document))
    with pytest.raises(DataError, match="image_labels.json: its classes .* differ from the dataset's"):
        VOCDataset(tmp_path)


def test_label_source_file_without_a_file(tmp_path):
    make_voc(tmp_path)
    with pytest.raises(DataError, match="no image_labels.json"):
        VOCDataset(tmp_path, label_source="file")


def test_unknown_label_source_word_is_a_config_error(tmp_path):
    make_voc(tmp_path)
    with pytest.raises(ConfigError, match="'mask' must be one of auto, masks, xml, file"):
        VOCDataset(tmp_path, label_source="mask")


def test_labels_are_derived_once_and_cached(tmp_path, monkeypatch):
    fixture = make_voc(tmp_path)
    ds = VOCDataset(tmp_path)
    calls = []
    real = voc_module.read_label_png

    def counting(path):
        calls.append(path)
        return real(path)

    monkeypatch.setattr(voc_module, "read_label_png", counting)
    for _ in range(3):
        for image_id in fixture.ids:
            ds.image_labels(image_id)
            ds.label_vector(image_id)
    assert len(calls) == len(fixture.ids)
    # the cache hands out copies: mutating a result does not change the next one
    labels = ds.image_labels("2007_000032")
    labels[0] = 99
    assert ds.image_labels("2007_000032").tolist() == [1, 3]


def test_all_image_labels_in_threads(tmp_path):
    ids = [f"2009_{k:06d}" for k in range(12)]
    fixture = make_voc(tmp_path, ids=ids)
    ds = VOCDataset(tmp_path)
    result = ds.all_image_labels(workers=4)
    assert list(result) == ids
    assert {k: v.tolist() for k, v in result.items()} == fixture.labels


def test_image_with_png_extension_is_found(tmp_path):
    make_voc(tmp_path)
    jpg = tmp_path / "JPEGImages" / "2007_000032.jpg"
    from PIL import Image

    Image.open(jpg).save(jpg.with_suffix(".png"))
    jpg.unlink()
    ds = VOCDataset(tmp_path)
    assert ds.image_path("2007_000032") == jpg.with_suffix(".png")
    assert ds.load_image("2007_000032").shape == (20, 28, 3)


def test_boxes_within_one_pixel_are_clipped(tmp_path):
    fixture = make_voc(tmp_path, ids=["a"])
    height, width = fixture.sizes["a"]
    xml = tmp_path / "Annotations" / "a.xml"
    xml.write_text(
        "<annotation><object><name>cat</name><bndbox>"
        f"<xmin>0</xmin><ymin>1</ymin><xmax>{width + 1}</xmax><ymax>{height}</ymax>"
        "</bndbox></object></annotation>"
    )
    boxes, classes = VOCDataset(tmp_path).boxes("a")
    np.testing.assert_array_equal(boxes, [[0, 0, width, height]])
    assert classes.tolist() == [8]


def test_xml_without_objects_gives_no_boxes_and_no_labels(tmp_path):
    make_voc(tmp_path, ids=["a"], with_masks=False)
    (tmp_path / "Annotations" / "a.xml").write_text("<annotation><size><width>28</width></size></annotation>")
    ds = VOCDataset(tmp_path)
    boxes, classes = ds.boxes("a")
    assert boxes.shape == (0, 4) and classes.shape == (0,)
    assert ds.image_labels("a").tolist() == []
    assert ds.label_vector("a").sum() == 0


def test_validate_counts(voc_dataset):
    report = voc_dataset.validate(boxes=True)
    assert (report.images, report.masks, report.labelled, report.boxes, report.xml_files) == (4, 4, 4, 8, 4)
    assert report.summary() == "4 images, 4 masks, 4 with image labels, 8 boxes in 4 XML files"


def test_check_data_command_success(tmp_path, capsys):
    from wsss.cli import main

    make_voc(tmp_path, devkit=True)
    assert main(["check-data", "--data", str(tmp_path / "VOCdevkit"), "--split", "train", "--boxes"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1
    assert out[0].startswith("ok: ") and "split train: 4 images, 4 masks, 4 with image labels" in out[0]
    assert "8 boxes in 4 XML files, 20 classes" in out[0]


def test_ground_truth_instances_from_segmentation_object(voc_fixture, voc_dataset):
    image_id = voc_fixture.ids[0]
    height, width = voc_dataset.image_size(image_id)
    assert not voc_dataset.has_instances
    with pytest.raises(DataError, match="no instance mask"):
        voc_dataset.ground_truth_instances(image_id)
    semantic = np.zeros((height, width), np.uint8)
    objects = np.zeros((height, width), np.uint8)
    semantic[2:6, 3:9], objects[2:6, 3:9] = 5, 1     # instance 1: class 5, rows 2-5, columns 3-8
    semantic[8:12, 1:4], objects[8:12, 1:4] = 7, 3   # instance 3 (no instance 2): class 7
    semantic[8, 1] = 5                               # one stray pixel: the majority class wins
    objects[0, :] = 255                              # VOC's void band: ignored
    write_palette_png(voc_fixture.root / "SegmentationClass" / f"{image_id}.png", semantic)
    write_palette_png(voc_fixture.root / "SegmentationObject" / f"{image_id}.png", objects)
    found = voc_dataset.ground_truth_instances(image_id)
    assert found.classes.tolist() == [5, 7] and found.image_size == (height, width)
    np.testing.assert_array_equal(found.boxes, [[3, 2, 9, 6], [1, 8, 4, 12]])
    np.testing.assert_array_equal(found.masks[1], objects == 3)
    assert found.ignore is not None and found.ignore[0].all() and found.ignore.sum() == width
    objects[14:16, 10:12] = 2  # an instance over background only has no class
    write_palette_png(voc_fixture.root / "SegmentationObject" / f"{image_id}.png", objects)
    with pytest.raises(DataError, match="instance 2 has no foreground class"):
        voc_dataset.ground_truth_instances(image_id)
