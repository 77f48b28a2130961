"""The precision of BANA's u_c against ground truth (wsss.evaluation.bana, the supplement's Table 2)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from wsss.errors import DataError
from wsss.evaluation.bana import (
    UcPrecision,
    box_precision,
    format_precision_table,
    u_c_precision,
    u_c_precision_counts,
)


def test_u_c_precision_counts_soft_and_thresholded():
    u_c = np.zeros((2, 4, 4))
    u_c[0, :2, :2] = 1.0  # class 1: 4 px, 3 on its ground truth
    u_c[0, 3, 3] = 0.5
    u_c[1, 2:, :] = 0.25  # class 2: 8 px, all on class 2 except one ignored pixel
    gt = np.zeros((4, 4), np.uint8)
    gt[:2, :2] = 1
    gt[0, 0] = 0
    gt[2:, :] = 2
    gt[3, 3] = 255
    tp, fp = u_c_precision_counts(u_c, np.array([1, 2]), gt, 3)
    assert tp[1] == 3 and fp[1] == 1.0  # (0, 0) is background; (3, 3) is ignored
    assert tp[2] == pytest.approx(7 * 0.25) and fp[2] == 0
    tp_t, fp_t = u_c_precision_counts(u_c, np.array([1, 2]), gt, 3, threshold=0.4)
    assert tp_t[1] == 3 and fp_t[1] == 1 and tp_t[2] == 0 and fp_t[2] == 0
    with pytest.raises(ValueError, match="ground truth"):
        u_c_precision_counts(u_c, np.array([1, 2]), gt[:3], 3)


class _FixedFeatures(nn.Module):
    """A stand-in for a BapNet: the same features whatever the image, a given classifier."""

    def __init__(self, features: torch.Tensor, weight: torch.Tensor) -> None:
        super().__init__()
        self._features, self._weight = features, weight

    @property
    def num_classes(self) -> int:
        return self._weight.shape[0]

    @property
    def weight(self) -> torch.Tensor:
        return self._weight

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self._features[None]


class _Images:
    """Images, boxes and masks held in memory."""

    classes = ["background", "a", "b"]

    def __init__(self, items: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]) -> None:
        self.items, self.ids = items, list(items)

    def load_image(self, image_id: str) -> np.ndarray:
        return np.zeros((*self.items[image_id][2].shape, 3), np.uint8)

    def boxes(self, image_id: str) -> tuple[np.ndarray, np.ndarray]:
        return self.items[image_id][0], self.items[image_id][1]

    def load_mask(self, image_id: str) -> np.ndarray:
        return self.items[image_id][2]


def _case():
    # 8 x 8, one box of class 1 over rows 0-3 (all columns). w_1 . f is 1 on columns 0-3, 0.5 on
    # columns 4-5, 0 on 6-7 and below the box; the object (ground truth) is rows 0-3, columns 0-4.
    features = torch.zeros(2, 8, 8)
    features[0, :4, :4] = 1.0
    features[0, :4, 4:6] = 0.5
    features[0, 4:, :] = 3.0  # strong, but outside every box of class 1: u_c is 0 there
    weight = torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    gt = np.zeros((8, 8), np.uint8)
    gt[:4, :5] = 1
    gt[7, 7] = 255
    boxes = np.array([[0, 0, 8, 4]], np.float32)
    return _FixedFeatures(features, weight), _Images({"x": (boxes, np.array([1]), gt)})


def test_u_c_precision_of_a_network_on_a_hand_made_image():
    model, dataset = _case()
    soft, high, low = u_c_precision(model, dataset, thresholds=(None, 0.6, 0.4), name="bap")
    # soft: TP = 16 x 1 + 4 x 0.5 (column 4), FP = 4 x 0.5 (column 5); columns 6-7 have u_c 0
    assert soft.tp[1] == pytest.approx(18.0) and soft.fp[1] == pytest.approx(2.0)
    assert soft.precision[1] == pytest.approx(0.9)
    assert high.tp[1] == 16 and high.fp[1] == 0 and high.precision[1] == 1.0  # u_c > 0.6: columns 0-3
    assert low.tp[1] == 20 and low.fp[1] == 4  # u_c > 0.4: columns 0-5
    assert math.isnan(soft.precision[2]) and math.isnan(soft.precision[0])  # class b has no box
    assert soft.mean_precision == pytest.approx(0.9)
    assert soft.images == 1 and soft.reading == "soft" and high.reading == "u_c > 0.6"
    floor = box_precision(dataset)
    assert floor.tp[1] == 20 and floor.fp[1] == 12  # the box's 32 pixels, 20 of them the object
    assert floor.precision[1] == pytest.approx(0.625)


def test_precision_table_rows_and_errors():
    model, dataset = _case()
    rows = [*u_c_precision(model, dataset, name="bap"), box_precision(dataset)]
    text = format_precision_table(rows, title="Table 2")
    lines = text.splitlines()
    assert lines[0] == "Table 2"
    assert lines[1].split() == ["a", "b", "mean"]
    assert lines[2].split() == ["bap", "(soft)", "90.0", "-", "90.0"]
    assert lines[3].split() == ["box", "(soft)", "62.5", "-", "62.5"]
    assert rows[0].to_dict()["precision"] == [None, pytest.approx(0.9), None]
    wrong = _FixedFeatures(torch.zeros(2, 8, 8), torch.zeros(4, 2))
    with pytest.raises(DataError, match="4 classes"):
        u_c_precision(wrong, dataset)
    bad = _Images({"y": (np.array([[0, 0, 9, 4]], np.float32), np.array([1]), np.zeros((8, 8), np.uint8))})
    with pytest.raises(DataError, match="outside"):
        u_c_precision(model, bad)


def test_precision_is_nan_where_nothing_was_activated():
    row = UcPrecision("x", ["background", "a", "b"], np.array([0.0, 2.0, 0.0]), np.array([0.0, 2.0, 0.0]))
    assert row.precision[1] == 0.5 and math.isnan(row.precision[2]) and row.mean_precision == 0.5
    empty = UcPrecision("x", ["background", "a"], np.zeros(2), np.zeros(2))
    assert math.isnan(empty.mean_precision) and empty.to_dict()["mean_precision"] is None
