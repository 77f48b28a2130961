"""Adversarial climbing: one step of an input *up* the gradient of a class score.

AdvCAM perturbs an image towards its class to grow its map; W-OoD moves OoD images towards the
class they look most like before teaching the classifier that they are background. Both take the
reference's step ``x <- clamp(x + xi * g / (max|g| + 1e-12), low, high)``; they differ in what the
max and the clamp range run over, which :func:`climb_step` takes as arguments.
"""

from __future__ import annotations

from typing import Literal

import torch

from wsss.errors import ConfigError

__all__ = ["GRAD_NORM_EPS", "climb_step"]

GRAD_NORM_EPS = 1e-12  # AdvCAM and W-OoD adv_climb: g / (max|g| + 1e-12)


def climb_step(
    images: torch.Tensor,
    gradient: torch.Tensor,
    step_size: float,
    normalisation: Literal["batch", "image", "sign"] = "batch",
    bounds: tuple[float, float] | Literal["image"] | None = None,
) -> torch.Tensor:
    """``clamp(x + step_size * direction, low, high)``.

    Args:
        images: (N, ...) inputs; "image" means one index of the first dimension (an image, or
            one of AdvCAM's trajectories with its (B, 3, h, w) flip pair).
        gradient: the objective's gradient, same shape.
        step_size: xi.
        normalisation: ``direction = g / (max|g| + 1e-12)`` with the max over the whole tensor
            (``"batch"``, W-OoD's ``adv_climb``) or over each image (``"image"``, AdvCAM's), or
            ``sign(g)``.
        bounds: ``(low, high)``; ``"image"``: each image's own min and max (AdvCAM); ``None``:
            the whole tensor's (W-OoD clamps to the range of the data).

    Raises:
        ConfigError: an unknown normalisation.
    """
    if normalisation == "batch":
        direction = gradient / (gradient.abs().max() + GRAD_NORM_EPS)
    elif normalisation == "image":
        dims = tuple(range(1, gradient.dim()))
        direction = gradient / (gradient.abs().amax(dim=dims, keepdim=True) + GRAD_NORM_EPS)
    elif normalisation == "sign":
        direction = gradient.sign()
    else:
        raise ConfigError(f"unknown climb normalisation {normalisation!r}; known: batch, image, sign")
    stepped = images + step_size * direction
    if bounds == "image":
        dims = tuple(range(1, images.dim()))
        return torch.clamp(stepped, images.amin(dim=dims, keepdim=True), images.amax(dim=dims, keepdim=True))
    low, high = (float(images.min()), float(images.max())) if bounds is None else bounds
    return stepped.clamp(low, high)
