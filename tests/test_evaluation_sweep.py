"""Maps -> labels, the one-pass sweep against a brute-force loop, the label-free threshold."""

from __future__ import annotations

import math

import numpy as np
import pytest

from wsss.errors import ConfigError, DataError
from wsss.evaluation.semantic import ConfusionAccumulator, mean_iou
from wsss.evaluation.sweep import (
    SweepAccumulator,
    evaluate_maps,
    foreground_max,
    maps_to_labels,
    parse_thresholds,
)
from wsss.refine.thresholds import EdgeAlignment, histogram_edges, li_threshold, otsu_threshold, score_histogram
from wsss.stores.maps import LocalizationMaps, MapStore
from wsss.viz.plots import plot_sweep

CLASSES = ("background", "a", "b", "c", "d")


class FakeDataset:
    def __init__(self, masks, classes=CLASSES):
        self.masks = masks
        self.ids = list(masks)
        self.classes = list(classes)
        self.num_classes = len(classes)

    def load_mask(self, image_id):
        return self.masks[image_id]

    def load_image(self, image_id):
        """An RGB image whose colour follows the mask (so it has edges where the mask changes)."""
        mask = self.masks[image_id].astype(np.int64)
        return np.stack([(mask * 37) % 256, (mask * 91) % 256, (mask * 53) % 256], axis=-1).astype(np.uint8)


def padded_argmax_labels(maps: LocalizationMaps, threshold: float) -> np.ndarray:
    """IRN's formulation, written out: pad a bg channel with t, argmax, map through [0, *keys]."""
    scores = maps.high_res.astype(np.float64)
    padded = np.concatenate([np.full((1, *scores.shape[1:]), threshold), scores], axis=0)
    lookup = np.concatenate([[0], maps.keys])
    return lookup[np.argmax(padded, axis=0)].astype(np.uint8)


def random_maps(rng, shape, num_fg, quantum=0.05):
    """Maps on a coarse grid of values so that ties (between classes, with t) really happen."""
    count = int(rng.integers(0, 3))
    keys = np.sort(rng.choice(np.arange(1, num_fg + 1), size=count, replace=False))
    values = np.round(rng.random((count, *shape)) / quantum) * quantum
    return LocalizationMaps(keys=keys, strided=None, high_res=values.astype(np.float16).astype(np.float32))


def random_dataset(rng, count=5):
    masks, maps = {}, {}
    for index in range(count):
        shape = tuple(int(v) for v in rng.integers(6, 14, size=2))
        gt = rng.integers(0, len(CLASSES), shape).astype(np.uint8)
        gt[rng.random(shape) < 0.1] = 255
        masks[f"im{index}"] = gt
        maps[f"im{index}"] = random_maps(rng, shape, len(CLASSES) - 1)
    maps["im0"] = random_maps(rng, masks["im0"].shape, 4)
    while maps["im0"].keys.size == 0:  # at least one image with classes
        maps["im0"] = random_maps(rng, masks["im0"].shape, 4)
    return masks, maps


# ---------------------------------------------------------------- maps -> labels


def test_maps_to_labels_hand_made():
    high_res = np.array(
        [
            [[0.9, 0.2, 0.15], [0.5, 0.0, 0.3]],  # class 3
            [[0.1, 0.6, 0.15], [0.5, 0.0, 0.2]],  # class 7
        ],
        dtype=np.float32,
    )
    maps = LocalizationMaps(keys=[3, 7], strided=None, high_res=high_res)
    labels = maps_to_labels(maps, 0.25)
    assert labels.dtype == np.uint8
    # (0,2): best 0.15 <= t -> bg; (1,0): classes tie at 0.5 -> first channel; (1,1): all 0 -> bg
    np.testing.assert_array_equal(labels, [[3, 7, 0], [3, 0, 3]])
    # A tie with the threshold goes to the background, as IRN's argmax over [t, maps] does.
    np.testing.assert_array_equal(maps_to_labels(maps, 0.5), [[3, 7, 0], [0, 0, 0]])
    empty = LocalizationMaps(keys=np.zeros(0, np.int64), strided=None, high_res=np.zeros((0, 2, 3)))
    np.testing.assert_array_equal(maps_to_labels(empty, 0.1), np.zeros((2, 3)))


@pytest.mark.parametrize("threshold", [0.0, 0.25, 0.3, 0.5, 0.15])
def test_maps_to_labels_equals_padded_argmax(threshold):
    rng = np.random.default_rng(1)
    for _ in range(20):
        maps = random_maps(rng, (7, 9), 6)
        np.testing.assert_array_equal(maps_to_labels(maps, threshold), padded_argmax_labels(maps, threshold))


def test_maps_to_labels_on_strided():
    maps = LocalizationMaps(keys=[2], strided=np.ones((1, 2, 2)), high_res=np.zeros((1, 5, 5)))
    np.testing.assert_array_equal(maps_to_labels(maps, 0.5, resolution="strided"), np.full((2, 2), 2))
    np.testing.assert_array_equal(maps_to_labels(maps, 0.5), np.zeros((5, 5)))


