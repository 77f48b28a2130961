"""wsss.refine.random_walk: the sparse IRN random walk against the dense reference, by hand-made
cases, and the pseudo labels of make_sem_seg_labels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from wsss.errors import DataError
from wsss.refine.random_walk import propagate_to_labels, random_walk, random_walk_dense


def random_inputs(channels: int, height: int, width: int, seed: int):
    generator = torch.Generator().manual_seed(seed)
    maps = torch.rand(channels, height, width, generator=generator)
    # Cubed: mostly low boundary values with a few strong ones, so affinities span (0, 1].
    edge = torch.rand(height, width, generator=generator) ** 3
    return maps, edge


CASES = [  # (channels, height, width, exp_times)
    (2, 9, 13, 0),
    (3, 16, 11, 2),
    (4, 12, 12, 8),
    (2, 7, 20, 8),
    (3, 3, 4, 8),  # smaller than the radius: every pair touches the border
    (2, 21, 17, 8),
    (2, 1, 12, 8),  # one row
    (2, 12, 1, 4),  # one column
]


@pytest.mark.parametrize("channels, height, width, exp_times", CASES)
def test_sparse_walk_equals_the_dense_reference(channels, height, width, exp_times):
    maps, edge = random_inputs(channels, height, width, seed=height * width + exp_times)
    exact = random_walk_dense(maps.double(), edge.double(), exp_times=exp_times)
    sparse64 = random_walk(maps.double(), edge.double(), exp_times=exp_times)
    assert sparse64.shape == (channels, height, width) and sparse64.dtype == torch.float64
    assert torch.allclose(sparse64, exact, rtol=0, atol=1e-9)
    # From float32 inputs the sparse walk still accumulates in float64 ...
    sparse32 = random_walk(maps, edge, exp_times=exp_times)
    assert sparse32.dtype == torch.float32
    assert (sparse32.double() - exact).abs().max() < 1e-6
    # ... while the reference's float32 squaring carries its own rounding (a few 1e-5 at 256 steps).
    dense32 = random_walk_dense(maps, edge, exp_times=exp_times)
    assert (dense32.double() - exact).abs().max() < 2e-4
    # And the walk did something: the maps moved.
    assert (exact - maps * (1 - edge)).abs().max() > 1e-3


@pytest.mark.parametrize("height, width", [(9, 13), (7, 5), (1, 6)])
def test_transition_is_a_valid_row_stochastic_csr_matrix(height, width):
    from wsss.refine.random_walk import _sparse_transition

    edge = torch.rand(height, width, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    transition = _sparse_transition(edge, beta=10.0, radius=5)
    # Sorted, in-range columns (torch's CSR invariants), rows summing to one, symmetric pattern.
    with torch.sparse.check_sparse_tensor_invariants():
        torch.sparse_csr_tensor(transition.crow_indices(), transition.col_indices(),
                                transition.values(), transition.shape)
    dense = transition.to_dense()
    assert torch.allclose(dense.sum(dim=1), torch.ones(height * width, dtype=torch.float64))
    assert torch.equal(dense > 0, (dense > 0).t())
    assert transition.values().numel() < 70 * height * width


def test_one_step_averages_over_the_disc_with_beta_weights():
    # A constant boundary c gives every pair the affinity (1 - c) ** beta; one step (exp_times=0)
    # is then (v_j + w * sum of neighbours) / (1 + w * number of neighbours), neighbours being the
    # pixels strictly within the radius on both sides -- computed here pixel by pixel.
    height, width, radius, beta, boundary = 8, 11, 3, 2.0, 0.3
    maps = torch.rand(2, height, width, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    edge = torch.full((height, width), boundary, dtype=torch.float64)
    result = random_walk(maps, edge, beta=beta, exp_times=0, radius=radius)
    weight = (1 - boundary) ** beta
    start = maps * (1 - boundary)
    expected = torch.empty_like(maps)
    for y in range(height):
        for x in range(width):
            total, mass = start[:, y, x].clone(), 1.0
            for yy in range(height):
                for xx in range(width):
                    if 0 < (yy - y) ** 2 + (xx - x) ** 2 < radius ** 2:
                        total += weight * start[:, yy, xx]
                        mass += weight
            expected[:, y, x] = total / mass
    assert torch.allclose(result, expected, rtol=0, atol=1e-12)


def test_walk_stays_within_the_range_of_its_input():
    maps, edge = random_inputs(3, 15, 18, seed=7)
    start = maps * (1 - edge)
    result = random_walk(maps, edge, exp_times=5)
    assert result.min() >= start.min() - 1e-7 and result.max() <= start.max() + 1e-7


def test_a_strong_boundary_stops_the_walk():
    # Two halves separated by a one-pixel boundary column; the map lights the left half only.
    height, width = 20, 24
    maps = torch.zeros(1, height, width)
    maps[0, 5:15, 2:8] = 1.0
    no_edge = torch.zeros(height, width)
    wall = no_edge.clone()
    wall[:, 11] = 0.9
    left, right = slice(0, 11), slice(12, width)

    blocked = random_walk(maps, wall)
    assert blocked[0, :, left].max() > 0.05
    assert blocked[0, :, right].max() < 1e-6 * blocked[0, :, left].max()
    # The mass spread over the whole left side, up to the wall.
    assert blocked[0, :, 10].min() > 0.1 * blocked[0, :, left].max()

    free = random_walk(maps, no_edge)
    assert free[0, :, right].max() > 0.1 * free[0, :, left].max()
    assert free[0, :, right].mean() > 1e3 * max(float(blocked[0, :, right].mean()), 1e-12)


def test_walk_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="edge"):
        random_walk(torch.zeros(2, 5, 6), torch.zeros(5, 7))
    with pytest.raises(ValueError, match="maps"):
        random_walk(torch.zeros(5, 6), torch.zeros(5, 6))
    with pytest.raises(ValueError, match="exp_times"):
        random_walk(torch.zeros(1, 5, 6), torch.zeros(5, 6), exp_times=-1)


def two_regions(weak: float = 0.5):
    """A 40x56 image: two rectangles (classes 3 and 7) at stride 4, each ringed by a boundary."""
    height, width = 40, 56
    strided = np.zeros((2, 10, 14), dtype=np.float32)
    strided[0, 2:8, 2:6] = weak
    strided[1, 2:8, 8:12] = 1.0
    edge = np.zeros((10, 14), dtype=np.float32)
    for top, bottom, first, last in ((1, 8, 1, 6), (1, 8, 7, 12)):
        edge[top, first:last + 1] = edge[bottom, first:last + 1] = 0.95
        edge[top:bottom + 1, first] = edge[top:bottom + 1, last] = 0.95
    return strided, np.array([3, 7]), edge, (height, width)


def test_labels_follow_the_walked_regions():
    strided, keys, edge, size = two_regions()
    labels = propagate_to_labels(strided, keys, edge, size)
    assert labels.dtype == np.uint8 and labels.shape == size
    assert set(np.unique(labels).tolist()) == {0, 3, 7}
    # Interiors (full resolution, away from the upsampling seams) get their class; far away is
    # background; the classes never swap sides.
    assert (labels[12:28, 11:21] == 3).all()
    assert (labels[12:28, 35:45] == 7).all()
    assert (labels[:4] == 0).all() and (labels[:, 52:] == 0).all()
    assert not (labels[:, :28] == 7).any() and not (labels[:, 28:] == 3).any()


def test_background_threshold_and_cam_power():
    strided, keys, edge, size = two_regions(weak=0.5)
    # The weak class is at 0.5 of the global max: above a 0.4 background for power 1, below it
    # for AdvCAM's power 1.5 (0.5 ** 1.5 = 0.35).
    plain = propagate_to_labels(strided, keys, edge, size, bg_threshold=0.4)
    powered = propagate_to_labels(strided, keys, edge, size, bg_threshold=0.4, cam_power=1.5)
    assert (plain[12:28, 11:21] == 3).all()
    assert (powered[12:28, 11:21] == 0).all()
    assert (powered[12:28, 35:45] == 7).all()
    everything_background = propagate_to_labels(strided, keys, edge, size, bg_threshold=1.01)
    assert (everything_background == 0).all()


def test_labels_match_the_reference_steps_on_random_maps():
    # IRN make_sem_seg_labels spelled out with the dense walk: ** power, walk, x4 bilinear, crop,
    # / global max, background channel in front, argmax, keys.
    height, width, power, threshold = 37, 30, 1.3, 0.3
    maps, edge = random_inputs(3, 10, 8, seed=11)
    keys = np.array([2, 5, 9])
    walked = random_walk_dense(maps.double() ** power, edge.double())
    up = F.interpolate(walked[None], size=(40, 32), mode="bilinear", align_corners=False)[0]
    up = up[:, :height, :width] / up[:, :height, :width].max()
    scores = torch.cat([torch.full((1, height, width), threshold, dtype=up.dtype), up])
    expected = np.array([0, 2, 5, 9])[scores.argmax(0).numpy()]
    labels = propagate_to_labels(maps.numpy().astype(np.float16), keys, edge.numpy(), (height, width),
                                 cam_power=power, bg_threshold=threshold, device=torch.device("cpu"))
    # float16 storage of the maps may flip a pixel sitting on a tie; nearly all must agree.
    assert (labels == expected).mean() > 0.99
    assert len(np.unique(labels)) >= 3


def test_no_classes_or_zero_maps_give_background():
    edge = np.zeros((3, 4), dtype=np.float32)
    empty = propagate_to_labels(np.zeros((0, 3, 4), np.float32), np.zeros(0, np.int64), edge, (12, 13))
    assert empty.shape == (12, 13) and (empty == 0).all()
    zero = propagate_to_labels(np.zeros((1, 3, 4), np.float32), np.array([4]), edge, (12, 13))
    assert (zero == 0).all()


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda s, k, e: (s, k, e[:, :-1]), "boundary map"),
        (lambda s, k, e: (s[:, :, :-1], k, e[:, :-1]), "image needs"),
        (lambda s, k, e: (s, k[:1], e), "1 keys for 2 map channels"),
        (lambda s, k, e: (s, np.array([0, 7]), e), "keys must be class ids"),
        (lambda s, k, e: (np.where(s > 0.9, np.nan, s), k, e), "NaN"),
        (lambda s, k, e: (s, k, np.where(e > 0.9, np.nan, e)), "boundary map contains NaN"),
        (lambda s, k, e: (s - 0.1, k, e), "non-negative"),
        (lambda s, k, e: (s, k, e + 0.5), r"\[0, 1\]"),
        (lambda s, k, e: (s[0], k, e), r"\(C, h, w\)"),
    ],
)
def test_bad_inputs_raise_one_line_data_errors(change, message):
    strided, keys, edge, size = two_regions()
    strided, keys, edge = change(strided, keys, edge)
    where = Path("maps/advcam/2007_000032.npz")
    with pytest.raises(DataError, match=message) as caught:
        propagate_to_labels(strided, keys, edge, size, where=where)
    assert caught.value.path == where
    assert str(caught.value).startswith(str(where)) and "\n" not in str(caught.value)


# ---------------------------------------------------------------------------------------------
# Steps that follow the image (scale="image")


def test_walk_steps_follow_the_grid_area():
    from wsss.errors import ConfigError
    from wsss.refine.random_walk import REFERENCE_GRID, walk_steps

    assert REFERENCE_GRID == (94, 125)  # the stride-4 grid of a 500 x 375 VOC image
    assert walk_steps(8, (94, 125), "image") == 256 == walk_steps(8, (94, 125))
    assert walk_steps(4, (94, 125), "image") == 16
    # the formula elsewhere: 256 * h * w / 11750, to the nearest integer, at least 1
    assert walk_steps(8, (32, 32), "image") == round(256 * 1024 / 11750) == 22
    assert walk_steps(8, (188, 250), "image") == 1024
    assert walk_steps(8, (1, 1), "image") == 1
    # reference: 2 ** exp_times whatever the grid
    assert all(walk_steps(8, size) == 256 for size in [(1, 1), (32, 32), (188, 250)])
    with pytest.raises(ConfigError, match="scale must be one of reference, image"):
        walk_steps(8, (32, 32), "voc")
    with pytest.raises(ValueError, match="exp_times"):
        walk_steps(-1, (32, 32), "image")


@pytest.mark.parametrize("steps", [0, 1, 5, 22])
def test_any_step_count_equals_the_dense_matrix_power(steps):
    maps, edge = random_inputs(2, 9, 11, seed=steps)
    exact = random_walk_dense(maps.double(), edge.double(), steps=steps)
    sparse = random_walk(maps.double(), edge.double(), steps=steps)
    assert torch.allclose(sparse, exact, rtol=0, atol=1e-9)
    if steps == 0:
        assert torch.equal(sparse, maps.double() * (1 - edge.double()))


def test_steps_given_as_a_power_of_two_equal_exp_times():
    maps, edge = random_inputs(2, 10, 12, seed=3)
    assert torch.equal(random_walk(maps, edge, steps=16), random_walk(maps, edge, exp_times=4))
    assert torch.allclose(random_walk_dense(maps.double(), edge.double(), steps=16),
                          random_walk_dense(maps.double(), edge.double(), exp_times=4), rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="steps"):
        random_walk(maps, edge, steps=-2)


def test_labels_at_image_scale_walk_steps_in_proportion_to_the_grid():
    from wsss.refine.random_walk import walk_steps

    strided, keys, edge, size = two_regions(weak=0.5)  # a 10 x 14 grid: 256 * 140 / 11750 -> 3 steps
    edge = edge * 0.3  # weak boundaries, which 256 steps cross and 3 do not
    assert walk_steps(8, strided.shape[1:], "image") == 3
    scaled = propagate_to_labels(strided, keys, edge, size, scale="image", bg_threshold=0.3)
    # the same labels as IRN's make_sem_seg_labels with a 3-step walk, spelled out
    walked = random_walk(torch.from_numpy(strided), torch.from_numpy(edge), steps=3)
    up = F.interpolate(walked[None], scale_factor=4, mode="bilinear", align_corners=False)[0, :, :40, :56]
    scores = torch.cat([torch.full((1, 40, 56), 0.3), up / up.max()])
    np.testing.assert_array_equal(scaled, np.array([0, 3, 7], np.uint8)[scores.argmax(0).numpy()])
    # reference: 256 steps, the default
    literal = propagate_to_labels(strided, keys, edge, size, scale="reference", bg_threshold=0.3)
    np.testing.assert_array_equal(literal, propagate_to_labels(strided, keys, edge, size, bg_threshold=0.3))
    assert not np.array_equal(scaled, literal)
