"""Instance segmentation scores: mask AP with pycocotools at BBAM's IoU thresholds and COCO's mAP.

BBAM reports mask AP on VOC val at IoU 0.25, 0.5, 0.7 and 0.75 (AP25 76.8, AP50 63.7, AP70 39.5,
AP75 31.8 for its Mask R-CNN) and COCO's mask AP (the mean over IoU 0.5:0.05:0.95) on COCO.
pycocotools evaluates at fixed thresholds (``params.iouThrs``, 0.5 ... 0.95 by default), so one
:class:`~pycocotools.cocoeval.COCOeval` runs here with 0.25 added to COCO's ten; AP at a
threshold is the mean of ``eval["precision"][t, :, k, area all, 100 detections]`` over the
classes that have ground truth (as ``COCOeval.summarize``), and the mAP the same mean over COCO's
ten thresholds.

Ground truth is given as :class:`wsss.stores.instances.ImageInstances` per image (an
:class:`~wsss.stores.instances.InstanceSet` read from a COCO file): its instances are the
ground truth, and the image's ``ignore`` region (the crowd regions of a COCO file) is a crowd
annotation, which detections may match without counting as false positives. Per-instance ignore
regions belong to pseudo labels and play no part here. Predictions are per image ``boxes``,
``classes``, ``scores`` and bool ``masks`` (:class:`wsss.models.mask_rcnn.Detections`).

Example:
    >>> gt = InstanceStore("val_instances.json").load(classes)
    >>> report = instance_ap(gt, {i: d for i, d in zip(ids, predict_instances(model, images))})
    >>> report.ap[0.5], report.coco_map
    >>> write_coco_results("work/eval/bbam_results.json", coco_results(predictions, gt.ids))
"""

from __future__ import annotations

import contextlib
import io
import os
from dataclasses import dataclass, field
from typing import Any, Mapping, Protocol, Sequence

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from wsss.errors import DataError
from wsss.io import write_json
from wsss.stores.instances import ImageInstances, encode_mask

__all__ = [
    "BBAM_IOU_THRESHOLDS",
    "COCO_IOU_THRESHOLDS",
    "InstanceReport",
    "coco_results",
    "evaluate_instance_model",
    "instance_ap",
    "write_coco_results",
]

BBAM_IOU_THRESHOLDS = (0.25, 0.5, 0.7, 0.75)  # BBAM Table 3 (VOC instance segmentation): AP25, AP50, AP70, AP75
COCO_IOU_THRESHOLDS = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))  # pycocotools Params.iouThrs


class Predicted(Protocol):
    """One image's predictions (:class:`wsss.models.mask_rcnn.Detections`)."""

    boxes: np.ndarray
    classes: np.ndarray
    scores: np.ndarray
    masks: np.ndarray


@dataclass
class InstanceReport:
    """Mask AP of a set of predictions.

    Attributes:
        ap: IoU threshold -> mask AP in [0, 1] (mean over the classes with ground truth; NaN when
            no class has any).
        coco_map: the mean over IoU 0.5:0.05:0.95 (COCO's mask AP).
        per_class: IoU threshold -> {class id: AP} for the classes with ground truth.
        images, instances, detections: what was evaluated.
    """

    ap: dict[float, float]
    coco_map: float
    per_class: dict[float, dict[int, float]] = field(default_factory=dict)
    images: int = 0
    instances: int = 0
    detections: int = 0

    def to_dict(self, classes: Sequence[str] | None = None) -> dict[str, Any]:
        """Plain JSON: ``AP25``-style keys in percent, the mAP, per-class APs (by name when
        ``classes`` are given), counts."""
        def name(c: int) -> str:
            return classes[c] if classes is not None else str(c)
        return {
            **{f"AP{round(t * 100)}": _percent(v) for t, v in self.ap.items()},
            "mAP": _percent(self.coco_map),
            "per_class": {f"AP{round(t * 100)}": {name(c): _percent(v) for c, v in row.items()}
                          for t, row in self.per_class.items()},
            "images": self.images, "instances": self.instances, "detections": self.detections,
        }


def _percent(value: float) -> float | None:
    return None if not np.isfinite(value) else round(100.0 * float(value), 2)