# ---------------------------------------------------------------- the sweep


def brute_force_confusions(masks, maps, grid, num_classes):
    out = []
    for threshold in grid:
        accumulator = ConfusionAccumulator(num_classes)
        for image_id, gt in masks.items():
            accumulator.update(gt, padded_argmax_labels(maps[image_id], threshold))
        out.append(accumulator.confusion)
    return np.stack(out)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_one_pass_sweep_equals_each_threshold_separately(seed):
    rng = np.random.default_rng(seed)
    masks, maps = random_dataset(rng)
    # Includes thresholds equal to map values (ties), below every value and above every value.
    grid = np.array([-0.1, 0.0, 0.05, 0.1, 0.25, 0.3, 0.5, 0.55, 0.95, 1.0, 1.2])
    accumulator = SweepAccumulator(len(CLASSES), grid)
    for image_id, gt in masks.items():
        accumulator.update(gt, maps[image_id])
    expected = brute_force_confusions(masks, maps, grid, len(CLASSES))
    np.testing.assert_array_equal(accumulator.confusions(), expected)
    assert accumulator.num_images == len(masks)


def test_evaluate_maps_on_a_store(tmp_path):
    rng = np.random.default_rng(7)
    masks, maps = random_dataset(rng, count=6)
    store = MapStore(tmp_path / "cam")
    for image_id, m in maps.items():
        store.save(image_id, m)
    result = evaluate_maps(FakeDataset(masks), store, thresholds="0.05:0.60:0.05", fixed_threshold=0.15,
                           label_free="li", progress=False)

    thresholds, mious = result.curve
    np.testing.assert_allclose(thresholds, np.round(np.arange(1, 13) * 0.05, 10))
    loaded = {image_id: store.load(image_id) for image_id in masks}
    expected = brute_force_confusions(masks, loaded, thresholds, len(CLASSES))
    np.testing.assert_allclose(mious, mean_iou(expected), atol=1e-12)
    best = int(np.argmax(mean_iou(expected)))
    assert result.best_threshold == pytest.approx(thresholds[best])
    assert result.best.miou == pytest.approx(mean_iou(expected[best]))
    assert result.best.threshold_uses_ground_truth
    assert result.best.protocol.startswith("oracle: best t on ground truth")

    fixed = result.fixed
    assert fixed.protocol == "fixed t=0.15 (no ground truth)"
    assert not fixed.threshold_uses_ground_truth
    np.testing.assert_array_equal(fixed.confusion, brute_force_confusions(masks, loaded, [0.15], len(CLASSES))[0])

    label_free = result.label_free
    t = result.label_free_threshold
    assert 0 < t < 1
    assert label_free.protocol == f"label-free (Li) t={round(t, 3):g} (no ground truth)"
    np.testing.assert_array_equal(label_free.confusion, brute_force_confusions(masks, loaded, [t], len(CLASSES))[0])
    # The label-free threshold is Li's on the maps alone: recompute it without any mask.
    best_scores = np.concatenate(
        [m.high_res.max(axis=0).ravel() for m in loaded.values() if m.keys.size]
    )
    edges = histogram_edges()
    assert t == pytest.approx(li_threshold(score_histogram(best_scores), edges))

    assert [s.name.split()[0] for s in result.results()] == ["fixed", "Li", "oracle"]
    otsu = evaluate_maps(FakeDataset(masks), store, thresholds="0.05:0.6:0.05", label_free="otsu", progress=False)
    assert otsu.label_free_threshold == pytest.approx(otsu_threshold(score_histogram(best_scores), edges))
    assert otsu.label_free.protocol.startswith("label-free (Otsu) t=")
    # The default rule, edges: the maps' contours against the images' edges, no mask read.
    edges_result = evaluate_maps(FakeDataset(masks), store, thresholds="0.05:0.6:0.05", progress=False)
    alignment = EdgeAlignment()
    for image_id, m in loaded.items():
        best_map, class_ids = foreground_max(m.high_res, m.keys)
        alignment.update(FakeDataset(masks).load_image(image_id), best_map, class_ids)
    assert edges_result.label_free_threshold == pytest.approx(alignment.threshold())
    assert edges_result.label_free.protocol.startswith("label-free (edges) t=")
    np.testing.assert_array_equal(
        edges_result.label_free.confusion,
        brute_force_confusions(masks, loaded, [edges_result.label_free_threshold], len(CLASSES))[0])
    assert result.at(0.3).miou == pytest.approx(mean_iou(expected[5]))
    with pytest.raises(KeyError):
        result.at(0.123)
    record = result.to_dict()
    assert record["thresholds"][0] == 0.05 and len(record["miou"]) == 12
    assert record["best_threshold_uses_ground_truth"] is True


