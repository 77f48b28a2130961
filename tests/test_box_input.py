"""Bad and unusual boxes for the box-supervised methods (BANA, BBAM), through ``wsss run``.

A box the methods cannot use (no area, outside its image, an unknown class) is one line naming
the file, exit status 2, before the first stage; an image without boxes is an error for BANA and
background for BBAM; a box of a class the image's labels lack is used (the methods read boxes,
not labels); a COCO box of zero area is left out with a warning. See the module docstrings of
:mod:`wsss.methods.bana` and :mod:`wsss.methods.bbam`.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers import coco_from_voc, write_xml

from wsss.cli import main

SYNTH = dict(seed=5, train=8, val=2, ood=0, size=48, classes=3)
QUICK = {
    "bana": ["bana.steps=2", "bana.milestones=[1]", "bana.batch_size=4"],
    "bbam": ["bbam_detector.steps=2", "bbam_detector.batch_size=4", "bbam_detector.milestones=[1]",
             "bbam_detector.warmup_steps=1", "bbam.steps=2", "bbam.proposals=30"],
}


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> Path:
    from wsss.data.synth import SynthConfig, generate

    root = tmp_path_factory.mktemp("synth") / "data"
    generate(root, SynthConfig(**SYNTH))
    return root


@pytest.fixture
def voc(generated, tmp_path) -> Path:
    """A copy of the generated VOC folder this test may spoil."""
    root = tmp_path / "voc"
    shutil.copytree(generated, root)
    return root


def _ids(root: Path) -> list[str]:
    return (root / "ImageSets" / "Segmentation" / "train.txt").read_text().split()


def _run(data: str | Path, work: Path, method: str, *settings: str) -> int:
    args = ["run", "synth/demo", "--work", str(work), "--no-report"]
    for setting in (f"data.root={data}", f"methods=[{method}]", "fully_supervised=false", "runtime.device=cpu",
                    "runtime.progress=false", *QUICK[method], *settings):
        args += ["--set", setting]
    return main(args)


def _refused(capsys, work: Path, data: str | Path, method: str, *settings: str) -> str:
    """Run ``method``; check it stops before the first stage with one line and no traceback; return it."""
    assert _run(data, work, method, *settings) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("wsss: error: "), lines
    assert "Traceback" not in captured.err + captured.out
    assert not (work / ".stages").exists() or not list((work / ".stages").iterdir())  # no stage started
    return lines[0]


def _edit_xml(xml: Path, tag: str, value: str) -> None:
    """Set the first object's ``<tag>`` (xmin, ymin, xmax, ymax, name)."""
    text = xml.read_text()
    xml.write_text(re.sub(f"<{tag}>[^<]*</{tag}>", f"<{tag}>{value}</{tag}>", text, count=1))


# ------------------------------------------------------------------ VOC XML: refused before the first stage
def _zero_width(xml: Path) -> str:
    # xmin one past xmax: x0 = x1 in the 0-based convention (VOC's xmin..xmax is inclusive)
    xmax = int(re.search(r"<xmax>(\d+)</xmax>", xml.read_text()).group(1))
    _edit_xml(xml, "xmin", str(xmax + 1))
    return "is empty in the 48x48 image"


def _zero_at_the_corner(xml: Path) -> str:
    _edit_xml(xml, "xmin", "0")
    _edit_xml(xml, "xmax", "0")
    return "xmin=0"


def _outside(xml: Path) -> str:
    _edit_xml(xml, "xmax", "60")
    return "lies outside the 48x48 image"


def _unknown_class(xml: Path) -> str:
    _edit_xml(xml, "name", "unicorn")
    return "is a 'unicorn', which is not one of the 3 classes"


BAD_XML = [_zero_width, _zero_at_the_corner, _outside, _unknown_class]


@pytest.mark.parametrize("method", ["bana", "bbam"])
@pytest.mark.parametrize("spoil", BAD_XML, ids=[f.__name__.strip("_") for f in BAD_XML])
def test_a_bad_voc_box_stops_the_run_before_its_first_stage(voc, tmp_path, capsys, method, spoil):
    image_id = _ids(voc)[3]
    xml = voc / "Annotations" / f"{image_id}.xml"
    words = spoil(xml)
    line = _refused(capsys, tmp_path / "work", voc, method)
    assert str(xml) in line and words in line and repr(image_id) in line