def _ground_truth_document(ground_truth: Mapping[str, ImageInstances], ids: Sequence[str], num_classes: int
                           ) -> dict[str, Any]:
    document: dict[str, Any] = {"images": [], "annotations": [],
                                "categories": [{"id": c} for c in range(1, num_classes)]}

    def annotate(number: int, mask: np.ndarray, category: int, crowd: int, box: Sequence[float] | None) -> None:
        rle = encode_mask(mask)
        if box is None:
            ys, xs = np.nonzero(mask)
            box = [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)] if len(xs) else [0] * 4
        x0, y0, x1, y1 = (float(v) for v in box)
        document["annotations"].append({
            "id": len(document["annotations"]) + 1, "image_id": number, "category_id": int(category),
            "segmentation": rle, "area": float(mask.sum()), "bbox": [x0, y0, x1 - x0, y1 - y0], "iscrowd": crowd,
        })

    for number, image_id in enumerate(ids, start=1):
        found = ground_truth[image_id]
        height, width = found.image_size
        document["images"].append({"id": number, "height": height, "width": width})
        for row in range(len(found)):
            cls = int(found.classes[row])
            if not 1 <= cls < num_classes:
                raise DataError(f"image {image_id!r}: ground-truth class {cls} outside 1..{num_classes - 1}")
            annotate(number, found.masks[row], cls, 0, found.boxes[row])
        if found.ignore is not None and found.ignore.any():
            for cls in range(1, num_classes):  # a crowd region of every class: no class is penalised there
                annotate(number, found.ignore, cls, 1, None)
    return document


def coco_results(predictions: Mapping[str, Predicted], ids: Sequence[str]) -> list[dict[str, Any]]:
    """Predictions as a COCO results list (``image_id`` = the image's position in ``ids`` from 1, as
    :meth:`wsss.stores.instances.InstanceStore.save` numbers images; RLE masks with ASCII counts).

    Raises:
        DataError: a prediction for an image not in ``ids``, or arrays of disagreeing lengths.
    """
    number_of = {image_id: number for number, image_id in enumerate(ids, start=1)}
    results = []
    for image_id, found in predictions.items():
        if image_id not in number_of:
            raise DataError(f"a prediction for image {image_id!r}, which has no ground truth")
        count = len(found.scores)
        if not (len(found.boxes) == len(found.classes) == len(found.masks) == count):
            raise DataError(f"image {image_id!r}: {len(found.boxes)} boxes, {len(found.classes)} classes, "
                            f"{len(found.masks)} masks and {count} scores")
        for row in range(count):
            x0, y0, x1, y1 = (float(v) for v in found.boxes[row])
            results.append({
                "image_id": number_of[image_id], "category_id": int(found.classes[row]),
                "segmentation": encode_mask(found.masks[row]), "score": float(found.scores[row]),
                "bbox": [x0, y0, x1 - x0, y1 - y0],
            })
    return results


def write_coco_results(path: str | os.PathLike, results: list[dict[str, Any]]) -> None:
    """Write a COCO results list (:func:`coco_results`) as JSON, atomically."""
    write_json(path, results)


