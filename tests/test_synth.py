"""Tests of the generated benchmark (wsss.data.synth) and its command (wsss.commands.synth)."""

from __future__ import annotations

import json
import math
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

from wsss import io as wio
from wsss.cli import main as cli_main
from wsss.data import synth
from wsss.data.synth import SynthConfig
from wsss.errors import ConfigError, DataError

SMALL = dict(train=14, val=6, ood=6, size=64)


def small_config(**overrides) -> SynthConfig:
    return SynthConfig(**{**SMALL, **overrides})


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` by relative path."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def small_set(tmp_path_factory) -> Path:
    return synth.generate(tmp_path_factory.mktemp("synth") / "set", small_config(), progress=False)


@pytest.fixture(scope="module")
def larger_set(tmp_path_factory) -> Path:
    """Enough images (at a small size) for rates to be measured to within a few percent."""
    config = SynthConfig(train=400, val=0, ood=120, size=40, clutter_count=(0, 2))
    return synth.generate(tmp_path_factory.mktemp("synth") / "larger", config, progress=False)


def records_by_id(root: Path) -> dict[str, dict]:
    return {r["id"]: r for r in synth.read_records(root)}


def split_ids(root: Path, split: str) -> list[str]:
    return (root / "ImageSets" / "Segmentation" / f"{split}.txt").read_text().split()


# ---------------------------------------------------------------------------------------------
# Determinism and resuming


def test_same_seed_gives_identical_bytes_and_another_seed_differs(tmp_path, small_set):
    again = synth.generate(tmp_path / "again", small_config(), progress=False)
    assert snapshot(again) == snapshot(small_set)

    other = synth.generate(tmp_path / "other", small_config(seed=1), progress=False)
    first, second = snapshot(small_set), snapshot(other)
    jpegs = [k for k in first if k.endswith(".jpg")]
    assert sum(first[k] != second[k] for k in jpegs) == len(jpegs)


def test_resume_after_deleting_files_reproduces_identical_bytes(tmp_path, small_set):
    root = tmp_path / "set"
    shutil.copytree(small_set, root)
    reference = snapshot(small_set)
    ids = split_ids(root, "train")
    removed = [
        root / "JPEGImages" / f"{ids[0]}.jpg",
        root / "SegmentationClass" / f"{ids[1]}.png",
        root / "SegmentationObject" / f"{ids[2]}.png",
        root / "Annotations" / f"{ids[3]}.xml",
        root / "SynthParts" / f"{ids[4]}.png",
        root / "ood" / "JPEGImages" / "ood_00002.jpg",
        root / "ImageSets" / "Segmentation" / "val.txt",
        root / synth.RECORDS_NAME,
        root / synth.MANIFEST_NAME,  # as after a run killed before its last write
    ]
    for path in removed:
        path.unlink()
    # A killed run leaves its partial marker behind; without it the folder would be refused.
    wio.write_json(root / synth.PARTIAL_NAME, synth._header(small_config()))
    synth.generate(root, small_config(), progress=False)
    assert snapshot(root) == reference


def test_interrupted_run_resumes_to_the_same_set(tmp_path, monkeypatch, small_set):
    calls = {"n": 0}
    real = synth._write_missing

    def dying(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 9:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(synth, "_write_missing", dying)
    root = tmp_path / "set"
    with pytest.raises(KeyboardInterrupt):
        synth.generate(root, small_config(), progress=False)
    assert (root / synth.PARTIAL_NAME).exists() and not (root / synth.MANIFEST_NAME).exists()
    monkeypatch.setattr(synth, "_write_missing", real)
    synth.generate(root, small_config(), progress=False)
    assert not (root / synth.PARTIAL_NAME).exists()
    assert snapshot(root) == snapshot(small_set)


def test_complete_set_is_left_alone(tmp_path, monkeypatch, small_set):
    root = tmp_path / "set"
    shutil.copytree(small_set, root)

    def no_writes(*args, **kwargs):
        raise AssertionError("a complete set must not be rewritten")

    monkeypatch.setattr(wio, "atomic_write", no_writes)  # every wsss.io writer goes through it
    assert synth.generate(root, small_config(), progress=False) == root
    assert synth.existing_state(root, small_config()) == "complete"


def test_different_config_is_refused_naming_the_manifest(small_set):
    with pytest.raises(DataError) as info:
        synth.generate(small_set, small_config(body_evidence=0.9), progress=False)
    assert "synth.json" in str(info.value) and "body_evidence" in str(info.value)


def test_partial_run_of_another_config_is_refused(tmp_path):
    root = tmp_path / "set"
    wio.write_json(root / synth.PARTIAL_NAME, synth._header(small_config(seed=5)))
    with pytest.raises(DataError, match=r"synth\.partial\.json.*seed"):
        synth.generate(root, small_config(), progress=False)


def test_unrelated_non_empty_folder_is_refused(tmp_path):
    (tmp_path / "JPEGImages").mkdir()
    (tmp_path / "JPEGImages" / "2007_000032.jpg").write_bytes(b"not ours")
    with pytest.raises(DataError, match="not empty"):
        synth.generate(tmp_path, small_config(), progress=False)


def test_invalid_configs_are_config_errors():
    for bad in (
        dict(classes=1),
        dict(classes=len(synth.CLASS_NAMES) + 1),
        dict(part_fraction=(0.3, 0.2)),
        dict(context_rate=1.5),
        dict(size=8),
        dict(train=0, val=0),
        dict(jpeg_quality=(90, 101)),
        dict(size_range=(20, 60)),
        dict(size_range=(80, 60)),
    ):
        with pytest.raises(ConfigError):
            small_config(**bad).validate()


def test_size_range_draws_each_side_and_the_files_follow_it(tmp_path):
    config = small_config(train=10, val=4, ood=3, size_range=(40, 72), object_size=(0.3, 0.6))
    root = synth.generate(tmp_path / "varied", config, progress=False)
    records = records_by_id(root)
    sides = {}
    for split, count in (("train", 10), ("val", 4), ("ood", 3)):
        for index in range(count):
            name = synth.image_id(split, index)
            image = wio.read_image(root / ("ood/JPEGImages" if split == "ood" else "JPEGImages") / f"{name}.jpg")
            side = config.image_side(split, index)
            assert image.shape == (side, side, 3) and 40 <= side <= 72
            sides[name] = side
            if split == "ood":
                continue
            assert records[name]["size"] == side
            labels = wio.read_label_png(root / "SegmentationClass" / f"{name}.png")
            assert labels.shape == (side, side) and labels.max() >= 1
            size = ET.parse(root / "Annotations" / f"{name}.xml").getroot().find("size")
            assert (int(size.findtext("width")), int(size.findtext("height"))) == (side, side)
            for obj in records[name]["objects"]:  # boxes inside the image's own frame
                assert 1 <= obj["box"][0] <= obj["box"][2] <= side and 1 <= obj["box"][1] <= obj["box"][3] <= side
    assert len(set(sides.values())) > 5  # sides vary
    manifest = wio.read_json(root / synth.MANIFEST_NAME)
    assert manifest["config"]["size_range"] == [40, 72]
    assert SynthConfig.from_dict(manifest["config"]) == config
    # the same config again: the same bytes; another range: refused as another config
    assert snapshot(synth.generate(tmp_path / "again", config, progress=False)) == snapshot(root)
    with pytest.raises(DataError, match="size_range"):
        synth.generate(root, small_config(train=10, val=4, ood=3, size_range=(40, 80), object_size=(0.3, 0.6)),
                       progress=False)


def test_without_size_range_the_manifest_names_no_such_field(small_set):
    assert "size_range" not in wio.read_json(small_set / synth.MANIFEST_NAME)["config"]
    assert "size" not in synth.read_records(small_set)[0]
    assert all(small_config().image_side("train", i) == SMALL["size"] for i in range(3))


# ---------------------------------------------------------------------------------------------
# Layout and agreement between files


def test_layout_is_complete_and_readable(small_set):
    root = small_set
    config = small_config()
    classes = (root / "classes.txt").read_text().split()
    assert classes == ["background", *synth.CLASS_NAMES[: config.classes]]
    train, val = split_ids(root, "train"), split_ids(root, "val")
    assert len(train) == config.train and len(val) == config.val
    assert split_ids(root, "trainval") == train + val
    assert not set(train) & set(val)
    for name in train + val:
        image = wio.read_image(root / "JPEGImages" / f"{name}.jpg")
        assert image.shape == (config.size, config.size, 3)
        for folder in ("SegmentationClass", "SegmentationObject", "SynthParts", "SynthContext"):
            labels = wio.read_label_png(root / folder / f"{name}.png")
            assert labels.shape == image.shape[:2], folder
        labels = wio.read_label_png(root / "SegmentationClass" / f"{name}.png")
        assert labels.max() <= config.classes and labels.max() >= 1  # every image has an object
    manifest = wio.read_json(root / synth.MANIFEST_NAME)
    assert manifest["version"] == synth.SYNTH_VERSION
    assert manifest["config"] == config.to_dict()
    assert SynthConfig.from_dict(manifest["config"]) == config
    assert manifest["classes"] == classes
    assert [d["name"] for d in manifest["class_descriptions"]] == classes[1:]
    assert manifest["context_classes"] == {"boat": "water", "train": "rail"}
    assert not (root / synth.PARTIAL_NAME).exists()


def test_xml_boxes_are_tight_boxes_of_the_instance_masks(small_set):
    root = small_set
    classes = (root / "classes.txt").read_text().split()
    records = records_by_id(root)
    for name in split_ids(root, "trainval"):
        labels = wio.read_label_png(root / "SegmentationClass" / f"{name}.png")
        instances = wio.read_label_png(root / "SegmentationObject" / f"{name}.png")
        tree = ET.parse(root / "Annotations" / f"{name}.xml").getroot()
        assert tree.findtext("filename") == f"{name}.jpg"
        size = tree.find("size")
        assert (int(size.findtext("width")), int(size.findtext("height")), int(size.findtext("depth"))) == (
            labels.shape[1], labels.shape[0], 3)  # fmt: skip
        objects = tree.findall("object")
        assert len(objects) == len(records[name]["objects"]) == instances.max() >= 1
        assert set(np.unique(instances)) == set(range(len(objects) + 1))
        for number, obj in enumerate(objects, start=1):
            assert obj.findtext("difficult") == "0"
            box = [int(obj.find("bndbox").findtext(t)) for t in ("xmin", "ymin", "xmax", "ymax")]
            ys, xs = np.nonzero(instances == number)
            # VOC: 1-based, inclusive.
            assert box == [xs.min() + 1, ys.min() + 1, xs.max() + 1, ys.max() + 1]
            assert 1 <= box[0] <= box[2] <= labels.shape[1] and 1 <= box[1] <= box[3] <= labels.shape[0]
            assert box == records[name]["objects"][number - 1]["box"]
            # The instance is exactly one class, the XML's.
            assert set(np.unique(labels[instances == number])) == {classes.index(obj.findtext("name"))}
        assert ((labels > 0) == (instances > 0)).all()


def test_the_project_readers_load_the_set(small_set):
    voc = pytest.importorskip("wsss.data.voc")
    ood = pytest.importorskip("wsss.data.ood")
    config = small_config()
    for split, count in (("train", config.train), ("val", config.val)):
        from_masks = voc.VOCDataset(small_set, split=split, label_source="masks")
        from_xml = voc.VOCDataset(small_set, split=split, label_source="xml")
        assert len(from_masks) == count and from_masks.has_masks
        assert from_masks.classes == ["background", *synth.CLASS_NAMES[: config.classes]]
        report = from_masks.validate(boxes=True)
        assert report.images == report.masks == report.xml_files == count
        for name in from_masks.ids:
            assert from_masks.image_labels(name).tolist() == from_xml.image_labels(name).tolist()
            boxes, classes = from_masks.boxes(name)
            instances = wio.read_label_png(small_set / "SegmentationObject" / f"{name}.png")
            ys, xs = np.nonzero(instances == 1)
            # design.md: 0-based x0 = xmin - 1, exclusive x1 = xmax.
            assert boxes[0].tolist() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
    images = ood.OoDImages(small_set / "ood" / "ood.txt")
    assert len(images) == config.ood and images[0].shape == (config.size, config.size, 3)


def test_masks_agree_exactly_with_the_drawn_pixels():
    config = small_config(noise_std=0.0, size=96)
    drawer = synth.SceneDrawer(config)
    checked = 0
    for index in range(8):
        scene = drawer.scene(synth.image_rng(config.seed, "train", index), "x")
        for number, obj in enumerate(scene.drawn, start=1):
            paint = np.zeros((config.size, config.size, 3), np.float32)
            paint[obj.window] = obj.colour
            expected = np.clip(np.rint(paint), 0, 255).astype(np.uint8)
            shown = scene.instances == number
            assert shown.any()
            assert (scene.image[shown] == expected[shown]).all()
            # Wherever the object is hidden, a later object is on top.
            hidden = obj.mask & ~shown
            assert (scene.instances[hidden] > number).all()
            checked += 1
    assert checked >= 8


def test_ood_images_show_a_context_and_no_object(larger_set):
    root = larger_set
    listed = (root / "ood" / "ood.txt").read_text().split()
    assert len(listed) == 120 and all(p.startswith("JPEGImages/") for p in listed)
    records = {r["id"]: r for r in synth.read_records(root) if r["split"] == "ood"}
    with_context = 0
    for relative in listed:
        image = wio.read_image(root / "ood" / relative)
        name = Path(relative).stem
        record = records[name]
        assert record["objects"] == [] and record["classes"] == []
        context = wio.read_label_png(root / "ood" / "SynthContext" / f"{name}.png")
        assert context.shape == image.shape[:2]
        assert set(np.unique(context)) - {0} == set(record["contexts"])
        if record["contexts"]:
            with_context += 1
            assert (context > 0).mean() > 0.1  # a context covers a good part of the image
    assert with_context / len(listed) == pytest.approx(SynthConfig().ood_context_rate, abs=0.1)
    assert wio.read_json(root / synth.MANIFEST_NAME)["statistics"]["ood_with_context"] == pytest.approx(
        with_context / len(listed), abs=1e-4)  # fmt: skip


# ---------------------------------------------------------------------------------------------
# The phenomena


def test_context_co_occurs_with_its_class(larger_set):
    config = SynthConfig()
    manifest = wio.read_json(larger_set / synth.MANIFEST_NAME)
    stats = manifest["statistics"]["context"]
    assert set(stats) == {"boat", "train"}
    records = [r for r in synth.read_records(larger_set) if r["split"] == "train"]
    for name, entry in stats.items():
        owner = synth.CLASS_NAMES.index(name) + 1
        with_class = [owner in r["contexts"] for r in records if owner in r["classes"]]
        without = [owner in r["contexts"] for r in records if owner not in r["classes"]]
        assert entry["rate_with_class"] == pytest.approx(np.mean(with_class), abs=1e-4)
        assert entry["rate_without_class"] == pytest.approx(np.mean(without), abs=1e-4)
        assert len(with_class) > 50
        assert np.mean(with_class) == pytest.approx(config.context_rate, abs=0.08)
        assert np.mean(without) == pytest.approx(config.context_false_rate, abs=0.04)
    # The context maps on disk agree with the records.
    for record in records[:60]:
        context = wio.read_label_png(larger_set / "SynthContext" / f"{record['id']}.png")
        assert set(np.unique(context)) - {0} <= set(record["contexts"])


def test_context_is_background_and_never_under_an_object(larger_set):
    for name in split_ids(larger_set, "train")[:80]:
        context = wio.read_label_png(larger_set / "SynthContext" / f"{name}.png")
        labels = wio.read_label_png(larger_set / "SegmentationClass" / f"{name}.png")
        assert not ((context > 0) & (labels > 0)).any()


def test_parts_are_a_small_share_of_their_object_and_inside_its_mask(small_set):
    config = small_config()
    records = records_by_id(small_set)
    fractions = []
    for name in split_ids(small_set, "trainval"):
        labels = wio.read_label_png(small_set / "SegmentationClass" / f"{name}.png")
        instances = wio.read_label_png(small_set / "SegmentationObject" / f"{name}.png")
        parts = wio.read_label_png(small_set / "SynthParts" / f"{name}.png")
        assert (parts[parts > 0] == labels[parts > 0]).all()  # inside the mask of its own class
        for number, obj in enumerate(records[name]["objects"], start=1):
            mine = instances == number
            part = int((parts[mine] > 0).sum())
            assert part == obj["part_area"] and mine.sum() == obj["area"]
            assert part >= config.min_part_visible * obj["full_part_area"] > 0
            fractions.append(part / mine.sum())
    low, high = config.part_fraction
    assert 0.03 < min(fractions) and max(fractions) < 0.35
    assert low - 0.02 < np.mean(fractions) < high + 0.02
    stats = wio.read_json(small_set / synth.MANIFEST_NAME)["statistics"]
    assert stats["part_fraction"] == pytest.approx(np.mean(fractions), abs=1e-3)


def test_part_position_moves_the_part_between_the_rim_and_the_middle():
    def part_offsets(position):
        """Distance from each object's centroid to its part's centroid, over the object's size."""
        drawer = synth.SceneDrawer(small_config(part_position=position, noise_std=0.0))
        offsets = []
        for index in range(30):
            for obj in drawer.scene(synth.image_rng(0, "train", index), "x").drawn:
                ys, xs = np.nonzero(obj.mask)
                part_ys, part_xs = np.nonzero(obj.part)
                offset = np.hypot(part_ys.mean() - ys.mean(), part_xs.mean() - xs.mean())
                offsets.append(offset / np.sqrt(obj.mask.sum()))
        return np.asarray(offsets)

    rim, middle = part_offsets((0.5, 1.0)), part_offsets((0.0, 0.5))
    assert len(rim) > 30 and len(middle) > 30
    # Measured at 64 px: medians 0.43 (rim) and 0.28 (middle) of the object's side sqrt(area).
    assert np.median(middle) < 0.35 < np.median(rim)
    assert np.median(rim) - np.median(middle) > 0.1


def test_objects_are_not_box_shaped(small_set):
    fills = []
    for name in split_ids(small_set, "trainval"):
        instances = wio.read_label_png(small_set / "SegmentationObject" / f"{name}.png")
        for number in range(1, instances.max() + 1):
            ys, xs = np.nonzero(instances == number)
            fills.append(ys.size / ((ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)))
    assert np.mean(fills) < 0.75
    stats = wio.read_json(small_set / synth.MANIFEST_NAME)["statistics"]
    assert stats["fill_ratio"] == pytest.approx(np.mean(fills), abs=1e-3)


def test_objects_keep_enough_visible_area_and_images_are_never_empty():
    # Hard placement: huge objects that must stay whole, two tries each.
    config = small_config(object_size=(0.9, 1.0), min_visible=1.0, min_part_visible=1.0,
                          placement_attempts=2, objects_per_image=(0.0, 0.0, 1.0))  # fmt: skip
    drawer = synth.SceneDrawer(config)
    for index in range(10):
        scene = drawer.scene(synth.image_rng(0, "train", index), "x")
        assert len(scene.drawn) >= 1
        for obj in scene.drawn:
            assert obj.visible.sum() == obj.full_area
    config = small_config()
    drawer = synth.SceneDrawer(config)
    for index in range(20):
        scene = drawer.scene(synth.image_rng(0, "train", index), "x")
        for obj in scene.record["objects"]:
            assert obj["area"] >= config.min_visible * obj["full_area"]


def test_several_objects_and_classes_per_image(larger_set):
    stats = wio.read_json(larger_set / synth.MANIFEST_NAME)["statistics"]
    assert 1.4 < stats["objects_per_image"] < 2.2
    assert 1.2 < stats["classes_per_image"] < stats["objects_per_image"]
    assert 0.2 < stats["occluded_or_truncated"] < 0.9


def test_class_definitions_follow_k_and_the_evidence_knobs():
    for k in (2, 3, 8, 20, len(synth.CLASS_NAMES)):
        specs = synth.class_specs(SynthConfig(classes=k))
        assert [s.id for s in specs] == list(range(1, k + 1))
        # Parts are unique per class; bodies are shared by groups of several classes.
        assert len({(s.part_pattern, s.part_colour, s.part_angle) for s in specs}) == k
        groups = [s.body_group for s in specs]
        assert max(groups.count(g) for g in set(groups)) <= SynthConfig().classes_per_body_group
        assert len(set(groups)) == math.ceil(k / SynthConfig().classes_per_body_group)
        assert sum(s.context is not None for s in specs) == min(2, k // 2)
    # body_evidence scales the class-specific body hue bias; zero leaves only the group hue.
    flat = synth.class_specs(SynthConfig(body_evidence=0.0))
    weak = synth.class_specs(SynthConfig(body_evidence=0.3))
    strong = synth.class_specs(SynthConfig(body_evidence=1.0))
    hues = synth.body_group_hues(2)
    assert all(s.body_hue == pytest.approx(hues[s.body_group]) for s in flat)

    def spread(specs):
        return max(abs((s.body_hue - hues[s.body_group] + 0.5) % 1 - 0.5) for s in specs)

    assert spread(strong) == pytest.approx(spread(weak) / 0.3, rel=1e-3)
    assert spread(strong) > 0.1


@pytest.mark.parametrize("k", [2, 13])
def test_any_class_count_generates_valid_labels(tmp_path, k):
    config = small_config(classes=k, train=10, val=0, ood=2)
    root = synth.generate(tmp_path / "set", config, progress=False)
    seen = set()
    for name in split_ids(root, "train"):
        labels = wio.read_label_png(root / "SegmentationClass" / f"{name}.png")
        assert labels.max() <= k
        seen |= set(np.unique(labels).tolist())
    assert len(seen) > 2
    assert len((root / "classes.txt").read_text().split()) == k + 1


# ---------------------------------------------------------------------------------------------
# Drawing helpers against straightforward references


def _inside_polygon_reference(x: float, y: float, vertices: list[tuple[float, float]]) -> bool:
    inside = False
    for (x0, y0), (x1, y1) in zip(vertices, vertices[1:] + vertices[:1]):
        if (y0 > y) != (y1 > y) and x < x0 + (y - y0) * (x1 - x0) / (y1 - y0):
            inside = not inside
    return inside


def test_polygon_mask_matches_ray_casting():
    rng = np.random.default_rng(3)
    grid = np.linspace(-1.05, 1.05, 37)
    u, v = np.meshgrid(grid, grid)
    for _ in range(5):
        params = synth.sample_shape_params(rng, "polygon")
        vertices = [(r * math.cos(a), r * math.sin(a)) for a, r in zip(params["angles"], params["radii"])]
        mask = synth.shape_mask("polygon", u, v, params)
        reference = np.array([[_inside_polygon_reference(x, y, vertices) for x in grid] for y in grid])
        assert (mask != reference).sum() <= 2  # points exactly on an edge may go either way


def test_every_shape_lies_inside_the_unit_disc_and_is_not_empty():
    rng = np.random.default_rng(0)
    grid = np.linspace(-1.5, 1.5, 121)
    u, v = np.meshgrid(grid, grid)
    for family in synth.SHAPE_FAMILIES + synth.CLUTTER_SHAPES:
        for _ in range(5):
            mask = synth.shape_mask(family, u, v, synth.sample_shape_params(rng, family))
            assert mask.mean() > 0.03, family
            assert not mask[u * u + v * v > 1.0 + 1e-6].any(), family


def test_nearest_pixels_takes_a_disc_clipped_to_the_mask():
    mask = np.zeros((20, 20), bool)
    mask[5:15, 2:18] = True
    part = synth.nearest_pixels(mask, (5, 2), 12)
    assert part.sum() == 12 and not (part & ~mask).any()
    ys, xs = np.nonzero(part)
    assert np.hypot(ys - 5, xs - 2).max() < 4.5


# ---------------------------------------------------------------------------------------------
# The command


def test_cli_generates_then_reports_nothing_to_do(tmp_path, capsys):
    root = tmp_path / "cli"
    argv = ["synth", str(root), "--train", "4", "--val", "2", "--ood", "2", "--size", "48", "--no-progress",
            "--set", "body_evidence=0.5", "--set", "part_fraction=[0.1, 0.15]"]  # fmt: skip
    assert cli_main(argv) == 0
    manifest = wio.read_json(root / synth.MANIFEST_NAME)
    assert manifest["config"]["body_evidence"] == 0.5
    assert manifest["config"]["part_fraction"] == [0.1, 0.15]
    assert "boat" in capsys.readouterr().out
    assert cli_main(argv) == 0
    assert "nothing to do" in capsys.readouterr().out
    assert cli_main(argv[:-1] + ["part_fraction=[0.1, 0.2]"]) == 2
    assert "different config" in capsys.readouterr().err


def test_cli_rejects_unknown_fields_and_bad_values(tmp_path, capsys):
    assert cli_main(["synth", str(tmp_path / "a"), "--set", "no_such_knob=1"]) == 2
    assert "no_such_knob" in capsys.readouterr().err
    assert cli_main(["synth", str(tmp_path / "b"), "--classes", "1"]) == 2
    assert "classes" in capsys.readouterr().err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
