"""DeepLab models: shapes and stride, ASPP sum, cosine classifier, parameter groups, weights."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from wsss.errors import ConfigError
from wsss.models.backbones import create_backbone
from wsss.models.deeplab import (
    ASPP,
    CosineClassifier,
    create_segmentation_model,
    default_atrous_rates,
    list_segmentation_models,
)


def _out_size(n: int) -> int:
    return math.ceil(n / 8)


@pytest.mark.parametrize("classifier", ["dot", "cosine"])
def test_small_deeplab_v2_shapes_and_stride(classifier):
    torch.manual_seed(0)
    model = create_segmentation_model("deeplab_v2_resnet18_w16", 5, classifier=classifier).eval()
    assert model.num_classes == 5 and model.output_stride == 8
    assert model.atrous_rates == (2, 4, 6, 8)
    for height, width in ((64, 48), (37, 53)):
        with torch.no_grad():
            logits = model(torch.randn(2, 3, height, width))
        assert logits.shape == (2, 5, _out_size(height), _out_size(width))


def test_deeplab_v2_resnet101_shape_once():
    torch.manual_seed(0)
    model = create_segmentation_model("deeplab_v2_resnet101", 21).eval()
    assert model.atrous_rates == (6, 12, 18, 24)
    assert model.head.aspp.branches[0].in_channels == 2048
    # Output stride 8 through dilation: layer3 and layer4 keep the resolution of layer2.
    assert [layer[0].conv2.stride for layer in (model.backbone.layer3, model.backbone.layer4)] == [(1, 1), (1, 1)]
    assert model.backbone.layer4[1].conv2.dilation == (4, 4)
    with torch.no_grad():
        logits = model(torch.randn(1, 3, 33, 41))
    assert logits.shape == (1, 21, 5, 6)


def test_deeplab_v1_vgg16_shape_and_layout():
    torch.manual_seed(0)
    model = create_segmentation_model("deeplab_v1_vgg16", 4).eval()
    assert model.output_stride == 8 and model.atrous_rates == ()
    assert model.backbone.fc6.dilation == (12, 12) and model.backbone.fc6.out_channels == 1024
    convs = [m for m in model.backbone.features if isinstance(m, nn.Conv2d)]
    assert len(convs) == 13 and [c.dilation[0] for c in convs[-3:]] == [2, 2, 2]
    with torch.no_grad():
        logits = model(torch.randn(1, 3, 41, 30))
    assert logits.shape == (1, 4, _out_size(41), _out_size(30))


def test_names_and_errors():
    names = list_segmentation_models()
    assert "deeplab_v2_resnet101" in names and "deeplab_v1_vgg16" in names and "deeplab_v2_resnet18_w16" in names
    with pytest.raises(ConfigError, match="unknown segmentation model"):
        create_segmentation_model("deeplab_v3_resnet101", 21)
    with pytest.raises(ConfigError, match="unknown segmentation model"):
        create_segmentation_model("deeplab_v2_nonet", 21)
    with pytest.raises(ConfigError, match="classifier"):
        create_segmentation_model("deeplab_v2_resnet18_w16", 21, classifier="mlp")
    with pytest.raises(ConfigError, match="at least 2"):
        create_segmentation_model("deeplab_v2_resnet18_w16", 1)
    assert default_atrous_rates("resnet50") == (6, 12, 18, 24)
    assert default_atrous_rates("resnet18_w32") == (2, 4, 6, 8)


def test_aspp_is_a_sum_of_branches():
    torch.manual_seed(0)
    model = create_segmentation_model("deeplab_v2_resnet18_w16", 3, atrous_rates=(1, 2, 3)).eval()
    aspp = model.head.aspp
    assert isinstance(aspp, ASPP) and len(aspp.branches) == 3
    for branch in aspp.branches:  # the default init (std 0.01) would hide mistakes in small numbers
        nn.init.normal_(branch.weight, std=0.5)
        nn.init.normal_(branch.bias, std=0.5)
    images = torch.randn(1, 3, 40, 40)
    with torch.no_grad():
        features = model.backbone(images)
        full = model(images)
        per_branch = [branch(features) for branch in aspp.branches]
        assert torch.allclose(full, sum(per_branch), atol=1e-5)
        keep = 1
        for index, branch in enumerate(aspp.branches):
            if index != keep:
                branch.weight.zero_()
                branch.bias.zero_()
        assert torch.allclose(model(images), per_branch[keep], atol=1e-6)
        assert not torch.allclose(per_branch[keep], full, atol=1e-3)


def test_cosine_classifier_bounded_by_scale_and_matches_formula():
    torch.manual_seed(0)
    model = create_segmentation_model("deeplab_v2_resnet18_w16", 4, classifier="cosine", cosine_scale=20.0).eval()
    images = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        logits, features = model.forward_with_features(images)
    assert features.shape[1] == 128  # min(256, backbone channels) for the small backbone
    assert logits.abs().max() <= 20.0 + 1e-4
    weights = model.class_weights
    assert weights.shape == (4, 128)
    b, y, x = 1, 3, 2
    f = features[b, :, y, x]
    expected = torch.stack([20.0 * torch.dot(f, w) / (f.norm() * w.norm()) for w in weights])
    assert torch.allclose(logits[b, :, y, x], expected, atol=1e-4)
    assert (features >= 0).all()  # ReLU after the ASPP, as BANA's DeepLab_ASPP

    classifier = CosineClassifier(3, 2, scale=5.0)
    huge = torch.randn(1, 3, 2, 2) * 1e4
    assert classifier(huge).abs().max() <= 5.0 + 1e-4


def test_dot_v2_has_no_single_class_weight_but_v1_does():
    with pytest.raises(ConfigError, match="cosine"):
        _ = create_segmentation_model("deeplab_v2_resnet18_w16", 3).class_weights
    model = create_segmentation_model("deeplab_v1_vgg16", 3, classifier="cosine")
    assert model.class_weights.shape == (3, 1024)


def _group(groups, name):
    return next(g for g in groups if g["name"] == name)


def test_parameter_groups_vgg_follow_bana():
    model = create_segmentation_model("deeplab_v1_vgg16", 3)
    groups = model.parameter_groups(lr=1e-3, weight_decay=5e-4)
    assert [g["name"] for g in groups] == ["backbone_weights", "backbone_biases", "head_weights", "head_biases"]
    assert len(_group(groups, "backbone_weights")["params"]) == 15  # 13 convs + fc6 + fc7
    assert len(_group(groups, "backbone_biases")["params"]) == 15
    assert _group(groups, "backbone_biases")["lr"] == pytest.approx(2e-3)
    assert _group(groups, "backbone_biases")["weight_decay"] == 0.0
    assert _group(groups, "head_weights")["params"] == [model.head.classifier.weight]
    assert _group(groups, "head_weights")["lr"] == pytest.approx(1e-2)
    assert _group(groups, "head_weights")["weight_decay"] == pytest.approx(5e-4)
    assert _group(groups, "head_biases")["lr"] == pytest.approx(2e-2)
    every = [id(p) for g in groups for p in g["params"]]
    assert len(every) == len(set(every)) == len(list(model.parameters()))


def test_parameter_groups_resnet_and_frozen_bn(tmp_path):
    # From scratch: BN trains, in the 1x group; no multipliers without lr.
    model = create_segmentation_model("deeplab_v2_resnet18_w16", 3)
    groups = model.parameter_groups()
    assert [g["name"] for g in groups] == ["backbone_weights", "head_weights", "head_biases"]
    assert all("lr" not in g for g in groups)
    assert _group(groups, "head_weights")["lr_mult"] == 10.0 and _group(groups, "head_biases")["lr_mult"] == 20.0
    assert _group(groups, "head_biases")["weight_decay_mult"] == 0.0
    assert len(_group(groups, "head_biases")["params"]) == 4  # one per ASPP branch

    # With (ImageNet) weights: BN frozen by default, in no group and kept in eval mode.
    backbone = create_backbone("resnet18_w16", output_stride=8)
    path = tmp_path / "backbone.pth"
    torch.save(backbone.state_dict(), path)
    frozen = create_segmentation_model("deeplab_v2_resnet18_w16", 3, weights=str(path))
    assert frozen.freeze_bn
    frozen.train()
    bns = [m for m in frozen.backbone.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and all(not m.training for m in bns)
    assert all(not p.requires_grad for m in bns for p in m.parameters())
    grouped = {id(p) for g in frozen.parameter_groups() for p in g["params"]}
    assert not any(id(p) in grouped for m in bns for p in m.parameters())
    assert frozen.head.training


def test_weights_load_backbone_and_whole_model(tmp_path, caplog):
    torch.manual_seed(1)
    backbone = create_backbone("resnet18_w16", output_stride=8)
    state = backbone.state_dict()
    state["fc.weight"] = torch.zeros(10, 128)  # an ImageNet head, ignored
    path = tmp_path / "imagenet.pth"
    torch.save(state, path)
    model = create_segmentation_model("deeplab_v2_resnet18_w16", 3, weights=str(path))
    assert torch.equal(model.backbone.conv1.weight, backbone.conv1.weight)

    trained = create_segmentation_model("deeplab_v2_resnet18_w16", 3, classifier="cosine")
    nn.init.normal_(trained.head.classifier.weight)
    whole = tmp_path / "model.pth"
    torch.save(trained.state_dict(), whole)
    rebuilt = create_segmentation_model(**{**trained.config, "weights": str(whole)})
    assert rebuilt.classifier_kind == "cosine"
    assert torch.equal(rebuilt.head.classifier.weight, trained.head.classifier.weight)
    assert torch.equal(rebuilt.backbone.layer4[1].conv2.weight, trained.backbone.layer4[1].conv2.weight)

    # A file for another architecture is refused.
    with pytest.raises(ConfigError):
        create_segmentation_model("deeplab_v1_vgg16", 3, weights=str(path))


def test_vgg_loads_torchvision_layout(tmp_path, caplog):
    torchvision = pytest.importorskip("torchvision")
    # torchvision's own vgg16 feature layers (building the whole vgg16 costs 138M parameters).
    features = torchvision.models.vgg.make_layers(torchvision.models.vgg.cfgs["D"])
    state = {f"features.{k}": v for k, v in features.state_dict().items()}
    state["classifier.0.weight"] = torch.zeros(8, 8)  # the ImageNet classifier, ignored
    path = tmp_path / "vgg16.pth"
    torch.save(state, path)
    with caplog.at_level("WARNING"):
        model = create_segmentation_model("deeplab_v1_vgg16", 3, weights=str(path))
    assert torch.equal(model.backbone.features[28].weight, features[28].weight)
    assert torch.equal(model.backbone.features[0].bias, features[0].bias)
    assert "fc6.weight" in caplog.text  # reported missing (LargeFOV's fc6 has no torchvision twin)


def test_training_step_reduces_loss_on_fixed_batch():
    # The model and its parameter groups train: a few SGD steps on one batch lower the CE.
    torch.manual_seed(0)
    model = create_segmentation_model("deeplab_v2_resnet18_w16", 3)
    images = torch.randn(2, 3, 32, 32)
    target = torch.randint(0, 3, (2, 4, 4))
    optimizer = torch.optim.SGD(model.parameter_groups(lr=0.01, weight_decay=0.0), lr=0.01, momentum=0.9)
    losses = []
    for _ in range(8):
        loss = nn.functional.cross_entropy(model(images), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([0.01, 0.1, 0.2])


def test_noise_aware_loss_through_the_model_reaches_every_part():
    from wsss.segmentation.losses import make_loss

    torch.manual_seed(0)
    model = create_segmentation_model("deeplab_v2_resnet18_w16", 3, classifier="cosine")
    images = torch.randn(2, 3, 32, 32)
    y_crf = torch.randint(0, 3, (2, 32, 32))
    y_ret = torch.where(torch.rand(2, 32, 32) < 0.3, (y_crf + 1) % 3, y_crf)
    logits, features = model.forward_with_features(images)
    by_features = make_loss("nal")(logits, y_crf, target_ret=y_ret, features=features,
                                   class_weights=model.class_weights)
    by_scale = make_loss("nal", scale=model.cosine_scale)(logits, y_crf, target_ret=y_ret)
    assert by_features.item() == pytest.approx(by_scale.item(), rel=1e-4)
    by_features.backward()
    assert model.head.classifier.weight.grad.abs().sum() > 0
    assert model.head.aspp.branches[0].weight.grad.abs().sum() > 0
    assert model.backbone.conv1.weight.grad.abs().sum() > 0


def test_cosine_head_starts_at_unit_scale() -> None:
    """The cosine head's inputs and rows start near unit norm: with DeepLab's N(0, 0.01) the
    normalisation's gradient (1 / norm) blew up and the benchmark's DeepLab collapsed."""
    torch.manual_seed(0)
    model = create_segmentation_model("deeplab_v2_resnet18_w16", 9, classifier="cosine")
    rows = model.head.classifier.weight.detach().flatten(1).norm(dim=1)
    assert 0.7 < float(rows.mean()) < 1.3
    for branch in model.head.aspp.branches:
        fan_in = branch.weight[0].numel()
        assert math.isclose(float(branch.weight.detach().std()), math.sqrt(2.0 / fan_in), rel_tol=0.1)
    # DeepLab's own (dot) head keeps its N(0, 0.01) initialisation
    dot = create_segmentation_model("deeplab_v2_resnet18_w16", 9, classifier="dot")
    assert math.isclose(float(dot.head.aspp.branches[0].weight.detach().std()), 0.01, rel_tol=0.1)
