"""BANA stage 2: pseudo labels Y_crf and Y_ret from a BAP classifier and the boxes of an image.

Reference: ``cvlab-yonsei/BANA`` ``stage2.py`` with ``configs/stage2.yml`` (``GRID_SIZE 1``,
``BG_THRESHOLD 0.99``, ``DCRF [4, 55, 3, 3, 3]``). For one image with features ``f`` (D, H, W)
upsampled to the image, the classifier ``W`` (K + 1, D) of :class:`wsss.models.bap_net.BapNet`,
and boxes B_c per class c present:

* **u_0** (background): one background prototype q (grid N = 1: the mean feature over the pixels
  outside every box), ``A = ReLU(cos(f, q))``, ``A(p) = 0`` where ``A(p) < 0.99 * max A``;
  ``u_0 = 1`` outside boxes and ``A`` inside (``stage2.py`` L86-98).
* **u_c**: ``ReLU(w_c . f)`` divided by its maximum inside each box of class c, 0 outside the
  class's boxes (L100-109).
* **Unary**: a softmax over ``[u_0, u_c, ...]`` at the pixels inside boxes; outside, one-hot
  background (L110-111).
* **Y_crf**: dense CRF (preset ``"bana"``: 10 iterations, Gaussian 3/3, bilateral 55/3/4) on the
  image, then each class's probability is zeroed outside its boxes and the argmax taken
  (L112-126): a class never leaves its boxes.
* **Y_ret**: per label l of ``{0} + classes`` a prototype ``p_l`` = the normalised mean feature over
  ``Y_crf == l`` (the classifier row ``w_l`` when no pixel has it), ``corr_l = ReLU(cos(f, p_l))``;
  ``corr_0 = 1`` outside boxes, ``corr_c = 0`` outside the boxes of c; argmax (L128-157).
* :func:`reliable_labels`: the stage-3 target, Y_crf where Y_crf == Y_ret, 255 (ignore) elsewhere
  (``datasets/voc.py`` L138-140). :attr:`BanaLabels.disagreement` is the share of pixels
  where the two differ, the size of that ignored region.

The supplement's Table 2 (precision of u_c, GAP 73.0 against BAP 77.9 mean on VOC train) is
:func:`wsss.evaluation.bana.u_c_precision`, on u_c from :func:`image_features` and
:func:`bana_unary`; the GAP classifier to compare with is :func:`wsss.training.bana.train_bap`
with ``pooling="gap"``.

Where this departs from the reference:

* The CRF is given the ``uint8`` RGB image as read, never a normalised tensor cast to ``uint8``
  (the reference's bug at evaluation, ``stage3_vgg.py`` L183-186 / ``test.py`` L92-94; its stage 2
  reads the JPEG, as here).
* Boxes are checked first (:func:`wsss.models.bap_net.check_boxes`): an empty box, one outside the
  image or a class outside 1..K is one :class:`DataError` line naming the image; the reference
  raises a ``KeyError`` mid-run on an unknown class name.
* Same-class boxes that overlap: u_c is the larger of the per-box normalised values (the
  reference lets the later box overwrite the earlier).
* Features are upsampled bilinearly with ``align_corners=False`` (the reference: ``True``), the
  convention that matches stage 1's ``roi_align(aligned=True)`` box coordinates.
* :func:`make_bana_labels` writes ``Y_crf`` and ``Y_ret`` through :class:`wsss.stores.masks.MaskStore`
  into the two folders it is given (the reference writes ``Y_crf``/``Y_ret`` but its stage 3
  reads ``Ycrf``/``Yret``), skips images whose two maps exist, so a rerun resumes instead of
  failing on ``os.mkdir``.
* An image whose boxes cover it entirely has no background prototype: A = 0 inside the boxes (the
  reference divides by 1e-12, giving a zero prototype and the same A = 0).

Example:
    >>> labels = bana_labels(model, image, boxes, classes, device="cpu")
    >>> labels.y_crf, labels.y_ret, labels.disagreement
    >>> target = reliable_labels(labels.y_crf, labels.y_ret)     # 255 where they disagree
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from wsss.data.transforms import IMAGENET_MEAN, IMAGENET_STD, normalize, to_chw_tensor
from wsss.errors import DataError
from wsss.io import IGNORE_INDEX
from wsss.models.bap_net import BapNet, box_masks, check_boxes
from wsss.refine.crf import CrfParams, dense_crf
from wsss.runtime import run_per_image
from wsss.stores.masks import MaskStore

__all__ = [
    "BG_THRESHOLD",
    "BanaLabels",
    "bana_labels",
    "bana_labels_from_features",
    "bana_unary",
    "image_features",
    "label_disagreement",
    "make_bana_labels",
    "reliable_labels",
    "retrieval_labels",
]

BG_THRESHOLD = 0.99  # BANA configs/stage2.yml MODEL.BG_THRESHOLD
CRF_PRESET = "bana"  # BANA configs/stage2.yml MODEL.DCRF [4, 55, 3, 3, 3] (wsss.refine.crf.CRF_PRESETS)
EPS = 1e-12  # BANA stage2.py: max + 1e-12


@dataclass
class BanaLabels:
    """Stage-2 output for one image.

    Attributes:
        y_crf, y_ret: uint8 (H, W) label maps, 0 background, class ids of the boxes.
        present: int64 (n,) the classes of the boxes, sorted; channel ``1 + i`` of ``unary``
            and channel ``i`` of ``u_c`` is class ``present[i]``.
        u0: float32 (H, W) background score before the softmax.
        u_c: float32 (n, H, W) normalised class scores before the softmax.
        unary: float32 (1 + n, H, W) what the CRF received.
        inside: bool (H, W) pixels inside some box.
        disagreement: share of all pixels where Y_crf != Y_ret.
        box_disagreement: the same share over the pixels inside boxes (0 when there are none).
    """

    y_crf: np.ndarray
    y_ret: np.ndarray
    present: np.ndarray
    u0: np.ndarray
    u_c: np.ndarray
    unary: np.ndarray
    inside: np.ndarray
    disagreement: float
    box_disagreement: float


def _box_layout(features: torch.Tensor, boxes: torch.Tensor, classes: torch.Tensor):
    """What both label rules need from an image's boxes, at the feature map's size (H, W):
    ``(boxes, classes, present classes, per-box masks (N, H, W), per-class union (n, H, W),
    inside any box (H, W))`` (masks bool, tensors on the features' device)."""
    _, height, width = features.shape
    boxes = torch.as_tensor(boxes, dtype=torch.float32, device=features.device)
    classes = torch.as_tensor(classes, dtype=torch.long, device=features.device)
    present = torch.unique(classes)
    per_box = box_masks(boxes, height, width).to(boxes.device)
    per_class = torch.stack([per_box[classes == c].any(dim=0) for c in present.tolist()])
    return boxes, classes, present, per_box, per_class, per_box.any(dim=0)


def bana_unary(features: torch.Tensor, weight: torch.Tensor, boxes: torch.Tensor, classes: torch.Tensor,
               *, bg_threshold: float = BG_THRESHOLD) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """u_0, u_c and the unary (module docstring) from features at image resolution.

    Args:
        features: (D, H, W).
        weight: (K + 1, D) classifier, background first.
        boxes: (N, 4) pixels; classes: (N,) ids in 1..K.
        bg_threshold: the 0.99-of-maximum cut.

    Returns:
        ``(unary (1 + n, H, W), u0 (H, W), u_c (n, H, W), present (n,))``.
    """
    _, height, width = features.shape
    boxes, classes, present, per_box, per_class, inside = _box_layout(features, boxes, classes)
    unit = F.normalize(features, dim=0)

    background = ~inside
    if background.any():
        prototype = features[:, background].mean(dim=1)
        attention = F.relu(torch.einsum("dhw,d->hw", unit, F.normalize(prototype, dim=0)))
        attention = torch.where(attention < bg_threshold * attention.max(), torch.zeros_like(attention), attention)
    else:
        attention = torch.zeros(height, width, dtype=features.dtype, device=features.device)
    u0 = torch.where(inside, attention, torch.ones_like(attention))

    u_c = torch.zeros(len(present), height, width, dtype=features.dtype, device=features.device)
    raw = F.relu(torch.einsum("dhw,cd->chw", features, weight[present].to(features.dtype)))
    for index, c in enumerate(present.tolist()):
        for mask in per_box[classes == c]:
            peak = raw[index][mask].max()
            u_c[index] = torch.where(mask, torch.maximum(u_c[index], raw[index] / (peak + EPS)), u_c[index])
    u_c = u_c * per_class  # 0 outside the class's boxes (already so; explicit)

    unary = torch.cat([u0[None], u_c])
    soft = torch.softmax(unary, dim=0)
    unary = torch.where(inside[None], soft, unary)
    return unary, u0, u_c, present


def retrieval_labels(features: torch.Tensor, weight: torch.Tensor, y_crf: torch.Tensor, boxes: torch.Tensor,
                     classes: torch.Tensor) -> torch.Tensor:
    """Y_ret (H, W) long by prototype retrieval from Y_crf (module docstring)."""
    boxes, classes, present, per_box, per_class, inside = _box_layout(features, boxes, classes)
    labels = [0] + present.tolist()
    unit = F.normalize(features, dim=0)
    corr = []
    for label in labels:
        chosen = y_crf == label
        prototype = features[:, chosen].mean(dim=1) if chosen.any() else weight[label].to(features.dtype)
        corr.append(F.relu(torch.einsum("dhw,d->hw", unit, F.normalize(prototype, dim=0))))
    corr = torch.stack(corr)
    corr[0] = torch.where(inside, corr[0], torch.ones_like(corr[0]))
    corr[1:] = corr[1:] * per_class
    index = corr.argmax(dim=0)
    return torch.as_tensor(labels, dtype=torch.long, device=features.device)[index]


def label_disagreement(y_crf: np.ndarray, y_ret: np.ndarray, region: np.ndarray | None = None) -> float:
    """Share of pixels (of ``region`` if given) where the two label maps differ; 0 for no pixel."""
    differ = np.asarray(y_crf) != np.asarray(y_ret)
    if region is not None:
        differ = differ[np.asarray(region, dtype=bool)]
    return float(differ.mean()) if differ.size else 0.0


def reliable_labels(y_crf: np.ndarray, y_ret: np.ndarray) -> np.ndarray:
    """uint8 (H, W): Y_crf where it agrees with Y_ret, 255 (ignore) elsewhere (BANA ``datasets/voc.py``
    L138-140), the stage-3 target whose 255 region the noise-aware loss weighs."""
    y_crf, y_ret = np.asarray(y_crf), np.asarray(y_ret)
    if y_crf.shape != y_ret.shape:
        raise ValueError(f"Y_crf is {y_crf.shape} but Y_ret is {y_ret.shape}")
    return np.where(y_crf == y_ret, y_crf, IGNORE_INDEX).astype(np.uint8)


def bana_labels_from_features(
    features: torch.Tensor,
    weight: torch.Tensor,
    image: np.ndarray,
    boxes: np.ndarray | torch.Tensor,
    classes: np.ndarray | torch.Tensor,
    *,
    bg_threshold: float = BG_THRESHOLD,
    crf: CrfParams | str = CRF_PRESET,
    scale: str = "reference",
    where: str | os.PathLike | None = None,
) -> BanaLabels:
    """Y_crf and Y_ret from features already at the image's size.

    Args:
        features: (D, H, W) at the image's resolution.
        weight: (K + 1, D) classifier rows, background first.
        image: uint8 (H, W, 3) RGB, as read (the CRF's appearance kernel).
        boxes: (N, 4) pixels; classes: (N,) ids in 1..K.
        bg_threshold: the 0.99-of-maximum cut of u_0.
        crf: CRF parameters or preset name.
        scale: the CRF widths as set (``reference``) or following the image (``image``).
        where: named in errors (the image id or file).

    Raises:
        DataError: a bad box or class (:func:`check_boxes`), or features of another size.
    """
    image = np.asarray(image)
    height, width = image.shape[:2]
    if tuple(features.shape[1:]) != (height, width):
        raise DataError(f"features are {tuple(features.shape[1:])} but the image is {(height, width)}", where)
    check_boxes(boxes, classes, (height, width), weight.shape[0], where)
    boxes_t = torch.as_tensor(np.asarray(boxes, dtype=np.float32) if not isinstance(boxes, torch.Tensor) else boxes,
                              dtype=torch.float32, device=features.device)
    classes_t = torch.as_tensor(np.asarray(classes) if not isinstance(classes, torch.Tensor) else classes,
                                dtype=torch.long, device=features.device)
    features = features.float()
    weight = weight.float().to(features.device)
    with torch.no_grad():
        unary, u0, u_c, present = bana_unary(features, weight, boxes_t, classes_t, bg_threshold=bg_threshold)
        *_, per_class, inside = _box_layout(features, boxes_t, classes_t)
    unary_np = unary.cpu().numpy().astype(np.float32)
    refined = dense_crf(image, unary_np, crf, scale=scale, where=where)
    refined[1:] *= per_class.cpu().numpy()
    ids = np.concatenate([[0], present.cpu().numpy()]).astype(np.uint8)
    y_crf = ids[refined.argmax(axis=0)]
    with torch.no_grad():
        y_ret_t = retrieval_labels(features, weight, torch.from_numpy(y_crf.astype(np.int64)).to(features.device),
                                   boxes_t, classes_t)
    y_ret = y_ret_t.cpu().numpy().astype(np.uint8)
    inside_np = inside.cpu().numpy()
    return BanaLabels(
        y_crf=y_crf, y_ret=y_ret, present=present.cpu().numpy().astype(np.int64),
        u0=u0.cpu().numpy().astype(np.float32), u_c=u_c.cpu().numpy().astype(np.float32), unary=unary_np,
        inside=inside_np, disagreement=label_disagreement(y_crf, y_ret),
        box_disagreement=label_disagreement(y_crf, y_ret, inside_np),
    )


def image_features(model: BapNet, image: np.ndarray, *, device: torch.device | str = "cpu",
                   mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> torch.Tensor:
    """(D, H, W) features of a ``uint8`` (H, W, 3) image, upsampled bilinearly to its size (eval
    mode for the pass, the model's mode restored after). ``mean``/``std``: the training's."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            tensor = to_chw_tensor(normalize(image, mean, std))[None].to(device)
            features = model.features(tensor)
            return F.interpolate(features, size=image.shape[:2], mode="bilinear", align_corners=False)[0]
    finally:
        model.train(was_training)


def bana_labels(
    model: BapNet,
    image: np.ndarray,
    boxes: np.ndarray,
    classes: np.ndarray,
    *,
    device: torch.device | str = "cpu",
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    bg_threshold: float = BG_THRESHOLD,
    crf: CrfParams | str = CRF_PRESET,
    scale: str = "reference",
    where: str | os.PathLike | None = None,
) -> BanaLabels:
    """Y_crf and Y_ret of one image from a trained :class:`BapNet` (eval mode for the pass).

    The image is normalised with ``mean``/``std`` (those the network was trained with), its
    features upsampled to the image, and :func:`bana_labels_from_features` does the rest with the
    ``uint8`` image itself for the CRF.
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise DataError(f"the image must be uint8 (H, W, 3) RGB, got {image.dtype} {image.shape}", where)
    check_boxes(boxes, classes, image.shape[:2], model.num_classes, where)
    features = image_features(model, image, device=device, mean=mean, std=std)
    return bana_labels_from_features(features, model.weight.detach(), image, boxes, classes,
                                     bg_threshold=bg_threshold, crf=crf, scale=scale, where=where)


def make_bana_labels(
    model: BapNet,
    dataset,
    crf_dir: str | os.PathLike,
    ret_dir: str | os.PathLike,
    *,
    ids: Sequence[str] | None = None,
    device: torch.device | str = "cpu",
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    bg_threshold: float = BG_THRESHOLD,
    crf: CrfParams | str = CRF_PRESET,
    scale: str = "reference",
    progress: bool = False,
) -> dict[str, float]:
    """Y_crf and Y_ret of every image of ``dataset`` (``ids``, ``load_image``, ``boxes``, ``palette``),
    resumable: an image whose two maps exist is skipped.

    Returns:
        ``{"images": computed now, "total": len(ids), "disagreement": share of all pixels of the
        stored maps where Y_crf != Y_ret}``.
    """
    ids = list(dataset.ids if ids is None else ids)
    palette = getattr(dataset, "palette", None)
    crf_store, ret_store = MaskStore(crf_dir, palette), MaskStore(ret_dir, palette)

    def work(image_id: str) -> None:
        image = dataset.load_image(image_id)
        boxes, classes = dataset.boxes(image_id)
        labels = bana_labels(model, image, boxes, classes, device=device, mean=mean, std=std,
                             bg_threshold=bg_threshold, crf=crf, scale=scale, where=image_id)
        ret_store.save(image_id, labels.y_ret)
        crf_store.save(image_id, labels.y_crf)

    done = run_per_image(ids, work, lambda i: crf_store.has(i) and ret_store.has(i), desc="bana labels",
                         progress=progress)
    differ = pixels = 0
    for image_id in ids:
        if crf_store.has(image_id) and ret_store.has(image_id):
            y_crf, y_ret = crf_store.load(image_id), ret_store.load(image_id)
            differ += int((y_crf != y_ret).sum())
            pixels += y_crf.size
    return {"images": done, "total": len(ids), "disagreement": differ / pixels if pixels else 0.0}