def test_evaluate_maps_without_sweep(tmp_path):
    rng = np.random.default_rng(8)
    masks, maps = random_dataset(rng, count=3)
    store = MapStore(tmp_path / "cam")
    for image_id, m in maps.items():
        store.save(image_id, m)
    result = evaluate_maps(
        FakeDataset(masks), store, thresholds=None, fixed_threshold=0.2, label_free=None, progress=False
    )
    assert result.best is None and result.best_threshold is None and result.label_free is None
    assert [s.protocol for s in result.results()] == ["fixed t=0.2 (no ground truth)"]
    with pytest.raises(ConfigError):
        evaluate_maps(FakeDataset(masks), store, thresholds=None, fixed_threshold=None, label_free=None)


# ---------------------------------------------------------------- thresholds


def test_parse_thresholds():
    values = parse_thresholds("0.05:0.60:0.01")
    assert values.size == 56 and values[0] == 0.05 and values[-1] == 0.6
    assert 0.15 in values and 0.34 in values  # exact: rounded, so they match a literal threshold
    np.testing.assert_array_equal(parse_thresholds("0.3, 0.1,0.2"), [0.1, 0.2, 0.3])
    np.testing.assert_array_equal(parse_thresholds([0.2, 0.2]), [0.2])
    for bad in ("0.1:0.2", "a:b:c", "0.5:0.1:0.1", "0.1:0.5:0", "", "nan"):
        with pytest.raises(ConfigError):
            parse_thresholds(bad)


# ---------------------------------------------------------------- bad input


def _store_with(tmp_path, maps):
    store = MapStore(tmp_path / "maps")
    for image_id, m in maps.items():
        store.save(image_id, m)
    return store


def _ones_maps(shape, keys=(1,)):
    return LocalizationMaps(keys=list(keys), strided=None, high_res=np.ones((len(keys), *shape), np.float32))


def test_missing_maps(tmp_path):
    masks = {f"x{i}": np.zeros((4, 4), np.uint8) for i in range(5)}
    store = _store_with(tmp_path, {"x0": _ones_maps((4, 4))})
    with pytest.raises(DataError, match=r"maps: 4 of 5 predictions missing \(no \.npz for x1, x2, x3, \.\.\.\)"):
        evaluate_maps(FakeDataset(masks), store, progress=False)


def test_map_size_differs(tmp_path):
    store = _store_with(tmp_path, {"x0": _ones_maps((4, 5))})
    with pytest.raises(DataError, match=r"x0\.npz: maps are 5x4 \(WxH\) but the ground truth is 4x4"):
        evaluate_maps(FakeDataset({"x0": np.zeros((4, 4), np.uint8)}), store, progress=False)


def test_map_keys_out_of_range(tmp_path):
    store = _store_with(tmp_path, {"x0": _ones_maps((4, 4), keys=(9,))})
    with pytest.raises(DataError, match=r"x0\.npz: map keys \[9\] outside the foreground ids 1\.\.4"):
        evaluate_maps(FakeDataset({"x0": np.zeros((4, 4), np.uint8)}), store, progress=False)


def test_corrupt_map_file(tmp_path):
    store = _store_with(tmp_path, {"x0": _ones_maps((4, 4))})
    store.path("x1").write_bytes(b"PK\x03\x04 truncated")
    masks = {"x0": np.zeros((4, 4), np.uint8), "x1": np.zeros((4, 4), np.uint8)}
    with pytest.raises(DataError, match=r"x1\.npz: corrupt map file"):
        evaluate_maps(FakeDataset(masks), store, progress=False)


def test_empty_store(tmp_path):
    (tmp_path / "maps").mkdir()
    with pytest.raises(DataError, match=r"prediction folder is empty \(no \.npz files\)"):
        evaluate_maps(FakeDataset({"x0": np.zeros((4, 4), np.uint8)}), tmp_path / "maps", progress=False)


# ---------------------------------------------------------------- plot


def test_plot_sweep_writes_a_png_with_several_curves(tmp_path):
    t = np.linspace(0.05, 0.6, 12)
    path = plot_sweep(
        {"CAM": (t, 0.4 - (t - 0.2) ** 2), "AdvCAM": (t, 0.5 - (t - 0.3) ** 2)},
        tmp_path / "out" / "sweep.png",
        title="seed mIoU",
        markers={"fixed t=0.15": 0.15},
    )
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    assert [p.name for p in path.parent.iterdir()] == ["sweep.png"]  # no temporary left behind
    with pytest.raises(ValueError):
        plot_sweep({}, tmp_path / "x.png")
    with pytest.raises(ValueError):
        plot_sweep({"bad": ([0.1, 0.2], [0.3])}, tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_the_edges_rule_needs_the_images(tmp_path):
    rng = np.random.default_rng(9)
    masks, maps = random_dataset(rng, count=2)
    store = MapStore(tmp_path / "cam")
    for image_id, m in maps.items():
        store.save(image_id, m)

    class MasksOnly:
        def __init__(self):
            self.ids, self.classes, self.num_classes = list(masks), list(CLASSES), len(CLASSES)

        def load_mask(self, image_id):
            return masks[image_id]

    with pytest.raises(ConfigError, match="edges label-free rule reads the images"):
        evaluate_maps(MasksOnly(), store, progress=False)
    assert evaluate_maps(MasksOnly(), store, label_free="li", progress=False).label_free is not None
