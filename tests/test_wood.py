"""W-OoD: k-means, prototypes, the distance and OoD losses, the climbing step, a training run, resume."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import make_voc, write_jpeg

from wsss.attribution.cam import compute_cam
from wsss.data.ood import OoDImages
from wsss.data.voc import VOCDataset
from wsss.errors import ConfigError, DataError
from wsss.models.cam_net import load_cam_net, load_cam_net_for
from wsss.training.classifier import classifier_recipe, train_classifier
from wsss.models.climbing import climb_step
from wsss.training.wood import (
    WoodConfig,
    class_prototypes,
    distance_loss,
    kmeans,
    ood_classification_loss,
    ood_climb,
    OoDSubset,
    ood_prototypes,
    pooled_features,
    push_threshold,
    train_wood,
    wood_recipe,
)

torch.set_num_threads(1)

CLASSES = ["background", "cat", "dog", "cow"]


# --- k-means -------------------------------------------------------------------------------


def three_blobs(seed: int = 0) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """30 points in 3 tight, far-apart blobs, shuffled: (points, true blob per point, centres)."""
    rng = np.random.default_rng(seed)
    centres = np.array([[0.0, 0.0, 0.0], [10.0, 0.0, 5.0], [0.0, 12.0, -4.0]])
    truth = rng.permutation(np.repeat(np.arange(3), 10))
    points = centres[truth] + rng.normal(0, 0.3, size=(30, 3))
    return torch.tensor(points, dtype=torch.float32), truth, centres


def test_kmeans_recovers_well_separated_clusters() -> None:
    points, truth, centres = three_blobs()
    centroids, assignment = kmeans(points, 3, iters=10, seed=0)
    assert centroids.shape == (3, 3) and centroids.dtype == torch.float32
    assert assignment.shape == (30,) and assignment.dtype == torch.int64
    # Same partition as the truth, up to renaming the clusters.
    mapping = {int(t): int(a) for t, a in zip(truth, assignment)}
    assert len(set(mapping.values())) == 3
    assert [mapping[int(t)] for t in truth] == assignment.tolist()
    # Each centroid is the mean of its members, and close to its blob's centre.
    for blob, cluster in mapping.items():
        members = points[assignment == cluster]
        np.testing.assert_allclose(centroids[cluster].numpy(), members.mean(0).numpy(), atol=1e-5)
        assert np.linalg.norm(centroids[cluster].numpy() - centres[blob]) < 0.3


def test_kmeans_is_deterministic_per_seed() -> None:
    points = torch.randn(200, 8, generator=torch.Generator().manual_seed(3))  # no structure: init matters
    first = kmeans(points, 6, iters=10, seed=7)
    again = kmeans(points, 6, iters=10, seed=7)
    other = kmeans(points, 6, iters=10, seed=8)
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert not torch.equal(first[0], other[0])


def test_kmeans_first_init_starts_from_the_first_points() -> None:
    points = torch.tensor([[0.0], [10.0], [1.0], [11.0]])
    centroids, assignment = kmeans(points, 2, iters=1, init="first")
    # One step from centres 0 and 10: {0, 1} and {10, 11}, centroids their means.
    assert assignment.tolist() == [0, 1, 0, 1]
    assert centroids.flatten().tolist() == [0.5, 10.5]


def test_kmeans_rejects_k_out_of_range() -> None:
    points = torch.zeros(4, 2)
    with pytest.raises(ConfigError, match="k=5"):
        kmeans(points, 5, iters=10, seed=0)
    with pytest.raises(ConfigError, match="k=0"):
        kmeans(points, 0, iters=10, seed=0)


def test_kmeans_with_fewer_distinct_points_than_clusters() -> None:
    points = torch.tensor([[1.0, 1.0]] * 3 + [[5.0, 5.0]] * 3)
    centroids, assignment = kmeans(points, 4, iters=5, seed=0)
    assert torch.isfinite(centroids).all()
    assert assignment[:3].unique().numel() == 1 and assignment[3:].unique().numel() == 1


# --- the distance loss -----------------------------------------------------------------------


def test_push_threshold_is_the_reference_top_k_cut() -> None:
    distances = torch.arange(1.0, 11.0)[torch.randperm(10, generator=torch.Generator().manual_seed(0))]
    # tau 0.2 over 10 distances: the 8 largest are 3..10, the cut is 3, so 1 and 2 are pushed.
    assert push_threshold(distances.view(2, 5), 0.2) == 3.0
    assert push_threshold(distances, 0.0) == 1.0  # nothing is strictly below the minimum
    assert push_threshold(torch.tensor([4.0]), 0.2) is None  # int(1 * 0.8) = 0: no push


def test_feature_at_its_class_prototype_has_zero_pull() -> None:
    class_protos = torch.tensor([[1.0, 2.0], [-3.0, 0.5]])
    ood_protos = torch.tensor([[50.0, 50.0], [60.0, 60.0]])
    features = class_protos[:1].clone().requires_grad_(True)
    loss = distance_loss(features, torch.tensor([[1.0, 0.0]]), class_protos, ood_protos, push_quantile=0.0)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(features.grad, torch.zeros_like(features))  # no NaN from sqrt at zero


def test_pull_term_by_hand() -> None:
    class_protos = torch.tensor([[0.0, 0.0], [10.0, 0.0]])  # C = 2
    ood_protos = torch.full((4, 2), 100.0)  # K = 4, far away, all at one distance: nothing pushed
    features = torch.tensor([[3.0, 4.0], [10.0, 1.0]])  # 5 from class 1; 1 from class 2
    labels = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    loss = distance_loss(features, labels, class_protos, ood_protos, push_quantile=0.2)
    # distances to class 1: 5 and sqrt(101); to class 2: sqrt(49 + 16) and 1
    masked = [5.0, 0.0, math.sqrt(101.0), 1.0]
    assert loss.item() == pytest.approx(sum(masked) / 4 * (2 / 4), rel=1e-6)


def test_push_term_only_for_ood_prototypes_nearer_than_the_quantile() -> None:
    class_protos = torch.zeros(1, 2)
    # OoD prototypes at distances 1, 2, 3, 4, 5 from the origin (in different directions).
    angles = torch.tensor([0.0, 1.0, 2.0, 3.0, 4.0])
    radii = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])
    ood_protos = torch.stack([radii * torch.cos(angles), radii * torch.sin(angles)], dim=1)
    features = torch.zeros(1, 2, requires_grad=True)  # on its class prototype: no pull
    loss = distance_loss(features, torch.ones(1, 1), class_protos, ood_protos, push_quantile=0.2)
    # n = 5, int(5 * 0.8) = 4 largest: 2..5, cut at 2, so only the prototype at distance 1 pushes:
    # L = -(1 / 5) * 1.
    assert loss.item() == pytest.approx(-0.2)
    loss.backward()
    # d/df of -(1/5) ||f - q1|| at f = 0 is (1/5) q1 / ||q1||: only q1 contributes (descent moves
    # f away from it); the farther prototypes add nothing.
    expected = ood_protos[0] / 5.0
    np.testing.assert_allclose(features.grad[0].numpy(), expected.numpy(), atol=1e-6)


def test_distance_loss_matches_a_straightforward_loop() -> None:
    generator = torch.Generator().manual_seed(1)
    features = torch.randn(4, 6, generator=generator)
    labels = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 1.0, 0.0]])
    class_protos = torch.randn(3, 6, generator=generator)
    ood_protos = torch.randn(7, 6, generator=generator)
    loss = distance_loss(features, labels, class_protos, ood_protos, push_quantile=0.3)

    pull = 0.0
    ood = np.zeros((4, 7))
    for b in range(4):
        for c in range(3):
            pull += float(labels[b, c]) * float(torch.linalg.norm(features[b] - class_protos[c]))
        for k in range(7):
            ood[b, k] = float(torch.linalg.norm(features[b] - ood_protos[k]))
    pull = pull / (4 * 3) * (3 / 7)
    cut = np.sort(ood.ravel())[::-1][int(28 * 0.7) - 1]  # the smallest of the int(n (1 - tau)) largest
    push = ood[ood < cut].sum() / 28
    assert (ood < cut).sum() == 28 - int(28 * 0.7)
    assert loss.item() == pytest.approx(pull - push, rel=1e-5)


# --- the OoD classification loss and the climbing step ---------------------------------------


def test_ood_classification_loss_by_hand() -> None:
    logits = torch.tensor([[0.0, 0.0], [2.0, -1.0]])
    softplus = lambda v: math.log1p(math.exp(v))  # noqa: E731
    first, second = math.log(2.0), (softplus(2.0) + softplus(-1.0)) / 2
    assert ood_classification_loss(logits).item() == pytest.approx((first + second) / 2)
    # The reference divides the sum by the in-distribution batch size.
    assert ood_classification_loss(logits, normaliser=8).item() == pytest.approx((first + second) / 8)
    keep = torch.tensor([False, True])
    assert ood_classification_loss(logits, normaliser=8, keep=keep).item() == pytest.approx(second / 8)


class LinearScores(torch.nn.Module):
    """logits = W x over the flattened image: the gradient of logit c is W[c]."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(weight)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return images.flatten(1) @ self.weight.T


