"""Recipes: which stages a method gets, in which order, with which reference defaults."""

from __future__ import annotations

from pathlib import Path

import pytest

from wsss.config import packaged_recipes
from wsss.errors import ConfigError
from wsss.methods import Context, get_method, registered_methods
from wsss.pipeline.recipes import build_stages, check_inputs, load_recipe
from wsss.pipeline.runner import fingerprint

ALL = "methods=[cam, advcam, rib, wood, advcam_wood]"
# the demo recipe's own IR-label thresholds and scale, set back to the methods' reference values
REFERENCE = ("ir_labels.fg_threshold=null", "ir_labels.bg_threshold=null", "scale=reference")


def _image_level() -> list[str]:
    """The registered methods that run IRN's chain (the box methods have no refinement values)."""
    return [name for name in registered_methods() if get_method(name).refine is not None]


def _stages(*overrides: str) -> dict:
    recipe = load_recipe("synth/demo", ["data.root=/nowhere", "data.ood_list=/nowhere/ood.txt", *overrides])
    return {stage.name: stage for stage in build_stages(Context(recipe, Path("work")))}


def test_every_method_runs_the_whole_chain_in_order() -> None:
    stages = _stages(ALL)
    names = list(stages)
    chain = ["maps", "seed_eval", "ir_labels", "irn", "edges", "pseudo", "pseudo_eval", "seg", "predict",
             "final_eval"]
    for method in ("cam", "advcam", "rib", "wood", "advcam_wood"):
        positions = [names.index(f"{method}.{step}") for step in chain]
        assert positions == sorted(positions)
        assert stages[f"{method}.pseudo"].needs == (f"{method}.maps", f"{method}.edges")
        assert stages[f"{method}.seg"].needs == (f"{method}.pseudo",)
    # the W-OoD methods read the fine-tuned classifier, trained once
    assert names.count("wood.classifier") == 1
    assert stages["wood.maps"].needs == ("wood.classifier",)
    assert stages["advcam_wood.maps"].needs == ("wood.classifier",)
    assert stages["cam.maps"].needs == ("classifier",)
    assert names[-3:] == ["fully_supervised.seg", "fully_supervised.predict", "fully_supervised.final_eval"]
    # trainings that are not distributed run on rank 0; DeepLab trains on every rank (DDP)
    assert stages["classifier"].main_only and stages["wood.classifier"].main_only and stages["cam.irn"].main_only
    assert not stages["cam.seg"].main_only and not stages["cam.maps"].main_only


def test_until_stops_the_chain() -> None:
    seeds = _stages("methods=[cam]", "until=seeds")
    assert list(seeds) == ["classifier", "cam.maps", "cam.seed_eval"]
    pseudo = _stages("methods=[cam]", "until=pseudo")
    assert list(pseudo)[-1] == "cam.pseudo_eval" and "fully_supervised.seg" not in pseudo
    assert "fully_supervised.seg" not in _stages("methods=[cam]", "fully_supervised=false")
    with pytest.raises(ConfigError, match="until"):
        load_recipe("synth/demo", ["until=masks"])


def test_each_method_gets_its_reference_thresholds_unless_set() -> None:
    # The fingerprints differ between methods exactly because their reference values differ.
    stages = _stages(ALL, *REFERENCE)
    assert get_method("advcam").refine.cam_power == 1.5 and get_method("rib").refine.cam_power == 1.3
    assert get_method("cam").refine.fg_threshold == 0.30 and get_method("cam").refine.bg_threshold == 0.05
    assert stages["cam.ir_labels"].depends_on == {"fg": 0.30, "bg": 0.05, "crf": "irn"}
    assert stages["rib.ir_labels"].depends_on == {"fg": 0.35, "bg": 0.17, "crf": "irn"}
    assert stages["advcam.pseudo"].depends_on["cam_power"] == 1.5
    assert stages["advcam_wood.pseudo"].depends_on["bg"] == 0.22
    forced = _stages(ALL, *REFERENCE, "ir_labels.fg_threshold=0.4", "random_walk.cam_power=2.0")
    assert all(forced[f"{m}.ir_labels"].depends_on["fg"] == 0.4 for m in _image_level())
    assert all(forced[f"{m}.pseudo"].depends_on["cam_power"] == 2.0 for m in _image_level())
    assert fingerprint(forced["cam.pseudo"].depends_on) != fingerprint(stages["cam.pseudo"].depends_on)


