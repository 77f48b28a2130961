"""Recipes: the schema assembled from the registered methods, loading, and the run's stages.

A recipe names the dataset, the runtime, the methods to run and how far (``until``), and one
section per stage's settings. The sections come from :data:`wsss.methods.chain.SHARED_SECTIONS`
(the classifier and IRN's chain, shared by every image-level method) and from each registered
method (:func:`wsss.methods.method_sections`), so this module names no method: a new method's
section appears here by being registered.

:func:`build_stages` lists every selected method's stages (a stage two methods share, such as
the classifier, once), then the fully supervised baseline. The work directory's layout is
:class:`wsss.methods.Context`'s.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wsss.config import ScaleMode, build, recipe_path
from wsss.errors import ConfigError
from wsss.io import read_json
from wsss.methods import Context, DataConfig, RuntimeConfig, Stage, get_method, method_sections
from wsss.methods.chain import SHARED_SECTIONS, UNTIL, seg_stages

log = logging.getLogger(__name__)

__all__ = ["Recipe", "build_stages", "final_summary", "load_recipe", "seed_summary"]

@dataclass
class _RecipeHead:
    methods: tuple[str, ...] = ("cam",)
    until: str = "final"  # seeds | pseudo | final: how far each method goes
    fully_supervised: bool = True  # also train the network on ground truth (with until=final)
    # reference: the references' values in pixels, grid cells and logits as they are (VOC's scale);
    # image: relative to each image, equal to them at VOC's scale (wsss.config.SCALE_MODES, docs/scale.md)
    scale: ScaleMode = "reference"
    data: DataConfig = field(default_factory=DataConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)


def _recipe_class() -> type:
    sections = {**SHARED_SECTIONS, **method_sections()}
    return dataclasses.make_dataclass(
        "Recipe", [(name, cls, field(default_factory=cls)) for name, cls in sections.items()],
        bases=(_RecipeHead,), namespace={"__doc__": "A run's configuration: the shared sections and "
                                                    "every registered method's."})


Recipe = _recipe_class()


def load_recipe(name: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Any:
    """Defaults, then the recipe file (if any), then ``section.key=value`` overrides, checked.

    Every selected method validates its settings and extra data here, before hours of training.
    """
    recipe = build(Recipe, None if name is None else recipe_path(name), overrides)
    if recipe.until not in UNTIL:
        raise ConfigError(f"until must be one of {', '.join(UNTIL)}, got {recipe.until!r}")
    methods = [get_method(name) for name in recipe.methods]
    recipe.seg_inference.validate()
    for method in methods:
        method.validate(recipe)
    if recipe.until == "final":
        recipe.segmentation.validate()
    return recipe


def build_stages(ctx: Context) -> list[Stage]:
    """Every method's stages in the recipe's order (shared ones once), then the fully
    supervised baseline."""
    stages: dict[str, Stage] = {}
    for name in ctx.recipe.methods:
        for stage in get_method(name).stages(ctx):
            stages.setdefault(stage.name, stage)
    if ctx.recipe.until == "final" and ctx.recipe.fully_supervised:
        for stage in seg_stages(ctx, "fully_supervised", None, ()):
            stages[stage.name] = stage
    return list(stages.values())


def final_summary(ctx: Context, method: str, what: str) -> float | None:
    """mIoU of a finished pseudo or final evaluation, or None when it did not run."""
    path = ctx.eval_path(method, what)
    if not path.is_file():
        return None
    return read_json(path)["results"][0]["miou"]


def seed_summary(ctx: Context, method: str) -> dict[str, Any]:
    """The seed numbers of a finished method, from its evaluation JSON."""
    report = read_json(ctx.eval_path(method, "seed"))
    by_kind: dict[str, dict[str, Any]] = {}
    for result in report["results"]:
        protocol = result["protocol"]
        kind = "oracle" if protocol.startswith("oracle") else "label_free" if "label-free" in protocol else "fixed"
        by_kind[kind] = result
    return {
        "seed_miou": by_kind["oracle"]["miou"],
        "seed_threshold": by_kind["oracle"]["threshold"],
        "seed_miou_label_free": by_kind["label_free"]["miou"] if "label_free" in by_kind else None,
        "seed_threshold_label_free": by_kind["label_free"]["threshold"] if "label_free" in by_kind else None,
        "seed_miou_fixed": by_kind["fixed"]["miou"] if "fixed" in by_kind else None,
        "seed_protocols": {k: v["protocol"] for k, v in by_kind.items()},
    }
