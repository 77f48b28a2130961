"""``wsss.data.open_dataset``: a VOC folder or a COCO JSON, and one clear line for anything else."""

from __future__ import annotations

import pytest
from helpers import make_coco_json

from wsss.data import open_dataset
from wsss.data.base import ImageDataset
from wsss.data.coco import COCODataset
from wsss.data.voc import VOCDataset
from wsss.errors import ConfigError, DataError


def test_a_folder_opens_as_voc(voc_fixture):
    dataset = open_dataset(voc_fixture.root)
    assert isinstance(dataset, VOCDataset) and isinstance(dataset, ImageDataset)
    assert dataset.ids == VOCDataset(voc_fixture.root, "train").ids
    assert open_dataset(voc_fixture.root, split="train", label_source="masks").label_source == "masks"


def test_a_json_file_opens_as_coco(tmp_path):
    annotation_file = tmp_path / "annotations" / "instances_val2017.json"
    make_coco_json(annotation_file, tmp_path / "val2017")
    dataset = open_dataset(annotation_file)
    assert isinstance(dataset, COCODataset) and isinstance(dataset, ImageDataset)
    assert dataset.root == tmp_path / "val2017" and len(dataset) == 2
    assert open_dataset(annotation_file, image_dir=tmp_path / "val2017").image_dir == tmp_path / "val2017"


def test_anything_else_is_one_line_naming_the_path(tmp_path):
    other = tmp_path / "labels.csv"
    other.write_text("a,b\n")
    for path, found in ((other, "not a folder or a .json file"), (tmp_path / "none", "not found")):
        with pytest.raises(DataError) as caught:
            open_dataset(path)
        message = str(caught.value)
        assert message == (
            f"{path}: dataset {found}; expected a VOC-layout folder (holding JPEGImages) "
            "or a COCO instances .json file"
        )


def test_options_must_fit_the_kind_of_dataset(voc_fixture, tmp_path):
    with pytest.raises(ConfigError, match="dataset option 'image_dir' does not apply to a VOC folder"):
        open_dataset(voc_fixture.root, image_dir=tmp_path)
    annotation_file = tmp_path / "instances.json"
    make_coco_json(annotation_file, tmp_path / "images")
    with pytest.raises(ConfigError, match="'label_source' does not apply to a COCO instances file"):
        open_dataset(annotation_file, label_source="masks")
