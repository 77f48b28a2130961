"""Dense CRF wrapper: distributions, edge sharpening, IRN's label CRF, presets, bad input."""

from __future__ import annotations

import numpy as np
import pytest

from wsss.errors import ConfigError, DataError
from wsss.refine.crf import CRF_PRESETS, CrfParams, crf_from_labels, crf_params, dense_crf


def two_colour_scene(height: int = 40, width: int = 56, boundary: int = 23):
    """A dark left part and a bright yellow right part, and the true label map (1 = right)."""
    image = np.empty((height, width, 3), dtype=np.uint8)
    image[:] = (30, 40, 50)
    image[:, boundary:] = (210, 190, 60)
    truth = np.zeros((height, width), dtype=np.int64)
    truth[:, boundary:] = 1
    return image, truth


def noisy_probs(height: int, width: int, centre: float, seed: int = 0) -> np.ndarray:
    """(2, H, W) probabilities of a soft boundary at the wrong column ``centre``, plus noise."""
    rng = np.random.default_rng(seed)
    ramp = 1.0 / (1.0 + np.exp(-(np.arange(width) - centre) / 4.0))
    right = np.clip(ramp[None, :] + rng.normal(0.0, 0.25, (height, width)), 0.02, 0.98)
    return np.stack([1.0 - right, right]).astype(np.float32)


def test_output_is_a_distribution_per_pixel() -> None:
    image, _ = two_colour_scene()
    rng = np.random.default_rng(1)
    probs = rng.random((4, *image.shape[:2])).astype(np.float32)
    q = dense_crf(image, probs, "irn")
    assert q.shape == probs.shape and q.dtype == np.float32
    assert (q >= 0).all()
    np.testing.assert_allclose(q.sum(axis=0), 1.0, atol=1e-5)


@pytest.mark.parametrize("preset", sorted(CRF_PRESETS))
def test_crf_moves_a_noisy_boundary_to_the_colour_edge(preset: str) -> None:
    image, truth = two_colour_scene(boundary=23)
    probs = noisy_probs(*truth.shape, centre=31.0)  # 8 px off and noisy
    before = (probs.argmax(0) == truth).mean()
    after = (dense_crf(image, probs, preset).argmax(0) == truth).mean()
    assert before < 0.9
    assert after > 0.98
    assert after > before + 0.08


def test_zero_iterations_return_the_normalised_input() -> None:
    # With no mean-field step the marginals are softmax(-unary) = p / sum(p): checks the unary.
    image, _ = two_colour_scene()
    rng = np.random.default_rng(2)
    scores = rng.uniform(0.05, 2.0, (3, *image.shape[:2])).astype(np.float32)
    q = dense_crf(image, scores, CrfParams(iterations=0))
    np.testing.assert_allclose(q, scores / scores.sum(0, keepdims=True), atol=1e-5)


def test_scale_of_the_scores_does_not_matter() -> None:
    image, truth = two_colour_scene()
    probs = noisy_probs(*truth.shape, centre=30.0, seed=3)
    scale = np.random.default_rng(4).uniform(0.5, 3.0, truth.shape).astype(np.float32)
    np.testing.assert_allclose(dense_crf(image, probs), dense_crf(image, probs * scale), atol=1e-4)


def test_read_only_image_is_accepted() -> None:
    image, truth = two_colour_scene()
    probs = noisy_probs(*truth.shape, centre=30.0)
    expected = dense_crf(image, probs)
    image.flags.writeable = False  # as np.asarray(PIL image) returns
    np.testing.assert_array_equal(dense_crf(image, probs), expected)
    assert crf_from_labels(image, truth, 2).shape == truth.shape


def test_single_class_is_certain() -> None:
    image, _ = two_colour_scene()
    q = dense_crf(image, np.full((1, *image.shape[:2]), 0.3, np.float32))
    np.testing.assert_array_equal(q, 1.0)