def test_bana_refuses_an_image_without_boxes_naming_its_xml(voc, tmp_path, capsys):
    image_id = _ids(voc)[2]
    xml = voc / "Annotations" / f"{image_id}.xml"
    write_xml(xml, image_id, (48, 48), [], ["background"])
    line = _refused(capsys, tmp_path / "work", voc, "bana")
    assert line.startswith(f"wsss: error: {xml}: image {image_id!r} has no box")
    assert "1 of the 8 images of split 'train'" in line and "split file" in line


# ------------------------------------------------------------------ VOC XML: accepted, and what comes of it
def test_thin_boxes_a_box_of_a_class_the_labels_lack_and_an_image_without_boxes_run_through(voc, tmp_path):
    """A one-pixel-wide box (VOC's ``xmin = xmax``: one column, inclusive), a box of a class the
    image's mask lacks (used: boxes are the supervision), and, for BBAM, an image without boxes
    (background) run through both methods' per-image stages."""
    from wsss.data.voc import VOCDataset
    from wsss.io import read_json
    from wsss.stores.instances import InstanceStore
    from wsss.stores.masks import MaskStore

    ids = _ids(voc)
    dataset = VOCDataset(voc, "train")
    thin, foreign, empty = ids[1], ids[4], ids[6]
    # the first object of `thin` becomes one pixel wide: xmin = xmax
    thin_xml = voc / "Annotations" / f"{thin}.xml"
    xmin = int(re.search(r"<xmin>(\d+)</xmin>", thin_xml.read_text()).group(1))
    _edit_xml(thin_xml, "xmax", str(xmin))
    assert dataset.boxes(thin)[0][0, 2] - dataset.boxes(thin)[0][0, 0] == 1
    # `foreign` gets a box in a corner of a class its mask does not hold
    labels = set(dataset.image_labels(foreign).tolist())
    missing = min({1, 2, 3} - labels)
    boxes, classes = dataset.boxes(foreign)
    objects = [(int(c), *(int(v) for v in box)) for box, c in zip(boxes, classes)] + [(missing, 0, 0, 6, 6)]
    write_xml(voc / "Annotations" / f"{foreign}.xml", foreign, (48, 48), objects, dataset.classes)
    assert missing not in VOCDataset(voc, "train").image_labels(foreign)  # labels still come from the mask

    work = tmp_path / "bana"
    assert _run(voc, work, "bana", "until=pseudo", "methods=[boxes, bana]") == 0
    assert (MaskStore(work / "pseudo" / "boxes").load(foreign)[:6, :6] == missing).all()  # the box, filled
    for folder in ("bana", "bana_ret"):  # BANA may call box pixels background, never the class outside its box
        label_map = MaskStore(work / "pseudo" / folder).load(foreign)
        outside = np.ones_like(label_map, dtype=bool)
        outside[:6, :6] = False
        assert not (label_map[outside] == missing).any()
    assert read_json(work / "pseudo" / "bana_labels.json")["images"] == 8

    write_xml(voc / "Annotations" / f"{empty}.xml", empty, (48, 48), [], dataset.classes)
    work = tmp_path / "bbam"
    assert _run(voc, work, "bbam", "until=pseudo", "bbam_detector.batch_size=8") == 0  # every image, in each update
    semantic = MaskStore(work / "pseudo" / "bbam")
    assert not semantic.load(empty).any()  # no box: all background
    assert set(np.unique(semantic.load(foreign))) <= {0, 255, *labels, missing}
    instances = InstanceStore(work / "pseudo" / "bbam_instances.json").load(dataset.classes)
    assert missing in instances[foreign].classes.tolist() and len(instances[empty]) == 0
    summary = read_json(work / "pseudo" / "bbam_labels.json")
    assert summary["images"] == 8 and summary["objects"] == sum(len(VOCDataset(voc, "train").boxes(i)[0])
                                                                for i in ids)


# ------------------------------------------------------------------ COCO JSON
@pytest.fixture
def coco(voc) -> tuple[Path, dict]:
    """The generated training split as a COCO instances JSON (``annotations/instances_train.json``)."""
    path = voc / "annotations" / "instances_train.json"
    return path, coco_from_voc(voc, "train", path)


def _rewrite(path: Path, document: dict) -> None:
    path.write_text(json.dumps(document))


