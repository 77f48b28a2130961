"""RoIAlign as two small matrix products, for the R-CNNs on the CPU.

torchvision's CPU ``roi_align`` visits every channel of every sample point one at a time, and
its backward scatters one value at a time: in a Mask R-CNN update on 128-px images it was 27% of
the time (docs/speed.md). The bilinear weights of RoIAlign are separable: a sample's weight is a
weight along y times a weight along x, and a bin averages a grid of samples. So one region's
pooled features are ``A_y @ F @ A_x^T`` per channel, where ``A_y`` (bins x H) and ``A_x``
(bins x W) hold each bin's summed sample weights over the feature map's rows and columns.
:func:`roi_align_dense` computes that for all regions of an image with one matrix product over
the rows and one batched product over the columns; autograd's backward is two more products.

It is torchvision's computation (``aligned=False`` or ``True``, a fixed ``sampling_ratio``),
its clamping at the borders included, up to the order of float additions
(``tests/test_roi_align.py``). Like torchvision's kernel under autocast, it computes in float32
and returns the features' dtype. An adaptive ``sampling_ratio`` (<= 0), CUDA tensors and maps
larger than :data:`MAX_CELLS` go to torchvision's kernel.

:class:`DenseMultiScaleRoIAlign` is torchvision's ``MultiScaleRoIAlign`` (FPN level per box,
same scales) on it; :func:`use_dense_roi_align` puts it into a torchvision R-CNN's heads.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torchvision.ops import MultiScaleRoIAlign, roi_align
from torchvision.ops.poolers import _convert_to_roi_format, _filter_input, _setup_scales

__all__ = ["CHUNK", "DenseMultiScaleRoIAlign", "MAX_CELLS", "axis_weights", "roi_align_dense", "use_dense_roi_align"]

MAX_CELLS = 2048
"""Feature maps of more cells than this go to torchvision's kernel: the products cost H x W per
bin row and column where torchvision's cost does not grow with the map. `roi_align_speed.py`
(one thread): 1.19-1.50x at 128 px (FPN level 0 of 32 x 32 cells, the demo), 0.97-1.09x at
256 px (64 x 64)."""
CHUNK = 64
"""Regions per product: the row product's output (CHUNK x bins x C x W) stays small."""


def axis_weights(start: Tensor, bin_size: Tensor, bins: int, grid: int, size: int) -> Tensor:
    """Each bin's averaged bilinear weights over one axis of the feature map.

    Args:
        start: (K,) the regions' first coordinate on the feature map (after scale and offset).
        bin_size: (K,) a bin's length.
        bins: bins along the axis; grid: samples per bin along it; size: the map's length.

    Returns:
        (K, bins, size): row b of region k sums the weights of bin b's ``grid`` samples (each
        over its two neighbouring cells, torchvision's border rules) divided by ``grid``.
    """
    step = torch.arange(bins, dtype=start.dtype, device=start.device)[None, :, None]
    sample = torch.arange(grid, dtype=start.dtype, device=start.device)[None, None, :] + 0.5
    size_k = bin_size[:, None, None]
    coord = start[:, None, None] + step * size_k + sample * size_k / grid  # torchvision's order of operations
    inside = ((coord >= -1.0) & (coord <= size)).to(start.dtype)  # torchvision: 0 outside [-1, size]
    coord = coord.clamp(min=0.0)
    low = coord.floor()
    last = low >= size - 1
    low = torch.where(last, torch.full_like(low, size - 1), low)
    coord = torch.where(last, low, coord)
    high = torch.where(last, low, low + 1)
    upper = coord - low
    weights = torch.zeros(*coord.shape, size, dtype=start.dtype, device=start.device)
    weights.scatter_add_(-1, low.long()[..., None], ((1.0 - upper) * inside)[..., None])
    weights.scatter_add_(-1, high.long()[..., None], (upper * inside)[..., None])
    return weights.sum(2) / grid


