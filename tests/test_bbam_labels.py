"""BBAM pseudo labels: per-object masks, the fallbacks, merging, alignment, the resumable stage."""

from __future__ import annotations

import math

import numpy as np
import pytest

from wsss.errors import DataError
from wsss.io import IGNORE_INDEX
from wsss.refine.bbam_labels import (
    _blur,
    bbam_labels,
    blur_sigma,
    box_pixels,
    make_bbam_labels,
    merge_semantic,
    object_mask,
)
from wsss.stores.instances import InstanceStore
from wsss.stores.maps import LocalizationMaps, MapStore
from wsss.stores.masks import MaskStore

SIZE = 48


def _disc(cy: float, cx: float, radius: float, size: int = SIZE) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    return (yy - cy) ** 2 + (xx - cx) ** 2 < radius ** 2


def _image(*objects: np.ndarray, colours=(200, 120, 60)) -> np.ndarray:
    """A uniform grey image with each object mask painted in its own colour."""
    image = np.full((SIZE, SIZE, 3), 40, np.uint8)
    for mask, colour in zip(objects, colours):
        image[mask] = colour
    return image


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


# ----------------------------------------------------------------------------------- the blur
def test_blur_sigma_is_the_reference_at_vocs_size_and_follows_the_diagonal():
    area = 0.1 * 375 * 500
    literal = int(16 + 48 * math.sqrt(0.1))
    assert blur_sigma(area, 375, 500) == literal == 31
    assert blur_sigma(area, 375, 500, "image") == pytest.approx(literal)
    small = blur_sigma(0.1 * 128 * 128, 128, 128, "image")
    assert small == pytest.approx(literal * math.hypot(128, 128) / 625)
    assert blur_sigma(0.1 * 128 * 128, 128, 128) == literal  # reference: literal at every size


def test_blur_is_a_gaussian_of_radius_sigma_with_mirrored_borders():
    rng = np.random.default_rng(0)
    values = rng.random((20, 17))
    sigma = 4.0
    offsets = np.arange(-4, 5)
    kernel = np.exp(-offsets ** 2 / (2 * sigma ** 2))
    kernel /= kernel.sum()
    # OpenCV's BORDER_REFLECT_101 is NumPy's "reflect"
    padded = np.pad(values, 4, mode="reflect")
    rows = sum(w * padded[4 + o:4 + o + 20, :] for o, w in zip(offsets, kernel))
    expected = sum(w * rows[:, 4 + o:4 + o + 17] for o, w in zip(offsets, kernel))
    np.testing.assert_allclose(_blur(values, sigma), expected, atol=1e-12)


# ----------------------------------------------------------------------------------- one object
def test_object_mask_follows_the_attribution_and_stays_in_its_box():
    disc = _disc(24, 24, 10)
    attribution = 0.8 * disc + 0.05 * np.random.default_rng(0).random((SIZE, SIZE))
    found = object_mask(_image(disc), attribution, np.array([12, 12, 37, 37], np.float32), 0.85)
    assert found.source == "bbam"
    assert _iou(found.mask, disc) > 0.95
    # a box that cuts the object: the mask never leaves the box
    box = np.array([12, 12, 30, 37], np.float32)
    cut = object_mask(_image(disc), attribution, box, 0.85)
    assert cut.mask.any() and not (cut.mask & ~box_pixels(box, SIZE, SIZE)).any()


def test_the_lower_threshold_saturates_more_of_the_box():
    yy, xx = np.mgrid[:SIZE, :SIZE]
    attribution = np.exp(-((yy - 24) ** 2 + (xx - 24) ** 2) / (2 * 6.0 ** 2))  # one smooth bump
    image, box = _image(), np.array([4, 4, 44, 44], np.float32)
    sure = object_mask(image, attribution, box, 0.85, scale="image")
    maybe = object_mask(image, attribution, box, 0.2, scale="image")
    # top 15% of 1600 box pixels saturate at 0.85, top 80% at 0.2; the blur and CRF keep that order
    assert 0 < sure.mask.sum() < 0.25 * 1600 < 0.6 * 1600 < maybe.mask.sum()
    assert (sure.mask & maybe.mask).sum() == sure.mask.sum()


