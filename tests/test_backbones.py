"""Backbones (registry, output strides, stages) and loading torchvision-format weights."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
import torchvision
from safetensors.torch import save_file

from wsss.errors import ConfigError, DataError, WsssError
from wsss.models.backbones import create_backbone, list_backbones, stage_strides
from wsss.models.weights import load_backbone_weights, read_state_dict

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def torchvision_resnet18_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None).state_dict()


def test_registry_lists_the_backbones_and_rejects_unknown_names() -> None:
    names = list_backbones()
    for name in ("resnet18", "resnet50", "resnet101", "resnet18_w16"):
        assert name in names
    with pytest.raises(ConfigError, match="unknown backbone 'resnet51'"):
        create_backbone("resnet51")
    with pytest.raises(ConfigError, match="output_stride"):
        create_backbone("resnet18_w16", output_stride=4)


@pytest.mark.parametrize("output_stride, expected", [(8, (9, 13)), (16, (5, 7)), (32, (3, 4))])
def test_output_stride_sets_the_feature_size(output_stride: int, expected: tuple[int, int]) -> None:
    backbone = create_backbone("resnet18_w16", output_stride=output_stride).eval()
    with torch.no_grad():
        features = backbone(torch.randn(2, 3, 65, 97))
    # ceil(65 / os), ceil(97 / os)
    assert features.shape == (2, 128, *expected)
    assert backbone.output_stride == output_stride


def test_resnet50_output_strides_and_channels() -> None:
    x = torch.randn(1, 3, 64, 80)
    for output_stride, size in ((8, (8, 10)), (16, (4, 5)), (32, (2, 3))):
        backbone = create_backbone("resnet50", output_stride=output_stride).eval()
        with torch.no_grad():
            assert backbone(x).shape == (1, 2048, *size)
        assert backbone.out_channels == 2048
        assert backbone.stage_channels == (256, 512, 1024, 2048)


def test_irn_stride_16_has_no_dilation_and_8_is_dilated() -> None:
    irn = create_backbone("resnet50")  # default output stride 16, as IRN
    assert irn.output_stride == 16
    assert irn.layer4[0].conv2.stride == (1, 1) and irn.layer4[0].downsample[0].stride == (1, 1)
    assert all(m.dilation == (1, 1) for m in irn.modules() if isinstance(m, torch.nn.Conv2d))
    deeplab = create_backbone("resnet50", output_stride=8)
    assert [b.conv2.dilation for b in deeplab.layer3] == [(1, 1)] + [(2, 2)] * 5
    assert [b.conv2.dilation for b in deeplab.layer4] == [(2, 2), (4, 4), (4, 4)]
    assert stage_strides(16, dilated=True) == ((1, 2, 2, 1), (1, 1, 1, 2))
    assert stage_strides(8, dilated=False) == ((1, 2, 1, 1), (1, 1, 1, 1))


def test_small_backbone_stages_and_default_stride() -> None:
    backbone = create_backbone("resnet18_w16").eval()
    assert backbone.output_stride == 8  # the small backbones default to 8
    assert backbone.stage_channels == (16, 32, 64, 128) and backbone.out_channels == 128
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        outs = backbone.forward_stages(x)
        assert [tuple(o.shape[1:]) for o in outs] == [(16, 8, 8), (32, 4, 4), (64, 4, 4), (128, 4, 4)]
        torch.testing.assert_close(outs[-1], backbone(x))
    stem = backbone.stages[0]
    assert stem[0] is backbone.conv1 and stem[-1] is backbone.layer1
    # the stage views share parameters instead of registering copies
    assert not any(k.startswith("stages") for k in backbone.state_dict())


def test_state_dict_layout_is_torchvision_and_features_match(torchvision_resnet18_state) -> None:
    reference = torchvision.models.resnet18(weights=None)
    reference.load_state_dict(torchvision_resnet18_state)
    ours = create_backbone("resnet18", output_stride=32)
    expected = {k for k in torchvision_resnet18_state if not k.startswith("fc.")}
    assert set(ours.state_dict()) == expected
    ours.load_state_dict({k: torchvision_resnet18_state[k] for k in expected})
    ours.eval(), reference.eval()
    x = torch.randn(1, 3, 48, 48)
    with torch.no_grad():
        stem = reference.maxpool(reference.relu(reference.bn1(reference.conv1(x))))
        want = reference.layer4(reference.layer3(reference.layer2(reference.layer1(stem))))
        torch.testing.assert_close(ours(x), want)


def test_loads_wrapped_torchvision_file_and_reports_missing_and_unexpected(
    tmp_path: Path, torchvision_resnet18_state, caplog
) -> None:
    state = dict(torchvision_resnet18_state)
    del state["layer1.0.bn1.running_mean"]
    state["extra_head.weight"] = torch.zeros(3)
    # a training script's wrapper: {"state_dict": {"module.<key>": ...}, "epoch": ...}
    path = tmp_path / "r18.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 3}, path)

    with caplog.at_level(logging.WARNING, logger="wsss.models.weights"):
        backbone = create_backbone("resnet18", weights=path)
    warning = " ".join(r.getMessage() for r in caplog.records)
    assert "layer1.0.bn1.running_mean" in warning and "extra_head.weight" in warning
    assert "fc.weight" not in warning  # the ImageNet head is ignored silently

    report = load_backbone_weights(create_backbone("resnet18"), path)
    assert report.missing == ["layer1.0.bn1.running_mean"]
    assert report.unexpected == ["extra_head.weight"]
    torch.testing.assert_close(backbone.layer3[1].conv2.weight, state["layer3.1.conv2.weight"])
    torch.testing.assert_close(backbone.bn1.running_var, state["bn1.running_var"])


def test_loads_safetensors(tmp_path: Path, torchvision_resnet18_state) -> None:
    path = tmp_path / "r18.safetensors"
    save_file({k: v.contiguous() for k, v in torchvision_resnet18_state.items()}, str(path))
    backbone = create_backbone("resnet18", weights=path)
    torch.testing.assert_close(backbone.conv1.weight, torchvision_resnet18_state["conv1.weight"])
    assert "fc.weight" in read_state_dict(path)


def test_wrong_architecture_is_an_error_naming_the_file(tmp_path: Path, torchvision_resnet18_state) -> None:
    path = tmp_path / "r18.pth"
    torch.save(torchvision_resnet18_state, path)
    with pytest.raises(WsssError, match=r"r18\.pth.*wrong shape"):
        create_backbone("resnet18_w16", weights=path)  # same names, quarter width
    unrelated = tmp_path / "unrelated.pth"
    torch.save({"encoder.weight": torch.zeros(2, 2), "decoder.bias": torch.zeros(2)}, unrelated)
    with pytest.raises(WsssError, match=r"unrelated\.pth.*only 0 of"):
        create_backbone("resnet18", weights=unrelated)


def test_missing_or_corrupt_weights_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="never downloads"):
        create_backbone("resnet18_w16", weights=tmp_path / "resnet18.pth")
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"not a checkpoint")
    with pytest.raises(DataError, match=r"corrupt\.pth: not a readable weights file \(corrupt, truncated"):
        create_backbone("resnet18_w16", weights=corrupt)
