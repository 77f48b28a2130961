"""Instance mask AP with pycocotools at BBAM's IoU thresholds and COCO's mAP."""

from __future__ import annotations

import json

import numpy as np
import pytest

from wsss.errors import DataError
from wsss.evaluation.instances import coco_results, instance_ap, write_coco_results
from wsss.models.mask_rcnn import Detections
from wsss.stores.instances import ImageInstances, InstanceStore, decode_rle

SIZE = 40


def _square(y0, x0, side):
    mask = np.zeros((SIZE, SIZE), bool)
    mask[y0:y0 + side, x0:x0 + side] = True
    return mask


def _gt(*objects, ignore=None, image_id="a"):
    masks = np.stack([m for _, m in objects]) if objects else np.zeros((0, SIZE, SIZE), bool)
    boxes = []
    for _, m in objects:
        ys, xs = np.nonzero(m)
        boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
    return ImageInstances(image_id, np.array(boxes, np.float32).reshape(-1, 4), np.array([c for c, _ in objects]),
                          masks, ignore=ignore)


def _detections(*found):
    """(class, score, mask) triples."""
    masks = np.stack([m for _, _, m in found]) if found else np.zeros((0, SIZE, SIZE), bool)
    boxes = np.array([[0, 0, 1, 1]] * len(found), np.float32).reshape(-1, 4)
    return Detections(boxes, np.array([c for c, _, _ in found], np.int64), np.array([s for _, s, _ in found],
                                                                                     np.float32), masks)


def test_a_mask_of_iou_064_counts_at_025_and_05_but_not_at_07():
    truth = _square(10, 10, 10)  # 100 px
    found = _square(11, 11, 8)  # 64 px inside it: IoU 0.64
    assert (truth & found).sum() / (truth | found).sum() == pytest.approx(0.64)
    report = instance_ap({"a": _gt((1, truth))}, {"a": _detections((1, 0.9, found))}, num_classes=3)
    assert report.ap == pytest.approx({0.25: 1.0, 0.5: 1.0, 0.7: 0.0, 0.75: 0.0})
    assert report.coco_map == pytest.approx(0.3)  # passes at 0.5, 0.55 and 0.6 of the ten
    assert report.per_class[0.5] == pytest.approx({1: 1.0})  # class 2 has no ground truth: left out
    assert report.to_dict(["bg", "x", "y"])["AP25"] == 100.0 and report.to_dict()["mAP"] == 30.0


def test_wrong_classes_misses_and_false_positives_lower_ap():
    truth = {"a": _gt((1, _square(2, 2, 10)), (2, _square(20, 20, 12))), "b": _gt((1, _square(5, 25, 9)), image_id="b")}
    perfect = {"a": _detections((1, 0.9, _square(2, 2, 10)), (2, 0.8, _square(20, 20, 12))),
               "b": _detections((1, 0.7, _square(5, 25, 9)))}
    assert instance_ap(truth, perfect, num_classes=3).ap[0.75] == pytest.approx(1.0)
    wrong_class = {"a": _detections((2, 0.9, _square(2, 2, 10)), (2, 0.8, _square(20, 20, 12))),
                   "b": _detections((1, 0.7, _square(5, 25, 9)))}
    report = instance_ap(truth, wrong_class, num_classes=3)
    assert report.per_class[0.5][1] == pytest.approx(51 / 101)  # half of class 1 found: recall 0..0.5 of 101 points
    assert report.per_class[0.5][2] < 0.99  # a false positive of class 2 outranks its true one
    assert instance_ap(truth, {}, num_classes=3).ap[0.5] == 0.0  # nothing predicted


def test_detections_on_a_crowd_region_are_not_false_positives():
    crowd = _square(25, 25, 10)
    truth = {"a": _gt((1, _square(2, 2, 10)), ignore=crowd)}
    found = {"a": _detections((1, 0.95, _square(26, 26, 8)), (1, 0.9, _square(2, 2, 10)))}
    assert instance_ap(truth, found, num_classes=2).ap[0.5] == pytest.approx(1.0)
    plain = {"a": _gt((1, _square(2, 2, 10)))}
    assert instance_ap(plain, found, num_classes=2).ap[0.5] < 0.99


def test_results_json_decodes_to_the_predicted_masks(tmp_path):
    truth = {"a": _gt((1, _square(2, 2, 10))), "b": _gt((1, _square(5, 5, 5)), image_id="b")}
    InstanceStore(tmp_path / "gt.json").save(truth.values(), ["bg", "x"])
    ids = InstanceStore(tmp_path / "gt.json").load().ids
    mask = _square(3, 4, 6)
    results = coco_results({"b": _detections((1, 0.5, mask))}, ids)
    write_coco_results(tmp_path / "results.json", results)
    (entry,) = json.loads((tmp_path / "results.json").read_text())
    assert entry["image_id"] == 2 and entry["category_id"] == 1 and entry["score"] == 0.5
    np.testing.assert_array_equal(decode_rle({"size": entry["segmentation"]["size"],
                                              "counts": entry["segmentation"]["counts"].encode()}), mask)
    with pytest.raises(DataError, match="no ground truth"):
        coco_results({"c": _detections()}, ids)
    with pytest.raises(DataError, match="image is"):
        instance_ap(truth, {"a": Detections(np.zeros((1, 4), np.float32), np.array([1]), np.array([0.5], np.float32),
                                            np.zeros((1, 8, 8), bool))}, num_classes=2)