def test_presets_hold_the_reference_values() -> None:
    irn = CRF_PRESETS["irn"]  # IRN misc/imutils.py crf_inference_label
    assert (irn.iterations, irn.gaussian_sxy, irn.gaussian_compat) == (10, 3, 3)
    assert (irn.bilateral_sxy, irn.bilateral_srgb, irn.bilateral_compat) == (50, 5, 10)
    deeplab = CRF_PRESETS["deeplab"]  # deeplab-pytorch voc12.yaml
    assert (deeplab.gaussian_sxy, deeplab.gaussian_compat) == (1, 3)
    assert (deeplab.bilateral_sxy, deeplab.bilateral_srgb, deeplab.bilateral_compat) == (67, 3, 4)
    bana = CRF_PRESETS["bana"]  # BANA stage2.yml DCRF [4, 55, 3, 3, 3]
    assert (bana.bilateral_compat, bana.bilateral_sxy, bana.bilateral_srgb) == (4, 55, 3)
    assert (bana.gaussian_compat, bana.gaussian_sxy) == (3, 3)
    assert crf_params("irn") is irn
    assert crf_params({"iterations": 3}).iterations == 3
    with pytest.raises(ConfigError, match="unknown CRF preset 'nope'"):
        crf_params("nope")
    with pytest.raises(ConfigError, match="unknown CRF option"):
        crf_params({"sxy": 3})
    with pytest.raises(ConfigError, match="bilateral_srgb"):
        CrfParams(bilateral_srgb=0)


def test_label_crf_matches_pydensecrf_reference() -> None:
    # The same computation written with pydensecrf's own helper, as IRN's crf_inference_label does.
    import pydensecrf.densecrf as dcrf
    from pydensecrf.utils import unary_from_labels

    def reference(image: np.ndarray, labels: np.ndarray, n: int) -> np.ndarray:
        height, width = labels.shape
        crf = dcrf.DenseCRF2D(width, height, n)
        crf.setUnaryEnergy(unary_from_labels(labels, n, gt_prob=0.7, zero_unsure=False))
        crf.addPairwiseGaussian(sxy=3, compat=3)
        crf.addPairwiseBilateral(sxy=50, srgb=5, rgbim=np.ascontiguousarray(image), compat=10)
        return np.argmax(np.array(crf.inference(10)).reshape(n, height, width), axis=0)

    image, truth = two_colour_scene()
    rng = np.random.default_rng(5)
    labels = np.where(rng.random(truth.shape) < 0.2, rng.integers(0, 3, truth.shape), truth)
    result = crf_from_labels(image, labels, 3)
    assert result.dtype == np.int64 and result.shape == truth.shape
    np.testing.assert_array_equal(result, reference(image, labels, 3))
    # and the CRF cleaned the 20% salt-and-pepper noise up to the colour edge
    assert (labels == truth).mean() < 0.9
    assert (result == truth).mean() > 0.99

    # A smooth colour ramp with random 5-px label blocks: the CRF rewrites a good share of the
    # pixels and many are close calls, so the unary and the kernels must be exactly IRN's.
    yy, xx = np.mgrid[0:30, 0:40]
    ramp = np.stack([yy * 3 + 100, xx * 2 + 80, np.full_like(xx, 120)], axis=-1)
    ramp = np.clip(ramp + rng.normal(0, 4, ramp.shape), 0, 255).astype(np.uint8)
    blocks = rng.integers(0, 4, (6, 8)).repeat(5, 0).repeat(5, 1)
    result = crf_from_labels(ramp, blocks, 4)
    assert 0.1 < (result != blocks).mean() < 0.9
    np.testing.assert_array_equal(result, reference(ramp, blocks, 4))


def test_label_crf_with_no_pairwise_weight_is_the_identity() -> None:
    image, truth = two_colour_scene()
    labels = np.random.default_rng(6).integers(0, 4, truth.shape)
    silent = CrfParams(gaussian_compat=0.0, bilateral_compat=0.0)
    np.testing.assert_array_equal(crf_from_labels(image, labels, 4, silent), labels)
    np.testing.assert_array_equal(crf_from_labels(image, np.zeros_like(labels), 1), 0)