def test_climb_moves_along_the_max_logit_gradient_normalised_over_the_batch() -> None:
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(3, 12, generator=generator)
    weight[1] *= 4.0  # class 1 has the steepest gradient
    model = LinearScores(weight)
    images = torch.rand(2, 3, 2, 2, generator=generator) - 0.5
    images[0, 0, 0, 0], images[1, 0, 0, 0] = -5.0, 5.0  # the batch's range: only these can clamp
    top = model(images).argmax(dim=1)
    climbed = ood_climb(model, images, step_size=0.07)

    gradient = weight[top].view_as(images)  # d max_c logit_c / dx, per image
    expected = images + 0.07 * gradient / gradient.abs().max()  # one max over the whole batch
    expected = expected.clamp(-5.0, 5.0)  # ... clamped to the batch's range, as the reference
    np.testing.assert_allclose(climbed.numpy(), expected.numpy(), atol=1e-6)
    assert (model(climbed).max(dim=1).values > model(images).max(dim=1).values).all()
    assert model.weight.grad is None  # only the input's gradient was taken
    assert not climbed.requires_grad


def test_climb_step_normalisations_and_clamp() -> None:
    images = torch.zeros(2, 1, 1, 2)
    gradient = torch.tensor([[[[2.0, -1.0]]], [[[0.5, 0.25]]]])
    batch = climb_step(images, gradient, 0.1, "batch", bounds=(-1.0, 1.0))
    np.testing.assert_allclose(batch.flatten().numpy(), [0.1, -0.05, 0.025, 0.0125], atol=1e-7)
    image = climb_step(images, gradient, 0.1, "image", bounds=(-1.0, 1.0))
    np.testing.assert_allclose(image.flatten().numpy(), [0.1, -0.05, 0.1, 0.05], atol=1e-7)
    sign = climb_step(images, gradient, 0.1, "sign", bounds=(-1.0, 1.0))
    np.testing.assert_allclose(sign.flatten().numpy(), [0.1, -0.1, 0.1, 0.1], atol=1e-7)
    # Default bounds: the batch's own range, as the reference clamps to the data's range.
    ranged = torch.tensor([[[[0.0, 1.0]]], [[[-1.0, 0.5]]]])
    clamped = climb_step(ranged, torch.ones_like(ranged), 0.7, "sign")
    np.testing.assert_allclose(clamped.flatten().numpy(), [0.7, 1.0, -0.3, 1.0], atol=1e-6)


