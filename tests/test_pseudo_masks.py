"""Pseudo masks from stored maps and boundary maps (``wsss.refine.pseudo_masks``)."""

from __future__ import annotations

import numpy as np
import pytest

from wsss.errors import ConfigError, DataError
from wsss.io import read_label_png
from wsss.refine.pseudo_masks import make_pseudo_masks
from wsss.refine.random_walk import propagate_to_labels
from wsss.stores.edges import EdgeStore
from wsss.stores.maps import LocalizationMaps, MapStore, strided_size


def _store_maps(fixture, store: MapStore, rng: np.random.Generator) -> dict:
    """Maps that follow each image's rectangles, plus noise; returns id -> maps."""
    written = {}
    for image_id in fixture.ids:
        height, width = fixture.sizes[image_id]
        keys = np.asarray(fixture.labels[image_id], dtype=np.int64)
        high = rng.uniform(0, 0.1, size=(len(keys), height, width)).astype(np.float32)
        for class_id, x0, y0, x1, y1 in fixture.objects[image_id]:
            high[list(keys).index(class_id), y0:y1, x0:x1] = 1.0
        h, w = strided_size(height, width)
        strided = high[:, ::4, ::4][:, :h, :w]
        maps = LocalizationMaps(keys=keys, strided=strided, high_res=high)
        store.save(image_id, maps)
        written[image_id] = maps
    return written


def _edges(fixture, folder, value: float = 0.0) -> None:
    for image_id in fixture.ids:
        h, w = strided_size(*fixture.sizes[image_id])
        EdgeStore(folder).save(image_id, np.full((h, w), value, dtype=np.float32))


def test_pseudo_masks_equal_the_per_image_walk_and_resume(voc_fixture, voc_dataset, tmp_path) -> None:
    rng = np.random.default_rng(0)
    store = MapStore(tmp_path / "maps")
    _store_maps(voc_fixture, store, rng)
    _edges(voc_fixture, tmp_path / "edges")
    out = tmp_path / "pseudo"
    assert make_pseudo_masks(voc_dataset, store.directory, tmp_path / "edges", out, cam_power=1.5,
                             bg_threshold=0.3, exp_times=3, progress=False) == len(voc_fixture.ids)
    for image_id in voc_fixture.ids:
        label = read_label_png(out / f"{image_id}.png")
        m = store.load(image_id)  # as stored (float16)
        h, w = m.strided.shape[1:]
        expected = propagate_to_labels(m.strided.astype(np.float32), m.keys, np.zeros((h, w), np.float32),
                                       m.image_size, cam_power=1.5, bg_threshold=0.3, exp_times=3)
        np.testing.assert_array_equal(label, expected)
        assert set(np.unique(label)) <= {0, *m.keys.tolist()}
        assert (label > 0).any()  # the objects' maps are high: some foreground survives
    # a second call finds everything done
    assert make_pseudo_masks(voc_dataset, store.directory, tmp_path / "edges", out, progress=False) == 0
    (out / f"{voc_fixture.ids[0]}.png").unlink()
    assert make_pseudo_masks(voc_dataset, store.directory, tmp_path / "edges", out, cam_power=1.5,
                             bg_threshold=0.3, exp_times=3, progress=False) == 1


def test_maps_of_another_image_are_refused(voc_fixture, voc_dataset, tmp_path) -> None:
    rng = np.random.default_rng(1)
    store = MapStore(tmp_path / "maps")
    maps = _store_maps(voc_fixture, store, rng)
    _edges(voc_fixture, tmp_path / "edges")
    first, second = voc_fixture.ids[:2]
    store.save(first, maps[second])  # image sizes differ between fixture images
    with pytest.raises(DataError, match="another image") as info:
        make_pseudo_masks(voc_dataset, store.directory, tmp_path / "edges", tmp_path / "pseudo", progress=False)
    assert first in str(info.value)
    assert not (tmp_path / "pseudo" / f"{first}.png").exists()


def test_missing_or_bad_boundary_maps_are_errors(voc_fixture, voc_dataset, tmp_path) -> None:
    rng = np.random.default_rng(2)
    store = MapStore(tmp_path / "maps")
    _store_maps(voc_fixture, store, rng)
    (tmp_path / "edges").mkdir()
    with pytest.raises(DataError, match="no boundary map"):
        make_pseudo_masks(voc_dataset, store.directory, tmp_path / "edges", tmp_path / "pseudo", progress=False)
    first = voc_fixture.ids[0]
    EdgeStore(tmp_path / "edges").save(first, np.zeros((3, 3), np.float32))  # wrong size
    with pytest.raises(DataError, match=first):
        make_pseudo_masks(voc_dataset, store.directory, tmp_path / "edges", tmp_path / "pseudo",
                          ids=[first], progress=False)