def instance_ap(
    ground_truth: Mapping[str, ImageInstances],
    predictions: Mapping[str, Predicted],
    *,
    num_classes: int | None = None,
    ids: Sequence[str] | None = None,
    thresholds: Sequence[float] = BBAM_IOU_THRESHOLDS,
) -> InstanceReport:
    """Mask AP of ``predictions`` against ``ground_truth`` at ``thresholds`` and COCO's mAP.

    Args:
        ground_truth: image id -> instances (an :class:`~wsss.stores.instances.InstanceSet`).
        predictions: image id -> predictions; an image without an entry has no detections.
        num_classes: K + 1 (default: ``ground_truth.num_classes``).
        ids: the images evaluated (default: every image of ``ground_truth``).
        thresholds: the IoU thresholds reported (default BBAM's 0.25, 0.5, 0.7, 0.75).

    Raises:
        DataError: a prediction for an unknown image, a mask of another size than its image.
    """
    ids = list(ground_truth if ids is None else ids)
    num_classes = int(num_classes if num_classes is not None else getattr(ground_truth, "num_classes"))
    chosen = {image_id: predictions[image_id] for image_id in ids if image_id in predictions}
    unknown = sorted(set(predictions) - set(ids))
    if unknown:
        raise DataError(f"predictions for {len(unknown)} images without ground truth, e.g. {unknown[0]!r}")
    for image_id, found in chosen.items():
        size = ground_truth[image_id].image_size
        if len(found.masks) and tuple(found.masks.shape[1:]) != size:
            raise DataError(f"image {image_id!r}: predicted masks are {found.masks.shape[2]}x{found.masks.shape[1]} "
                            f"but the image is {size[1]}x{size[0]}")
    document = _ground_truth_document(ground_truth, ids, num_classes)
    results = coco_results(chosen, ids)
    instances = sum(1 for a in document["annotations"] if not a["iscrowd"])
    every = sorted(set(float(t) for t in thresholds) | set(COCO_IOU_THRESHOLDS))
    classes_with_gt = sorted({a["category_id"] for a in document["annotations"] if not a["iscrowd"]})
    report = InstanceReport(ap={}, coco_map=float("nan"), images=len(ids), instances=instances,
                            detections=len(results))
    if not results:  # pycocotools cannot load an empty result list: nothing found, AP 0
        value = 0.0 if classes_with_gt else float("nan")
        report.ap = {float(t): value for t in thresholds}
        report.coco_map = value
        report.per_class = {float(t): {c: 0.0 for c in classes_with_gt} for t in thresholds}
        return report
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        coco = COCO()
        coco.dataset = document
        coco.createIndex()
        detections = coco.loadRes(results)
        evaluator = COCOeval(coco, detections, "segm")
        evaluator.params.imgIds = list(range(1, len(ids) + 1))
        evaluator.params.iouThrs = np.array(every)
        evaluator.evaluate()
        evaluator.accumulate()
    precision = evaluator.eval["precision"][:, :, :, 0, -1]  # (T, recall, K): area "all", 100 detections
    categories = list(evaluator.params.catIds)

    def mean_over(rows: np.ndarray) -> float:
        valid = rows[rows > -1]
        return float(valid.mean()) if valid.size else float("nan")

    index = {t: int(np.argmin(np.abs(np.array(every) - t))) for t in every}
    for t in thresholds:
        t = float(t)
        report.ap[t] = mean_over(precision[index[t]])
        report.per_class[t] = {int(c): mean_over(precision[index[t], :, k]) for k, c in enumerate(categories)
                               if int(c) in classes_with_gt}
    report.coco_map = mean_over(precision[[index[t] for t in COCO_IOU_THRESHOLDS]])
    return report


def evaluate_instance_model(model: Any, dataset: Any, *, ids: Sequence[str] | None = None,
                            device: Any = "cpu", batch_size: int = 4,
                            thresholds: Sequence[float] = BBAM_IOU_THRESHOLDS,
                            progress: bool = False) -> InstanceReport:
    """Mask AP of an instance model (a Mask R-CNN in eval mode) on a dataset's ground-truth
    instances (:meth:`wsss.data.base.ImageDataset.ground_truth_instances`).

    Args:
        model: a torchvision Mask R-CNN (:func:`wsss.training.mask_rcnn.load_mask_rcnn`), in eval mode.
        dataset: ``ids``, ``num_classes``, ``load_image`` and ``ground_truth_instances``.
        ids: the images (default: all of the dataset's).
        device: where the model runs.
        batch_size: images per forward pass.
        thresholds: the IoU thresholds reported.
        progress: a progress bar.

    Raises:
        DataError: an image without ground-truth instances (naming it).
    """
    from tqdm import tqdm

    from wsss.models.mask_rcnn import predict_instances

    ids = list(dataset.ids if ids is None else ids)
    ground_truth, predictions = {}, {}
    for start in tqdm(range(0, len(ids), batch_size), desc="instances", disable=None if progress else True):
        chunk = ids[start:start + batch_size]
        found = predict_instances(model, [dataset.load_image(i) for i in chunk], device=device,
                                  batch_size=batch_size)
        for image_id, detections in zip(chunk, found):
            ground_truth[image_id] = dataset.ground_truth_instances(image_id)
            predictions[image_id] = detections
    return instance_ap(ground_truth, predictions, num_classes=dataset.num_classes, ids=ids, thresholds=thresholds)
