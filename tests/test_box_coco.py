"""BANA and BBAM on a COCO-format dataset, end to end through ``wsss run``.

The generated benchmark's two splits written as COCO instances JSONs (boxes and RLE
segmentations; the images stay in its ``JPEGImages``), one more annotation of zero height in
the training file as COCO 2017's own has: both methods make pseudo masks, train a DeepLab and
score it, and BBAM's Mask R-CNN gets its instance AP on the validation JSON.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from helpers import coco_from_voc

from wsss.cli import main
from wsss.io import read_json

TINY = [
    "runtime.device=cpu", "runtime.progress=false", "fully_supervised=false",
    "bana.steps=2", "bana.milestones=[1]", "bana.batch_size=3",
    "bbam_detector.steps=2", "bbam_detector.batch_size=3", "bbam_detector.milestones=[1]",
    "bbam_detector.warmup_steps=1", "bbam.steps=2", "bbam.proposals=30",
    "segmentation.epochs=1", "segmentation.batch_size=3", "segmentation.crop_size=40",
    "segmentation.scale_range=null", "seg_inference.scales=[1.0]", "seg_inference.flip=false",
    "mask_rcnn.backbone=resnet18_w16", "mask_rcnn.fpn_channels=16", "mask_rcnn.representation_size=32",
    "mask_rcnn.mask_channels=16", "mask_rcnn.steps=2", "mask_rcnn.batch_size=3", "mask_rcnn.warmup_steps=1",
    "mask_rcnn.milestones=[1]",
]


@pytest.fixture(scope="module")
def coco(tmp_path_factory) -> tuple[Path, Path]:
    """The generated splits as ``annotations/instances_{train,val}.json``, the training file with
    one more annotation of zero height (left out of the boxes)."""
    from wsss.data.synth import SynthConfig, generate

    root = tmp_path_factory.mktemp("coco") / "data"
    generate(root, SynthConfig(seed=3, train=6, val=3, ood=0, size=40, classes=3))
    train, val = root / "annotations" / "instances_train.json", root / "annotations" / "instances_val.json"
    document = coco_from_voc(root, "train", train)
    coco_from_voc(root, "val", val)
    document["annotations"].append({"id": 999, "image_id": 1, "category_id": 1, "iscrowd": 0, "area": 0.0,
                                    "bbox": [5.0, 7.0, 3.0, 0.0], "segmentation": [[5, 7, 8, 7, 8, 7, 5, 7]]})
    train.write_text(json.dumps(document))
    return train, val


def _boxes(path: Path) -> dict[str, int]:
    from wsss.data.coco import COCODataset

    dataset = COCODataset(path)
    return {image_id: len(dataset.boxes(image_id)[0]) for image_id in dataset.ids}


def _run(coco: tuple[Path, Path], work: Path, method: str, caplog) -> list[str]:
    """``wsss run`` of ``method`` on the COCO files; returns the command line for a rerun."""
    train, val = coco
    args = ["run", "synth/demo", "--work", str(work), "--no-report"]
    for setting in (f"data.root={train}", f"data.train_split={train}", f"data.seed_split={train}",
                    f"data.val_split={val}", f"methods=[{method}]", *TINY):
        args += ["--set", setting]
    with caplog.at_level(logging.WARNING, logger="wsss.data.coco"):
        assert main(args) == 0
    assert any("annotation 999" in record.getMessage() and "zero area" in record.getMessage()
               for record in caplog.records)
    return args


def _check_semantic(work: Path, method: str, folders: tuple[str, ...], coco: tuple[Path, Path]) -> None:
    """Pseudo masks of every training image and their score; DeepLab's predictions on val and theirs."""
    from wsss.data.coco import COCODataset
    from wsss.stores.masks import MaskStore

    train, val = coco
    for folder in folders:
        assert sorted(MaskStore(work / "pseudo" / folder).ids()) == sorted(COCODataset(train).ids)
    for what in ("pseudo", "final"):
        assert 0.0 <= read_json(work / "eval" / f"{method}_{what}.json")["results"][0]["miou"] <= 100.0
    final = read_json(work / "eval" / f"{method}_final.json")
    assert final["dataset"]["num_images"] == 3 and final["dataset"]["classes"] == COCODataset(val).classes
    assert len(list((work / "predictions" / method).glob("*.png"))) == 3


def test_the_zero_height_annotation_is_left_out_of_the_boxes(coco):
    train, _ = coco
    document = json.loads(train.read_text())
    assert sum(_boxes(train).values()) == len(document["annotations"]) - 1


def test_bana_runs_end_to_end_on_a_coco_dataset(coco, tmp_path, caplog):
    args = _run(coco, tmp_path / "work", "bana", caplog)
    _check_semantic(tmp_path / "work", "bana", ("bana", "bana_ret"), coco)
    assert read_json(tmp_path / "work" / "pseudo" / "bana_labels.json")["images"] == 6
    assert main(args) == 0  # a rerun finds every stage done


def test_bbam_runs_end_to_end_on_a_coco_dataset_with_instance_ap(coco, tmp_path, caplog):
    from wsss.data.coco import COCODataset
    from wsss.stores.instances import InstanceStore

    work = tmp_path / "work"
    args = _run(coco, work, "bbam", caplog)
    _check_semantic(work, "bbam", ("bbam",), coco)
    # one pseudo instance per box, a Mask R-CNN on them, its mask AP on the 3 validation images
    train, val = coco
    instances = InstanceStore(work / "pseudo" / "bbam_instances.json").load()
    assert {image_id: len(instances[image_id]) for image_id in instances} == _boxes(train)
    report = read_json(work / "eval" / "bbam_instance.json")
    assert set(report) >= {"AP25", "AP50", "AP70", "AP75", "mAP"} and report["images"] == 3
    validation = COCODataset(val)
    assert report["instances"] == sum(len(validation.ground_truth_instances(i)) for i in validation.ids) > 0
    assert main(args) == 0  # a rerun finds every stage done
