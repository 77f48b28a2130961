"""Segmentation losses against direct per-pixel computations (explicit loops in the tests)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from wsss.errors import ConfigError
from wsss.segmentation.losses import (
    bootstrap_beta,
    list_losses,
    make_loss,
)

IGNORE = 255


def _pixel_ce(logits: torch.Tensor, b: int, y: int, x: int, label: int) -> float:
    """-log softmax(logits[b, :, y, x])[label], by hand."""
    row = [float(v) for v in logits[b, :, y, x]]
    top = max(row)
    log_sum = top + math.log(sum(math.exp(v - top) for v in row))
    return log_sum - row[label]


def _probs(logits: torch.Tensor, b: int, y: int, x: int) -> list[float]:
    row = [float(v) for v in logits[b, :, y, x]]
    top = max(row)
    exps = [math.exp(v - top) for v in row]
    return [e / sum(exps) for e in exps]


def _pixels(target: torch.Tensor):
    batch, height, width = target.shape
    for b in range(batch):
        for y in range(height):
            for x in range(width):
                yield b, y, x, int(target[b, y, x])


@pytest.fixture
def batch():
    """Logits (2, 4, 5, 6) and a target with background, two foreground classes and ignores."""
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 4, 5, 6, generator=generator) * 2
    target = torch.randint(0, 4, (2, 5, 6), generator=generator)
    target[0, 0, :3] = IGNORE
    target[1, 4, 4:] = IGNORE
    target[1][target[1] == 3] = 0  # image 1 without class 3
    return logits, target


def _grad_ok(loss: torch.Tensor, logits: torch.Tensor) -> None:
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()


# -- cross-entropy -------------------------------------------------------------------------------


def test_ce_matches_loop_and_torch(batch):
    logits, target = batch
    values = [_pixel_ce(logits, b, y, x, t) for b, y, x, t in _pixels(target) if t != IGNORE]
    loss = make_loss("ce")(logits, target)
    assert loss.item() == pytest.approx(sum(values) / len(values), rel=1e-5)
    assert loss.item() == pytest.approx(F.cross_entropy(logits, target, ignore_index=IGNORE).item(), rel=1e-6)


def test_ce_all_ignored_is_zero_with_grad(batch):
    logits, target = batch
    logits.requires_grad_(True)
    loss = make_loss("ce")(logits, torch.full_like(target, IGNORE))
    assert loss.item() == 0.0
    _grad_ok(loss, logits)
    assert (logits.grad == 0).all()


# -- balanced cross-entropy (DSRG) ---------------------------------------------------------------


def _balanced_loop(logits, target, per_image=True):
    batch = target.shape[0]
    if per_image:
        bg_terms, fg_terms = [], []
        for b in range(batch):
            bg = [_pixel_ce(logits, b, y, x, t) for bb, y, x, t in _pixels(target) if bb == b and t == 0]
            fg = [_pixel_ce(logits, b, y, x, t) for bb, y, x, t in _pixels(target)
                  if bb == b and t not in (0, IGNORE)]
            bg_terms.append(sum(bg) / len(bg) if bg else 0.0)
            fg_terms.append(sum(fg) / len(fg) if fg else 0.0)
        return sum(bg_terms) / batch + sum(fg_terms) / batch
    bg = [_pixel_ce(logits, b, y, x, t) for b, y, x, t in _pixels(target) if t == 0]
    fg = [_pixel_ce(logits, b, y, x, t) for b, y, x, t in _pixels(target) if t not in (0, IGNORE)]
    return (sum(bg) / len(bg) if bg else 0.0) + (sum(fg) / len(fg) if fg else 0.0)


@pytest.mark.parametrize("per_image", [True, False])
def test_balanced_ce_matches_loop(batch, per_image):
    logits, target = batch
    loss = make_loss("balanced_ce", per_image=per_image)(logits, target)
    assert loss.item() == pytest.approx(_balanced_loop(logits, target, per_image), rel=1e-5)


def test_balanced_ce_differs_from_ce_when_classes_are_unbalanced():
    logits = torch.zeros(1, 2, 1, 4)
    logits[0, 1, 0, 0] = 3.0  # the single foreground pixel is predicted well; background poorly
    logits[0, 1, 0, 1:] = 1.0
    target = torch.tensor([[[1, 0, 0, 0]]])
    fg = _pixel_ce(logits, 0, 0, 0, 1)
    bg = _pixel_ce(logits, 0, 0, 1, 0)
    assert make_loss("balanced_ce")(logits, target).item() == pytest.approx(fg + bg, rel=1e-5)
    assert make_loss("ce")(logits, target).item() == pytest.approx((fg + 3 * bg) / 4, rel=1e-5)


def test_balanced_ce_single_class_and_all_ignored(batch):
    logits, _ = batch
    only_bg = torch.zeros(2, 5, 6, dtype=torch.long)
    only_bg[0, 0, 0] = IGNORE
    loss = make_loss("balanced_ce")(logits, only_bg)
    assert loss.item() == pytest.approx(_balanced_loop(logits, only_bg), rel=1e-5)
    only_fg = torch.full((2, 5, 6), 2, dtype=torch.long)
    assert make_loss("balanced_ce")(logits, only_fg).item() == pytest.approx(_balanced_loop(logits, only_fg), rel=1e-5)

    logits = logits.clone().requires_grad_(True)
    loss = make_loss("balanced_ce")(logits, torch.full((2, 5, 6), IGNORE, dtype=torch.long))
    assert loss.item() == 0.0
    _grad_ok(loss, logits)


# -- resolution handling -------------------------------------------------------------------------


def test_target_downsampled_by_nearest_pixel_centres():
    # Logits 2x2, labels 4x4: nearest-exact picks pixel centres, i.e. labels at rows/cols 1 and 3
    # ((i + 0.5) * 2 = 1, 3); plain "nearest" would pick 0 and 2.
    logits = torch.randn(1, 3, 2, 2)
    target = torch.tensor([[[0, 1, 0, 2], [1, 1, 2, 2], [0, 0, 0, 0], [2, 0, 1, 1]]])
    expected = torch.tensor([[[1, 2], [0, 1]]])
    loss = make_loss("ce", resize="target")(logits, target)
    assert loss.item() == pytest.approx(F.cross_entropy(logits, expected).item(), rel=1e-6)


def test_logits_upsampled_bilinearly():
    logits = torch.randn(1, 3, 2, 2)
    target = torch.randint(0, 3, (1, 4, 4))
    for align in (False, True):
        up = F.interpolate(logits, size=(4, 4), mode="bilinear", align_corners=align)
        loss = make_loss("ce", resize="logits", align_corners=align)(logits, target)
        assert loss.item() == pytest.approx(F.cross_entropy(up, target).item(), rel=1e-6)


def test_bad_input_and_options():
    with pytest.raises(ConfigError, match="unknown segmentation loss"):
        make_loss("dice")
    with pytest.raises(ConfigError, match="no option"):
        make_loss("ce", damping=3)
    with pytest.raises(ConfigError, match="resize"):
        make_loss("ce", resize="both")
    with pytest.raises(ValueError, match="label 7"):
        make_loss("ce")(torch.zeros(1, 3, 2, 2), torch.full((1, 2, 2), 7))
    with pytest.raises(ValueError, match="target_ret"):
        make_loss("nal", scale=20.0)(torch.zeros(1, 3, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long))
    assert set(list_losses()) == {"ce", "balanced_ce", "nal", "entropy", "bootstrap"}


# -- BANA: reliable / unreliable regions ---------------------------------------------------------


@pytest.fixture
def bana_batch():
    """Cosine maps, logits = 20 * cosine, Y_crf and a Y_ret disagreeing on some pixels."""
    generator = torch.Generator().manual_seed(1)
    features = torch.randn(2, 8, 4, 5, generator=generator)
    weights = torch.randn(3, 8, generator=generator)
    cosine = torch.einsum("bdhw,cd->bchw", F.normalize(features, dim=1), F.normalize(weights, dim=1))
    logits = 20.0 * cosine
    y_crf = torch.randint(0, 3, (2, 4, 5), generator=generator)
    y_crf[0, 0, 0] = IGNORE
    y_ret = y_crf.clone()
    flip = torch.rand(2, 4, 5, generator=generator) < 0.4
    y_ret[flip] = (y_crf[flip] + 1) % 3
    y_ret[0, 0, 0] = IGNORE
    y_ret[1, 3, 4] = IGNORE  # Y_ret ignored where Y_crf is not: unreliable, as BANA's mask_fin
    return features, weights, cosine, logits, y_crf, y_ret


def _regions(y_crf, y_ret):
    reliable, unreliable = [], []
    for b, y, x, t in _pixels(y_crf):
        if t == IGNORE:
            continue
        (reliable if int(y_ret[b, y, x]) == t else unreliable).append((b, y, x, t))
    return reliable, unreliable


def _nal_loop(logits, cosine, y_crf, y_ret, gamma=7.0, lam=0.1):
    reliable, unreliable = _regions(y_crf, y_ret)
    ce_s = sum(_pixel_ce(logits, b, y, x, t) for b, y, x, t in reliable) / max(len(reliable), 1)
    num = den = 0.0
    for b, y, x, t in unreliable:
        corr = [1.0 + float(c) for c in cosine[b, :, y, x]]
        sigma = (corr[t] / max(corr)) ** gamma
        num += sigma * _pixel_ce(logits, b, y, x, t)
        den += sigma
    return ce_s + lam * (num / den if den > 0 else 0.0)


def test_nal_matches_loop_for_each_way_of_giving_the_cosine(bana_batch):
    features, weights, cosine, logits, y_crf, y_ret = bana_batch
    reliable, unreliable = _regions(y_crf, y_ret)
    assert reliable and unreliable
    expected = _nal_loop(logits, cosine, y_crf, y_ret)
    loss = make_loss("nal")
    assert loss(logits, y_crf, target_ret=y_ret, cosine=cosine).item() == pytest.approx(expected, rel=1e-5)
    assert loss(logits, y_crf, target_ret=y_ret, features=features,
                class_weights=weights).item() == pytest.approx(expected, rel=1e-5)
    assert make_loss("nal", scale=20.0)(logits, y_crf, target_ret=y_ret).item() == pytest.approx(expected, rel=1e-5)


def test_nal_options_gamma_lambda(bana_batch):
    _, _, cosine, logits, y_crf, y_ret = bana_batch
    expected = _nal_loop(logits, cosine, y_crf, y_ret, gamma=2.0, lam=0.5)
    loss = make_loss("nal", damping=2.0, unreliable_weight=0.5)(logits, y_crf, target_ret=y_ret, cosine=cosine)
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_nal_upsamples_cosine_like_logits(bana_batch):
    _, _, cosine, logits, y_crf, y_ret = bana_batch
    big_crf = y_crf.repeat_interleave(2, 1).repeat_interleave(2, 2)
    big_ret = y_ret.repeat_interleave(2, 1).repeat_interleave(2, 2)
    up = lambda t: F.interpolate(t, size=(8, 10), mode="bilinear", align_corners=True)  # noqa: E731
    expected = _nal_loop(up(logits), up(cosine), big_crf, big_ret)
    loss = make_loss("nal")(logits, big_crf, target_ret=big_ret, cosine=cosine)
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_nal_without_unreliable_pixels_is_plain_ce(bana_batch):
    _, _, cosine, logits, y_crf, _ = bana_batch
    loss = make_loss("nal")(logits, y_crf, target_ret=y_crf.clone(), cosine=cosine)
    assert loss.item() == pytest.approx(F.cross_entropy(logits, y_crf, ignore_index=IGNORE).item(), rel=1e-5)


def test_nal_all_ignored_and_single_class(bana_batch):
    _, _, cosine, logits, y_crf, y_ret = bana_batch
    logits = logits.clone().requires_grad_(True)
    ignored = torch.full_like(y_crf, IGNORE)
    loss = make_loss("nal")(logits, ignored, target_ret=ignored, cosine=cosine)
    assert loss.item() == 0.0
    _grad_ok(loss, logits)

    single = torch.ones_like(y_crf)
    ret = single.clone()
    ret[0, 1, 1] = 0  # one unreliable pixel
    expected = _nal_loop(logits.detach(), cosine, single, ret)
    logits.grad = None
    loss = make_loss("nal")(logits, single, target_ret=ret, cosine=cosine)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    _grad_ok(loss, logits)


def test_nal_gradient_flows_through_confidence(bana_batch):
    # BANA does not detach sigma: the cosine receives a gradient from the weighted term.
    _, _, cosine, logits, y_crf, y_ret = bana_batch
    cosine = cosine.clone().requires_grad_(True)
    logits = logits.clone().requires_grad_(True)
    make_loss("nal")(logits, y_crf, target_ret=y_ret, cosine=cosine).backward()
    assert cosine.grad is not None and cosine.grad.abs().sum() > 0
    cosine.grad = None
    make_loss("nal", detach_confidence=True)(logits, y_crf, target_ret=y_ret, cosine=cosine).backward()
    assert cosine.grad is None or cosine.grad.abs().sum() == 0


def test_nal_needs_a_cosine():
    with pytest.raises(ValueError, match="cosine"):
        make_loss("nal")(torch.zeros(1, 3, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long),
                         target_ret=torch.zeros(1, 2, 2, dtype=torch.long))


# -- BANA supplement: entropy regularisation (Eqs. 4-5) and bootstrapping (Eqs. 6-8) ---------------


def _entropy_loop(logits, y_crf, y_ret, lam=0.1):
    reliable, unreliable = _regions(y_crf, y_ret)
    ce_s = sum(_pixel_ce(logits, b, y, x, t) for b, y, x, t in reliable) / max(len(reliable), 1)
    entropies = []
    for b, y, x, _ in unreliable:
        entropies.append(-sum(p * math.log(p) for p in _probs(logits, b, y, x)))
    return ce_s + lam * (sum(entropies) / len(entropies) if entropies else 0.0)


def _bootstrap_loop(logits, y_crf, y_ret, beta, lam=0.1, region="unreliable"):
    reliable, unreliable = _regions(y_crf, y_ret)
    ce_s = sum(_pixel_ce(logits, b, y, x, t) for b, y, x, t in reliable) / max(len(reliable), 1)
    terms = []
    for b, y, x, t in (unreliable if region == "unreliable" else reliable):
        probs = _probs(logits, b, y, x)
        target = [beta * (1.0 if c == t else 0.0) + (1 - beta) * p for c, p in enumerate(probs)]
        terms.append(-sum(q * math.log(p) for q, p in zip(target, probs)))
    return ce_s + lam * (sum(terms) / len(terms) if terms else 0.0)


def test_entropy_matches_formula(bana_batch):
    _, _, _, logits, y_crf, y_ret = bana_batch
    logits = logits / 4  # softer predictions, so the entropy is not vanishingly small
    loss = make_loss("entropy")(logits, y_crf, target_ret=y_ret)
    assert loss.item() == pytest.approx(_entropy_loop(logits, y_crf, y_ret), rel=1e-5)
    loss = make_loss("entropy", unreliable_weight=1.0)(logits, y_crf, target_ret=y_ret)
    assert loss.item() == pytest.approx(_entropy_loop(logits, y_crf, y_ret, lam=1.0), rel=1e-5)


@pytest.mark.parametrize("beta", [1.0, 0.6, 0.0])
def test_bootstrap_matches_formula(bana_batch, beta):
    _, _, _, logits, y_crf, y_ret = bana_batch
    logits = logits / 4
    loss = make_loss("bootstrap")(logits, y_crf, target_ret=y_ret, beta=beta)
    assert loss.item() == pytest.approx(_bootstrap_loop(logits, y_crf, y_ret, beta), rel=1e-5)
    loss = make_loss("bootstrap", beta=beta, region="reliable")(logits, y_crf, target_ret=y_ret)
    assert loss.item() == pytest.approx(_bootstrap_loop(logits, y_crf, y_ret, beta, region="reliable"), rel=1e-5)


def test_bootstrap_target_is_detached(bana_batch):
    # With beta = 0 the target is the prediction itself; detached, the term's gradient is that of
    # the cross-entropy against a constant soft target: sum_c (H_c - Y_c) = 0 on the logits, i.e.
    # each pixel's logit gradient is H - Y = 0 when Y = H.
    _, _, _, logits, y_crf, y_ret = bana_batch
    _, unreliable = _regions(y_crf, y_ret)
    logits = (logits / 4).requires_grad_(True)
    make_loss("bootstrap", unreliable_weight=1.0)(logits, y_crf, target_ret=y_ret, beta=0.0).backward()
    b, y, x, _ = unreliable[0]
    reliable_mask = (y_crf == y_ret) & (y_crf != IGNORE)
    assert not bool(reliable_mask[b, y, x])
    assert torch.allclose(logits.grad[b, :, y, x], torch.zeros(3), atol=1e-7)


def test_entropy_bootstrap_all_ignored(bana_batch):
    _, _, _, logits, y_crf, _ = bana_batch
    ignored = torch.full_like(y_crf, IGNORE)
    for name, extra in (("entropy", {}), ("bootstrap", {"beta": 0.5})):
        leaf = logits.clone().requires_grad_(True)
        loss = make_loss(name)(leaf, ignored, target_ret=ignored, **extra)
        assert loss.item() == 0.0
        _grad_ok(loss, leaf)


def test_bootstrap_beta_schedule():
    assert bootstrap_beta(0, 100) == 1.0
    assert bootstrap_beta(100, 100) == 0.0
    assert bootstrap_beta(50, 100) == pytest.approx(0.5 ** 0.9)
    assert bootstrap_beta(150, 100) == 0.0