def test_nan_in_a_map_is_an_error_naming_it(voc_fixture, voc_dataset, tmp_path) -> None:
    rng = np.random.default_rng(3)
    store = MapStore(tmp_path / "maps")
    maps = _store_maps(voc_fixture, store, rng)
    _edges(voc_fixture, tmp_path / "edges")
    first = voc_fixture.ids[0]
    bad = maps[first]
    strided = bad.strided.copy()
    strided[0, 0, 0] = np.nan
    path = store.path(first)
    np.savez_compressed(path, keys=bad.keys, strided=strided.astype(np.float16),
                        high_res=bad.high_res.astype(np.float16))
    with pytest.raises(DataError) as info:
        make_pseudo_masks(voc_dataset, store.directory, tmp_path / "edges", tmp_path / "pseudo",
                          ids=[first], progress=False)
    assert first in str(info.value)


def test_a_label_free_background_threshold_is_chosen_from_the_walked_scores_alone(
        voc_fixture, voc_dataset, tmp_path) -> None:
    import json

    import torch

    from wsss.refine.pseudo_masks import chosen_bg_threshold
    from wsss.refine.random_walk import propagate_scores
    from wsss.refine.thresholds import histogram_edges, li_threshold, score_histogram

    rng = np.random.default_rng(4)
    store = MapStore(tmp_path / "maps")
    _store_maps(voc_fixture, store, rng)
    _edges(voc_fixture, tmp_path / "edges")
    out = tmp_path / "pseudo"
    assert make_pseudo_masks(voc_dataset, store.directory, tmp_path / "edges", out, bg_threshold="li",
                             exp_times=3, progress=False) == len(voc_fixture.ids)
    # The threshold is Li's on the histogram of every image's best walked score: no mask read.
    best = []
    for image_id in voc_fixture.ids:
        m = store.load(image_id)
        h, w = m.strided.shape[1:]
        scores = propagate_scores(m.strided.astype(np.float32), m.keys, np.zeros((h, w), np.float32),
                                  m.image_size, exp_times=3)
        best.append(torch.amax(scores, dim=0).numpy().ravel())
    expected = li_threshold(score_histogram(np.concatenate(best)), histogram_edges())
    record = chosen_bg_threshold(out)
    assert record["rule"] == "li" and record["uses_ground_truth"] is False
    assert record["bg_threshold"] == pytest.approx(expected) and 0 < expected < 1
    # The masks are those of that numeric threshold.
    numeric = tmp_path / "numeric"
    make_pseudo_masks(voc_dataset, store.directory, tmp_path / "edges", numeric, bg_threshold=expected,
                      exp_times=3, progress=False)
    for image_id in voc_fixture.ids:
        np.testing.assert_array_equal(read_label_png(out / f"{image_id}.png"),
                                      read_label_png(numeric / f"{image_id}.png"))
    assert chosen_bg_threshold(numeric) is None
    # Resuming after a kill in the second pass recomputes the same threshold from the first pass's files.
    (out / f"{voc_fixture.ids[0]}.png").unlink()
    (out / ".bg_threshold.json").unlink()
    assert make_pseudo_masks(voc_dataset, store.directory, tmp_path / "edges", out, bg_threshold="li",
                             exp_times=3, progress=False) == 1
    assert json.loads((out / ".bg_threshold.json").read_text())["bg_threshold"] == pytest.approx(expected)
    with pytest.raises(ConfigError, match="label-free threshold rule"):
        make_pseudo_masks(voc_dataset, store.directory, tmp_path / "edges", out, bg_threshold="median",
                          progress=False)


def test_the_edges_rule_for_the_walk_reads_the_images(voc_fixture, voc_dataset, tmp_path) -> None:
    import torch

    from wsss.refine.pseudo_masks import chosen_bg_threshold
    from wsss.refine.random_walk import propagate_scores
    from wsss.refine.thresholds import EdgeAlignment

    rng = np.random.default_rng(6)
    store = MapStore(tmp_path / "maps")
    _store_maps(voc_fixture, store, rng)
    _edges(voc_fixture, tmp_path / "edges")
    out = tmp_path / "pseudo"
    make_pseudo_masks(voc_dataset, store.directory, tmp_path / "edges", out, bg_threshold="edges",
                      exp_times=2, progress=False)
    alignment = EdgeAlignment()
    for image_id in voc_fixture.ids:
        m = store.load(image_id)
        h, w = m.strided.shape[1:]
        scores = propagate_scores(m.strided.astype(np.float32), m.keys, np.zeros((h, w), np.float32),
                                  m.image_size, exp_times=2)
        best, channel = torch.max(scores, dim=0)
        alignment.update(voc_dataset.load_image(image_id), best.numpy(), m.keys[channel.numpy()])
    record = chosen_bg_threshold(out)
    assert record["rule"] == "edges" and record["bg_threshold"] == pytest.approx(alignment.threshold())