def test_wood_needs_ood_images_and_bad_settings_fail_before_training(tmp_path: Path) -> None:
    # the OoD list is an input, checked with the others before a run (load_recipe checks settings only)
    recipe = load_recipe("synth/demo", ["data.root=/nowhere", "methods=[wood]"])
    ctx = Context(recipe, tmp_path / "work")
    problems = [str(problem) for problem in check_inputs(ctx, build_stages(ctx))]
    assert "W-OoD needs OoD images: set data.ood_list=LIST" in problems
    with pytest.raises(ConfigError, match="merge"):
        load_recipe("synth/demo", ["seg_inference.merge=median"])
    with pytest.raises(ConfigError, match="epochs"):
        load_recipe("synth/demo", ["methods=[cam]", "segmentation.epochs=0"])
    with pytest.raises(ConfigError, match="rib"):
        load_recipe("synth/demo", ["methods=[rib]", "rib.steps=0"])


def test_an_unknown_method_is_an_error_listing_the_registered_ones() -> None:
    registered = "cam, advcam, rib, wood, advcam_wood, bana, boxes, bbam"
    with pytest.raises(ConfigError, match=rf"unknown method 'camm'; registered: {registered}"):
        load_recipe("synth/demo", ["methods=[camm]"])
    with pytest.raises(ConfigError, match="unknown method"):
        get_method("bbam_plus")


def test_a_registered_method_adds_its_section_and_stages() -> None:
    """One module and its registration are all a method needs (the worked example of docs/design.md)."""
    import dataclasses

    from wsss.methods import base
    from wsss.methods.chain import image_level_chain
    from wsss.methods.base import Method, RefineDefaults, Stage, register, remover

    @dataclasses.dataclass
    class BlurConfig:
        sigma: float = 2.0

    class BlurCam(Method):
        name = "blurcam"
        sections = {"blurcam": BlurConfig}
        refine = RefineDefaults(0.3, 0.05, 1.0, 0.25, "a test")

        def stages(self, ctx: Context) -> list[Stage]:
            maps = Stage("blurcam.maps", run=lambda: None, needs=("classifier",),
                         clear=remover(ctx.maps_dir(self.name)), depends_on=ctx.recipe.blurcam.sigma)
            return image_level_chain(ctx, self.name, maps, self.refine)

    register(BlurCam)
    try:
        from wsss.pipeline import recipes

        recipe = recipes.build(recipes._recipe_class(), None, ["methods=[blurcam, cam]", "blurcam.sigma=3",
                                                                "data.root=/nowhere"])
        assert recipe.blurcam.sigma == 3.0
        names = [stage.name for stage in build_stages(Context(recipe, Path("work")))]
        assert names[:3] == ["classifier", "blurcam.maps", "blurcam.seed_eval"]
        assert names.count("classifier") == 1 and "cam.maps" in names and "blurcam.pseudo" in names
        with pytest.raises(ValueError, match="section 'cam'"):
            register(type("Clash", (Method,), {"name": "clash", "sections": {"cam": BlurConfig}}))
    finally:
        base._REGISTRY.pop("blurcam", None)
        base._REGISTRY.pop("clash", None)


def test_scale_reaches_the_stages_that_use_it_and_their_fingerprints() -> None:
    literal, scaled = _stages(ALL, "scale=reference"), _stages(ALL, "scale=image")
    uses_scale = {f"{m}.{step}" for m in _image_level() for step in ("ir_labels", "pseudo")}
    uses_scale |= {"advcam.maps", "rib.maps", "advcam_wood.maps"}
    assert set(literal) == set(scaled)
    for name in literal:
        before, after = fingerprint(literal[name].depends_on), fingerprint(scaled[name].depends_on)
        assert (before != after) == (name in uses_scale), name
        # scale: reference adds nothing, so work finished before the setting existed stays valid
        if isinstance(literal[name].depends_on, dict):
            assert "scale" not in literal[name].depends_on, name
    assert scaled["cam.pseudo"].depends_on["scale"] == "image"
    # the prediction CRF is sized by it too, when there is one
    crf_literal = _stages("methods=[cam]", "seg_inference.crf=deeplab", "scale=reference")["cam.predict"]
    crf_scaled = _stages("methods=[cam]", "seg_inference.crf=deeplab", "scale=image")["cam.predict"]
    assert fingerprint(crf_literal.depends_on) != fingerprint(crf_scaled.depends_on)
    with pytest.raises(ConfigError, match="scale"):
        load_recipe("synth/demo", ["scale=voc"])


def test_quick_settings_come_from_the_chain_and_each_method() -> None:
    from wsss.methods.chain import QUICK_SETTINGS
    from wsss.pipeline.demo import quick_overrides

    settings = quick_overrides()
    assert settings[:len(QUICK_SETTINGS)] == list(QUICK_SETTINGS)
    assert len(settings) == len(set(settings))  # advcam and advcam_wood share advcam.iterations=4: once
    for name in registered_methods():
        assert set(get_method(name).quick) <= set(settings)
        assert all(s.split(".")[0] in get_method(name).sections for s in get_method(name).quick)
    quick = load_recipe("synth/demo", settings)
    assert (quick.classifier.epochs, quick.advcam.iterations, quick.rib.steps, quick.wood.epochs) == (4, 4, 3, 1)
    assert quick.bana.steps == 50


