"""IR labels: thresholds, the two-pass combination, CRF edge snapping, the per-image stage."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers import make_voc
from PIL import Image

from wsss.data.voc import VOCDataset
from wsss.errors import ConfigError, DataError
from wsss.io import read_label_png
from wsss.runtime import DistInfo
from wsss.methods import get_method, registered_methods
from wsss.refine.crf import CrfParams
from wsss.refine.ir_labels import (
    confident_labels,
    make_ir_label,
    make_ir_labels,
)
from wsss.stores.maps import LocalizationMaps, MapStore

SILENT_CRF = CrfParams(gaussian_compat=0.0, bilateral_compat=0.0)  # the CRF keeps its input labels


def maps_of(high_res: np.ndarray, keys) -> LocalizationMaps:
    return LocalizationMaps(keys=np.asarray(keys), strided=None, high_res=np.asarray(high_res, np.float32))


def striped_image(height: int = 24, width: int = 64, stripes: int = 4) -> np.ndarray:
    """Vertical stripes of very different colours, so the CRF keeps stripe-wise labels."""
    colours = [(20, 20, 20), (240, 40, 40), (40, 240, 40), (40, 40, 240)]
    image = np.empty((height, width, 3), dtype=np.uint8)
    step = width // stripes
    for index in range(stripes):
        image[:, index * step:(index + 1) * step] = colours[index]
    return image


def direct_ir_label(high_res: np.ndarray, keys, fg: float, bg: float) -> np.ndarray:
    """The rule without a CRF, written per pixel from the maximum over the classes."""
    best = high_res.max(axis=0)
    winner = np.asarray(keys)[high_res.argmax(axis=0)]
    return np.where(best > fg, winner, np.where(best > bg, 255, 0)).astype(np.uint8)


def test_thresholds_per_stripe_with_the_irn_crf() -> None:
    image = striped_image()
    high_res = np.zeros((2, 24, 64), np.float32)
    high_res[0, :, 0:16] = 0.9  # above fg 0.30 -> class 3
    high_res[0, :, 16:32] = 0.2  # between -> unsure
    high_res[0, :, 32:48] = 0.01  # below bg 0.05 -> background
    high_res[0, :, 48:64] = 0.5
    high_res[1, :, 48:64] = 0.6  # both above fg: the larger (class 5) wins
    label = make_ir_label(image, maps_of(high_res, [3, 5]), 0.30, 0.05, "irn")
    assert label.dtype == np.uint8 and label.shape == (24, 64)
    expected = np.repeat(np.array([3, 255, 0, 5], np.uint8), 16)[None, :].repeat(24, 0)
    np.testing.assert_array_equal(label, expected)


def test_threshold_rule_matches_a_direct_computation() -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)
    high_res = rng.random((3, 20, 30)).astype(np.float32) ** 2
    high_res[1, 0, :5] = 0.35  # exactly at the foreground threshold: a tie goes to background
    high_res[[0, 2], 0, :5] = 0.0
    # the methods' reference pairs (IRN, AdvCAM, RIB, W-OoD)
    for fg, bg in sorted({(m.refine.fg_threshold, m.refine.bg_threshold) for m in map(get_method, registered_methods())
                           if m.refine is not None}):
        label = make_ir_label(image, maps_of(high_res, [1, 4, 7]), fg, bg, SILENT_CRF)
        np.testing.assert_array_equal(label, direct_ir_label(high_res, [1, 4, 7], fg, bg))
    label = make_ir_label(image, maps_of(high_res, [1, 4, 7]), 0.35, 0.15, SILENT_CRF)
    assert (label[0, :5] == 255).all()
    counts = {v: int((label == v).sum()) for v in (0, 1, 4, 7, 255)}
    assert all(counts.values())  # every outcome occurs


def test_combination_of_the_two_passes() -> None:
    fg = np.array([[0, 0, 3, 3]])
    bg = np.array([[0, 5, 0, 3]])
    np.testing.assert_array_equal(confident_labels(fg, bg), [[0, 255, 3, 3]])


def test_crf_snaps_a_spilling_map_to_the_colour_edge() -> None:
    image = np.empty((32, 56, 3), np.uint8)
    image[:] = (30, 40, 50)
    image[:, :24] = (220, 200, 60)  # the object: columns 0..23
    high_res = np.zeros((1, 32, 56), np.float32)
    high_res[0, :, :30] = 0.8  # the map spills 6 px onto the background
    high_res[0, :, 30:34] = 0.1  # and fades
    label = make_ir_label(image, maps_of(high_res, [2]), 0.30, 0.05, "irn")
    without_crf = make_ir_label(image, maps_of(high_res, [2]), 0.30, 0.05, SILENT_CRF)
    assert (without_crf[:, 24:30] == 2).all()
    assert (label[:, :24] == 2).all()
    assert (label[:, 24:] == 0).all()


def test_no_class_gives_background() -> None:
    image = striped_image()
    label = make_ir_label(image, maps_of(np.zeros((0, 24, 64)), []), 0.30, 0.05)
    np.testing.assert_array_equal(label, 0)


def test_bad_maps_and_settings() -> None:
    image = striped_image()
    maps = maps_of(np.full((1, 24, 60), 0.5), [2])
    with pytest.raises(DataError, match=r"m/a.npz: maps are 60x24 \(WxH\) but the image is 64x24"):
        make_ir_label(image, maps, 0.3, 0.05, where="m/a.npz")
    maps = maps_of(np.full((1, 24, 64), 0.5), [21])
    with pytest.raises(DataError, match=r"m/a.npz: map keys \[21\] outside the foreground ids 1..20"):
        make_ir_label(image, maps, 0.3, 0.05, num_classes=21, where="m/a.npz")
    # Only per-box maps may repeat a class; IR labels need class maps.
    per_box = LocalizationMaps(keys=np.array([2, 2]), strided=None, high_res=np.full((2, 24, 64), 0.5, np.float32),
                               boxes=np.array([[0, 0, 10, 10], [20, 5, 40, 20]], np.float32))
    with pytest.raises(DataError, match="repeat a class"):
        make_ir_label(image, per_box, 0.3, 0.05)
    with pytest.raises(ConfigError, match="must not exceed"):
        make_ir_label(image, maps_of(np.full((1, 24, 64), 0.5), [2]), 0.05, 0.3)


def _write_mask_maps(dataset: VOCDataset, directory: Path) -> MapStore:
    """Maps that are 0.9 on each labelled object's mask, 0.2 around it, 0 elsewhere."""
    store = MapStore(directory)
    for image_id in dataset.ids:
        mask = dataset.load_mask(image_id)
        keys = dataset.image_labels(image_id)
        maps = []
        for key in keys:
            inside = mask == key
            ring = np.zeros_like(inside)
            ring[:, 1:] |= inside[:, :-1]
            ring[:, :-1] |= inside[:, 1:]
            maps.append(np.where(inside, 0.9, np.where(ring, 0.2, 0.0)))
        store.save(image_id, maps_of(np.stack(maps), keys))
    return store