def roi_align_dense(features: Tensor, rois: Tensor, output_size: int | tuple[int, int], spatial_scale: float = 1.0,
                    sampling_ratio: int = 2, aligned: bool = False) -> Tensor:
    """torchvision's ``roi_align`` as matrix products (module docstring).

    Args:
        features: (B, C, H, W).
        rois: (K, 5) ``batch_index, x1, y1, x2, y2`` in input coordinates.
        output_size: bins (h, w), or one number for both.
        spatial_scale: feature map size over input size.
        sampling_ratio: samples per bin along each axis; <= 0 (adaptive) goes to torchvision.
        aligned: torchvision's half-pixel offset.

    Returns:
        (K, C, h, w) in ``features``' dtype.
    """
    out_h, out_w = (output_size, output_size) if isinstance(output_size, int) else tuple(output_size)
    if sampling_ratio <= 0 or features.is_cuda or features.shape[-2] * features.shape[-1] > MAX_CELLS:
        return roi_align(features, rois, (out_h, out_w), spatial_scale, sampling_ratio, aligned)
    dtype = features.dtype
    with torch.autocast(features.device.type, enabled=False):
        values = features.float()
        boxes = rois[:, 1:].float() * spatial_scale - (0.5 if aligned else 0.0)
        height, width = values.shape[-2:]
        extent_x, extent_y = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
        if not aligned:
            extent_x, extent_y = extent_x.clamp(min=1.0), extent_y.clamp(min=1.0)
        rows = axis_weights(boxes[:, 1], extent_y / out_h, out_h, sampling_ratio, height)  # (K, h, H)
        cols = axis_weights(boxes[:, 0], extent_x / out_w, out_w, sampling_ratio, width)  # (K, w, W)
        channels = values.shape[1]
        out = values.new_zeros(len(rois), channels, out_h, out_w)
        order = rois[:, 0].long()
        for image in torch.unique(order).tolist():
            plane = values[image].transpose(0, 1).reshape(height, channels * width)  # (H, C * W)
            for chosen in torch.nonzero(order == image).squeeze(1).split(CHUNK):  # bounded intermediates
                count = len(chosen)
                by_rows = (rows[chosen].reshape(count * out_h, height) @ plane).reshape(count, out_h * channels, width)
                pooled = torch.bmm(by_rows, cols[chosen].transpose(1, 2))  # (k, h * C, w)
                out[chosen] = pooled.reshape(count, out_h, channels, out_w).transpose(1, 2)
    return out.to(dtype)


class DenseMultiScaleRoIAlign(MultiScaleRoIAlign):
    """torchvision's ``MultiScaleRoIAlign`` (the same level per box and scales) on
    :func:`roi_align_dense`."""

    def forward(self, x: dict[str, Tensor], boxes: list[Tensor], image_shapes: list[tuple[int, int]]) -> Tensor:
        features = _filter_input(x, self.featmap_names)
        if self.scales is None or self.map_levels is None:
            self.scales, self.map_levels = _setup_scales(features, image_shapes, self.canonical_scale,
                                                         self.canonical_level)
        rois = _convert_to_roi_format(boxes)
        if len(features) == 1:
            return roi_align_dense(features[0], rois, self.output_size, self.scales[0], self.sampling_ratio)
        levels = self.map_levels(boxes)
        result = features[0].new_zeros((len(rois), features[0].shape[1], *self.output_size))
        for level, (feature, scale) in enumerate(zip(features, self.scales)):
            chosen = torch.nonzero(levels == level).squeeze(1)
            if len(chosen):
                result[chosen] = roi_align_dense(feature, rois[chosen], self.output_size, scale,
                                                 self.sampling_ratio).to(result.dtype)
        return result


def use_dense_roi_align(heads: nn.Module) -> nn.Module:
    """Replace the ``box_roi_pool`` and ``mask_roi_pool`` of a torchvision ``RoIHeads`` (where
    they are torchvision's ``MultiScaleRoIAlign``) with :class:`DenseMultiScaleRoIAlign` of the
    same settings; they hold no weights, so state dicts are unchanged. Returns ``heads``."""
    for name in ("box_roi_pool", "mask_roi_pool"):
        pool = getattr(heads, name, None)
        if type(pool) is MultiScaleRoIAlign:
            setattr(heads, name, DenseMultiScaleRoIAlign(
                pool.featmap_names, pool.output_size, pool.sampling_ratio,
                canonical_scale=pool.canonical_scale, canonical_level=pool.canonical_level))
    return heads
