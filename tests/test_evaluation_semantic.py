"""The metric core: confusion, IoU, precision/recall, FP/FN, against hand counts and a pixel loop."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
from PIL import Image

from wsss.errors import DataError
from wsss.evaluation.semantic import (
    ConfusionAccumulator,
    SegmentationScores,
    confusion_matrix,
    evaluate_labels,
    iou_per_class,
    mean_iou,
)
from wsss.evaluation.tables import format_details, format_table, table_rows, write_table_csv
from wsss.io import write_label_png

CLASSES3 = ("background", "cat", "dog")


class FakeDataset:
    """The slice of the VOCDataset API evaluation uses; masks held in memory."""

    def __init__(self, masks: dict[str, np.ndarray], classes: tuple[str, ...]) -> None:
        self.masks = masks
        self.ids = list(masks)
        self.classes = list(classes)
        self.num_classes = len(classes)

    def load_mask(self, image_id: str) -> np.ndarray:
        return self.masks[image_id]


def loop_metrics(pairs, num_classes, unlabelled="background"):
    """Independent reference: count pixel by pixel in plain Python, then apply the definitions."""
    counts = [[0] * num_classes for _ in range(num_classes)]
    valid = unlabelled_count = 0
    for gt, pred in pairs:
        for g, p in zip(gt.ravel().tolist(), pred.ravel().tolist()):
            if g == 255:
                continue
            valid += 1
            if p == 255:
                unlabelled_count += 1
                if unlabelled == "exclude":
                    continue
                p = 0
            counts[g][p] += 1
    ious, precisions, recalls, fps, fns = [], [], [], [], []
    for c in range(num_classes):
        tp = counts[c][c]
        gt_c = sum(counts[c])
        pred_c = sum(counts[r][c] for r in range(num_classes))
        union = gt_c + pred_c - tp
        ious.append(tp / union if union else math.nan)
        precisions.append(tp / pred_c if pred_c else math.nan)
        recalls.append(tp / gt_c if gt_c else math.nan)
        fps.append((pred_c - tp) / union if union else math.nan)
        fns.append((gt_c - tp) / union if union else math.nan)
    present = [v for v in ious if not math.isnan(v)]
    miou = sum(present) / len(present)
    total = sum(map(sum, counts))
    accuracy = sum(counts[c][c] for c in range(num_classes)) / total
    return dict(
        confusion=np.array(counts), iou=ious, precision=precisions, recall=recalls, fp=fps, fn=fns,
        miou=miou, accuracy=accuracy, valid=valid, unlabelled=unlabelled_count,
    )


def random_pairs(rng, num_classes, count=4):
    pairs = []
    for _ in range(count):
        shape = tuple(rng.integers(5, 13, size=2))
        gt = rng.integers(0, num_classes, shape).astype(np.uint8)
        gt[rng.random(shape) < 0.15] = 255
        pred = rng.integers(0, num_classes, shape).astype(np.uint8)
        pred[rng.random(shape) < 0.1] = 255
        pairs.append((gt, pred))
    return pairs


@pytest.mark.parametrize("unlabelled", ["background", "exclude"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_accumulator_matches_a_pixel_loop(seed, unlabelled):
    rng = np.random.default_rng(seed)
    num_classes = 6
    pairs = random_pairs(rng, num_classes)
    accumulator = ConfusionAccumulator(num_classes, unlabelled=unlabelled)
    for gt, pred in pairs:
        accumulator.update(gt, pred)
    scores = accumulator.scores([f"c{i}" for i in range(num_classes)], "random")
    expected = loop_metrics(pairs, num_classes, unlabelled)

    np.testing.assert_array_equal(scores.confusion, expected["confusion"])
    for name in ("iou", "precision", "recall", "fp", "fn"):
        np.testing.assert_allclose(getattr(scores, name), expected[name], rtol=0, atol=1e-9, equal_nan=True)
    assert abs(scores.miou - expected["miou"]) < 1e-9
    assert abs(scores.pixel_accuracy - expected["accuracy"]) < 1e-9
    assert scores.num_pixels == expected["valid"]
    assert scores.num_unlabelled == expected["unlabelled"] > 0
    assert scores.num_images == len(pairs)
    assert abs(scores.coverage - (1 - expected["unlabelled"] / expected["valid"])) < 1e-12


def test_ground_truth_against_itself_is_exactly_100():
    rng = np.random.default_rng(3)
    accumulator = ConfusionAccumulator(5)
    for gt, _ in random_pairs(rng, 5):
        accumulator.update(gt, gt.copy())
    scores = accumulator.scores(["bg", "a", "b", "c", "d"], "self")
    assert scores.miou == 1.0
    assert 100 * scores.miou == 100.0
    assert np.all(scores.iou == 1.0)
    assert scores.pixel_accuracy == 1.0
    assert np.all(scores.fp == 0) and np.all(scores.fn == 0)


def test_iou_fp_fn_sum_to_one():
    rng = np.random.default_rng(4)
    accumulator = ConfusionAccumulator(7)
    for gt, pred in random_pairs(rng, 7, count=3):
        accumulator.update(gt, pred)
    scores = accumulator.scores([str(i) for i in range(7)], "random")
    total = scores.iou + scores.fp + scores.fn
    np.testing.assert_allclose(total, 1.0, atol=1e-12)


# A 3x3 case counted by hand:
#   gt  0 0 1    pred 0 1 1    confusion (rows gt) [[2,1,0],[0,3,0],[1,0,1]]; (2,2) ignored
#       0 1 1         0 1 1    IoU: bg 2/4, cat 3/4, dog 1/2 -> mIoU 1.75/3
#       2 2 255       2 0 0
GT_3X3 = np.array([[0, 0, 1], [0, 1, 1], [2, 2, 255]], dtype=np.uint8)
PRED_3X3 = np.array([[0, 1, 1], [0, 1, 1], [2, 0, 0]], dtype=np.uint8)


def hand_scores(num_classes=3):
    accumulator = ConfusionAccumulator(num_classes)
    accumulator.update(GT_3X3, PRED_3X3)
    return accumulator.scores(("background", "cat", "dog", "cow")[:num_classes], "hand")


def test_hand_made_3x3():
    scores = hand_scores()
    np.testing.assert_array_equal(scores.confusion, [[2, 1, 0], [0, 3, 0], [1, 0, 1]])
    np.testing.assert_allclose(scores.iou, [0.5, 0.75, 0.5])
    assert scores.miou == pytest.approx(1.75 / 3, abs=1e-15)
    assert scores.pixel_accuracy == pytest.approx(6 / 8)
    np.testing.assert_allclose(scores.precision, [2 / 3, 3 / 4, 1.0])
    np.testing.assert_allclose(scores.recall, [2 / 3, 1.0, 1 / 2])
    np.testing.assert_allclose(scores.fp, [1 / 4, 1 / 4, 0.0])
    np.testing.assert_allclose(scores.fn, [1 / 4, 0.0, 1 / 2])
    np.testing.assert_array_equal(confusion_matrix(GT_3X3, PRED_3X3, 3), scores.confusion)


def test_absent_class_is_skipped_in_the_mean():
    scores = hand_scores(num_classes=4)  # class 3 in neither gt nor prediction
    assert math.isnan(scores.iou[3])
    assert scores.miou == pytest.approx(1.75 / 3, abs=1e-15)


def test_mean_iou_is_one_function_over_stacks():
    one = hand_scores().confusion
    stack = np.stack([one, np.diag([4, 4, 0])])
    np.testing.assert_allclose(mean_iou(stack), [1.75 / 3, 1.0])
    assert math.isnan(mean_iou(np.zeros((3, 3), dtype=np.int64)))
    np.testing.assert_allclose(iou_per_class(stack)[1], [1.0, 1.0, np.nan])


def test_unlabelled_prediction_background_or_excluded():
    gt = np.ones((3, 3), dtype=np.uint8)
    pred = np.ones((3, 3), dtype=np.uint8)
    pred[0, :] = 255
    as_background = ConfusionAccumulator(2)
    as_background.update(gt, pred)
    s = as_background.scores(("background", "cat"), "x")
    np.testing.assert_allclose(s.iou, [0.0, 6 / 9])
    assert s.miou == pytest.approx(1 / 3)
    assert s.coverage == pytest.approx(6 / 9)

    excluded = ConfusionAccumulator(2, unlabelled="exclude")
    excluded.update(gt, pred)
    s = excluded.scores(("background", "cat"), "x")
    assert math.isnan(s.iou[0]) and s.iou[1] == 1.0
    assert s.miou == 1.0
    assert s.coverage == pytest.approx(6 / 9)
    assert s.num_pixels == 9 and s.num_unlabelled == 3


# ---------------------------------------------------------------- bad input


def test_label_above_k_names_the_file():
    pred = PRED_3X3.copy()
    pred[0, 0] = 7
    with pytest.raises(DataError, match=r"pred/x\.png: prediction has label\(s\) \[7\]"):
        ConfusionAccumulator(3).update(GT_3X3, pred, pred_path="pred/x.png")


def test_size_mismatch_names_the_file():
    with pytest.raises(DataError, match=r"pred/x\.png: prediction is 4x3 \(WxH\) but the ground truth is 3x3"):
        ConfusionAccumulator(3).update(GT_3X3, np.zeros((3, 4), np.uint8), pred_path="pred/x.png")


def _write_folder(tmp_path, preds):
    folder = tmp_path / "pred"
    folder.mkdir()
    for image_id, labels in preds.items():
        write_label_png(folder / f"{image_id}.png", labels)
    return folder


def test_evaluate_labels_reads_png_folder(tmp_path):
    dataset = FakeDataset({"a": GT_3X3, "b": GT_3X3}, CLASSES3)
    folder = _write_folder(tmp_path, {"a": PRED_3X3, "b": GT_3X3, "extra": PRED_3X3})
    scores = evaluate_labels(dataset, folder, progress=False)
    np.testing.assert_array_equal(scores.confusion, [[5, 1, 0], [0, 6, 0], [1, 0, 3]])
    assert scores.num_images == 2
    assert "255 in a prediction counted as background" in scores.protocol
    only_b = evaluate_labels(dataset, folder, ids=["b"], progress=False)
    assert only_b.miou == 1.0


def test_missing_predictions_one_line(tmp_path):
    masks = {f"img{i:02d}": GT_3X3 for i in range(6)}
    folder = _write_folder(tmp_path, {"img00": PRED_3X3})
    with pytest.raises(DataError) as info:
        evaluate_labels(FakeDataset(masks, CLASSES3), folder, progress=False)
    message = str(info.value)
    assert "\n" not in message
    assert message == f"{folder}: 5 of 6 predictions missing (no .png for img01, img02, img03, ...)"


def test_empty_and_absent_folders(tmp_path):
    dataset = FakeDataset({"a": GT_3X3}, CLASSES3)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="empty"):
        evaluate_labels(dataset, tmp_path / "empty", progress=False)
    with pytest.raises(DataError, match="prediction folder not found"):
        evaluate_labels(dataset, tmp_path / "nowhere", progress=False)


def test_corrupt_png_names_the_file(tmp_path):
    folder = _write_folder(tmp_path, {"a": PRED_3X3})
    (folder / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    dataset = FakeDataset({"a": GT_3X3, "b": GT_3X3}, CLASSES3)
    with pytest.raises(DataError, match=r"b\.png: corrupt or unreadable image"):
        evaluate_labels(dataset, folder, progress=False)


def test_png_of_wrong_size_names_the_file(tmp_path):
    folder = _write_folder(tmp_path, {"a": np.zeros((4, 3), np.uint8)})
    with pytest.raises(DataError, match=r"a\.png: prediction is 3x4"):
        evaluate_labels(FakeDataset({"a": GT_3X3}, CLASSES3), folder, progress=False)


def test_png_with_label_above_k_names_the_file(tmp_path):
    folder = tmp_path / "pred"
    folder.mkdir()
    Image.fromarray(np.full((3, 3), 9, np.uint8), mode="L").save(folder / "a.png")
    with pytest.raises(DataError, match=r"a\.png: prediction has label\(s\) \[9\] outside 0\.\.2"):
        evaluate_labels(FakeDataset({"a": GT_3X3}, CLASSES3), folder, progress=False)


# ---------------------------------------------------------------- tables


def test_table_layout_background_first_miou_last():
    scores = hand_scores()
    scores.name = "labels"
    text = format_table(scores, title="hand-made")
    lines = text.splitlines()
    assert lines[0] == "hand-made"
    header = lines[1].split()
    assert header == ["background", "cat", "dog", "mIoU"]
    row = lines[2].split()
    assert row == ["labels", "50.0", "75.0", "50.0", "58.3"]
    assert "labels: hand" in lines  # every row carries its protocol


def test_table_several_rows_and_absent_class():
    a = hand_scores(4)
    a.name = "fixed t=0.15"
    b = SegmentationScores(np.diag([1, 1, 1, 1]), a.classes, protocol="oracle: best t", name="oracle")
    lines = format_table([a, b]).splitlines()
    assert lines[0].split() == ["background", "cat", "dog", "cow", "mIoU"]
    assert lines[1].split() == ["fixed", "t=0.15", "50.0", "75.0", "50.0", "-", "58.3"]
    assert lines[2].split() == ["oracle", "100.0", "100.0", "100.0", "100.0", "100.0"]


def test_details_and_csv(tmp_path):
    scores = hand_scores()
    details = format_details(scores).splitlines()
    assert details[2].split() == ["background", "50.0", "66.7", "66.7", "25.0", "25.0"]
    assert details[5].split()[0] == "mean"
    rows = table_rows(scores)
    assert rows[0] == ["protocol", "threshold", "threshold_uses_ground_truth", "metric", *CLASSES3, "mean"]
    assert rows[1][:4] == ["hand", "", False, "iou"]
    assert rows[1][4:] == [50.0, 75.0, 50.0, pytest.approx(58.333333)]
    write_table_csv(tmp_path / "t.csv", scores)
    with open(tmp_path / "t.csv", newline="") as handle:
        read = list(csv.reader(handle))
    assert len(read) == 1 + 5 and read[1][3] == "iou" and float(read[1][5]) == 75.0


def test_to_dict_percent_and_protocol():
    record = hand_scores().to_dict()
    assert record["protocol"] == "hand"
    assert record["miou"] == pytest.approx(100 * 1.75 / 3)
    assert record["per_class"]["cat"] == pytest.approx(
        {"iou": 75.0, "precision": 75.0, "recall": 100.0, "fp": 25.0, "fn": 0.0}
    )
    assert record["confusion"] == [[2, 1, 0], [0, 3, 0], [1, 0, 1]]