@pytest.fixture
def dataset_and_maps(tmp_path: Path):
    fixture = make_voc(tmp_path / "voc", ids=[f"img{i}" for i in range(4)], size=(24, 32))
    dataset = VOCDataset(fixture.root, split="train")
    store = _write_mask_maps(dataset, tmp_path / "maps")
    return dataset, store


def test_stage_writes_resumes_and_matches_in_workers(tmp_path: Path, dataset_and_maps) -> None:
    dataset, store = dataset_and_maps
    out = tmp_path / "ir"
    assert make_ir_labels(dataset, store.directory, out, fg_threshold=0.3, bg_threshold=0.05,
                          progress=False) == 4
    assert make_ir_labels(dataset, store.directory, out, fg_threshold=0.3, bg_threshold=0.05,
                          progress=False) == 0  # resumed: nothing left
    for image_id in dataset.ids:
        path = out / f"{image_id}.png"
        assert Image.open(path).mode == "P"
        label = read_label_png(path)
        expected = make_ir_label(dataset.load_image(image_id), store.load(image_id), 0.3, 0.05)
        np.testing.assert_array_equal(label, expected)
        mask = dataset.load_mask(image_id)
        confident = (label != 255) & (mask != 255)
        assert confident.mean() > 0.6
        # The fixture paints every object in the same colour, so the CRF may swap touching
        # classes; object versus background follows the colour edges.
        assert ((label[confident] > 0) == (mask[confident] > 0)).mean() > 0.97

    in_workers = tmp_path / "ir2"
    assert make_ir_labels(dataset, store.directory, in_workers, fg_threshold=0.3, bg_threshold=0.05,
                          workers=2, progress=False) == 4
    for image_id in dataset.ids:
        np.testing.assert_array_equal(read_label_png(in_workers / f"{image_id}.png"),
                                      read_label_png(out / f"{image_id}.png"))

    # an error in a worker reaches the caller as the same one-line DataError
    last = dataset.ids[-1]
    store.save(last, maps_of(np.full((1, 5, 5), 0.5), [1]))
    with pytest.raises(DataError, match=rf"{last}.npz: maps are 5x5 \(WxH\)"):
        make_ir_labels(dataset, store.directory, tmp_path / "ir3", fg_threshold=0.3, bg_threshold=0.05,
                       workers=2, progress=False)


