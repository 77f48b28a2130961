"""DeepLab segmentation networks: DeepLab-v2 (dilated ResNet + ASPP) and DeepLab-v1 LargeFOV (VGG-16).

Every model maps normalised images (B, 3, H, W) to logits (B, num_classes, ceil(H/8), ceil(W/8))
at output stride 8; the losses and the inference upsample them.

Names (:func:`create_segmentation_model`):

* ``deeplab_v2_resnet101``: the model AdvCAM, RIB, W-OoD and BBAM report (kazuto1011/
  deeplab-pytorch ``DeepLabV2_ResNet101_MSC``): a ResNet-101 in torchvision's layout, layer3 and
  layer4 dilated by 2 and 4 (output stride 8), and an ASPP of four 3x3 convolutions with rates
  6/12/18/24 whose outputs are **summed** (not concatenated as in DeepLab-v3).
* ``deeplab_v2_<backbone>`` for any registered backbone (:func:`wsss.models.backbones.list_backbones`),
  e.g. ``deeplab_v2_resnet18_w16`` for the generated benchmark. The from-scratch ``*_w16`` /
  ``*_w32`` backbones get the rates 2/4/6/8 instead: at 128 px a stride-8 map is 16 cells
  wide, and rate 24 would sample only padding. 2/4/6/8 keeps the 1:2:3:4 ratio and scales the VOC
  rates by about the feature-width ratio 16/41 (VOC trains on 321 px crops -> 41 cells).
* ``deeplab_v1_vgg16``: DeepLab-v1 LargeFOV as BANA trains it (``models/Layers.py`` VGG16 with
  ``dilation=12``): VGG-16 whose pool4/pool5 keep stride 1, conv5 dilated by 2, a 3x3 average
  pool, fc6 as a 3x3 convolution with dilation 12 to 1024 channels, fc7 1x1, both with dropout.

Classifiers (``classifier=``):

* ``"dot"``: a plain convolution with bias. For DeepLab-v2 the ASPP branches output the class
  scores directly (as the reference); for DeepLab-v1 it is fc8, a 1x1 convolution.
* ``"cosine"``: BANA's cosine-similarity classifier (supplement Eq. 3):
  ``logit_c = tau * <phi/|phi|, W_c/|W_c|>`` with ``tau = cosine_scale = 20``, bias-free. For
  DeepLab-v2 the ASPP then outputs 256 feature channels (fewer for small backbones) followed by
  a ReLU, as BANA's ``DeepLab_ASPP``. Logits are bounded by ``tau`` in magnitude.

Learning rates (:meth:`DeepLab.parameter_groups`), the caffe ``lr_mult``/``decay_mult``
convention that kazuto1011's ``main.py`` and BANA's ``stage3_vgg.py`` both follow:
pretrained weights x1, pretrained (convolution) biases x2 without weight decay, the new head's
weights x10 and its biases x20 without weight decay.

BatchNorm: with ImageNet weights the backbone's BatchNorm is frozen (running statistics, no
gradient), as kazuto1011's ``freeze_bn`` for batch 10 on VOC; a backbone trained from scratch
keeps it trainable. ``freeze_bn=`` overrides.

Example:
    >>> model = create_segmentation_model("deeplab_v2_resnet101", 21, weights="resnet101.pth")
    >>> logits = model(images)                              # (B, 21, ceil(H/8), ceil(W/8))
    >>> optimizer = torch.optim.SGD(model.parameter_groups(lr=2.5e-4, weight_decay=5e-4),
    ...                             lr=2.5e-4, momentum=0.9)
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from wsss.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from wsss.errors import ConfigError
from wsss.models.backbones import backbone_spec, create_backbone, list_backbones
from wsss.models.weights import WeightsReport, check_weights_fit, load_backbone_weights, read_state_dict

log = logging.getLogger(__name__)

__all__ = [
    "ASPP",
    "CosineClassifier",
    "DeepLab",
    "VGG16LargeFOV",
    "check_segmentation_weights",
    "create_segmentation_model",
    "default_atrous_rates",
    "list_segmentation_models",
]

DEEPLAB_V2_RATES: tuple[int, ...] = (6, 12, 18, 24)  # DeepLab-v2 ASPP-L; kazuto1011 configs/voc12.yaml
SMALL_IMAGE_RATES: tuple[int, ...] = (2, 4, 6, 8)  # ours, for the 128 px benchmark (module docstring)
SMALL_BACKBONE_SUFFIXES = ("_w16", "_w32")  # the from-scratch benchmark backbones
COSINE_FEATURE_CHANNELS = 256  # BANA models/SegNet.py DeepLab_ASPP: ndim = 256
COSINE_SCALE = 20.0  # BANA configs/stage3_vgg.yml MODEL.TEMP (supplement Sec. 4: tau = 20)
HEAD_INIT_STD = 0.01  # kazuto1011 _ASPP and BANA: new layers ~ N(0, 0.01), biases 0
LARGEFOV_DILATION = 12  # BANA stage 3: VGG16(dilation=12), DeepLab-LargeFOV
LARGEFOV_CHANNELS = 1024  # fc6 / fc7 width of DeepLab-LargeFOV
DROPOUT = 0.5  # DeepLab-LargeFOV fc6 / fc7 dropout
OUTPUT_STRIDE = 8

CLASSIFIERS = ("dot", "cosine")


class ASPP(nn.Module):
    """DeepLab-v2's atrous spatial pyramid pooling: parallel dilated 3x3 convolutions, summed.

    Args:
        in_channels: input feature channels.
        out_channels: channels of every branch (the class count for DeepLab-v2's own head).
        rates: one dilation per branch.
        bias: give the branches biases (DeepLab-v2: yes; BANA's feature ASPP: no).
    """

    def __init__(self, in_channels: int, out_channels: int, rates: Sequence[int], bias: bool = True) -> None:
        super().__init__()
        if not rates or any(int(r) < 1 for r in rates):
            raise ConfigError(f"ASPP rates must be positive integers, got {list(rates)}")
        self.rates = tuple(int(r) for r in rates)
        self.branches = nn.ModuleList(
            nn.Conv2d(in_channels, out_channels, 3, padding=rate, dilation=rate, bias=bias)
            for rate in self.rates
        )
        for branch in self.branches:
            nn.init.normal_(branch.weight, mean=0.0, std=HEAD_INIT_STD)
            if branch.bias is not None:
                nn.init.zeros_(branch.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.branches[0](x)
        for branch in self.branches[1:]:
            out = out + branch(x)
        return out


class CosineClassifier(nn.Module):
    """``tau * cos(phi(p), W_c)`` for every pixel ``p`` and class ``c`` (BANA supplement Eq. 3).

    Args:
        in_channels: feature channels D.
        num_classes: C.
        scale: tau, the radius of the hypersphere the logits live on (BANA: 20).
    """

    def __init__(self, in_channels: int, num_classes: int, scale: float = COSINE_SCALE) -> None:
        super().__init__()
        if not scale > 0:
            raise ConfigError(f"cosine_scale must be positive, got {scale}")
        self.scale = float(scale)
        self.weight = nn.Parameter(torch.empty(num_classes, in_channels, 1, 1))
        # Rows of about unit norm: the gradient through the normalisation scales as 1 / |W_c|, so
        # DeepLab's N(0, 0.01) would multiply every step on the direction by ~100 / sqrt(D).
        nn.init.normal_(self.weight, mean=0.0, std=in_channels ** -0.5)

    def similarity(self, features: torch.Tensor) -> torch.Tensor:
        """Cosine similarity (B, C, h, w) in [-1, 1] between features (B, D, h, w) and each class weight."""
        return F.conv2d(F.normalize(features, dim=1), F.normalize(self.weight, dim=1))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.scale * self.similarity(features)


class VGG16LargeFOV(nn.Module):
    """VGG-16 trunk of DeepLab-v1 LargeFOV, output stride 8, 1024 channels out.

    ``features`` keeps torchvision's ``vgg16().features`` indices (13 convolutions at
    0, 2, 5, ... 28), so a torchvision VGG-16 state dict loads its convolutions unchanged; fc6
    and fc7 have no torchvision counterpart (DeepLab subsamples them from the ImageNet fc layers)
    and are reported missing. Pooling is 3x3 with padding 1 (stride 2, then stride 1 for pool4
    and pool5), conv5 is dilated by 2, then a 3x3 average pool, fc6 (3x3, dilation 12), fc7 (1x1).
    """

    # (out_channels, dilation) per convolution; "P2"/"P1": 3x3 max pool with stride 2 / 1.
    _LAYOUT: tuple[Any, ...] = (
        (64, 1), (64, 1), "P2",
        (128, 1), (128, 1), "P2",
        (256, 1), (256, 1), (256, 1), "P2",
        (512, 1), (512, 1), (512, 1), "P1",
        (512, 2), (512, 2), (512, 2), "P1",
    )  # fmt: skip

    def __init__(self, fc_dilation: int = LARGEFOV_DILATION, fc_channels: int = LARGEFOV_CHANNELS,
                 dropout: float = DROPOUT) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = 3
        for item in self._LAYOUT:
            if item == "P2":
                layers.append(nn.MaxPool2d(3, stride=2, padding=1))
            elif item == "P1":
                layers.append(nn.MaxPool2d(3, stride=1, padding=1))
            else:
                width, dilation = item
                layers += [nn.Conv2d(channels, width, 3, padding=dilation, dilation=dilation),
                           nn.ReLU(inplace=True)]
                channels = width
        self.features = nn.Sequential(*layers)
        self.pool5a = nn.AvgPool2d(3, stride=1, padding=1)
        self.fc6 = nn.Conv2d(channels, fc_channels, 3, padding=fc_dilation, dilation=fc_dilation)
        self.fc7 = nn.Conv2d(fc_channels, fc_channels, 1)
        self.dropout6 = nn.Dropout2d(dropout)
        self.dropout7 = nn.Dropout2d(dropout)
        self.relu = nn.ReLU(inplace=True)
        self.out_channels = fc_channels
        self.output_stride = OUTPUT_STRIDE
        self.name = "vgg16_largefov"
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool5a(self.features(x))
        x = self.dropout6(self.relu(self.fc6(x)))
        return self.dropout7(self.relu(self.fc7(x)))


class _ASPPHead(nn.Module):
    """DeepLab-v2 head: ASPP to class scores (dot), or ASPP to features + ReLU + cosine classifier."""

    def __init__(self, in_channels: int, num_classes: int, rates: Sequence[int], classifier: str,
                 cosine_scale: float, feature_channels: int) -> None:
        super().__init__()
        if classifier == "dot":
            self.aspp = ASPP(in_channels, num_classes, rates, bias=True)
            self.classifier: CosineClassifier | None = None
        else:
            self.aspp = ASPP(in_channels, feature_channels, rates, bias=False)
            # Features of unit scale before the cosine's normalisation (He initialisation), for the
            # same reason as the classifier's rows: with N(0, 0.01) the tiny features make the
            # normalisation's gradient (1 / |f|) blow up, and a DeepLab trained from scratch on the
            # benchmark collapsed to background (final val mIoU 8.4 -> 52.5 with both inits).
            for branch in self.aspp.branches:
                nn.init.kaiming_normal_(branch.weight, nonlinearity="relu")
            self.classifier = CosineClassifier(feature_channels, num_classes, cosine_scale)

    def forward_with_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.classifier is None:
            return self.aspp(x), x
        features = F.relu(self.aspp(x))
        return self.classifier(features), features


class _LinearHead(nn.Module):
    """DeepLab-v1 head: fc8 as a 1x1 convolution (dot) or a cosine classifier."""

    def __init__(self, in_channels: int, num_classes: int, classifier: str, cosine_scale: float) -> None:
        super().__init__()
        if classifier == "dot":
            self.classifier: nn.Module = nn.Conv2d(in_channels, num_classes, 1)
            nn.init.normal_(self.classifier.weight, mean=0.0, std=HEAD_INIT_STD)
            nn.init.zeros_(self.classifier.bias)
        else:
            self.classifier = CosineClassifier(in_channels, num_classes, cosine_scale)

    def forward_with_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.classifier(x), x


class DeepLab(nn.Module):
    """A backbone and a DeepLab head; build with :func:`create_segmentation_model`.

    Attributes:
        name: the model name it was built under.
        num_classes: C, background included.
        output_stride: 8.
        classifier_kind: ``"dot"`` or ``"cosine"``.
        cosine_scale: tau for the cosine classifier, ``None`` for ``dot``.
        atrous_rates: the ASPP rates (``()`` for DeepLab-v1).
        freeze_bn: whether the backbone's BatchNorm is frozen.
        input_mean, input_std: the normalisation the backbone expects (ImageNet, RGB in [0, 1]).
        backbone: the feature extractor (our ResNet or :class:`VGG16LargeFOV`).
        head: the new layers (ASPP and/or classifier), trained at 10x/20x learning rate.
    """

    def __init__(self, name: str, backbone: nn.Module, head: nn.Module, num_classes: int, *,
                 classifier: str, cosine_scale: float | None, atrous_rates: Sequence[int],
                 freeze_bn: bool) -> None:
        super().__init__()
        self.name = name
        self.backbone = backbone
        self.head = head
        self.num_classes = int(num_classes)
        self.output_stride = int(getattr(backbone, "output_stride", OUTPUT_STRIDE))
        self.classifier_kind = classifier
        self.cosine_scale = cosine_scale
        self.atrous_rates = tuple(atrous_rates)
        self.freeze_bn = bool(freeze_bn)
        self.input_mean = tuple(IMAGENET_MEAN)
        self.input_std = tuple(IMAGENET_STD)
        if self.freeze_bn:
            for module in self.backbone.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.requires_grad_(False)
        self.train(self.training)

    @property
    def config(self) -> dict[str, Any]:
        """Keyword arguments of :func:`create_segmentation_model` that rebuild this model (no weights)."""
        return {
            "name": self.name,
            "num_classes": self.num_classes,
            "classifier": self.classifier_kind,
            "cosine_scale": self.cosine_scale if self.cosine_scale is not None else COSINE_SCALE,
            "atrous_rates": list(self.atrous_rates) or None,
            "freeze_bn": self.freeze_bn,
        }

    def train(self, mode: bool = True) -> "DeepLab":
        super().train(mode)
        if self.freeze_bn:
            for module in self.backbone.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        return self

    def forward_with_features(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits (B, C, h, w), features (B, D, h, w) the final classifier sees).

        For the cosine classifier and DeepLab-v1 the features are the classifier's input, so
        ``cos(features, class_weights)`` is what BANA's noise-aware loss compares; for the dot
        DeepLab-v2 head (no single classifier) they are the backbone's output.
        """
        return self.head.forward_with_features(self.backbone(images))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits (B, num_classes, ceil(H/8), ceil(W/8)) of normalised images (B, 3, H, W)."""
        return self.forward_with_features(images)[0]

    @property
    def class_weights(self) -> torch.Tensor:
        """The final classifier's weight as (C, D), the parameter itself (gradients flow).

        Raises:
            ConfigError: the dot DeepLab-v2 head, whose four ASPP branches are the classifier.
        """
        classifier = getattr(self.head, "classifier", None)
        if classifier is None:
            raise ConfigError(
                f"{self.name} with the dot classifier has no single class-weight matrix (its "
                "ASPP branches are the classifier); use classifier='cosine' for the noise-aware loss"
            )
        return classifier.weight.flatten(1)

    def parameter_groups(self, lr: float | None = None, weight_decay: float | None = None
                         ) -> list[dict[str, Any]]:
        """SGD parameter groups with DeepLab's learning-rate and weight-decay multipliers.

        ===================== ======= ============ =====================================
        group                 lr_mult decay_mult   what
        ===================== ======= ============ =====================================
        ``backbone_weights``  1       1            pretrained weights (and trainable BN)
        ``backbone_biases``   2       0            pretrained convolution biases (VGG)
        ``head_weights``      10      1            ASPP / classifier weights
        ``head_biases``       20      0            ASPP / classifier biases
        ===================== ======= ============ =====================================

        Sources: kazuto1011 ``main.py`` ``get_params`` (1x, 10x, 20x without decay; its frozen
        BatchNorm is in no group) and BANA ``stage3_vgg.py`` (x1, x2 without decay, x10, x20
        without decay). Parameters that do not require grad and empty groups are left out.

        Args:
            lr: base learning rate; when given, each group gets ``lr = lr * lr_mult``.
            weight_decay: base weight decay; when given, each group gets
                ``weight_decay = weight_decay * decay_mult``.

        Returns:
            Dicts with ``name``, ``params``, ``lr_mult``, ``weight_decay_mult`` (and ``lr``,
            ``weight_decay`` when asked), ready for ``torch.optim.SGD``.
        """
        buckets: dict[str, list[nn.Parameter]] = {
            "backbone_weights": [], "backbone_biases": [], "head_weights": [], "head_biases": [],
        }
        for part, module in (("backbone", self.backbone), ("head", self.head)):
            for sub in module.modules():
                is_conv = isinstance(sub, nn.Conv2d)
                for param_name, param in sub.named_parameters(recurse=False):
                    if not param.requires_grad:
                        continue
                    # Only convolution biases follow caffe's bias rule; BatchNorm's affine
                    # parameters (trainable only from scratch) stay with the weights.
                    kind = "biases" if is_conv and param_name == "bias" else "weights"
                    buckets[f"{part}_{kind}"].append(param)
        multipliers = {
            "backbone_weights": (1.0, 1.0), "backbone_biases": (2.0, 0.0),
            "head_weights": (10.0, 1.0), "head_biases": (20.0, 0.0),
        }
        groups = []
        for name, params in buckets.items():
            if not params:
                continue
            lr_mult, decay_mult = multipliers[name]
            group: dict[str, Any] = {"name": name, "params": params, "lr_mult": lr_mult,
                                     "weight_decay_mult": decay_mult}
            if lr is not None:
                group["lr"] = lr * lr_mult
            if weight_decay is not None:
                group["weight_decay"] = weight_decay * decay_mult
            groups.append(group)
        return groups


def list_segmentation_models() -> list[str]:
    """Every name :func:`create_segmentation_model` accepts."""
    return ["deeplab_v1_vgg16"] + [f"deeplab_v2_{b}" for b in list_backbones()]


def default_atrous_rates(backbone: str) -> tuple[int, ...]:
    """6/12/18/24 (DeepLab-v2), or 2/4/6/8 for the small from-scratch ``*_w16``/``*_w32`` backbones."""
    return SMALL_IMAGE_RATES if backbone.endswith(SMALL_BACKBONE_SUFFIXES) else DEEPLAB_V2_RATES


def create_segmentation_model(
    name: str,
    num_classes: int,
    *,
    weights: str | os.PathLike | None = None,
    classifier: str = "dot",
    cosine_scale: float = COSINE_SCALE,
    atrous_rates: Sequence[int] | None = None,
    freeze_bn: bool | None = None,
) -> DeepLab:
    """Build a DeepLab model by name.

    Args:
        name: ``deeplab_v2_resnet101``, ``deeplab_v1_vgg16`` or ``deeplab_v2_<backbone>``
            (see :func:`list_segmentation_models`).
        num_classes: C, background included.
        weights: a local file (``.pth``/``.pt``/``.safetensors``). A torchvision-format ImageNet
            state dict initialises the backbone (missing and unexpected tensors are logged); a
            state dict of a whole model of this kind (keys ``backbone.*``/``head.*``, as
            ``model.state_dict()`` saves) loads everything. ``None``: random initialisation.
        classifier: ``"dot"`` or ``"cosine"`` (BANA).
        cosine_scale: tau of the cosine classifier (BANA: 20).
        atrous_rates: DeepLab-v2 ASPP rates; ``None`` for :func:`default_atrous_rates`.
        freeze_bn: freeze the backbone's BatchNorm; ``None`` freezes it when ``weights`` is
            given (pretrained, kazuto1011's recipe) and trains it otherwise (from scratch).

    Returns:
        The model, in training mode.

    Raises:
        ConfigError: unknown name or classifier, bad rates or scale, weights for another model.
        DataError: the weights file is missing or unreadable.
    """
    if classifier not in CLASSIFIERS:
        raise ConfigError(f"unknown classifier {classifier!r}; known: {', '.join(CLASSIFIERS)}")
    if int(num_classes) != num_classes or num_classes < 2:
        raise ConfigError(
            f"a segmentation model needs at least 2 classes (background + 1), got {num_classes}")
    num_classes = int(num_classes)
    if freeze_bn is None:
        freeze_bn = weights is not None
    full_model = weights is not None and _is_full_model_file(weights)
    backbone_weights = None if full_model else weights
    scale = float(cosine_scale) if classifier == "cosine" else None

    if name == "deeplab_v1_vgg16":
        if atrous_rates is not None:
            raise ConfigError("deeplab_v1_vgg16 has no ASPP; atrous_rates does not apply")
        backbone: nn.Module = VGG16LargeFOV()
        if backbone_weights is not None:
            # torchvision's vgg16 ImageNet classifier (classifier.*) has no place in LargeFOV.
            load_backbone_weights(backbone, backbone_weights, ignore_prefixes=("classifier.",))
        head: nn.Module = _LinearHead(backbone.out_channels, num_classes, classifier, cosine_scale)
        rates: tuple[int, ...] = ()
    elif name.startswith("deeplab_v2_"):
        backbone_name = name[len("deeplab_v2_"):]
        try:
            backbone_spec(backbone_name)
        except ConfigError:
            raise ConfigError(
                f"unknown segmentation model {name!r}; known: {', '.join(list_segmentation_models())}"
            ) from None
        backbone = create_backbone(backbone_name, output_stride=OUTPUT_STRIDE, weights=backbone_weights,
                                   dilated=True)
        rates = tuple(atrous_rates) if atrous_rates is not None else default_atrous_rates(backbone_name)
        feature_channels = min(COSINE_FEATURE_CHANNELS, backbone.out_channels)
        head = _ASPPHead(backbone.out_channels, num_classes, rates, classifier, cosine_scale,
                         feature_channels)
    else:
        raise ConfigError(
            f"unknown segmentation model {name!r}; known: {', '.join(list_segmentation_models())}")

    model = DeepLab(name, backbone, head, num_classes, classifier=classifier, cosine_scale=scale,
                    atrous_rates=rates, freeze_bn=freeze_bn)
    if full_model:
        _load_full_model(model, weights)
    return model


def check_segmentation_weights(name: str, num_classes: int, path: str | os.PathLike, classifier: str = "dot"
                               ) -> tuple[int, int]:
    """Check, without loading it, that ``path`` would initialise :func:`create_segmentation_model`'s
    model ``name`` (an ImageNet backbone file, or a whole model of this kind); see
    :func:`wsss.models.weights.check_weights_fit`.

    Returns:
        ``(found, total)``: how many of the backbone's (for a whole-model file, the model's)
        tensors the file holds, of how many.

    Raises:
        ConfigError: an unknown model, or weights for another one.
        DataError: the file is missing or unreadable.
    """
    if _is_full_model_file(path):
        return check_weights_fit(lambda: create_segmentation_model(name, num_classes, classifier=classifier),
                                 path, ignore_prefixes=())
    if name == "deeplab_v1_vgg16":
        return check_weights_fit(VGG16LargeFOV, path, ignore_prefixes=("classifier.",))
    if not name.startswith("deeplab_v2_"):
        raise ConfigError(f"unknown segmentation model {name!r}; known: {', '.join(list_segmentation_models())}")
    backbone = name[len("deeplab_v2_"):]
    return check_weights_fit(lambda: create_backbone(backbone, output_stride=OUTPUT_STRIDE, dilated=True), path)


def _is_full_model_file(path: str | os.PathLike) -> bool:
    return any(key.startswith(("backbone.", "head.")) for key in read_state_dict(path))


def _load_full_model(model: DeepLab, path: str | os.PathLike) -> WeightsReport:
    # Same tolerance and reporting as backbone files; nothing is ignored by prefix here.
    report = load_backbone_weights(model, path, ignore_prefixes=())
    log.info("%s: loaded a whole %s (%d tensors)", Path(path), model.name, len(report.loaded))
    return report
