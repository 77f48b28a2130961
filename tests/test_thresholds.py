"""Label-free threshold rules on score histograms (wsss.refine.thresholds)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from wsss.errors import ConfigError
from wsss.refine.thresholds import (
    HISTOGRAM_RULES,
    EdgeAlignment,
    histogram_edges,
    histogram_threshold,
    li_threshold,
    otsu_threshold,
    score_histogram,
    triangle_threshold,
)


def class_map_scores(rng: np.random.Generator, foreground: float = 0.25, count: int = 40000) -> np.ndarray:
    """Scores shaped like a normalised class map's: most pixels near 0 (background, exponential
    with mean 0.03), a foreground share spread over (0.1, 1) with a mode near 0.3."""
    n_fg = int(count * foreground)
    background = rng.exponential(0.03, count - n_fg)
    fg = 0.1 + rng.beta(2.0, 3.5, n_fg) * 0.9
    return np.clip(np.concatenate([background, fg]), 0, 1)


def brute_force_li(values: np.ndarray, bins: int = 256) -> float:
    """Li's criterion by a direct loop over the splits, from the pixel values binned to centres."""
    edges = histogram_edges(bins)
    centres = (edges[:-1] + edges[1:]) / 2
    binned = centres[np.clip(np.floor(values * bins), 0, bins - 1).astype(int)]
    best, best_cost = None, math.inf
    for split in range(1, bins):
        low, high = binned[binned < edges[split]], binned[binned >= edges[split]]
        if low.size == 0 or high.size == 0 or low.sum() == 0:
            continue
        cost = -low.sum() * math.log(low.mean()) - high.sum() * math.log(high.mean())
        if cost < best_cost - 1e-9:
            best, best_cost = edges[split], cost
    return best


def test_li_equals_its_definition_computed_pixel_by_pixel():
    values = class_map_scores(np.random.default_rng(0), count=4000)
    assert li_threshold(score_histogram(values), histogram_edges()) == pytest.approx(brute_force_li(values))


def test_on_class_map_scores_li_and_triangle_sit_near_the_foreground_edge_and_otsu_above_it():
    # Foreground scores start at 0.1: a good threshold lies near there, in the background's tail.
    rng = np.random.default_rng(1)
    values = class_map_scores(rng)
    counts, edges = score_histogram(values), histogram_edges()
    li, otsu, triangle = (rule(counts, edges) for rule in (li_threshold, otsu_threshold, triangle_threshold))
    assert 0.05 < li < 0.2
    assert 0.03 < triangle < 0.2
    assert otsu > li
    # Move every score above 0.1 up to (0.4, 1): Li's threshold falls in the empty gap between.
    separated = np.where(values > 0.1, 0.4 + (values - 0.1) * 0.6 / 0.9, values)
    assert 0.1 <= li_threshold(score_histogram(separated), edges) <= 0.4


def test_otsu_on_a_bimodal_sample_lands_between_the_modes():
    rng = np.random.default_rng(0)
    values = np.clip(np.concatenate([rng.normal(0.15, 0.04, 30000), rng.normal(0.75, 0.06, 10000)]), 0, 1)
    assert 0.3 < otsu_threshold(score_histogram(values), histogram_edges()) < 0.6
    assert 0.3 < li_threshold(score_histogram(values), histogram_edges()) < 0.6


def test_otsu_in_the_middle_of_an_empty_gap():
    counts = np.zeros(10)
    counts[2] = 5
    counts[7] = 5
    edges = np.linspace(0, 1, 11)
    # Mass in [0.2, 0.3) and [0.7, 0.8): every edge from 0.3 to 0.7 separates them; take 0.5.
    assert otsu_threshold(counts, edges) == pytest.approx(0.5)


def test_triangle_mirrors_a_histogram_whose_tail_lies_below_its_peak():
    rng = np.random.default_rng(2)
    values = class_map_scores(rng)
    counts, edges = score_histogram(values), histogram_edges()
    t = triangle_threshold(counts, edges)
    # The same histogram reversed (scores 1 - x): the threshold mirrors to 1 - t.
    assert triangle_threshold(counts[::-1].copy(), edges) == pytest.approx(1 - t, abs=1 / 256 + 1e-12)


@pytest.mark.parametrize("rule", HISTOGRAM_RULES)
def test_a_histogram_with_one_occupied_bin_gives_nan(rule):
    counts = np.zeros(8)
    counts[3] = 10
    assert math.isnan(histogram_threshold(counts, np.linspace(0, 1, 9), rule))