# --- prototypes and training on a tiny dataset -----------------------------------------------


def write_ood(folder: Path, count: int = 6, *, corrupt: int | None = None) -> Path:
    """``count`` noise JPEGs of assorted sizes and their list file; ``corrupt``: that one is junk."""
    rng = np.random.default_rng(5)
    lines = []
    for index in range(count):
        path = folder / "images" / f"ood_{index}.jpg"
        if index == corrupt:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"not a jpeg at all")
        else:
            write_jpeg(path, rng.integers(0, 255, size=(20 + 3 * index, 30 - 2 * index, 3), dtype=np.uint8))
        lines.append(f"images/ood_{index}.jpg")
    list_file = folder / "ood.txt"
    list_file.write_text("# OoD images\n" + "\n".join(lines) + "\n")
    return list_file


def tiny_classifier_config():
    return classifier_recipe("synth").replace(epochs=1, batch_size=2, crop_size=24, resize_long=None,
                                              eval_batch_size=4)


def tiny_wood_config(**changes) -> WoodConfig:
    return WoodConfig(ood_batch_size=2, ood_clusters=3, ood_resize_long=None, epochs=1,
                      kmeans_init="kmeans++").replace(**changes)


@pytest.fixture(scope="module")
def tiny_setup(tmp_path_factory):
    """A 6-image VOC set, 6 OoD images and a classifier trained on the set for one epoch."""
    root = tmp_path_factory.mktemp("wood")
    fixture = make_voc(root / "voc", ids=[f"im{i}" for i in range(6)], classes=CLASSES, size=(24, 28))
    dataset = VOCDataset(fixture.root, "train")
    ood = OoDImages(write_ood(root / "ood"))
    init = root / "init.pt"
    train_classifier(dataset, tiny_classifier_config(), device="cpu", out=init, progress=False)
    return fixture, dataset, ood, init


