"""The walk ablation's core (``benchmarks/walk_ablation.py``) and the library pieces it uses:
the random walk stopped at several step counts, ground-truth boundaries on the stride-4 grid, the
boundary probe, precision and recall from a confusion matrix."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from helpers import load_benchmark, make_voc

from wsss.evaluation.boundaries import (
    BACKGROUND,
    BOUNDARY,
    IGNORED,
    INTERIOR,
    BoundaryProbe,
    boundary_regions,
    ground_truth_boundary,
    mean_boundary_probability,
)
from wsss.evaluation.semantic import confusion_matrix, precision_recall
from wsss.refine.random_walk import propagate_to_labels, random_walk, random_walk_checkpoints
from wsss.stores.edges import EdgeStore
from wsss.stores.maps import LocalizationMaps, MapStore, strided_size



@pytest.fixture(scope="module")
def ablation():
    yield from load_benchmark("walk_ablation")


def _two_objects() -> np.ndarray:
    """48 x 64: class 1 and class 2 side by side (touching), background around them."""
    gt = np.zeros((48, 64), dtype=np.uint8)
    gt[10:38, 6:30] = 1
    gt[10:38, 30:58] = 2
    return gt


def _partial_maps(gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Stride-4 maps of a partial CAM: keys, (C, h, w). Each class peaks on a small part of its
    object (a bump of one cell's width, a quarter of the way in from its left side)."""
    h, w = strided_size(*gt.shape)
    rows, cols = np.mgrid[0:h, 0:w]
    keys = np.array([1, 2])
    maps = np.zeros((2, h, w), np.float32)
    for channel, key in enumerate(keys):
        ys, xs = np.nonzero(gt[::4, ::4] == key)
        centre = (ys.mean(), xs.min() + (xs.max() - xs.min()) / 4)
        maps[channel] = np.exp(-((rows - centre[0]) ** 2 + (cols - centre[1]) ** 2) / 2)
    return keys, maps


def test_checkpoints_equal_walks_from_scratch() -> None:
    generator = torch.Generator().manual_seed(0)
    maps = torch.rand(3, 11, 14, generator=generator)
    edge = torch.rand(11, 14, generator=generator) ** 2
    seen = []
    for count, walked in random_walk_checkpoints(maps, edge, [8, 0, 3, 1, 3], beta=4.0, radius=3):
        seen.append(count)
        torch.testing.assert_close(walked, random_walk(maps, edge, steps=count, beta=4.0, radius=3),
                                   rtol=0, atol=0)
    assert seen == [0, 1, 3, 8]
    assert not torch.equal(random_walk(maps, edge, steps=8, beta=4.0, radius=3),
                           random_walk(maps, edge, steps=3, beta=4.0, radius=3))


def test_grid_cells_equal_the_librarys_pseudo_masks(ablation) -> None:
    gt = _two_objects()
    keys, maps = _partial_maps(gt)
    edge = np.random.default_rng(1).uniform(0, 0.6, size=maps.shape[1:]).astype(np.float32)
    thresholds = [0.1, 0.25, 0.5]
    grid = ablation.WalkGrid(3, [4, 1, 2], thresholds)
    grid.update(gt, maps, keys, edge, cam_power=1.5, beta=10.0, radius=5)
    assert grid.steps == [1, 2, 4]
    confusions = grid.confusions()
    for row, exp_times in enumerate((0, 1, 2)):
        for column, threshold in enumerate(thresholds):
            labels = propagate_to_labels(maps, keys, edge, gt.shape, cam_power=1.5, bg_threshold=threshold,
                                         exp_times=exp_times)
            np.testing.assert_array_equal(confusions[row, column], confusion_matrix(gt, labels, 3))
    np.testing.assert_array_equal(grid.at(2, 0.25), confusions[1, 1])
    assert grid.at(3, 0.25) is None


def test_ground_truth_boundaries_beat_flat_ones_for_a_partial_cam(ablation) -> None:
    gt = _two_objects()
    keys, maps = _partial_maps(gt)
    steps, thresholds = [0, 1, 4, 16, 64, 256], [0.05, 0.1, 0.2, 0.3, 0.5]
    flat, perfect = ablation.WalkGrid(3, steps, thresholds), ablation.WalkGrid(3, steps, thresholds)
    flat.update(gt, maps, keys, np.zeros(maps.shape[1:], np.float32), cam_power=1.0, beta=10.0, radius=5)
    perfect.update(gt, maps, keys, ground_truth_boundary(gt), cam_power=1.0, beta=10.0, radius=5)
    flat_miou, perfect_miou = flat.miou(), perfect.miou()
    # No walk: the seeds cover part of each object (about 0.5 here, whatever the boundaries).
    assert perfect_miou[0].max() < 0.6 and flat_miou[0].max() < 0.6
    # On perfect boundaries the walk fills each object and stops at its outline (0.98 here) ...
    assert perfect_miou[1:].min(axis=1).min() > 0.65 and perfect_miou.max() > 0.9
    # ... on flat ones it spreads into the background and the other object (0.66 at best here).
    assert perfect_miou.max() > flat_miou.max() + 0.2
    assert (perfect_miou[1:] >= flat_miou[1:]).all()


def test_ground_truth_boundary_cells() -> None:
    gt = np.zeros((16, 20), np.uint8)
    gt[4:16, 10:20] = 3  # changes between pixel rows 3/4 (between cells) and columns 9/10 (inside cells 2)
    expected = np.array([[0, 0, 1, 1, 1],   # block rows 0..3, widened to row 4: sees class 3 under cols 10..
                         [0, 0, 1, 1, 1],   # rows 4..7 widened to row 3: sees 0 above
                         [0, 0, 1, 0, 0],
                         [0, 0, 1, 0, 0]], np.float32)
    np.testing.assert_array_equal(ground_truth_boundary(gt), expected)
    gt[0:2, 0:3] = 255  # 255 counts as a value: the cell around it becomes a boundary
    assert ground_truth_boundary(gt)[0, 0] == 1


