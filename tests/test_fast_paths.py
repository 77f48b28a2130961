"""The CPU's fast paths (runtime.channels_last, runtime.autocast): settings, fingerprints, and
the classifier, IRN and segmentation trainers and segmentation inference taking them."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from helpers import load_benchmark, make_voc
from test_classifier_training import SquaresSource
from test_seg_train import make_colour_voc
from torch import nn

import wsss.training.classifier as classifier_module
from wsss.data.voc import VOCDataset
from wsss.errors import ConfigError
from wsss.io import write_label_png
from wsss.methods import Context
from wsss.models.deeplab import create_segmentation_model
from wsss.pipeline.recipes import build_stages, load_recipe
from wsss.pipeline.runner import fingerprint
from wsss.runtime import FastPaths
from wsss.segmentation.inference import predict_dataset, predict_logits
from wsss.segmentation.train import SegTrainConfig, train_segmentation
from wsss.training.classifier import classifier_recipe, train_classifier
from wsss.training.engine import TrainingEngine, poly_sgd
from wsss.training.irn import irn_recipe, train_irn

torch.set_num_threads(1)

FAST = FastPaths(channels_last=True, autocast="bf16")


def _channels_last(model: nn.Module) -> bool:
    """Every 4-D weight of ``model`` is stored channels-last (and there is one)."""
    weights = [p for p in model.parameters() if p.ndim == 4 and p.shape[1] > 1 and p.shape[2:] != (1, 1)]
    return bool(weights) and all(p.is_contiguous(memory_format=torch.channels_last)
                                 and not p.is_contiguous() for p in weights)


class Recorder:
    """Wraps a module's forward to record its input's memory format and its output's dtype."""

    def __init__(self) -> None:
        self.seen: list[tuple[bool, torch.dtype]] = []

    def hook(self, module: nn.Module, inputs: tuple, output) -> None:
        first = output[0] if isinstance(output, tuple) else output
        x = inputs[0]
        self.seen.append((x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous(),
                          first.dtype))


# ------------------------------------------------------------------ settings
def test_fast_paths_check_their_values_and_fingerprint_only_bf16() -> None:
    assert FastPaths().dependency == {} and FastPaths(channels_last=True).dependency == {}
    assert FastPaths(autocast="bf16").dependency == {"autocast": "bf16"}
    with pytest.raises(ConfigError, match="runtime.autocast must be one of none, bf16"):
        FastPaths(autocast="fp16")
    with pytest.raises(ConfigError, match="runtime.channels_last"):
        FastPaths(channels_last="yes")  # type: ignore[arg-type]


def test_recipe_keys_are_read_and_checked() -> None:
    recipe = load_recipe("synth/demo", ["runtime.channels_last=true", "runtime.autocast=bf16"])
    assert recipe.runtime.fast_paths == FAST
    assert load_recipe().runtime.fast_paths == FastPaths()  # the library's defaults: float32, contiguous
    assert load_recipe("synth/demo").runtime.fast_paths == FAST  # the demo's choice (docs/speed.md)
    with pytest.raises(ConfigError, match="autocast"):
        load_recipe("synth/demo", ["runtime.autocast=float16"])
    with pytest.raises(ConfigError, match="channels_last"):
        load_recipe("synth/demo", ["runtime.channels_last=sometimes"])


def _stages(*overrides: str) -> dict:
    recipe = load_recipe("synth/demo", ["data.root=/nowhere", "methods=[cam]", *overrides])
    return {stage.name: stage for stage in build_stages(Context(recipe, Path("work")))}


def test_bf16_changes_the_fingerprints_of_the_stages_that_use_it_and_channels_last_none() -> None:
    plain = _stages("runtime.channels_last=false", "runtime.autocast=none")
    last, bf16 = _stages("runtime.autocast=none"), _stages("runtime.channels_last=false", "runtime.autocast=bf16")
    uses = {"classifier", "cam.irn", "cam.seg", "cam.predict", "fully_supervised.seg", "fully_supervised.predict"}
    assert set(plain) == set(bf16) and uses <= set(plain)
    for name in plain:
        assert fingerprint(plain[name].depends_on) == fingerprint(last[name].depends_on), name
        assert (fingerprint(plain[name].depends_on) != fingerprint(bf16[name].depends_on)) == (name in uses), name
    assert bf16["cam.seg"].depends_on["autocast"] == "bf16"


