"""wsss.models.path_index: IRN's search offsets, paths, and the max of the boundary map along them."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from wsss.models.path_index import PathIndex, max_along_paths, pair_indices


def disc_without_origin(radius: int) -> set[tuple[int, int]]:
    """Every integer vector strictly inside the disc of ``radius``, origin excluded."""
    return {
        (dy, dx)
        for dy in range(-radius, radius + 1)
        for dx in range(-radius, radius + 1)
        if 0 < dy * dy + dx * dx < radius * radius
    }


def segment_neighbourhood(dy: int, dx: int) -> set[tuple[int, int]]:
    """Cells of the segment's bounding box less than one pixel from its line (IRN's path)."""
    norm = math.hypot(dy, dx)
    return {
        (y, x)
        for y in range(min(0, dy), max(0, dy) + 1)
        for x in range(min(0, dx), max(0, dx) + 1)
        if abs(dy * x - dx * y) / norm < 1.0 - 1e-12
    }


@pytest.mark.parametrize("radius, count", [(5, 34), (10, 152)])
def test_offsets_are_half_of_the_disc_with_irn_counts(radius, count):
    index = PathIndex(radius)
    offsets = {tuple(o) for o in index.offsets.tolist()}
    assert index.offsets.shape == (count, 2) and index.offsets.dtype == np.int64
    assert len(offsets) == count  # no duplicates
    disc = disc_without_origin(radius)
    assert offsets <= disc
    # Each unordered pair once: exactly one of v, -v is searched, and IRN's half is dy > 0 or
    # (dy == 0, dx > 0).
    for dy, dx in disc:
        assert ((dy, dx) in offsets) != ((-dy, -dx) in offsets)
        assert ((dy, dx) in offsets) == (dy > 0 or (dy == 0 and dx > 0))
    assert index.radius == radius and index.radius_floor == radius - 1
    assert np.abs(index.offsets).max() == radius - 1


def test_offsets_are_ordered_by_path_length_then_row_major():
    index = PathIndex(10)
    lengths = [len(p) for p in index.paths]
    assert lengths == sorted(lengths)
    for length in set(lengths):
        group = [tuple(o) for o, n in zip(index.offsets.tolist(), lengths) if n == length]
        assert group == sorted(group)


@pytest.mark.parametrize("radius", [3, 5, 10])
def test_paths_run_from_source_to_destination_along_the_segment(radius):
    index = PathIndex(radius)
    assert len(index.paths) == len(index.offsets)
    for (dy, dx), path in zip(index.offsets.tolist(), index.paths):
        cells = [tuple(c) for c in path.tolist()]
        assert cells[0] == (0, 0) and cells[-1] == (dy, dx)
        assert set(cells) == segment_neighbourhood(dy, dx) and len(cells) == len(set(cells))
        # Within one pixel of the segment itself (not only its line).
        for y, x in cells:
            t = min(max((y * dy + x * dx) / (dy * dy + dx * dx), 0.0), 1.0)
            assert math.hypot(y - t * dy, x - t * dx) < 1.0
        # Consecutive cells touch (8-neighbours), and the set is 4-connected.
        steps = np.abs(np.diff(path, axis=0)).max(axis=1)
        assert (steps == 1).all()
        reached, frontier = {(0, 0)}, [(0, 0)]
        while frontier:
            y, x = frontier.pop()
            for near in ((y + 1, x), (y - 1, x), (y, x + 1), (y, x - 1)):
                if near in set(cells) and near not in reached:
                    reached.add(near)
                    frontier.append(near)
        assert reached == set(cells)


def test_straight_paths_cross_every_cell_between():
    index = PathIndex(5)
    paths = {tuple(o): [tuple(c) for c in p.tolist()] for o, p in zip(index.offsets.tolist(), index.paths)}
    assert paths[(0, 4)] == [(0, 0), (0, 1), (0, 2), (0, 3), (0, 4)]
    assert paths[(3, 0)] == [(0, 0), (1, 0), (2, 0), (3, 0)]
    assert set(paths[(2, -2)]) == {(0, 0), (0, -1), (1, 0), (1, -1), (1, -2), (2, -1), (2, -2)}


@pytest.mark.parametrize("radius, height, width", [(3, 9, 11), (5, 12, 17), (10, 19, 21)])
def test_max_along_paths_matches_a_per_pair_loop(radius, height, width):
    generator = torch.Generator().manual_seed(radius)
    edge = torch.rand(2, height, width, generator=generator)
    index = PathIndex(radius)
    result = max_along_paths(edge, index)
    rows, cols = height - (radius - 1), width - 2 * (radius - 1)
    assert result.shape == (2, len(index.offsets), rows, cols)
    assert index.cropped_size(height, width) == (rows, cols)

    source, destination = pair_indices(height, width, index)
    assert source.shape == destination.shape == (len(index.offsets), rows, cols)
    for d, ((dy, dx), path) in enumerate(zip(index.offsets.tolist(), index.paths)):
        for i in range(rows):
            for j in range(cols):
                y, x = divmod(int(source[d, i, j]), width)
                assert (y, x) == (i, j + radius - 1)  # documented grid convention
                assert divmod(int(destination[d, i, j]), width) == (y + dy, x + dx)
                for b in range(2):
                    expected = max(float(edge[b, y + cy, x + cx]) for cy, cx in path.tolist())
                    assert float(result[b, d, i, j]) == expected


def test_max_along_paths_sends_each_gradient_to_one_cell():
    edge = torch.rand(1, 10, 12, generator=torch.Generator().manual_seed(3)).requires_grad_()
    index = PathIndex(3)
    result = max_along_paths(edge, index)
    result.sum().backward()
    # With distinct values every output's maximum sits in one cell: the gradient counts outputs.
    assert float(edge.grad.sum()) == result.numel()
    # The global maximum of the map is the max of every path through it.
    top = int(edge.detach().argmax())
    assert float(edge.grad.view(-1)[top]) >= 1


def test_pair_indices_on_a_device_argument():
    source, destination = pair_indices(6, 9, PathIndex(2), device=torch.device("cpu"))
    assert source.dtype == destination.dtype == torch.int64
    assert torch.equal(source[0], source[-1])


def test_bad_arguments():
    with pytest.raises(ValueError, match="radius"):
        PathIndex(1)
    with pytest.raises(ValueError, match="radius"):
        PathIndex(2.5)
    with pytest.raises(ValueError, match="no source pixel"):
        max_along_paths(torch.zeros(1, 3, 8), PathIndex(5))
    with pytest.raises(ValueError, match=r"\(B, H, W\)"):
        max_along_paths(torch.zeros(8, 8), PathIndex(2))
