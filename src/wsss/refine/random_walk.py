"""IRN's random walk on boundary-aware affinities, with a sparse transition matrix.

Inter-pixel Relation Network (Ahn, Cho & Kwak, CVPR 2019, Sec. 3.3; reference
``misc/indexing.py: propagate_to_edge`` and ``step/make_sem_seg_labels.py`` of jiwoon-ahn/irn)
spreads the stride-4 localization maps over regions bounded by the predicted class boundaries B:

* affinity ``a_ij = 1 - max_{k in path(i, j)} B(k)`` for every pair of pixels within the radius
  (:mod:`wsss.models.path_index`), in both directions, and ``a_ii = 1`` (self-loops);
* ``A = a ** beta`` and the transition matrix ``T = A D^-1`` with ``D = diag(sum_i A_ij)``
  (IRN divides each column by its sum);
* the maps, multiplied by ``1 - B``, walk ``t = 2 ** exp_times`` steps: ``v T^t``.

The reference builds T as a dense N x N matrix (N = pixels at stride 4) and squares it
``exp_times`` times: 552 MB per matrix and about 2.6e13 operations for a 500x375 image. A has
only ``2 D + 1`` non-zeros per row (D = 34 at radius 5), so :func:`random_walk` keeps it sparse
and applies it ``t`` times to the maps instead -- ``v T^t = (((v T) T) ... T)`` -- which needs
no matrix product of T with itself (a sparse T^2 would already have 4x the non-zeros) and costs
``t * C * N * (2 D + 1)`` operations: memory O(N D), and about 1e9 operations for 500x375.
:func:`random_walk_dense` is the reference's formulation, kept for tests and benchmarks.

Steps that follow the image (``scale="image"``, see ``docs/scale.md``): IRN's 256 steps are set
for VOC's stride-4 grid of about 94 x 125 cells. A walk of radius-r moves spreads over a
distance of about ``r sqrt(t)`` cells after t steps, so keeping that distance in proportion to
the grid's side means t in proportion to the grid's area: :func:`walk_steps` gives
``round(2 ** exp_times * h * w / (94 * 125))`` (at least 1), exactly 256 on VOC's grid. Since
the sparse walk applies T one step at a time, any integer count is exact; the reference's
repeated squaring is the special case of a power of two (:func:`random_walk_dense` takes any
count through ``matrix_power``). The radius stays 5 cells: it is the length of one move, an
integer that cannot shrink with the grid without becoming another operator (radius 2, the
smallest, has 4 directions and radius 3 has 12, against 34 at 5), and the boundary branch is trained on pairs up to radius 10, so a
walk radius larger than that would use affinities it never learned; the number of steps carries
the scale.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from wsss.config import REFERENCE_IMAGE_SIZE, check_scale
from wsss.errors import DataError
from wsss.models.path_index import PathIndex, max_along_paths, pair_indices
from wsss.stores.maps import strided_size

# Defaults of IRN's make_sem_seg_labels: beta 10, exp_times 8 (256 steps), radius 5 at inference.
BETA = 10.0
EXP_TIMES = 8
RADIUS = 5
# IRN's sem_seg_bg_thres.
BG_THRESHOLD = 0.25
# The stride-4 grid of the reference's image (VOC 375 x 500): 94 x 125 = 11,750 cells.
REFERENCE_GRID = strided_size(*REFERENCE_IMAGE_SIZE)


def walk_steps(exp_times: int, grid_size: tuple[int, int], scale: str = "reference") -> int:
    """How many steps the walk takes on a stride-4 grid of ``grid_size`` (h, w) cells.

    ``scale="reference"``: ``2 ** exp_times`` (IRN: 256) at every size. ``scale="image"``:
    ``2 ** exp_times`` times the grid's area over the reference grid's (94 x 125), rounded to
    the nearest integer (half to even), at least 1: 256 on VOC's grid, 22 on a 32 x 32 one.
    """
    check_scale(scale)
    if int(exp_times) != exp_times or exp_times < 0:
        raise ValueError(f"exp_times must be an integer >= 0, got {exp_times!r}")
    steps = 2 ** int(exp_times)
    if scale == "reference":
        return steps
    height, width = (int(size) for size in grid_size)
    return max(1, round(steps * height * width / (REFERENCE_GRID[0] * REFERENCE_GRID[1])))


def _check_inputs(maps: torch.Tensor, edge: torch.Tensor, exp_times: int, steps: int | None) -> int:
    """The number of steps (``steps``, else ``2 ** exp_times``) after checking the inputs."""
    if maps.dim() != 3:
        raise ValueError(f"maps must be (C, h, w), got shape {tuple(maps.shape)}")
    if edge.shape != maps.shape[1:]:
        raise ValueError(f"edge must be (h, w) = {tuple(maps.shape[1:])}, got {tuple(edge.shape)}")
    if int(exp_times) != exp_times or exp_times < 0:
        raise ValueError(f"exp_times must be an integer >= 0, got {exp_times!r}")
    if steps is None:
        return 2 ** int(exp_times)
    if int(steps) != steps or steps < 0:
        raise ValueError(f"steps must be an integer >= 0, got {steps!r}")
    return int(steps)


def _sparse_transition(edge: torch.Tensor, beta: float, radius: int) -> torch.Tensor:
    """Row-normalised ``D^-1 A`` as a CSR (N, N) tensor: ``(v T)^T = (D^-1 A) v^T``, A symmetric.

    Built row by row without a sort: every pixel has 2 D + 1 slots (its D backward neighbours,
    itself, its D forward neighbours) ordered by flat index shift, so the columns of a row come
    out ascending; slots whose neighbour is outside the image are dropped.
    """
    height, width = edge.shape
    device = edge.device
    index = PathIndex(radius)
    margin = index.radius_floor
    # Pad so that every pixel is a source (path_index grid convention); destinations falling in
    # the padding are dropped below, as the reference crops them out of its dense matrix.
    padded = F.pad(edge[None], (margin, margin, 0, margin), value=1.0)
    forward = (1.0 - max_along_paths(padded, index)[0]) ** beta  # (D, h, w): pixel -> pixel + offset

    offsets = index.offsets.tolist()
    row = torch.arange(height, device=device).view(1, -1, 1)
    col = torch.arange(width, device=device).view(1, 1, -1)
    dy = torch.tensor([o[0] for o in offsets], device=device).view(-1, 1, 1)
    dx = torch.tensor([o[1] for o in offsets], device=device).view(-1, 1, 1)
    forward_valid = (row + dy < height) & (col + dx >= 0) & (col + dx < width)  # dy >= 0 always
    backward_valid = (row - dy >= 0) & (col - dx >= 0) & (col - dx < width)
    # The backward neighbour q - o of pixel q holds the pair's affinity at its own position.
    backward = torch.zeros_like(forward)
    for d, (oy, ox) in enumerate(offsets):
        if oy >= height or abs(ox) >= width:
            continue  # no pair of the image is this far apart
        backward[d, oy:, max(ox, 0):width + min(ox, 0)] = \
            forward[d, :height - oy, max(-ox, 0):width - max(ox, 0)]

    shift = [oy * width + ox for oy, ox in offsets]
    after = sorted(range(len(offsets)), key=lambda d: shift[d])
    before = after[::-1]  # shifts -s, ascending
    values = torch.cat([backward[before], torch.ones_like(forward[:1]), forward[after]])
    valid = torch.cat([backward_valid[before], torch.ones_like(forward_valid[:1]), forward_valid[after]])
    flat_shift = torch.tensor([-shift[d] for d in before] + [0] + [shift[d] for d in after], device=device)
    values = values * valid  # out-of-image slots: 0 ** beta from the padding, but 1 if beta = 0
    degree = values.sum(dim=0)  # >= 1: the self-loop

    count = height * width
    index_dtype = torch.int32 if count + 2 * index.num_offsets * width < 2**31 else torch.int64
    # Row-major over pixels, slots inside a row.
    valid = valid.reshape(len(flat_shift), count).t()
    values = (values / degree).reshape(len(flat_shift), count).t()[valid]
    columns = (torch.arange(count, device=device).view(1, -1) + flat_shift.view(-1, 1)).t()[valid]
    row_starts = torch.zeros(count + 1, dtype=torch.int64, device=device)
    row_starts[1:] = valid.sum(dim=1).cumsum(0)
    with warnings.catch_warnings():  # "sparse CSR support is in beta": CSR @ dense is what we use
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(row_starts.to(index_dtype), columns.to(index_dtype), values,
                                       (count, count), check_invariants=False)


def random_walk(maps: torch.Tensor, edge: torch.Tensor, *, beta: float = BETA,
                exp_times: int = EXP_TIMES, radius: int = RADIUS, steps: int | None = None) -> torch.Tensor:
    """IRN's random walk with a sparse transition matrix: same result as the dense reference.

    Runs on the device of ``maps``, in float64 (float32 on MPS), and returns the dtype of
    ``maps``; memory is O(N (2 D + 1)) for N = h * w pixels and D offsets (34 at radius 5). The
    steps are sparse matrix products with the (N, C) maps, each a weighted
    average of a pixel's neighbours.

    Args:
        maps: (C, h, w) non-negative maps at stride 4 (whatever channels the caller walks; IRN's
            make_sem_seg_labels walks the foreground classes only).
        edge: (h, w) class-boundary map in [0, 1] (IRN: sigmoid of the edge branch).
        beta: exponent of the affinities (IRN: 10).
        exp_times: the walk takes ``2 ** exp_times`` steps (IRN: 8, i.e. 256).
        radius: affinity radius in stride-4 pixels (IRN: 5 at inference).
        steps: the number of steps, any integer >= 0, instead of ``2 ** exp_times``
            (see :func:`walk_steps`).

    Returns:
        (C, h, w) propagated maps, ``(maps * (1 - edge)) T^steps``.
    """
    steps = _check_inputs(maps, edge, exp_times, steps)
    (_, walked), = random_walk_checkpoints(maps, edge, [steps], beta=beta, radius=radius)
    return walked


def random_walk_checkpoints(maps: torch.Tensor, edge: torch.Tensor, steps: Sequence[int], *,
                            beta: float = BETA, radius: int = RADIUS) -> Iterator[tuple[int, torch.Tensor]]:
    """The walk of :func:`random_walk` seen after each of several numbers of steps, in one walk.

    The transition matrix is built once and the walk goes on from one count to the next:
    ``v T^8`` is ``(v T^4) T^4``, so the counts 1, 2, 4, ..., 256 cost 256 products in all
    instead of 511. Each yielded state equals ``random_walk(maps, edge, steps=count, ...)``
    (the same products in the same order, in float64, returned in the dtype of ``maps``).

    Args:
        maps, edge, beta, radius: as in :func:`random_walk`.
        steps: the counts to stop at, integers >= 0 in any order (repeats are yielded once).

    Yields:
        ``(count, walked)`` in increasing order of count; ``walked`` is (C, h, w).
    """
    counts = sorted({_check_inputs(maps, edge, 0, count) for count in steps})
    channels, height, width = maps.shape
    # 256 float32 steps accumulate ~3e-5 of rounding (as much as the reference's own float32
    # error); float64 costs no measurable time here, as the products are bound by index reads.
    precise = torch.float32 if maps.device.type == "mps" else torch.float64
    edge = edge.to(precise)
    transition = _sparse_transition(edge, beta, radius)
    state = (maps.to(precise) * (1.0 - edge)).reshape(channels, height * width).t().contiguous()
    done = 0
    for count in counts:
        for _ in range(count - done):
            state = transition @ state
        done = count
        yield count, state.t().reshape(channels, height, width).to(maps.dtype)


def random_walk_dense(maps: torch.Tensor, edge: torch.Tensor, *, beta: float = BETA,
                      exp_times: int = EXP_TIMES, radius: int = RADIUS, steps: int | None = None
                      ) -> torch.Tensor:
    """The reference's dense formulation (IRN ``propagate_to_edge``): the test oracle.

    Pads the boundary map with 1 by ``radius`` on the left, right and bottom, writes the pair
    affinities, their transpose and the identity into a dense matrix over the padded grid, crops
    it to the image's pixels, raises it to ``beta``, divides every column by its sum and squares
    it ``exp_times`` times, in the dtype of ``maps`` (IRN: float32). Memory O(N^2), time
    O(exp_times N^3): small images only. Given ``steps``, the matrix is raised to that power by
    ``torch.linalg.matrix_power`` instead (any integer, not only a power of two).

    Args and returns: as :func:`random_walk`.
    """
    walk_length = _check_inputs(maps, edge, exp_times, steps)
    channels, height, width = maps.shape
    edge = edge.to(maps.dtype)
    index = PathIndex(radius)
    padded_height, padded_width = height + radius, width + 2 * radius
    padded = F.pad(edge[None], (radius, radius, 0, radius), value=1.0)
    affinity = 1.0 - max_along_paths(padded, index)[0]
    source, destination = pair_indices(padded_height, padded_width, index, device=maps.device)

    count = padded_height * padded_width
    dense = torch.zeros(count, count, dtype=maps.dtype, device=maps.device)
    dense[source.reshape(-1), destination.reshape(-1)] = affinity.reshape(-1)
    dense[destination.reshape(-1), source.reshape(-1)] = affinity.reshape(-1)
    dense.fill_diagonal_(1.0)
    dense = dense.view(padded_height, padded_width, padded_height, padded_width)
    dense = dense[:height, radius:radius + width, :height, radius:radius + width]
    dense = dense.reshape(height * width, height * width)

    transition = dense ** beta
    del dense
    transition = transition / transition.sum(dim=0, keepdim=True)
    if steps is None:
        for _ in range(int(exp_times)):
            transition = transition @ transition
    else:
        transition = torch.linalg.matrix_power(transition, walk_length)
    state = (maps * (1.0 - edge)).reshape(channels, height * width)
    return (state @ transition).reshape(channels, height, width)


def propagate_scores(strided: np.ndarray, keys: np.ndarray, edge: np.ndarray,
                     image_size: tuple[int, int], *, cam_power: float = 1.0, beta: float = BETA,
                     exp_times: int = EXP_TIMES, radius: int = RADIUS, scale: str = "reference",
                     device: torch.device | str = "cpu", where: str | Path | None = None) -> torch.Tensor | None:
    """One image's walked class scores before the background threshold: maps ** cam_power (1.0
    IRN, 1.3 RIB, 1.5 AdvCAM), the random walk of the foreground maps (no background channel
    enters it), then :func:`walked_scores` (x4 upsampling, division by the global max).

    Args and errors: as :func:`propagate_to_labels`.

    Returns:
        (C, H, W) scores in [0, 1] on ``device``, or None when the image has no class or every
        walked score is 0 (the reference would divide by zero): nothing is foreground.
    """
    height, width = (int(size) for size in image_size)
    strided = np.asarray(strided)
    keys = np.asarray(keys)
    edge = np.asarray(edge)
    _check_label_inputs(strided, keys, edge, (height, width), where)
    if len(keys) == 0:
        return None
    device = torch.device(device)
    maps = torch.from_numpy(strided.astype(np.float32)).to(device)
    if cam_power != 1.0:
        maps = maps ** cam_power
    boundary = torch.from_numpy(edge.astype(np.float32)).to(device)
    steps = walk_steps(exp_times, strided.shape[1:], scale)
    walked = random_walk(maps, boundary, beta=beta, radius=radius, steps=steps)
    return walked_scores(walked, (height, width))


def scores_to_labels(scores: torch.Tensor | None, keys: np.ndarray, image_size: tuple[int, int],
                     bg_threshold: float) -> np.ndarray:
    """uint8 (H, W) labels from :func:`walked_scores`: a constant background channel
    ``bg_threshold`` in front of the scores, argmax (a tie goes to the background), channel ->
    class id (0 for the background, ``keys`` for the others). ``None`` scores: all background."""
    height, width = (int(size) for size in image_size)
    if scores is None:
        return np.zeros((height, width), dtype=np.uint8)
    background = torch.full((1, height, width), float(bg_threshold), device=scores.device)
    channel = torch.cat([background, scores]).argmax(dim=0).cpu().numpy()
    class_ids = np.concatenate([[0], np.asarray(keys).astype(np.int64)]).astype(np.uint8)
    return class_ids[channel]


def propagate_to_labels(strided: np.ndarray, keys: np.ndarray, edge: np.ndarray,
                        image_size: tuple[int, int], *, cam_power: float = 1.0,
                        bg_threshold: float = BG_THRESHOLD, beta: float = BETA,
                        exp_times: int = EXP_TIMES, radius: int = RADIUS,
                        scale: str = "reference", device: torch.device | str = "cpu",
                        where: str | Path | None = None) -> np.ndarray:
    """One image's pseudo label from its stride-4 maps and boundary map (IRN make_sem_seg_labels).

    :func:`propagate_scores` (power, walk, x4 upsampling, division by the global max), then
    :func:`scores_to_labels` with a constant background channel ``bg_threshold`` (IRN's
    ``sem_seg_bg_thres``).

    Args:
        strided: (C, h, w) non-negative foreground maps, ``(h, w) = ceil(image_size / 4)``.
        keys: (C,) class ids (1..254) of the channels.
        edge: (h, w) boundary map in [0, 1].
        image_size: (H, W) of the image.
        cam_power, bg_threshold, beta, exp_times, radius: as above and in :func:`random_walk`.
        scale: ``"reference"``: ``2 ** exp_times`` steps; ``"image"``: in proportion to this
            image's stride-4 grid (:func:`walk_steps`).
        device: where the walk runs.
        where: file named in error messages (the maps' path, say).

    Returns:
        uint8 (H, W) label map: 0 background, keys elsewhere.

    Raises:
        DataError: shapes that do not match, NaN or infinite values, edge outside [0, 1],
            negative maps, or keys that do not match the channels.
    """
    scores = propagate_scores(strided, keys, edge, image_size, cam_power=cam_power, beta=beta,
                              exp_times=exp_times, radius=radius, scale=scale, device=device, where=where)
    return scores_to_labels(scores, keys, image_size, bg_threshold)


def walked_scores(walked: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor | None:
    """Walked stride-4 maps as the scores the background threshold is compared with.

    IRN ``make_sem_seg_labels``: x4 bilinear upsampling (``align_corners=False``) cropped to the
    image, divided by the global maximum over all classes and pixels. A pixel's label is the
    class of its highest score where that score exceeds the background threshold, else 0 (a tie
    goes to the background, :func:`propagate_to_labels`).

    Args:
        walked: (C, h, w) output of :func:`random_walk`.
        image_size: (H, W) of the image, ``(h, w) = ceil((H, W) / 4)``.

    Returns:
        (C, H, W) scores in [0, 1], or None when the walked maps are zero everywhere (no
        foreground at any threshold).
    """
    height, width = (int(size) for size in image_size)
    upsampled = F.interpolate(walked[None], scale_factor=4, mode="bilinear", align_corners=False)
    upsampled = upsampled[0, :, :height, :width]
    peak = upsampled.max() if upsampled.numel() else upsampled.new_zeros(())
    if not peak > 0:
        return None
    return upsampled / peak


def _check_label_inputs(strided: np.ndarray, keys: np.ndarray, edge: np.ndarray,
                        image_size: tuple[int, int], where: str | Path | None) -> None:
    """DataError, one line naming ``where``, on inputs that cannot be the maps of this image."""
    height, width = image_size
    expected = ((height - 1) // 4 + 1, (width - 1) // 4 + 1)
    if strided.ndim != 3:
        raise DataError(f"stride-4 maps must be (C, h, w), got shape {strided.shape}", where)
    if strided.shape[1:] != expected:
        raise DataError(
            f"stride-4 maps are {strided.shape[1]}x{strided.shape[2]} but a {height}x{width} "
            f"image needs {expected[0]}x{expected[1]}", where)
    if edge.shape != strided.shape[1:]:
        raise DataError(f"boundary map is {edge.shape} but the maps are {strided.shape[1:]}", where)
    if keys.ndim != 1 or len(keys) != strided.shape[0]:
        raise DataError(f"{keys.size} keys for {strided.shape[0]} map channels", where)
    if len(keys) and (not np.issubdtype(keys.dtype, np.integer) or keys.min() < 1 or keys.max() > 254):
        raise DataError(f"keys must be class ids in 1..254, got {keys.tolist()}", where)
    if not np.isfinite(strided).all():
        raise DataError("stride-4 maps contain NaN or infinite values", where)
    if not np.isfinite(edge).all():
        raise DataError("boundary map contains NaN or infinite values", where)
    if strided.size and strided.min() < 0:
        raise DataError(f"stride-4 maps must be non-negative, minimum is {strided.min()}", where)
    if edge.size and (edge.min() < 0 or edge.max() > 1):
        raise DataError(f"boundary map must be in [0, 1], got [{edge.min()}, {edge.max()}]", where)