def test_the_chain_hands_the_recipes_fast_paths_to_every_trainer_and_to_inference(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import wsss.segmentation.inference as inference
    import wsss.segmentation.train as seg_train
    import wsss.training.irn as irn

    root = make_voc(tmp_path / "voc", classes=["background", "a", "b"]).root
    recipe = load_recipe("synth/demo", [f"data.root={root}", "methods=[cam]", "data.val_split=train",
                                        "runtime.channels_last=true", "runtime.autocast=bf16"])
    given: dict[str, FastPaths] = {}

    def record(name: str, result=None):
        def call(*args, fast_paths=None, **kwargs):
            given[name] = fast_paths
            return result
        return call

    monkeypatch.setattr(classifier_module, "train_classifier",
                        record("classifier", classifier_module.TrainResult(model=None)))
    monkeypatch.setattr(irn, "train_irn", record("irn"))
    monkeypatch.setattr(seg_train, "train_segmentation", record("segmentation"))
    monkeypatch.setattr(seg_train, "load_trained_model", lambda *args, **kwargs: (nn.Identity(), {}))
    monkeypatch.setattr(inference, "predict_dataset", record("inference"))
    stages = {stage.name: stage for stage in build_stages(Context(recipe, tmp_path / "work"))}
    for name in ("classifier", "cam.irn", "cam.seg", "cam.predict"):
        stages[name].run()
    assert given == {"classifier": FAST, "irn": FAST, "segmentation": FAST, "inference": FAST}


# ------------------------------------------------------------------ the engine
def test_engine_autocast_is_bfloat16_on_the_cpu_without_a_scaler() -> None:
    model = nn.Conv2d(3, 4, 3)
    optimizer, scheduler = poly_sgd([(list(model.parameters()), 1.0)], 0.1, total_steps=2)
    x = torch.randn(1, 3, 8, 8)
    for fast, dtype in ((None, torch.float32), (FastPaths(autocast="bf16"), torch.bfloat16)):
        engine = TrainingEngine(model, optimizer, scheduler, total_steps=2, steps_per_epoch=1, device="cpu",
                                amp=True, fast_paths=fast, progress=False)
        with engine.autocast():
            assert model(x).dtype == dtype
        assert not engine.scaler.is_enabled()


# ------------------------------------------------------------------ the trainers
def test_classifier_trains_channels_last_in_bfloat16(monkeypatch: pytest.MonkeyPatch) -> None:
    recorder = Recorder()

    class RecordedCamNet(classifier_module.CamNet):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            self.register_forward_hook(recorder.hook)

    monkeypatch.setattr(classifier_module, "CamNet", RecordedCamNet)
    config = classifier_recipe("synth").replace(epochs=6, batch_size=4, crop_size=32, resize_long=None, lr=0.05)
    result = train_classifier(SquaresSource(), config, device="cpu", progress=False, fast_paths=FAST)
    losses = [record["loss"] for record in result.history]
    assert losses[-1] < 0.8 * losses[0], losses
    assert len(recorder.seen) == 18 and set(recorder.seen) == {(True, torch.bfloat16)}
    assert _channels_last(result.model)


def _irn_dataset(tmp_path: Path) -> tuple[VOCDataset, Path]:
    fixture = make_voc(tmp_path / "voc", ids=[f"im{i}" for i in range(8)], size=(60, 66),
                       classes=["background", "a", "b", "c"])
    dataset = VOCDataset(fixture.root, split="train")
    labels = tmp_path / "ir"
    for image_id in dataset.ids:
        write_label_png(labels / f"{image_id}.png", dataset.load_mask(image_id))
    return dataset, labels


def test_irn_trains_channels_last_in_bfloat16(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import wsss.training.irn as irn_module

    dataset, labels = _irn_dataset(tmp_path)
    config = irn_recipe("synth").replace(radius=5, crop_size=64, batch_size=4, epochs=8, rescale=None,
                                         num_workers=0, mean_shift_images=4)
    recorder = Recorder()
    build = irn_module.build_irn

    def recorded_build(*args, **kwargs):
        model = build(*args, **kwargs)
        model.register_forward_hook(recorder.hook)
        return model

    monkeypatch.setattr(irn_module, "build_irn", recorded_build)
    result = train_irn(dataset, labels, config, device="cpu", progress=False, fast_paths=FAST)
    totals = [record["total"] for record in result.history]
    assert totals[-1] < 0.85 * totals[0], totals
    training = recorder.seen[:16]  # 16 updates; then the mean shift is measured in float32
    assert set(training) == {(True, torch.bfloat16)}
    assert {dtype for _, dtype in recorder.seen[16:]} == {torch.float32}
    assert _channels_last(result.model)


def test_segmentation_trains_channels_last_in_bfloat16(tmp_path: Path) -> None:
    dataset = make_colour_voc(tmp_path / "voc")
    config = SegTrainConfig(model="deeplab_v2_resnet18_w16", loss="ce", batch_size=4, iterations=20, lr=0.01,
                            crop_size=32, scale_range=None, checkpoint_every=100, num_workers=0)
    torch.manual_seed(0)
    model = create_segmentation_model(config.model, 4)
    recorder = Recorder()
    model.register_forward_hook(recorder.hook)
    result = train_segmentation(dataset, None, config, device="cpu", out_dir=tmp_path / "run", progress=False,
                                model=model, fast_paths=FAST)
    losses = [h["loss"] for h in result.history]
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:3]), losses
    assert len(recorder.seen) == 20 and set(recorder.seen) == {(True, torch.bfloat16)}
    assert _channels_last(result.model)