def test_coco_boxes_are_checked_against_the_image_and_clipped(coco):
    from wsss.data.coco import COCODataset
    from wsss.errors import DataError

    path, document = coco
    first = document["annotations"][0]
    first["bbox"] = [-0.5, 0.0, 10.0, 48.75]  # within a pixel of the image: clipped
    _rewrite(path, document)
    name = Path(document["images"][0]["file_name"]).stem
    boxes, _ = COCODataset(path).boxes(name)
    assert boxes[0].tolist() == [0.0, 0.0, 9.5, 48.0]
    for bbox, words in (([40.0, 2.0, 12.0, 5.0], "lies outside the 48x48 image"),
                        ([4.0, 2.0, -3.0, 5.0], "has a negative width or height"),
                        ([4.0, 2.0, "wide", 5.0], "non-numeric bbox")):
        first["bbox"] = bbox
        _rewrite(path, document)
        with pytest.raises(DataError) as caught:
            COCODataset(path).boxes(name)
        assert str(caught.value).startswith(f"{path}: annotation {first['id']}") and words in str(caught.value)


def test_a_coco_box_of_zero_area_is_left_out_with_one_warning(coco, caplog):
    from wsss.data.coco import COCODataset

    path, document = coco
    image = document["images"][0]
    name = Path(image["file_name"]).stem
    before = COCODataset(path).boxes(name)[0]
    # as annotation 918 of COCO 2017's training file: a height of 0
    document["annotations"].append({"id": 9999, "image_id": image["id"], "category_id": 1, "iscrowd": 0,
                                    "bbox": [5.0, 7.0, 3.0, 0.0], "area": 0.0,
                                    "segmentation": [[5.0, 7.0, 8.0, 7.0, 8.0, 7.0, 5.0, 7.0]]})
    _rewrite(path, document)
    dataset = COCODataset(path)
    with caplog.at_level(logging.WARNING, logger="wsss.data.coco"):
        assert np.array_equal(dataset.boxes(name)[0], before)
        assert np.array_equal(dataset.boxes(name)[0], before)
        assert len(dataset.ground_truth_instances(name)) == len(before)
    warnings = [r.getMessage() for r in caplog.records if "zero area" in r.getMessage()]
    assert len(warnings) == 1 and "annotation 9999" in warnings[0] and str(path) in warnings[0]


def _spoil_coco_outside(document: dict) -> str:
    document["annotations"][3]["bbox"] = [30.0, 30.0, 25.0, 5.0]
    return "lies outside the 48x48 image"


def _spoil_coco_category(document: dict) -> str:
    document["annotations"][3]["category_id"] = 77
    return "has unknown category 77"


@pytest.mark.parametrize("method", ["bana", "bbam"])
@pytest.mark.parametrize("spoil", [_spoil_coco_outside, _spoil_coco_category], ids=["outside", "unknown_category"])
def test_a_bad_coco_box_stops_the_run_before_its_first_stage(coco, tmp_path, capsys, method, spoil):
    path, document = coco
    words = spoil(document)
    _rewrite(path, document)
    line = _refused(capsys, tmp_path / "work", path, method, f"data.train_split={path}",
                    f"data.seed_split={path}", f"data.val_split={path}", "until=pseudo")
    assert line.startswith(f"wsss: error: ") and str(path) in line and words in line


def test_bana_refuses_a_coco_image_without_annotations(coco, tmp_path, capsys):
    path, document = coco
    bare = document["images"][5]
    document["annotations"] = [a for a in document["annotations"] if a["image_id"] != bare["id"]]
    _rewrite(path, document)
    line = _refused(capsys, tmp_path / "work", path, "bana", f"data.train_split={path}",
                    f"data.seed_split={path}", f"data.val_split={path}", "until=pseudo")
    assert line.startswith(f"wsss: error: {path}: image {Path(bare['file_name']).stem!r} has no box")


def test_check_data_with_boxes_finds_a_coco_box_outside_its_image(coco, capsys):
    path, document = coco
    assert main(["check-data", "--data", str(path), "--boxes"]) == 0
    assert capsys.readouterr().out.startswith(f"ok: {path}")
    words = _spoil_coco_outside(document)
    _rewrite(path, document)
    assert main(["check-data", "--data", str(path)]) == 0  # without --boxes the boxes are not read
    capsys.readouterr()
    assert main(["check-data", "--data", str(path), "--boxes"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"wsss: error: {path}: annotation") and words in lines[0]
