"""The CAM classifier: logits vs maps, frozen BatchNorm and stages, checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from wsss.errors import ConfigError, DataError
from wsss.models.cam_net import CamNet, load_cam_net

torch.set_num_threads(1)


def _net(**kwargs) -> CamNet:
    torch.manual_seed(0)
    options = dict(output_stride=8, freeze_bn=False, frozen_stages=0)
    options.update(kwargs)
    return CamNet("resnet18_w16", 3, **options)


def test_logits_are_the_spatial_mean_of_the_class_maps() -> None:
    net = _net().eval()
    x = torch.randn(2, 3, 40, 56)
    with torch.no_grad():
        logits = net(x)
        maps = net.class_maps(x)
        subset = net.class_maps(x, classes=[2, 0])
    assert logits.shape == (2, 3)
    assert maps.shape == (2, 3, 5, 7)
    torch.testing.assert_close(logits, maps.mean(dim=(2, 3)), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(subset, maps[:, [2, 0]])
    assert net.classifier.bias is None
    with pytest.raises(ConfigError, match="out of range"):
        net.class_maps(x, classes=[3])


def test_class_maps_are_differentiable_with_respect_to_the_input() -> None:
    # AdvCAM climbs the image along the gradient of the maps.
    net = _net(freeze_bn=True, frozen_stages=2).eval()
    x = torch.randn(2, 3, 32, 32, requires_grad=True)
    F.relu(net.class_maps(x, classes=[1])).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_frozen_batchnorm_keeps_running_statistics_and_frozen_stages_get_no_gradient() -> None:
    net = _net(freeze_bn=True, frozen_stages=2)
    net.train()
    bns = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and not any(m.training for m in bns)
    before = {k: v.clone() for k, v in net.state_dict().items() if "running" in k}
    gamma_before = net.backbone.layer4[-1].bn2.weight.detach().clone()
    optimizer = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=0.5)
    for _ in range(2):
        x = torch.randn(4, 3, 32, 32) * 3 + 1
        loss = F.multilabel_soft_margin_loss(net(x), torch.tensor([[1.0, 0, 1]] * 4))
        optimizer.zero_grad()
        loss.backward()
        for stage in net.backbone.stages[:2]:
            assert all(p.grad is None and not p.requires_grad for p in stage.parameters())
        assert all(p.grad is not None for p in net.backbone.layer3.parameters())
        optimizer.step()
    for key, value in net.state_dict().items():
        if "running" in key:
            torch.testing.assert_close(value, before[key], rtol=0, atol=0)
    # gamma/beta of the trainable stages still learn (IRN's FixedBatchNorm keeps them as parameters)
    assert not torch.equal(net.backbone.layer4[-1].bn2.weight, gamma_before)
    backbone_params, head_params = net.parameter_groups()
    assert len(head_params) == 1 and head_params[0] is net.classifier.weight
    trainable = sum(p.numel() for p in net.backbone.layer3.parameters()) + sum(
        p.numel() for p in net.backbone.layer4.parameters())
    assert sum(p.numel() for p in backbone_params) == trainable


def test_unfrozen_batchnorm_trains_from_scratch() -> None:
    net = _net(freeze_bn=False, frozen_stages=0).train()
    before = net.backbone.bn1.running_mean.clone()
    net(torch.randn(4, 3, 32, 32) + 2)
    assert not torch.equal(net.backbone.bn1.running_mean, before)
    assert all(p.requires_grad for p in net.parameters())


def test_checkpoint_round_trip_and_mismatches(tmp_path: Path) -> None:
    net = _net(classes=["background", "a", "b", "c"]).eval()
    path = tmp_path / "sub" / "cam.pt"
    net.save(path, extra={"recipe": {"crop": (1, 2)}, "where": tmp_path})
    assert sorted(p.name for p in path.parent.iterdir()) == ["cam.pt"]  # atomic, no leftovers
    raw = torch.load(path, weights_only=True)  # plain data only
    assert raw["config"]["backbone"] == "resnet18_w16" and raw["extra"]["recipe"]["crop"] == [1, 2]

    back = load_cam_net(path).eval()
    assert back.classes == ["background", "a", "b", "c"] and back.output_stride == 8
    assert back.freeze_bn is False and back.frozen_stages == 0
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(back.class_maps(x), net.class_maps(x))

    with pytest.raises(ConfigError, match=r"cam\.pt: checkpoint classifies 3 foreground classes but 20"):
        CamNet.from_checkpoint(path, num_classes=20)
    with pytest.raises(ConfigError, match="backbone 'resnet18_w16', not 'resnet50'"):
        load_cam_net(path, backbone="resnet50")
    other = tmp_path / "plain.pth"
    torch.save(net.state_dict(), other)
    with pytest.raises(DataError, match=r"plain\.pth: not a wsss CAM-network checkpoint"):
        load_cam_net(other)
    with pytest.raises(DataError, match="checkpoint not found"):
        load_cam_net(tmp_path / "missing.pt")


def test_invalid_options() -> None:
    with pytest.raises(ConfigError, match="frozen_stages"):
        CamNet("resnet18_w16", 3, frozen_stages=5)
    with pytest.raises(ConfigError, match="at least one foreground class"):
        CamNet("resnet18_w16", 0)
    with pytest.raises(ConfigError, match="background"):
        CamNet("resnet18_w16", 3, classes=["a", "b", "c"])


def test_load_cam_net_for_checks_the_dataset_classes(tmp_path) -> None:
    from types import SimpleNamespace

    from wsss.errors import ConfigError
    from wsss.models.cam_net import CamNet, load_cam_net_for

    classes = ("background", "a", "b")
    net = CamNet("resnet18_w16", 2, classes=list(classes))
    net.save(tmp_path / "c.pt")
    same = SimpleNamespace(num_classes=3, classes=list(classes))
    assert load_cam_net_for(tmp_path / "c.pt", same).num_classes == 2
    renamed = SimpleNamespace(num_classes=3, classes=["background", "a", "z"])
    with pytest.raises(ConfigError, match="c.pt: checkpoint classes .* differ"):
        load_cam_net_for(tmp_path / "c.pt", renamed)
    with pytest.raises(ConfigError, match="c.pt"):
        load_cam_net_for(tmp_path / "c.pt", SimpleNamespace(num_classes=4, classes=["background", "a", "b", "c"]))