def test_a_small_object_is_refilled_until_it_covers_a_third_of_its_box():
    attribution = np.zeros((SIZE, SIZE))
    attribution[24, 24] = 1.0  # one pixel: the first CRF keeps less than a fifth of the 10 x 10 box
    box = np.array([19, 19, 29, 29], np.float32)  # 100 px, under a tenth of the image
    found = object_mask(_image(), attribution, box, 0.85, scale="image")
    assert found.source == "refill"
    assert found.mask.sum() > 100 / 3
    # a box over a tenth of the image keeps the CRF's result however small
    big = np.array([4, 4, 44, 44], np.float32)
    assert object_mask(_image(), attribution, big, 0.85, scale="image").source == "bbam"


def test_no_attribution_falls_back_to_the_filled_box_or_fails():
    disc = _disc(24, 24, 8)
    box = np.array([15, 15, 34, 34], np.float32)
    outside = np.zeros((SIZE, SIZE))
    outside[0:5, 0:5] = 1.0  # attribution only outside the box counts as none
    filled = object_mask(_image(disc), outside, box, 0.85)
    assert filled.source == "box" and filled.mask.sum() > box_pixels(box, SIZE, SIZE).sum() / 5
    tiny = np.array([20, 20, 24, 24], np.float32)  # 4 x 4 in a uniform image: the CRF erases it
    failed = object_mask(_image(), np.zeros((SIZE, SIZE)), tiny, 0.85)
    assert failed.source == "failed" and not failed.mask.any()


def test_bad_maps_and_boxes_are_one_line_errors():
    image = _image()
    for box in ([10, 10, 10, 20], [10.2, 10, 10.2, 20], [10, 12, 20, 12]):  # xmin = xmax, ymin = ymax
        with pytest.raises(DataError, match="has no area"):
            object_mask(image, np.ones((SIZE, SIZE)), np.array(box, np.float32), 0.85)
    with pytest.raises(DataError, match="image is"):
        object_mask(image, np.ones((SIZE, 8)), np.array([0, 0, 4, 4], np.float32), 0.85)
    class_maps = LocalizationMaps(keys=np.array([1]), strided=None, high_res=np.ones((1, SIZE, SIZE)))
    with pytest.raises(DataError, match="not per-box maps"):
        bbam_labels(image, class_maps)


# ----------------------------------------------------------------------------------- merging
def _rect(y0, y1, x0, x1, size=12):
    mask = np.zeros((size, size), bool)
    mask[y0:y1, x0:x1] = True
    return mask


def test_merge_marks_two_classes_claiming_a_pixel_but_not_one_class_twice():
    a, b, c = _rect(0, 6, 0, 6), _rect(3, 9, 3, 9), _rect(4, 10, 4, 10)
    boxes = np.array([[0, 0, 6, 6], [3, 3, 9, 9], [4, 4, 10, 10]], np.float32)
    labels = merge_semantic(np.stack([a, b, c]), np.stack([a, b, c]), boxes, np.array([1, 2, 2]))
    assert (labels[a & ~b] == 1).all()
    assert (labels[a & b] == IGNORE_INDEX).all()  # classes 1 and 2 overlap
    assert (labels[(b | c) & ~a] == 2).all()  # two objects of class 2: no conflict
    assert (labels[~(a | b | c)] == 0).all()


def test_merge_paints_nested_boxes_on_top_smallest_last():
    outer, middle, inner = _rect(0, 12, 0, 12), _rect(2, 10, 2, 10), _rect(4, 7, 4, 7)
    boxes = np.array([[0, 0, 12, 12], [2, 2, 10, 10], [4, 4, 7, 7]], np.float32)
    masks = np.stack([outer, middle, inner])
    labels = merge_semantic(masks, masks, boxes, np.array([1, 2, 3]))
    assert (labels[inner] == 3).all()  # inside two boxes: painted last
    assert (labels[middle & ~inner] == 2).all()  # would be 255 (1 and 2 claim it) but its box is nested
    assert (labels[outer & ~middle] == 1).all()
    # the same box twice is not nested: the overlap stays ignored
    twice = merge_semantic(np.stack([middle, middle]), np.stack([middle, middle]),
                           np.array([[2, 2, 10, 10]] * 2, np.float32), np.array([1, 2]))
    assert (twice[middle] == IGNORE_INDEX).all()


