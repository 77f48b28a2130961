"""The CAM classifier (IRN's ``resnet50_cam``, any registered backbone).

``backbone -> global average pooling -> bias-free 1x1 convolution`` over the K foreground
classes (no background class). Because the head is linear and bias-free, the class activation
map of class ``c`` is the head applied at every position, ``conv2d(features, W[c])``, and the
classification logit is its spatial mean.

For an ImageNet-pretrained backbone IRN keeps every BatchNorm on its running statistics
(``freeze_bn``; gamma and beta still train) and trains only layer3, layer4 and the head
(``frozen_stages=2``). A backbone trained from scratch needs ``freeze_bn=False`` and
``frozen_stages=0``.

Example:
    >>> net = CamNet("resnet50", num_classes=20, weights="resnet50.pth")
    >>> logits = net(images)                               # (B, 20)
    >>> maps = net.class_maps(images)                      # (B, 20, H/16, W/16), raw
    >>> some = net.class_maps(images, classes=[0, 14])     # only those channels
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from wsss.errors import ConfigError, DataError
from wsss.io import atomic_write
from wsss.models.backbones import ResNet, create_backbone
from wsss.models.weights import load_torch_file

log = logging.getLogger(__name__)

__all__ = ["CHECKPOINT_FORMAT", "CamNet", "load_cam_net"]

CHECKPOINT_FORMAT = "wsss.cam_net"
CHECKPOINT_VERSION = 1


class CamNet(nn.Module):
    """Backbone + GAP + bias-free 1x1 classifier, producing logits or class activation maps.

    Args:
        backbone: a registered backbone name (see :func:`wsss.models.backbones.list_backbones`).
        num_classes: K, the number of foreground classes.
        output_stride: backbone output stride; ``None`` for the backbone's default.
        dilated: see :func:`wsss.models.backbones.stage_strides`.
        weights: local backbone weights file (torchvision format), or ``None``.
        freeze_bn: keep every BatchNorm on its running statistics even in ``train()`` mode
            (IRN's ``FixedBatchNorm``). Use ``False`` when training from scratch.
        frozen_stages: how many leading stages (stem+layer1, layer2, layer3, layer4) get no
            gradient; IRN: 2.
        classes: optional class names (background first) stored with checkpoints.
    """

    def __init__(
        self,
        backbone: str,
        num_classes: int,
        *,
        output_stride: int | None = None,
        dilated: bool | None = None,
        weights: str | os.PathLike | None = None,
        freeze_bn: bool = True,
        frozen_stages: int = 2,
        classes: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ConfigError(f"a CAM network needs at least one foreground class, got {num_classes}")
        if not 0 <= frozen_stages <= 4:
            raise ConfigError(f"frozen_stages must be in 0..4, got {frozen_stages}")
        if classes is not None and len(classes) != num_classes + 1:
            raise ConfigError(
                f"classes must list background + {num_classes} foreground names, got {len(classes)}"
            )
        self.backbone: ResNet = create_backbone(backbone, output_stride, weights, dilated=dilated)
        self.classifier = nn.Conv2d(self.backbone.out_channels, num_classes, 1, bias=False)
        self.freeze_bn = bool(freeze_bn)
        self.frozen_stages = int(frozen_stages)
        self.classes = None if classes is None else [str(c) for c in classes]
        self._dilated = dilated
        for stage in self.backbone.stages[: self.frozen_stages]:
            stage.requires_grad_(False)
        self.train(self.training)

    @property
    def num_classes(self) -> int:
        """K, the number of foreground classes."""
        return self.classifier.out_channels

    @property
    def output_stride(self) -> int:
        return self.backbone.output_stride

    @property
    def config(self) -> dict[str, Any]:
        """Everything needed to rebuild this network (stored in checkpoints)."""
        return {
            "backbone": self.backbone.name,
            "num_classes": self.num_classes,
            "output_stride": self.output_stride,
            "dilated": self._dilated,
            "freeze_bn": self.freeze_bn,
            "frozen_stages": self.frozen_stages,
        }

    def train(self, mode: bool = True) -> "CamNet":
        super().train(mode)
        if self.freeze_bn:
            for module in self.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        return self

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Backbone features (B, C, h, w) of normalised images (B, 3, H, W)."""
        return self.backbone(images)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Classification logits (B, K): GAP of the features, then the 1x1 classifier."""
        pooled = self.features(images).mean(dim=(2, 3), keepdim=True)
        return self.classifier(pooled).flatten(1)

    def class_maps(self, images: torch.Tensor, classes: torch.Tensor | Sequence[int] | None = None
                   ) -> torch.Tensor:
        """Raw class activation maps ``conv2d(features, W)`` (no ReLU, no normalisation).

        Works under autograd (AdvCAM differentiates through it) and under ``no_grad``.

        Args:
            images: normalised images (B, 3, H, W); a batch may hold flips or perturbed copies.
            classes: 0-based classifier channels to compute (class id ``c`` is channel
                ``c - 1``); ``None`` for all K.

        Returns:
            (B, len(classes) or K, ceil(H / os), ceil(W / os)).
        """
        weight = self.classifier.weight
        if classes is not None:
            index = torch.as_tensor(classes, dtype=torch.long, device=weight.device).reshape(-1)
            if index.numel() and (int(index.min()) < 0 or int(index.max()) >= self.num_classes):
                raise ConfigError(
                    f"class channel out of range for a classifier of {self.num_classes} classes: "
                    f"{index.tolist()}"
                )
            weight = weight.index_select(0, index)
        return F.conv2d(self.features(images), weight)

    def parameter_groups(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """(trainable backbone parameters, classifier parameters); IRN gives the second 10x lr."""
        backbone = [p for p in self.backbone.parameters() if p.requires_grad]
        return backbone, list(self.classifier.parameters())

    def save(self, path: str | os.PathLike, extra: dict[str, Any] | None = None) -> None:
        """Write a checkpoint atomically: config, class names, weights and ``extra`` metadata.

        ``extra`` must hold only plain values (str, int, float, bool, None, lists, dicts) so
        that the file loads with ``torch.load(weights_only=True)``.
        """
        checkpoint = {
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            "config": self.config,
            "classes": self.classes,
            "state_dict": {k: v.detach().cpu() for k, v in self.state_dict().items()},
            "extra": _plain(extra or {}),
        }
        with atomic_write(path, "wb") as handle:
            torch.save(checkpoint, handle)

    @classmethod
    def from_checkpoint(
        cls,
        path: str | os.PathLike,
        *,
        num_classes: int | None = None,
        backbone: str | None = None,
        map_location: str | torch.device = "cpu",
    ) -> "CamNet":
        """Rebuild a network saved with :meth:`save`.

        Args:
            path: the checkpoint.
            num_classes: if given, the checkpoint must have this many foreground classes.
            backbone: if given, the checkpoint must use this backbone.
            map_location: where to put the tensors.

        Raises:
            DataError: missing or unreadable file, or not a CAM-network checkpoint.
            ConfigError: the checkpoint's class count or backbone is not the expected one.
        """
        return load_cam_net(path, num_classes=num_classes, backbone=backbone, map_location=map_location)


def load_cam_net(
    path: str | os.PathLike,
    *,
    num_classes: int | None = None,
    backbone: str | None = None,
    map_location: str | torch.device = "cpu",
) -> CamNet:
    """See :meth:`CamNet.from_checkpoint`."""
    path = Path(path)
    checkpoint = read_checkpoint(path, map_location)
    config = checkpoint["config"]
    if num_classes is not None and int(config["num_classes"]) != int(num_classes):
        raise ConfigError(
            f"checkpoint classifies {config['num_classes']} foreground classes but "
            f"{num_classes} are expected (trained on another dataset?)",
            path,
        )
    if backbone is not None and config["backbone"] != backbone:
        raise ConfigError(f"checkpoint uses backbone {config['backbone']!r}, not {backbone!r}", path)
    net = CamNet(
        config["backbone"],
        int(config["num_classes"]),
        output_stride=int(config["output_stride"]),
        dilated=config.get("dilated"),
        freeze_bn=bool(config.get("freeze_bn", True)),
        frozen_stages=int(config.get("frozen_stages", 2)),
        classes=checkpoint.get("classes"),
    )
    try:
        net.load_state_dict(checkpoint["state_dict"], strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise DataError(f"checkpoint weights do not match its own config ({first})", path) from None
    return net


def load_cam_net_for(path: str | os.PathLike, dataset: Any, device: str | torch.device = "cpu") -> CamNet:
    """The classifier at ``path``, checked against ``dataset``'s classes, on ``device``.

    Raises:
        ConfigError: the checkpoint classifies another number of classes, or other class names.
    """
    model = load_cam_net(path, num_classes=dataset.num_classes - 1, map_location=device).to(device)
    if model.classes is not None and list(model.classes) != list(dataset.classes):
        raise ConfigError(
            f"checkpoint classes {list(model.classes)} differ from the dataset's {list(dataset.classes)}", path
        )
    return model


def read_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a CAM-network checkpoint dict with ``weights_only=True``, checking its format."""
    path = Path(path)
    if not path.is_file():
        raise DataError("checkpoint not found", path)
    checkpoint = load_torch_file(path, "wsss checkpoint", map_location)
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise DataError(
            "not a wsss CAM-network checkpoint (backbone ImageNet weights go to --weights)", path
        )
    if int(checkpoint.get("version", 0)) > CHECKPOINT_VERSION:
        raise DataError(
            f"checkpoint version {checkpoint.get('version')} is newer than this wsss understands", path
        )
    for key in ("config", "state_dict"):
        if not isinstance(checkpoint.get(key), dict):
            raise DataError(f"checkpoint has no {key!r}", path)
    return checkpoint


def _plain(value: Any) -> Any:
    """Tuples to lists, paths to strings: values ``torch.load(weights_only=True)`` accepts."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, os.PathLike):
        return str(value)
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)