def test_boundary_regions_and_probe() -> None:
    gt = np.zeros((24, 24), np.uint8)
    gt[8:24, 8:24] = 1  # change between cells 1 and 2 in both directions
    gt[0:8, 0:4] = 255  # cells (0, 0) and (1, 0) hold 255 only... but see 0 within one cell
    regions = boundary_regions(gt)
    boundary_band = np.zeros((6, 6), bool)
    boundary_band[1:, 1:3] = True
    boundary_band[1:3, 1:] = True
    np.testing.assert_array_equal(regions == BOUNDARY, boundary_band)
    np.testing.assert_array_equal(regions[3:, 3:], INTERIOR)
    assert (regions[0, :] == BACKGROUND).all() and (regions[:, 0] == BACKGROUND).all()
    only_ignore = np.full((8, 8), 255, np.uint8)
    assert (boundary_regions(only_ignore) == IGNORED).all()

    edge = np.where(regions == BOUNDARY, 0.9, np.where(regions == INTERIOR, 0.2, 0.0))
    probe = BoundaryProbe()
    probe.update(gt, edge)
    probe.update(only_ignore, np.ones((2, 2)))  # ignored cells count nowhere
    result = probe.result()
    assert result.mean == pytest.approx({"boundary": 0.9, "interior": 0.2, "background": 0.0})
    assert result.cells == {"boundary": int(boundary_band.sum()), "interior": 9,
                            "background": 36 - 9 - int(boundary_band.sum())}
    assert result.num_images == 2


def test_precision_recall_of_a_hand_made_confusion_matrix(ablation) -> None:
    confusion = np.array([[5, 1, 0],
                          [2, 3, 1],
                          [0, 0, 0]])
    precision, recall = precision_recall(confusion)
    np.testing.assert_allclose(precision, [5 / 7, 3 / 4, 0.0])
    np.testing.assert_allclose(recall[:2], [5 / 6, 3 / 6])
    assert np.isnan(recall[2])  # class 2 never in the ground truth
    stacked_precision, _ = precision_recall(np.stack([confusion, np.eye(3, dtype=int)]))
    np.testing.assert_allclose(stacked_precision[1], [1.0, 1.0, 1.0])
    row = ablation.precision_recall_row(confusion)
    assert row["bg_precision"] == pytest.approx(5 / 7) and row["bg_recall"] == pytest.approx(5 / 6)
    assert row["fg_precision"] == pytest.approx((3 / 4 + 0.0) / 2)
    assert row["fg_recall"] == pytest.approx(3 / 6)  # NaN skipped


def test_benchmark_on_a_tiny_work_folder(ablation, tmp_path, capsys) -> None:
    from wsss.refine.pseudo_masks import make_pseudo_masks

    fixture = make_voc(tmp_path / "data", classes=["background", "a", "b", "c"], size=(40, 52))
    work = tmp_path / "work"
    (work / "irn").mkdir(parents=True)
    (work / "irn" / "cam.pt").write_bytes(b"")
    (work / "config.yaml").write_text(f"methods: [cam, advcam]\ndata:\n  root: {fixture.root}\n"
                                      "  seed_split: train\n")
    rng = np.random.default_rng(0)
    maps_store, edge_store = MapStore(work / "maps" / "cam"), EdgeStore(work / "edges" / "cam")
    for image_id in fixture.ids:
        mask = fixture.mask(image_id)
        keys = np.asarray(fixture.labels[image_id])
        high = np.stack([(mask == k) * rng.uniform(0.3, 1.0, mask.shape) for k in keys]).astype(np.float32)
        strided = high[:, ::4, ::4]
        maps_store.save(image_id, LocalizationMaps(keys=keys, strided=strided, high_res=high))
        edge_store.save(image_id, rng.uniform(0, 1, strided.shape[1:]).astype(np.float32))
    from wsss.data.voc import VOCDataset

    dataset = VOCDataset(fixture.root, "train")
    make_pseudo_masks(dataset, maps_store.directory, edge_store.directory, work / "pseudo" / "cam", progress=False)
    out = tmp_path / "out"
    code = ablation.main([str(work), "--out", str(out), "--steps", "1,4", "--thresholds", "0.1,0.25",
                          "--limit", "3", "--quiet"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "3 images (--limit 3)" in printed and "left out: advcam" in printed
    assert "(equal)" in printed  # the recipe's cell (256 steps, 0.25) reproduces the masks on disk
    rows = list(csv.DictReader((out / "walk_ablation.csv").open()))
    grid = [r for r in rows if r["table"] == "grid"]
    assert {(r["boundaries"], r["steps"]) for r in grid} == {(b, s) for b in ("irn", "ground truth")
                                                               for s in ("1", "4", "256")}
    assert {r["source"] for r in rows if r["table"] == "scores"} == {
        "seeds fixed", "seeds oracle", "pseudo on disk", "best walk irn", "best walk ground truth"}
    probe = mean_boundary_probability(dataset, edge_store.directory, fixture.ids[:3], progress=False)
    written = {r["class"]: float(r["value"]) for r in rows if r["table"] == "boundary_probability"
               and r["metric"] == "mean"}
    assert written == pytest.approx(probe.mean)
    assert (out / "walk_ablation.txt").read_text() in printed

    assert ablation.main([str(work), "--methods", "advcam", "--out", str(out), "--quiet"]) == 2
    assert "advcam" in capsys.readouterr().err