def test_merge_ignores_the_band_between_possible_and_sure_even_over_other_objects():
    sure_a, maybe_a = _rect(2, 6, 2, 6), _rect(1, 8, 1, 8)
    sure_b = _rect(6, 10, 6, 10)  # class 2; object a's band reaches into it
    boxes = np.array([[1, 1, 8, 8], [6, 6, 10, 10]], np.float32)
    labels = merge_semantic(np.stack([sure_a, sure_b]), np.stack([maybe_a, sure_b]), boxes, np.array([1, 2]))
    band = maybe_a & ~sure_a
    assert (labels[band] == IGNORE_INDEX).all()
    assert (labels[sure_a] == 1).all()
    assert (labels[sure_b & ~band] == 2).all() and (sure_b & band).any()


def test_the_possible_band_variant_paints_the_band_with_its_class():
    sure_a, maybe_a = _rect(2, 6, 2, 6), _rect(1, 8, 1, 8)
    sure_b = _rect(8, 11, 8, 11)  # class 2, apart from object a
    boxes = np.array([[1, 1, 8, 8], [8, 8, 11, 11]], np.float32)
    objects, possible = np.stack([sure_a, sure_b]), np.stack([maybe_a, sure_b])
    labels = merge_semantic(objects, possible, boxes, np.array([1, 2]), band="possible")
    assert (labels[maybe_a] == 1).all() and (labels[sure_b] == 2).all()  # the band is object a's class
    assert not (labels == IGNORE_INDEX).any() and (labels[~(maybe_a | sure_b)] == 0).all()
    reference = merge_semantic(objects, possible, boxes, np.array([1, 2]))  # the default: the band ignored
    assert (reference[maybe_a & ~sure_a] == IGNORE_INDEX).all()
    with pytest.raises(ValueError, match="band"):
        merge_semantic(objects, possible, boxes, np.array([1, 2]), band="object")


def test_the_band_setting_is_checked_and_part_of_the_labels_fingerprint():
    from wsss.errors import ConfigError
    from wsss.methods import Context
    from wsss.pipeline.recipes import build_stages, load_recipe

    with pytest.raises(ConfigError, match="bbam_labels.band"):
        load_recipe("synth/demo", ["methods=[bbam]", "bbam_labels.band=object"])
    keys = []
    for band in ("ignore", "possible"):
        recipe = load_recipe("synth/demo", ["methods=[bbam]", f"bbam_labels.band={band}"])
        keys.append({s.name: s for s in build_stages(Context(recipe, "work"))}["bbam.labels"].depends_on)
    assert keys[0]["bbam_labels"]["band"] == "ignore" and keys[1]["bbam_labels"]["band"] == "possible"


# ----------------------------------------------------------------------------------- one image
def _three_objects():
    """A good object, a 4 x 4 box whose box fill fails (no attribution, uniform colour), another."""
    first, third = _disc(14, 14, 7), _disc(34, 32, 8)
    maps = np.zeros((3, SIZE, SIZE), np.float32)
    maps[0], maps[2] = 0.9 * first, 0.9 * third
    boxes = np.array([[6, 6, 23, 23], [40, 2, 44, 6], [23, 25, 43, 43]], np.float32)
    return _image(first, third), LocalizationMaps(np.array([1, 2, 1]), None, maps, boxes), (first, third)


def test_a_failed_object_keeps_its_box_and_class_and_its_neighbours_stay_paired():
    image, maps, (first, third) = _three_objects()
    labels = bbam_labels(image, maps, image_id="x")
    assert labels.sources == ["bbam", "failed", "bbam"]
    instances = labels.instances
    np.testing.assert_array_equal(instances.boxes, maps.boxes)
    np.testing.assert_array_equal(instances.classes, [1, 2, 1])
    assert instances.masks.shape == (3, SIZE, SIZE)
    assert _iou(instances.masks[0], first) > 0.9 and _iou(instances.masks[2], third) > 0.9
    assert not instances.masks[1].any()
    failed_box = box_pixels(maps.boxes[1], SIZE, SIZE)
    np.testing.assert_array_equal(instances.instance_ignore[1], failed_box)  # unsure over its whole box
    assert (labels.semantic[failed_box] == IGNORE_INDEX).all()
    assert (labels.semantic[instances.masks[0] & ~instances.instance_ignore.any(0)] == 1).all()
    # each mask lies in its own box
    for row in range(3):
        assert not (instances.masks[row] & ~box_pixels(maps.boxes[row], SIZE, SIZE)).any()