def test_class_prototypes_are_mean_features_of_the_images_with_each_class(tiny_setup) -> None:
    fixture, dataset, _, init = tiny_setup
    model = load_cam_net(init)
    prototypes = class_prototypes(model, dataset, "cpu")
    assert prototypes.shape == (3, model.backbone.out_channels)
    per_image = torch.cat([pooled_features(model, [dataset.load_image(i)], device=torch.device("cpu"))
                           for i in dataset.ids])
    for c in range(1, 4):
        rows = [n for n, i in enumerate(dataset.ids) if c in fixture.labels[i]]
        assert rows  # make_voc spreads the three classes over six images
        np.testing.assert_allclose(prototypes[c - 1].numpy(), per_image[rows].mean(0).numpy(), rtol=1e-4, atol=1e-6)
    assert model.training  # the caller's mode is restored


def test_ood_prototypes_cluster_the_ood_features(tiny_setup) -> None:
    _, _, ood, init = tiny_setup
    model = load_cam_net(init)
    centroids, assignment = ood_prototypes(model, ood, 3, "cpu", seed=0, resize_long=None, return_assignment=True,
                                           init="kmeans++")
    features = pooled_features(model, [ood.load_image(i) for i in range(len(ood))], device=torch.device("cpu"))
    assert centroids.shape == (3, features.shape[1]) and assignment.shape == (6,)
    for cluster in assignment.unique():
        np.testing.assert_allclose(centroids[cluster].numpy(), features[assignment == cluster].mean(0).numpy(),
                                   rtol=1e-4, atol=1e-6)
    again = ood_prototypes(model, ood, 3, "cpu", seed=0, resize_long=None, init="kmeans++")
    assert torch.equal(centroids, again)
    # the default start is the reference's, the first K features (the published computation)
    default = ood_prototypes(model, ood, 3, "cpu", seed=5, resize_long=None)
    torch.testing.assert_close(default, kmeans(features, 3, init="first")[0])
    assert WoodConfig().kmeans_init == "first"
    assert not torch.allclose(default, kmeans(features, 3, seed=1, init="kmeans++")[0])
    with pytest.raises(ConfigError, match="ood.txt.*fewer than the 7 OoD prototypes"):
        ood_prototypes(model, ood, 7, "cpu")


def test_train_wood_changes_the_weights_and_writes_a_loadable_checkpoint(tiny_setup, tmp_path) -> None:
    fixture, dataset, ood, init = tiny_setup
    out = tmp_path / "wood.pt"
    config = tiny_wood_config(epochs=2, refresh_prototypes_every=1)
    result = train_wood(dataset, ood, config, tiny_classifier_config(), device="cpu", out=out, init=init,
                        val_source=dataset, progress=False, seed=0)
    assert result.checkpoint == out and len(result.history) == 2
    for record in result.history:
        assert record["step"] == 3 * record["epoch"]  # 6 images / batch 2
        for term in ("loss", "classification", "distance", "ood"):
            assert math.isfinite(record[term])
        assert record["ood"] > 0
        assert "val" in record

    before = load_cam_net(init).state_dict()
    model = load_cam_net_for(out, dataset)
    after = model.state_dict()
    assert before.keys() == after.keys()
    changed = [k for k in before if before[k].is_floating_point() and not torch.equal(before[k], after[k])]
    assert "classifier.weight" in changed and len(changed) > 10
    assert model.classes == CLASSES and model.freeze_bn  # BN kept the initial statistics
    for key in before:  # ... so the running statistics are the initial classifier's
        if "running_" in key:
            assert torch.equal(before[key], after[key]), key

    extra = torch.load(out, weights_only=True)["extra"]
    assert extra["wood"]["ood_clusters"] == 3 and extra["init"] == str(init)
    assert len(extra["ood_cluster_sizes"]) == 2  # computed before epoch 1 and refreshed before epoch 2
    assert all(sum(sizes) == 6 for sizes in extra["ood_cluster_sizes"])

    # CAM extraction runs unchanged on the result.
    image_id = dataset.ids[0]
    cam = compute_cam(model.eval(), dataset.load_image(image_id), dataset.image_labels(image_id), scales=(1.0,))
    assert cam.high_res.shape[1:] == fixture.sizes[image_id]


