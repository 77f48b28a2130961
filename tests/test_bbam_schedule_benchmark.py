"""The BBAM schedule benchmark's pieces (``benchmarks/bbam_schedule.py``): the per-schedule cache
and the two ways of scoring the pseudo masks' 255 band."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers import load_benchmark
from test_bbam import LOOSE, _image, tiny_detector


@pytest.fixture(scope="module")
def schedule():
    yield from load_benchmark("bbam_schedule")


def test_a_cached_result_is_read_back_instead_of_recomputed(schedule, tmp_path: Path, monkeypatch):
    detector, image, boxes, classes = tiny_detector(0), _image(), np.array([[6, 8, 26, 30]], np.float32), [1]
    config = schedule.BbamConfig(steps=3, **LOOSE)
    path = schedule.cache_file(tmp_path, "det.pt", "steps=3", "img1")
    assert path != schedule.cache_file(tmp_path, "det.pt", "steps=4", "img1")
    assert path != schedule.cache_file(tmp_path, "other.pt", "steps=3", "img1")
    first, seconds = schedule.explain(detector, image, boxes, classes, "steps=3", config, path)
    assert path.exists() and seconds > 0 and first.kept[0] > 0 and float(first.masks.max()) > 0

    def fail(*args, **kwargs):
        raise AssertionError("recomputed despite the cache")

    monkeypatch.setattr(schedule, "compute_bbam", fail)
    again, seconds_again = schedule.explain(detector, image, boxes, classes, "steps=3", config, path)
    assert seconds_again == seconds
    for field in ("masks", "boxes", "classes", "kept", "strides", "cells"):
        np.testing.assert_array_equal(getattr(again, field), getattr(first, field))
    with pytest.raises(AssertionError, match="recomputed"):  # another image is not in the cache
        schedule.explain(detector, image, boxes, classes, "steps=3", config,
                         schedule.cache_file(tmp_path, "det.pt", "steps=3", "img2"))


def test_the_band_is_left_out_or_scored_as_background(schedule):
    truth = np.array([[1, 1, 1, 0],
                      [1, 1, 0, 0]])
    pseudo = np.array([[1, 1, 255, 0],
                       [1, 255, 0, 0]])
    left_out = schedule.confusion_of(np.where(pseudo == 255, 255, truth), pseudo, 2)
    assert left_out.sum() == 6 and schedule.miou(left_out) == 100.0
    as_background = schedule.confusion_of(truth, np.where(pseudo == 255, 0, pseudo), 2)
    # class 1: 3 right of 5; background: 3 right of 5 predicted
    assert as_background.sum() == 8 and schedule.miou(as_background) == pytest.approx(60.0)