class _Dataset:
    """The dataset interface the stage reads, over images held in memory."""

    def __init__(self, images: dict[str, np.ndarray], fail_on: str | None = None) -> None:
        self.images, self.ids, self.fail_on = images, list(images), fail_on
        self.classes, self.palette = ["background", "a", "b"], None

    def load_image(self, image_id: str) -> np.ndarray:
        if image_id == self.fail_on:
            raise KeyboardInterrupt  # a kill in the middle of the stage
        return self.images[image_id]


def _write_maps(tmp_path) -> dict[str, np.ndarray]:
    """Three shifted copies of :func:`_three_objects` and an image without boxes; their images."""
    image, maps, _ = _three_objects()
    store = MapStore(tmp_path / "maps")
    images = {}
    for number in range(3):
        image_id = f"img{number}"
        images[image_id] = np.roll(image, number, axis=1)
        shifted = maps.high_res if number == 0 else np.roll(maps.high_res, number, axis=2)
        boxes = maps.boxes + np.array([number, 0, number, 0], np.float32)
        store.save(image_id, LocalizationMaps(maps.keys, None, shifted, boxes))
    store.save("empty", LocalizationMaps(np.zeros(0, np.int64), None, np.zeros((0, SIZE, SIZE)),
                                         np.zeros((0, 4), np.float32)))
    images["empty"] = image
    return images


def test_make_bbam_labels_resumes_with_identical_results_and_gathers_aligned_instances(tmp_path):
    images = _write_maps(tmp_path)

    def run(folder, dataset):
        return make_bbam_labels(dataset, tmp_path / "maps", folder / "semantic", folder / "per_image",
                                folder / "instances.json")

    straight = run(tmp_path / "straight", _Dataset(images))
    assert straight == {"images": 4, "total": 4, "objects": 9, "failed": 3}
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "killed", _Dataset(images, fail_on="img2"))
    resumed = run(tmp_path / "killed", _Dataset(images))
    assert resumed["images"] == 2  # img2 and empty
    for image_id in images:
        for kind, name in (("semantic", f"{image_id}.png"), ("per_image", f"{image_id}.json")):
            assert (tmp_path / "killed" / kind / name).read_bytes() == (tmp_path / "straight" / kind / name).read_bytes()
    gathered = (tmp_path / "killed" / "instances.json").read_bytes()
    assert gathered == (tmp_path / "straight" / "instances.json").read_bytes()

    loaded = InstanceStore(tmp_path / "straight" / "instances.json").load(["background", "a", "b"])
    assert loaded.ids == list(images)
    for image_id in ("img0", "img1", "img2"):
        found = loaded[image_id]
        np.testing.assert_array_equal(found.classes, [1, 2, 1])
        assert not found.masks[1].any() and found.masks[0].any() and found.masks[2].any()
        for row in range(3):
            assert not (found.masks[row] & ~box_pixels(found.boxes[row], SIZE, SIZE)).any()
    assert len(loaded["empty"]) == 0
    assert not MaskStore(tmp_path / "straight" / "semantic").load("empty").any()


def test_worker_processes_write_the_same_files(tmp_path):
    images = _write_maps(tmp_path)
    for folder, workers in (("serial", 0), ("parallel", 1)):  # one worker process: pickling and spawn
        make_bbam_labels(_Dataset(images), tmp_path / "maps", tmp_path / folder / "semantic",
                         tmp_path / folder / "per_image", tmp_path / folder / "instances.json", workers=workers)
    assert ((tmp_path / "serial" / "instances.json").read_bytes()
            == (tmp_path / "parallel" / "instances.json").read_bytes())
    for image_id in images:
        assert ((tmp_path / "serial" / "semantic" / f"{image_id}.png").read_bytes()
                == (tmp_path / "parallel" / "semantic" / f"{image_id}.png").read_bytes())