# Where a reference's code departs from what it meant, the library default is the computation that
# produced the published numbers; the demo chooses the intended one (docs/quirks.md).
FLIPPED = [  # (section, key, published, intended)
    ("classifier", "reference_momentum_quirk", True, False),
    ("irn", "reference_momentum_quirk", True, False),
    ("irn", "edge_pad_to", 512, None),
    ("advcam", "reference_scale_weight", True, False),
    ("rib", "reference_momentum_quirk", True, False),
    ("rib", "reference_explode_accumulation", True, False),
    ("wood", "kmeans_init", "first", "kmeans++"),
]


def test_defaults_are_published_the_demo_intended_and_the_real_data_recipes_published() -> None:
    defaults, demo = load_recipe(None), load_recipe("synth/demo")
    real = [load_recipe(name) for name in packaged_recipes() if name.split("/")[0] in ("voc", "coco")]
    assert len(real) >= 8
    for section, key, published, intended in FLIPPED:
        assert getattr(getattr(defaults, section), key) == published, (section, key)
        assert getattr(getattr(demo, section), key) == intended, (section, key)
        for recipe in real:
            assert getattr(getattr(recipe, section), key) == published, (recipe.methods, section, key)
    # the intended momentum needs the quirk off: the demo trains with momentum 0.9
    assert (demo.classifier.momentum, demo.irn.momentum) == (0.9, 0.9)


def test_the_demo_keeps_float32_attribution_on_a_cpu_without_native_bfloat16(monkeypatch) -> None:
    import wsss.runtime
    from wsss.pipeline.demo import float32_fallback

    recipe = load_recipe("synth/demo", ["runtime.device=cpu"])
    # the demo's choice (docs/speed.md)
    assert recipe.advcam.bfloat16 and recipe.rib.bfloat16 and recipe.runtime.autocast == "bf16"
    monkeypatch.setattr(wsss.runtime, "native_bfloat16", lambda: True)
    assert float32_fallback(recipe) == []
    monkeypatch.setattr(wsss.runtime, "native_bfloat16", lambda: False)
    assert float32_fallback(recipe) == ["advcam.bfloat16=false", "rib.bfloat16=false", "runtime.autocast=none"]
    assert float32_fallback(load_recipe("synth/demo", ["runtime.device=cpu", "advcam.bfloat16=false",
                                                       "runtime.autocast=none"])) == ["rib.bfloat16=false"]
    fallen_back = load_recipe("synth/demo", [*float32_fallback(recipe)])
    assert not fallen_back.advcam.bfloat16 and fallen_back.runtime.autocast == "none"


def test_the_run_seed_reaches_every_training_and_seed_zero_keeps_the_fingerprints() -> None:
    default, zero, other = _stages(ALL), _stages(ALL, "runtime.seed=0"), _stages(ALL, "runtime.seed=3")
    assert {n: fingerprint(s.depends_on) for n, s in default.items()} == \
        {n: fingerprint(s.depends_on) for n, s in zero.items()}
    changed = {name for name in other if fingerprint(other[name].depends_on) != fingerprint(zero[name].depends_on)}
    # (wood.classifier takes it too; its key changes through the classifier's, the stage it needs)
    trainings = {"classifier", "rib.maps", "fully_supervised.seg"}
    trainings |= {f"{m}.{step}" for m in _image_level() for step in ("irn", "seg")}
    assert trainings <= changed
    assert other["cam.seg"].depends_on["segmentation"]["seed"] == 3
    assert not {name for name in changed if name.endswith(("_eval", ".predict", ".ir_labels", ".pseudo"))}


def test_the_run_seed_reaches_the_box_methods_trainings_and_jitter(tmp_path: Path) -> None:
    from wsss.data.synth import SynthConfig, generate

    generate(tmp_path / "data", SynthConfig(train=8, val=4, ood=0, size=64), progress=False)
    def stages(seed: int) -> dict:
        recipe = load_recipe("synth/demo", [f"data.root={tmp_path / 'data'}", "methods=[bana, bbam]",
                                            f"runtime.seed={seed}"])
        return {stage.name: stage for stage in build_stages(Context(recipe, tmp_path / "work"))}

    zero, other = stages(0), stages(2)
    changed = {name for name in other if fingerprint(other[name].depends_on) != fingerprint(zero[name].depends_on)}
    assert changed == {"bana.classifier", "bana.seg", "bbam.detector", "bbam.maps", "bbam.seg", "bbam.mask_rcnn",
                       "instances_fully_supervised.mask_rcnn", "fully_supervised.seg"}
    assert other["bbam.maps"].depends_on["bbam"]["seed"] == 2
    assert other["bana.classifier"].depends_on["bana"]["seed"] == 2