def test_bad_input():
    with pytest.raises(ConfigError, match="must be one of edges, li, otsu, triangle"):
        histogram_threshold(np.ones(4), np.linspace(0, 1, 5), "kmeans")
    with pytest.raises(ConfigError, match="not a histogram rule"):
        histogram_threshold(np.ones(4), np.linspace(0, 1, 5), "edges")
    with pytest.raises(ValueError, match="B counts and B \\+ 1 edges"):
        li_threshold(np.ones(4), np.linspace(0, 1, 4))
    with pytest.raises(ValueError, match="non-negative counts"):
        otsu_threshold(np.array([1.0, -1.0, 2.0]), np.linspace(0, 1, 4))
    # Scores that are all 0: nothing to take a logarithm of.
    counts = np.zeros(8)
    counts[0] = 5
    assert math.isnan(li_threshold(counts, np.linspace(0, 1, 9)))


def test_score_histogram_clips_and_drops_non_finite_values():
    counts = score_histogram(np.array([-0.5, 0.0, 0.5, 1.0, 1.5, np.nan, np.inf]), bins=4)
    assert counts.tolist() == [2, 0, 1, 2]


# ---------------------------------------------------------------- edges


def object_scene(size: int = 96, part: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """An image with one flat disc (an object) on a flat background, a striped "part" inside the
    disc, and a class map that peaks on the part and decays over the disc, as a CAM does:
    (image uint8 (H, W, 3), map (H, W) in [0, 1])."""
    yy, xx = np.mgrid[:size, :size].astype(np.float64)
    centre, radius = size / 2, size / 3
    distance = np.hypot(yy - centre, xx - centre)
    image = np.full((size, size, 3), (80, 100, 70), dtype=np.uint8)  # the body differs only a little
    image[distance < radius] = (125, 110, 80)
    part_centre = (centre, centre + radius - part - 2)
    part_distance = np.hypot(yy - part_centre[0], xx - part_centre[1])
    stripes = (xx // 3) % 2 == 0
    image[(part_distance < part) & stripes] = (250, 250, 20)
    image[(part_distance < part) & ~stripes] = (20, 20, 250)
    # 1 on the part, decaying over the body to ~0.2 at the far rim; outside, from 0.12 at the
    # rim down to 0 within a few pixels: thresholds between 0.12 and 0.2 give the disc.
    inside = 0.2 + 0.8 * np.exp(-part_distance / (radius * 0.4))
    outside = 0.12 * np.exp(-np.maximum(distance - radius, 0) / 3)
    score = np.where(distance < radius, inside, outside)
    return image, score.astype(np.float64)


def brute_force_alignment(image: np.ndarray, best: np.ndarray, class_ids: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """The contour's mean edge strength at each threshold, by labelling the image at each one."""
    from wsss.refine.thresholds import edge_strength

    strength = edge_strength(image)
    out = []
    for t in grid:
        labels = np.where(best > t, class_ids, 0)
        total = count = 0.0
        for axis in (0, 1):
            a = [slice(None), slice(None)]
            b = [slice(None), slice(None)]
            a[axis], b[axis] = slice(None, -1), slice(1, None)
            differ = labels[tuple(a)] != labels[tuple(b)]
            weight = 0.5 * (strength[tuple(a)] + strength[tuple(b)])
            total += weight[differ].sum()
            count += differ.sum()
        out.append(total / count if count else np.nan)
    return np.array(out)


def test_edge_alignment_equals_the_contours_labelled_at_each_threshold():
    rng = np.random.default_rng(5)
    image = rng.integers(0, 256, (20, 24, 3)).astype(np.uint8)
    best = np.round(rng.random((20, 24)), 2)  # ties with the grid's thresholds happen
    class_ids = rng.integers(1, 4, (20, 24))
    alignment = EdgeAlignment()
    alignment.update(image, best, class_ids)
    np.testing.assert_allclose(alignment.curve(), brute_force_alignment(image, best, class_ids, alignment.grid),
                               rtol=1e-5)


def test_the_edges_rule_finds_the_object_outline_not_the_part():
    image, score = object_scene()
    alignment = EdgeAlignment()
    alignment.update(image, score, np.ones(score.shape, dtype=np.int64))
    t = alignment.threshold()
    size = score.shape[0]
    yy, xx = np.mgrid[:size, :size]
    disc = np.hypot(yy - size / 2, xx - size / 2) < size / 3
    mask = score > t
    iou = (mask & disc).sum() / (mask | disc).sum()
    assert iou > 0.85, (t, iou)
    # The global maximum of the alignment sits on the striped part instead.
    global_t = alignment.grid[int(np.nanargmax(alignment.curve()))]
    assert global_t > t and ((score > global_t) & disc).sum() < 0.3 * disc.sum()


def test_edge_alignment_with_no_contour_is_nan():
    alignment = EdgeAlignment()
    assert math.isnan(alignment.threshold())
    image = np.zeros((8, 8, 3), dtype=np.uint8)
    alignment.update(image, np.zeros((8, 8)), np.zeros((8, 8), dtype=np.int64))  # background everywhere
    assert math.isnan(alignment.threshold())
    with pytest.raises(ValueError, match="differ in size"):
        alignment.update(image, np.zeros((8, 9)), np.zeros((8, 9), dtype=np.int64))