def test_train_wood_is_repeatable_and_each_loss_matters(tiny_setup) -> None:
    _, dataset, ood, init = tiny_setup

    def run(**changes):
        result = train_wood(dataset, ood, tiny_wood_config(**changes), tiny_classifier_config(), device="cpu",
                            init=init, progress=False, seed=3)
        return result.model.classifier.weight.detach().clone(), result.history[-1]

    weight, record = run()
    again, _ = run()
    assert torch.equal(weight, again)
    plain, plain_record = run(distance_weight=0.0, ood_weight=0.0)
    assert plain_record["distance"] is None and plain_record["ood"] is None
    assert not torch.equal(weight, plain)
    no_ood, _ = run(ood_weight=0.0)
    assert not torch.equal(no_ood, plain) and not torch.equal(no_ood, weight)


def test_resume_after_a_kill_gives_the_uninterrupted_weights(tiny_setup, tmp_path) -> None:
    # 6 images / batch 2 = 3 updates an epoch; 4 OoD images / batch 2 = 2 OoD batches a pass, so
    # epochs end in the middle of an OoD pass (after 3 batches) or right at its last batch (after
    # 6). Prototypes are refreshed before epoch 3: a resumed run needs the ones of epoch 1 until then.
    _, dataset, ood, init = tiny_setup
    config = tiny_wood_config(epochs=3, ood_images=4, refresh_prototypes_every=2)
    options = dict(device="cpu", init=init, progress=False, seed=1)
    straight = train_wood(dataset, ood, config, tiny_classifier_config(), **options)

    class Killed(Exception):
        pass

    folder = tmp_path / "run"
    for kill, saved in ((5, 3), (8, 6)):
        def callback(iteration: int, loss: float, kill: int = kill) -> None:
            if iteration == kill:
                raise Killed

        with pytest.raises(Killed):
            train_wood(dataset, ood, config, tiny_classifier_config(), **options, checkpoint_dir=folder,
                       callback=callback)
        checkpoint = torch.load(folder / "checkpoint.pt", weights_only=True)
        assert checkpoint["iteration"] == saved
        assert checkpoint["streams"]["ood"]["taken"] == (1 if saved == 3 else 2)  # batches of the pass
    resumed = train_wood(dataset, ood, config, tiny_classifier_config(), **options, checkpoint_dir=folder,
                         out=tmp_path / "wood.pt")
    for name, value in straight.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[name], value), name
    drop = lambda history: [{k: v for k, v in r.items() if k != "seconds"} for r in history]  # noqa: E731
    assert drop(resumed.history) == drop(straight.history)
    extra = torch.load(tmp_path / "wood.pt", weights_only=True)["extra"]
    assert [sum(sizes) for sizes in extra["ood_cluster_sizes"]] == [4, 4]  # initial, then the refresh


def test_ood_subset_draws_distinct_images_per_seed(tiny_setup) -> None:
    _, _, ood, _ = tiny_setup
    subset = OoDSubset(ood, 4, seed=0)
    assert len(subset) == 4 and len(set(subset.indices)) == 4 and subset.indices == sorted(subset.indices)
    assert all(0 <= i < len(ood) for i in subset.indices)
    np.testing.assert_array_equal(subset.load_image(1), ood.load_image(subset.indices[1]))
    assert OoDSubset(ood, 4, seed=0).indices == subset.indices
    draws = {tuple(OoDSubset(ood, 3, seed=s).indices) for s in range(8)}
    assert len(draws) > 1  # the seed chooses the images
    assert OoDSubset(ood, len(ood), seed=5).indices == list(range(len(ood)))
    with pytest.raises(ConfigError, match="ood.txt.*ood_images is 7 but the OoD list has 6"):
        OoDSubset(ood, 7)