def test_stage_shards_by_rank(tmp_path: Path, dataset_and_maps) -> None:
    dataset, store = dataset_and_maps
    out = tmp_path / "ir"
    done = make_ir_labels(dataset, store.directory, out, fg_threshold=0.3, bg_threshold=0.05,
                          dist=DistInfo(rank=1, world_size=2), progress=False)
    assert done == 2
    assert sorted(p.stem for p in out.glob("*.png")) == dataset.ids[1::2]


def test_stage_errors_name_the_map_file(tmp_path: Path, dataset_and_maps) -> None:
    dataset, store = dataset_and_maps
    first = dataset.ids[0]
    height, width = dataset.load_image(first).shape[:2]
    store.save(first, maps_of(np.full((1, height + 1, width), 0.5), [1]))
    with pytest.raises(DataError, match=rf"{first}.npz: maps are {width}x{height + 1} \(WxH\)"):
        make_ir_labels(dataset, store.directory, tmp_path / "ir", fg_threshold=0.3, bg_threshold=0.05,
                       progress=False)
    store.save(first, maps_of(np.full((1, height, width), 0.5), [dataset.num_classes]))
    with pytest.raises(DataError, match=rf"{first}.npz: map keys \[21\] outside"):
        make_ir_labels(dataset, store.directory, tmp_path / "ir", fg_threshold=0.3, bg_threshold=0.05,
                       progress=False)
    store.path(first).unlink()
    with pytest.raises(DataError, match=rf"{first}.npz: map file not found"):
        make_ir_labels(dataset, store.directory, tmp_path / "ir", fg_threshold=0.3, bg_threshold=0.05,
                       progress=False)
    with pytest.raises(DataError, match="map folder not found"):
        make_ir_labels(dataset, tmp_path / "none", tmp_path / "ir", fg_threshold=0.3, bg_threshold=0.05)


def test_image_scale_sizes_the_crf_to_each_image() -> None:
    from wsss.refine.crf import CRF_PRESETS

    rng = np.random.default_rng(3)
    image = rng.integers(0, 255, (24, 40, 3), dtype=np.uint8)
    image[:, 20:] //= 4  # a dark right half: an edge for the CRF to use
    high_res = rng.random((2, 24, 40)).astype(np.float32)
    maps = maps_of(high_res, [2, 6])
    scaled = CRF_PRESETS["irn"].for_image(24, 40, "image")
    by_scale = make_ir_label(image, maps, 0.30, 0.05, "irn", scale="image")
    np.testing.assert_array_equal(by_scale, make_ir_label(image, maps, 0.30, 0.05, scaled))
    np.testing.assert_array_equal(make_ir_label(image, maps, 0.30, 0.05, "irn", scale="reference"),
                                  make_ir_label(image, maps, 0.30, 0.05, "irn"))
    with pytest.raises(ConfigError, match="scale"):
        make_ir_label(image, maps, 0.30, 0.05, "irn", scale="voc")