def test_bad_input_is_a_data_error() -> None:
    image, truth = two_colour_scene()
    probs = noisy_probs(*truth.shape, centre=30.0)
    with pytest.raises(DataError, match=r"maps/x.npz: CRF probabilities are 40x55 but the image is 40x56"):
        dense_crf(image, probs[:, :, :-1], where="maps/x.npz")
    with pytest.raises(DataError, match="must be \\(C, H, W\\)"):
        dense_crf(image, probs[0])
    bad = probs.copy()
    bad[1, 3, 4] = np.nan
    with pytest.raises(DataError, match="NaN or infinite"):
        dense_crf(image, bad)
    with pytest.raises(DataError, match="non-negative"):
        dense_crf(image, probs - 0.5)
    with pytest.raises(DataError, match="must be uint8"):
        dense_crf(image.astype(np.float32), probs)
    with pytest.raises(DataError, match=r"\(H, W, 3\)"):
        dense_crf(image[..., 0], probs)
    with pytest.raises(DataError, match="outside 0..1"):
        crf_from_labels(image, truth * 2, 2)
    with pytest.raises(DataError, match="label map is"):
        crf_from_labels(image, truth[:-1], 2)
    with pytest.raises(DataError, match="integers"):
        crf_from_labels(image, truth.astype(np.float32), 2)
    with pytest.raises(ConfigError, match="gt_prob"):
        crf_from_labels(image, truth, 2, gt_prob=1.0)


# ---------------------------------------------------------------------------------------------
# Widths that follow the image (scale="image")


def test_widths_follow_the_image_diagonal_and_equal_the_presets_at_voc_size() -> None:
    import math

    for name, preset in CRF_PRESETS.items():
        assert preset.reference_size == (375, 500), name  # every reference runs its CRF on VOC images
        assert preset.for_image(375, 500, "image") == preset  # the literal widths at the reference's size
        assert preset.for_image(128, 128, "reference") is preset
        small = preset.for_image(128, 128, "image")
        ratio = math.hypot(128, 128) / 625.0
        assert small.gaussian_sxy == pytest.approx(preset.gaussian_sxy * ratio, rel=1e-15)
        assert small.bilateral_sxy == pytest.approx(preset.bilateral_sxy * ratio, rel=1e-15)
        # colour width, weights and iterations are not lengths in pixels
        assert (small.bilateral_srgb, small.gaussian_compat, small.bilateral_compat, small.iterations) == (
            preset.bilateral_srgb, preset.gaussian_compat, preset.bilateral_compat, preset.iterations)
    assert CRF_PRESETS["irn"].for_image(750, 1000, "image").bilateral_sxy == pytest.approx(100.0)
    custom = CrfParams(bilateral_sxy=40.0, reference_size=(100, 100))
    assert custom.for_image(200, 200, "image").bilateral_sxy == pytest.approx(80.0)
    with pytest.raises(ConfigError, match="scale must be one of"):
        CRF_PRESETS["irn"].for_image(10, 10, "pixels")
    with pytest.raises(ConfigError, match="reference_size"):
        CrfParams(reference_size=(0, 10))


def test_crf_at_image_scale_runs_with_the_scaled_widths() -> None:
    image, truth = two_colour_scene()
    probs = noisy_probs(*truth.shape, centre=31.0)
    scaled = CRF_PRESETS["irn"].for_image(*image.shape[:2], "image")
    np.testing.assert_array_equal(dense_crf(image, probs, "irn", scale="image"), dense_crf(image, probs, scaled))
    np.testing.assert_array_equal(dense_crf(image, probs, "irn", scale="reference"), dense_crf(image, probs, "irn"))
    assert not np.allclose(dense_crf(image, probs, "irn", scale="image"), dense_crf(image, probs, "irn"))
    seeds = probs.argmax(0)
    np.testing.assert_array_equal(crf_from_labels(image, seeds, 2, "irn", scale="image"),
                                  crf_from_labels(image, seeds, 2, scaled))