def test_train_wood_with_fewer_ood_images(tiny_setup, tmp_path) -> None:
    _, dataset, ood, init = tiny_setup
    out = tmp_path / "wood4.pt"
    config = tiny_wood_config(ood_images=4)
    result = train_wood(dataset, ood, config, tiny_classifier_config(), device="cpu", out=out, init=init,
                        progress=False, seed=3)
    extra = torch.load(out, weights_only=True)["extra"]
    assert extra["ood_images"] == 4 and extra["wood"]["ood_images"] == 4
    assert [sum(sizes) for sizes in extra["ood_cluster_sizes"]] == [4]  # k-means saw only the 4 images
    full = train_wood(dataset, ood, tiny_wood_config(), tiny_classifier_config(), device="cpu", init=init,
                      progress=False, seed=3)
    assert not torch.equal(result.model.classifier.weight, full.model.classifier.weight)
    with pytest.raises(ConfigError, match="wood.ood_images must be at least 1"):
        tiny_wood_config(ood_images=0).validate()


# --- bad input -----------------------------------------------------------------------------


def test_empty_ood_list_is_a_data_error_naming_it(tmp_path) -> None:
    empty = tmp_path / "ood.txt"
    empty.write_text("# nothing here\n\n")
    with pytest.raises(DataError, match="ood.txt: OoD image list is empty"):
        OoDImages(empty)


def test_unreadable_ood_image_is_a_data_error_naming_it(tiny_setup, tmp_path) -> None:
    _, dataset, _, init = tiny_setup
    ood = OoDImages(write_ood(tmp_path / "bad", corrupt=4))
    with pytest.raises(DataError, match=r"ood_4\.jpg: corrupt or unreadable image"):
        train_wood(dataset, ood, tiny_wood_config(), tiny_classifier_config(), device="cpu", init=init,
                   progress=False)


def test_bad_settings_are_config_errors(tiny_setup, tmp_path) -> None:
    _, dataset, ood, init = tiny_setup
    for changes, message in (({"push_quantile": 1.0}, "push_quantile"), ({"ood_clusters": 0}, "ood_clusters"),
                             ({"climb_normalisation": "l2"}, "climb_normalisation"),
                             ({"ood_ignore_classes": (0,)}, "ood_ignore_classes")):
        with pytest.raises(ConfigError, match=message):
            tiny_wood_config(**changes).validate()
    with pytest.raises(ConfigError, match="unknown wood option"):
        WoodConfig().replace(cluster_k=3)
    with pytest.raises(ConfigError, match="fewer than one OoD batch"):
        train_wood(dataset, ood, tiny_wood_config(ood_batch_size=7), tiny_classifier_config(), init=init,
                   progress=False)
    with pytest.raises(DataError, match="checkpoint not found"):
        train_wood(dataset, ood, tiny_wood_config(), tiny_classifier_config(), init=tmp_path / "missing.pt",
                   progress=False)
    other = make_voc(tmp_path / "other", ids=["a", "b"], classes=["background", "x", "y"])
    with pytest.raises(ConfigError, match="foreground classes"):
        train_wood(VOCDataset(other.root, "train"), ood, tiny_wood_config(), tiny_classifier_config(), init=init,
                   progress=False)


def test_recipes_validate() -> None:
    reference = wood_recipe("reference")
    reference.validate()
    assert (reference.distance_weight, reference.push_quantile, reference.ood_weight) == (0.007, 0.2, 0.25)
    assert (reference.ood_clusters, reference.climb_step, reference.ood_ignore_classes) == (50, 0.07, ())
    wood_recipe("synth").validate()
    with pytest.raises(ConfigError, match="unknown W-OoD recipe"):
        wood_recipe("nope")


def test_a_diverging_loss_stops_wood_training(tiny_setup, tmp_path) -> None:
    from wsss.training.engine import LossNotFinite

    _, dataset, ood, init = tiny_setup
    out = tmp_path / "wood.pt"
    with pytest.raises(LossNotFinite, match=r"the (loss|weights) became"):
        train_wood(dataset, ood, tiny_wood_config(epochs=2, lr=1e30), tiny_classifier_config(), device="cpu",
                   out=out, init=init, progress=False, seed=0)
    assert not out.exists()
