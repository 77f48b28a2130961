"""Every kind of bad dataset input gives one line naming the file and the problem.

Each case is checked twice: at library level (the call that first touches the bad file raises
``DataError`` with that line) and through ``wsss check-data`` (exit status 2, the same line on
stderr after ``wsss: error:``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from helpers import make_voc, write_palette_png

from wsss.cli import main
from wsss.data.voc import VOCDataset, read_classes_file
from wsss.errors import DataError

THREE = ["background", "cat", "car", "tree"]


@dataclass
class Case:
    data: Path  # --data
    split: str  # --split
    library: Callable[[], object]  # the library call that must raise
    path: Path  # the file the error names
    message: str  # the exact problem text after "<path>: "
    boxes: bool = False  # pass --boxes to check-data


def missing_root(tmp: Path) -> Case:
    root = tmp / "no_such_dataset"
    return Case(root, "train", lambda: VOCDataset(root), root, "dataset folder not found")


def missing_jpegimages(tmp: Path) -> Case:
    make_voc(tmp)
    (tmp / "JPEGImages").rename(tmp / "images")
    return Case(
        tmp, "train", lambda: VOCDataset(tmp), tmp,
        "no JPEGImages folder here or in VOC2012/ (expected VOCdevkit/ or VOCdevkit/VOC2012/)",
    )  # fmt: skip


def id_without_image(tmp: Path) -> Case:
    fixture = make_voc(tmp, devkit=True)
    image = fixture.root / "JPEGImages" / "2007_000039.jpg"
    image.unlink()
    return Case(
        fixture.devkit, "train", lambda: VOCDataset(fixture.devkit).load_image("2007_000039"), image,
        f"no image for id '2007_000039' (listed in {fixture.split_file})",
    )  # fmt: skip


def mask_size_differs(tmp: Path) -> Case:
    make_voc(tmp)
    mask = tmp / "SegmentationClass" / "2007_000039.png"
    write_palette_png(mask, np.zeros((20, 30), np.uint8))  # the image is 30x21
    return Case(
        tmp, "train", lambda: VOCDataset(tmp).load_mask("2007_000039"), mask,
        "mask is 30x20 but its image 2007_000039.jpg is 30x21",
    )  # fmt: skip


def label_above_k(tmp: Path) -> Case:
    fixture = make_voc(tmp)
    mask = fixture.mask("2007_000063")
    mask[0, 0] = 21
    path = tmp / "SegmentationClass" / "2007_000063.png"
    write_palette_png(path, mask)
    return Case(
        tmp, "train", lambda: VOCDataset(tmp).load_mask("2007_000063"), path,
        "label value 21 is above K=20 (allowed: 0..20 and 255 = ignore)",
    )  # fmt: skip


def label_above_custom_k(tmp: Path) -> Case:
    fixture = make_voc(tmp, classes=THREE)
    mask = fixture.mask("2007_000032")
    mask[-1, -1] = 4
    path = tmp / "SegmentationClass" / "2007_000032.png"
    write_palette_png(path, mask)
    # image_labels derives from the same mask and must refuse it too
    return Case(
        tmp, "train", lambda: VOCDataset(tmp).image_labels("2007_000032"), path,
        "label value 4 is above K=3 (allowed: 0..3 and 255 = ignore)",
    )  # fmt: skip


def corrupt_jpeg(tmp: Path) -> Case:
    make_voc(tmp)
    image = tmp / "JPEGImages" / "2007_000063.jpg"
    data = image.read_bytes()
    image.write_bytes(data[: len(data) // 2])  # truncated
    return Case(
        tmp, "train", lambda: VOCDataset(tmp).load_image("2007_000063"), image,
        "corrupt or unreadable image (image file is truncated",
    )  # fmt: skip


def corrupt_png(tmp: Path) -> Case:
    make_voc(tmp)
    mask = tmp / "SegmentationClass" / "2008_000002.png"
    mask.write_bytes(b"\x89PNG\r\n\x1a\nthis is not a png")
    return Case(
        tmp, "train", lambda: VOCDataset(tmp).load_mask("2008_000002"), mask,
        "corrupt or unreadable image (",
    )  # fmt: skip


def empty_split(tmp: Path) -> Case:
    fixture = make_voc(tmp)
    fixture.split_file.write_text("\n\n")
    return Case(
        tmp, "train", lambda: VOCDataset(tmp, "train"), fixture.split_file, "split file is empty (no ids)"
    )


def missing_split_name(tmp: Path) -> Case:
    make_voc(tmp, split="train")
    make_voc(tmp, split="trainval")
    expected = tmp / "ImageSets" / "Segmentation" / "val.txt"
    return Case(
        tmp, "val", lambda: VOCDataset(tmp, "val"), expected,
        "split 'val' not found; available splits: train, trainval",
    )  # fmt: skip


def missing_split_path(tmp: Path) -> Case:
    make_voc(tmp)
    path = tmp / "lists" / "train_aug.txt"
    return Case(
        tmp, str(path), lambda: VOCDataset(tmp, path), path,
        "split file not found; available splits: train",
    )  # fmt: skip


def box_outside_image(tmp: Path) -> Case:
    make_voc(tmp)
    xml = tmp / "Annotations" / "2007_000032.xml"
    # image 0 is 28x20; its second object ends at xmax=26; push it to 40
    xml.write_text(xml.read_text().replace("<xmax>26</xmax>", "<xmax>40</xmax>"))
    return Case(
        tmp, "train", lambda: VOCDataset(tmp).boxes("2007_000032"), xml,
        "object 2 (bird) box xmin=16 ymin=11 xmax=40 ymax=19 lies outside the 28x20 image",
        boxes=True,
    )  # fmt: skip


def xml_class_not_in_classes_txt(tmp: Path) -> Case:
    make_voc(tmp, classes=THREE, with_masks=False)  # labels come from the XML
    xml = tmp / "Annotations" / "2007_000039.xml"
    xml.write_text(xml.read_text().replace("<name>car</name>", "<name>dog</name>"))
    return Case(
        tmp, "train", lambda: VOCDataset(tmp).image_labels("2007_000039"), xml,
        f"object 1 is a 'dog', which is not one of the 3 classes in {tmp / 'classes.txt'}",
    )  # fmt: skip


def xml_class_not_in_classes_txt_boxes(tmp: Path) -> Case:
    make_voc(tmp, classes=THREE)  # masks give the labels; only --boxes reads the XML
    xml = tmp / "Annotations" / "2007_000039.xml"
    xml.write_text(xml.read_text().replace("<name>car</name>", "<name>dog</name>"))
    return Case(
        tmp, "train", lambda: VOCDataset(tmp).boxes("2007_000039"), xml,
        f"object 1 is a 'dog', which is not one of the 3 classes in {tmp / 'classes.txt'}",
        boxes=True,
    )  # fmt: skip


def classes_txt_empty(tmp: Path) -> Case:
    make_voc(tmp, classes=THREE)
    (tmp / "classes.txt").write_text("\n  \n")
    return Case(
        tmp, "train", lambda: VOCDataset(tmp), tmp / "classes.txt",
        "classes file is empty (expected one class name per line, background first)",
    )  # fmt: skip


def classes_txt_duplicate(tmp: Path) -> Case:
    make_voc(tmp, classes=THREE)
    (tmp / "classes.txt").write_text("background\ncat\ncar\ncat\n")
    return Case(
        tmp,
        "train",
        lambda: VOCDataset(tmp),
        tmp / "classes.txt",
        "duplicate class name 'cat' in classes file",
    )


def classes_txt_background_only(tmp: Path) -> Case:
    make_voc(tmp, classes=THREE)
    (tmp / "classes.txt").write_text("background\n")
    return Case(
        tmp, "train", lambda: VOCDataset(tmp), tmp / "classes.txt",
        "classes file names only 'background'; it needs background plus at least one class",
    )  # fmt: skip


def box_without_area(tmp: Path) -> Case:
    make_voc(tmp)
    xml = tmp / "Annotations" / "2007_000032.xml"
    # xmin = xmax = 0: one pixel left of the image, which clipping leaves with no width at all
    text = xml.read_text().replace("<xmin>3</xmin>", "<xmin>0</xmin>")
    xml.write_text(text.replace("<xmax>14</xmax>", "<xmax>0</xmax>"))
    return Case(
        tmp, "train", lambda: VOCDataset(tmp).boxes("2007_000032"), xml,
        "object 1 (aeroplane) box xmin=0 ymin=3 xmax=0 ymax=11 has no area inside the 28x20 image",
        boxes=True,
    )  # fmt: skip


def classes_txt_without_background(tmp: Path) -> Case:
    make_voc(tmp, classes=THREE)
    (tmp / "classes.txt").write_text("\ncat\ncar\ntree\n")
    return Case(
        tmp, "train", lambda: VOCDataset(tmp), tmp / "classes.txt",
        "line 2 names 'cat', but the first class must be background (label 0); add a 'background' line first",
    )  # fmt: skip


CASES = [
    missing_root,
    missing_jpegimages,
    id_without_image,
    mask_size_differs,
    label_above_k,
    label_above_custom_k,
    corrupt_jpeg,
    corrupt_png,
    empty_split,
    missing_split_name,
    missing_split_path,
    box_outside_image,
    xml_class_not_in_classes_txt,
    xml_class_not_in_classes_txt_boxes,
    classes_txt_empty,
    classes_txt_duplicate,
    classes_txt_background_only,
    box_without_area,
    classes_txt_without_background,
]


@pytest.mark.parametrize("make_case", CASES, ids=[c.__name__ for c in CASES])
def test_library_raises_one_line_naming_the_file(tmp_path, make_case):
    case = make_case(tmp_path)
    with pytest.raises(DataError) as caught:
        case.library()
    text = str(caught.value)
    assert "\n" not in text
    assert caught.value.path == case.path
    assert text.startswith(f"{case.path}: {case.message}"), text


@pytest.mark.parametrize("make_case", CASES, ids=[c.__name__ for c in CASES])
def test_check_data_exits_2_with_the_line(tmp_path, capsys, make_case):
    case = make_case(tmp_path)
    argv = ["check-data", "--data", str(case.data), "--split", case.split] + (
        ["--boxes"] if case.boxes else []
    )
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"wsss: error: {case.path}: {case.message}"), lines[0]


def test_box_problems_pass_without_boxes_flag(tmp_path, capsys):
    box_outside_image(tmp_path)
    assert main(["check-data", "--data", str(tmp_path), "--split", "train"]) == 0
    assert capsys.readouterr().out.startswith("ok: ")


def test_id_with_no_labels_anywhere(tmp_path):
    make_voc(tmp_path, with_masks=False, with_xml=False)
    with pytest.raises(DataError) as caught:
        VOCDataset(tmp_path).image_labels("2007_000032")
    assert str(caught.value) == (
        f"{tmp_path}: no image-level labels for id '2007_000032': not in image_labels.json, "
        "no mask in SegmentationClass or SegmentationClassAug, no Annotations/2007_000032.xml"
    )


def test_malformed_xml(tmp_path):
    make_voc(tmp_path, with_masks=False)
    xml = tmp_path / "Annotations" / "2007_000032.xml"
    xml.write_text("<annotation><object><name>cat</name>")
    with pytest.raises(DataError, match=r"2007_000032.xml: malformed XML \(no element found"):
        VOCDataset(tmp_path).image_labels("2007_000032")


def test_non_numeric_box_coordinate(tmp_path):
    make_voc(tmp_path)
    xml = tmp_path / "Annotations" / "2007_000032.xml"
    xml.write_text(xml.read_text().replace("<ymax>11</ymax>", "<ymax>eleven</ymax>"))
    with pytest.raises(DataError, match=r"object 1 \(aeroplane\) has a missing or non-numeric <ymax>"):
        VOCDataset(tmp_path).boxes("2007_000032")


def test_empty_box(tmp_path):
    make_voc(tmp_path)
    xml = tmp_path / "Annotations" / "2007_000032.xml"
    xml.write_text(xml.read_text().replace("<xmax>14</xmax>", "<xmax>2</xmax>"))
    with pytest.raises(DataError, match="object 1 .* xmax=2 .* is empty in the 28x20 image"):
        VOCDataset(tmp_path).boxes("2007_000032")


def test_missing_classes_file_and_too_many_classes(tmp_path):
    with pytest.raises(DataError, match="classes file not found"):
        read_classes_file(tmp_path / "classes.txt")
    path = tmp_path / "classes.txt"
    path.write_text("\n".join(f"c{k}" for k in range(256)))
    with pytest.raises(DataError, match=r"256 classes, but label maps hold at most 255 \(255 = ignore\)"):
        read_classes_file(path)


def test_no_split_files_at_all(tmp_path):
    make_voc(tmp_path)
    (tmp_path / "ImageSets" / "Segmentation" / "train.txt").unlink()
    with pytest.raises(DataError, match="has no split files under ImageSets/"):
        VOCDataset(tmp_path, "train")