def test_channels_last_training_follows_float32(tmp_path: Path) -> None:
    # The same updates in another memory order: the same weights up to rounding.
    dataset = make_colour_voc(tmp_path / "voc")
    config = SegTrainConfig(model="deeplab_v2_resnet18_w16", loss="ce", batch_size=4, iterations=4, lr=0.01,
                            crop_size=32, checkpoint_every=100, num_workers=0)
    trained = {}
    for name, fast in (("float32", None), ("channels_last", FastPaths(channels_last=True))):
        torch.manual_seed(0)
        trained[name] = train_segmentation(dataset, None, config, device="cpu", out_dir=tmp_path / name,
                                           progress=False, model=create_segmentation_model(config.model, 4),
                                           fast_paths=fast)
    plain, last = trained["float32"], trained["channels_last"]
    assert not _channels_last(plain.model) and _channels_last(last.model)
    np.testing.assert_allclose([h["loss"] for h in last.history], [h["loss"] for h in plain.history], rtol=1e-4)
    for (name, a), b in zip(plain.model.state_dict().items(), last.model.state_dict().values()):
        torch.testing.assert_close(b, a, rtol=1e-3, atol=1e-4, msg=name)


# ------------------------------------------------------------------ inference
def test_inference_channels_last_matches_float32_and_bf16_is_close(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = create_segmentation_model("deeplab_v2_resnet18_w16", 4).eval()
    image = np.random.default_rng(0).integers(0, 256, (40, 44, 3), dtype=np.uint8)
    reference = predict_logits(model, image, device="cpu")
    last = FastPaths(channels_last=True)
    last.prepare(model)
    assert _channels_last(model)
    torch.testing.assert_close(predict_logits(model, image, device="cpu", fast_paths=last), reference,
                               rtol=1e-4, atol=1e-4)
    bf16 = predict_logits(model, image, device="cpu", fast_paths=FAST)
    assert bf16.dtype == torch.float32
    scale = float(reference.abs().max())
    assert 0 < float((bf16 - reference).abs().max()) < 0.05 * scale  # bfloat16 rounding, not float32's

    fresh = create_segmentation_model("deeplab_v2_resnet18_w16", 4).eval()
    dataset = make_colour_voc(tmp_path / "voc")
    written = {}
    for name, fast in (("float32", None), ("channels_last", last)):
        predict_dataset(fresh, dataset, tmp_path / name, device="cpu", progress=False, fast_paths=fast)
        written[name] = [(tmp_path / name / f"{i}.png").read_bytes() for i in dataset.ids]
    assert _channels_last(fresh) and written["float32"] == written["channels_last"]


# ------------------------------------------------------------------ the benchmark
def test_the_speed_benchmark_times_every_variant_through_fast_paths(capsys: pytest.CaptureFixture) -> None:
    for bench in load_benchmark("cpu_fast_paths"):
        assert bench._fast_paths("channels_last+bf16") == FAST
        assert bench._fast_paths("compile") == FastPaths()
        assert bench.main(["--only", "inference", "--repeats", "1", "--warmup", "0"]) == 0
    printed = capsys.readouterr().out
    assert "compare the ratios within this run" in printed
    rows = [line.split() for line in printed.splitlines() if line.startswith("inference, 1 image")]
    assert [row[3] for row in rows] == ["float32", "channels_last", "bf16", "channels_last+bf16"]
    assert rows[0][5] == "1.00x" and all(float(row[4]) > 0 for row in rows)


def test_the_box_methods_hand_the_fast_paths_to_their_trainers_and_count_bf16(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import wsss.training.bana as bana
    import wsss.training.detector as detector
    import wsss.training.mask_rcnn as mask_rcnn
    from wsss.data.synth import SynthConfig, generate

    generate(tmp_path / "data", SynthConfig(train=8, val=4, ood=0, size=64), progress=False)

    def stages(*overrides: str) -> dict:
        recipe = load_recipe("synth/demo", [f"data.root={tmp_path / 'data'}", "methods=[bana, bbam]", *overrides])
        return {stage.name: stage for stage in build_stages(Context(recipe, tmp_path / "work"))}

    trainers = ("bana.classifier", "bbam.detector", "bbam.mask_rcnn", "instances_fully_supervised.mask_rcnn")
    plain, bf16 = stages("runtime.autocast=none"), stages("runtime.autocast=bf16")
    for name in trainers:
        assert bf16[name].depends_on["autocast"] == "bf16" and "autocast" not in plain[name].depends_on, name
    given: dict[str, FastPaths] = {}

    def record(name: str):
        def call(*args, fast_paths=None, **kwargs):
            given[name] = fast_paths
            return SimpleNamespace(history=[])
        return call

    monkeypatch.setattr(bana, "train_bap", record("bap"))
    monkeypatch.setattr(detector, "train_detector", record("detector"))
    monkeypatch.setattr(mask_rcnn, "train_mask_rcnn", record("mask_rcnn"))
    fast = stages("runtime.channels_last=true", "runtime.autocast=bf16")
    for name in ("bana.classifier", "bbam.detector", "instances_fully_supervised.mask_rcnn"):  # (bbam's reads
        fast[name].run()                                                                  # its pseudo instances)
    assert given == {"bap": FAST, "detector": FAST, "mask_rcnn": FAST}


def test_mask_rcnn_trains_channels_last_in_bfloat16(tmp_path: Path) -> None:
    from wsss.data.synth import SynthConfig, generate
    from wsss.training.mask_rcnn import MaskRcnnConfig, train_mask_rcnn

    root = generate(tmp_path / "data", SynthConfig(train=4, val=0, ood=0, size=64), progress=False)
    dataset = VOCDataset(root, "train")
    instances = {image_id: dataset.ground_truth_instances(image_id) for image_id in dataset.ids}
    config = MaskRcnnConfig(backbone="resnet18_w16", fpn_channels=16, representation_size=32, mask_channels=16,
                            rois_per_image=32, batch_size=2, steps=2, milestones=(), warmup_steps=0, lr=0.01)
    losses: list[float] = []
    result = train_mask_rcnn(dataset, instances, config, classes=dataset.classes, fast_paths=FAST,
                             callback=lambda step, loss: losses.append(loss))
    assert len(losses) == 2 and all(np.isfinite(losses))
    assert _channels_last(result.model.backbone.body)
