"""Settings that follow the data's scale (recipe ``scale: image``): at VOC's scale every one is the
reference's value exactly; elsewhere it is its formula's value; ``scale: reference`` keeps the
literal values at every scale. Formulas and sources: docs/scale.md."""

from __future__ import annotations

import math

import pytest
import torch

from wsss.attribution.advcam import REFERENCE_POSITIVE_WEIGHTS, mask_weights, reference_cells
from wsss.attribution.cam import CAM_SCALES
from wsss.attribution.rib import REFERENCE_TARGET_LOGIT, RibConfig, scaled_settings
from wsss.config import REFERENCE_IMAGE_SIZE, SCALE_MODES
from wsss.refine.crf import CRF_PRESETS
from wsss.refine.random_walk import EXP_TIMES, walk_steps
from wsss.stores.maps import strided_size

VOC_IMAGE = (375, 500)  # a 500 x 375 VOC image
VOC_GRID = (94, 125)  # its stride-4 grid
RESNET50_POSITIVE = 1024  # P_c of a ResNet-50 classifier row (half its 2048 weights)


def _settings(image: tuple[int, int], cells: dict[float, int], positive: int, logit: float, scale: str) -> dict:
    """Every scaled setting for one image: its size, the stride-16-like cells of its maps per
    input scale, its classifier's P_c and its target's pooled logit."""
    rib = scaled_settings(RibConfig(), logit, scale)
    out = {"walk_steps": walk_steps(EXP_TIMES, strided_size(*image), scale)}
    for name, preset in CRF_PRESETS.items():
        sized = preset.for_image(*image, scale)
        out[f"crf.{name}"] = (sized.gaussian_sxy, sized.bilateral_sxy)
    for input_scale, count in cells.items():
        reference = reference_cells(input_scale) if scale == "image" else None
        weight = 7.0 if reference is None else float(mask_weights(7.0, count, torch.tensor([positive]), reference))
        out[f"advcam.lambda@{input_scale}"] = weight
    out["rib"] = (rib.backbone_lr, rib.classifier_lr, rib.backbone_weight_decay, rib.classifier_weight_decay,
                  rib.margin)
    return out


LITERAL = {
    "walk_steps": 256,  # IRN exp_times 8
    "crf.irn": (3.0, 50.0), "crf.deeplab": (1.0, 67.0), "crf.bana": (3.0, 55.0), "crf.bbam": (1.0, 80.0),
    "crf.largefov": (3.0, 121.0),
    **{f"advcam.lambda@{s}": 7.0 for s in CAM_SCALES},  # AD_coeff
    "rib": (8e-6, 8e-6 * 10, 1e-4, 1e-4, 600.0),  # RIB_lr, 10x for the classifier, wd, stop_th
}


def test_the_reference_scale_is_vocs() -> None:
    assert SCALE_MODES == ("reference", "image")
    assert REFERENCE_IMAGE_SIZE == VOC_IMAGE and math.hypot(*VOC_IMAGE) == 625.0
    assert strided_size(*VOC_IMAGE) == VOC_GRID
    assert REFERENCE_POSITIVE_WEIGHTS == RESNET50_POSITIVE
    assert {s: reference_cells(s) for s in CAM_SCALES} == {1.0: 768, 0.5: 192, 1.5: 1692, 2.0: 2961}


def test_every_scaled_setting_resolves_to_the_references_value_at_vocs_scale() -> None:
    voc_cells = {s: reference_cells(s) for s in CAM_SCALES}  # a ResNet-50 at stride 16 on the VOC image
    assert _settings(VOC_IMAGE, voc_cells, RESNET50_POSITIVE, REFERENCE_TARGET_LOGIT, "image") == LITERAL
    assert _settings(VOC_IMAGE, voc_cells, RESNET50_POSITIVE, REFERENCE_TARGET_LOGIT, "reference") == LITERAL


@pytest.mark.parametrize("scale", ["reference", "image"])
def test_elsewhere_each_setting_is_its_formulas_value(scale: str) -> None:
    # The demo's scale: a 128 x 128 image (32 x 32 grid), a stride-8 classifier with 128 channels
    # (16 x 16 cells at scale 1.0, 8 x 8 at 0.5; P_c 64) whose target logit is twice the reference's.
    settings = _settings((128, 128), {1.0: 256, 0.5: 64}, 64, 2 * REFERENCE_TARGET_LOGIT, scale)
    if scale == "reference":  # the literal values at every scale
        assert settings == {k: v for k, v in LITERAL.items() if k not in ("advcam.lambda@1.5", "advcam.lambda@2.0")}
        return
    ratio = math.hypot(128, 128) / 625.0
    assert settings["walk_steps"] == round(256 * 32 * 32 / (94 * 125)) == 22
    for name, (gaussian, bilateral) in [("irn", (3, 50)), ("deeplab", (1, 67)), ("bana", (3, 55)), ("bbam", (1, 80)),
                                        ("largefov", (3, 121))]:
        assert settings[f"crf.{name}"] == pytest.approx((gaussian * ratio, bilateral * ratio), rel=1e-15)
    assert settings["advcam.lambda@1.0"] == pytest.approx(7.0 * 768 / 256 * 64 / 1024, rel=1e-15)  # 1.3125
    assert settings["advcam.lambda@0.5"] == pytest.approx(7.0 * 192 / 64 * 64 / 1024, rel=1e-15)
    assert settings["rib"] == pytest.approx((4e-6, 1.6e-4, 2e-4, 5e-5, 1200.0), rel=1e-15)
