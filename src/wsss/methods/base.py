"""What a method is and where methods are registered: stages, the run context, the registry.

A **method** (CAM, AdvCAM, RIB, W-OoD, ...) is one module under :mod:`wsss.methods` holding a
:class:`Method` subclass registered with :func:`register`. It declares:

* ``sections``: the recipe sections it adds, name -> config dataclass (``{"advcam": AdvCamConfig}``);
  a section two methods share (W-OoD's ``wood``) must be the same class in both;
* ``refine``: its refinement values in its reference code (:class:`RefineDefaults`, with sources);
* :meth:`Method.validate`: the settings to check before the first stage runs;
* :meth:`Method.check_inputs`: the extra files it needs (W-OoD's OoD images), checked then too;
* :meth:`Method.stages`: its chain of :class:`Stage` objects. A stage's ``depends_on`` is its
  fingerprint: the settings that change its output (run-only settings left out, see
  :func:`wsss.config.result_settings`). Stages shared by several methods (the CAM classifier)
  carry the same name in each, and the pipeline runs them once.

The pipeline (:mod:`wsss.pipeline`) assembles the recipe schema from the registered sections,
runs the stages and names no method. :class:`Context` is what every stage of a run shares: the
recipe, the work-directory layout, the opened datasets and the device.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar

from wsss.errors import ConfigError
from wsss.runtime import AutocastMode, FastPaths

log = logging.getLogger(__name__)

__all__ = [
    "INSTANCE_ORACLE",
    "Context",
    "DataConfig",
    "Method",
    "RefineDefaults",
    "RuntimeConfig",
    "Stage",
    "Work",
    "count",
    "get_method",
    "method_sections",
    "quick_settings",
    "register",
    "registered_methods",
    "remover",
]


@dataclass(frozen=True)
class Work:
    """What a stage will do, estimated from the recipe and the datasets' sizes without doing
    it (``wsss run --dry-run`` prints it).

    Attributes:
        images: the images the stage goes through (None: not a per-image stage, e.g. training
            for a number of updates).
        what: the work in words: passes per image, updates and their batch.
        problem: a setting that cannot work with this data (a batch larger than the split,
            so no update at all), reported before the first stage runs; None when there is none.
    """

    images: int | None
    what: str
    problem: str | None = None


def count(n: int | float) -> str:
    """``n`` with thousands separators (``10,582``)."""
    return f"{int(n):,}"


INSTANCE_ORACLE = "instances_fully_supervised"
"""The name (stages, files, ``eval/<name>_instance.json``) of the instance network trained on
ground-truth instances, the oracle beside a method's instance network (BBAM's Mask R-CNN), as
``fully_supervised`` is for the semantic network."""


@dataclass
class Stage:
    """One step of a pipeline.

    Attributes:
        name: short unique name (also the marker's file name).
        run: does the work; must write its outputs atomically.
        depends_on: the configuration this stage's result depends on (fingerprinted).
        clear: removes the stage's outputs when its configuration changed.
        main_only: run on rank 0 only (the other ranks wait at the barrier).
        needs: names of earlier stages whose results this one uses; their fingerprints are
            chained into this one's, so a change upstream reruns it. ``None``: the stage just
            before it (a linear chain).
        work: estimates the stage's :class:`Work` (reads no image; may open the recipe's
            datasets and read their labels). ``None``: no estimate.
        priority: the order of a parallel run (``runtime.jobs`` > 1): among the stages ready to
            start, those with the highest priority of their own or of any stage that needs them
            (directly or not) start first, the others in the list's order. Give it to the end of
            a long chain (BBAM's Mask R-CNN), so the chain starts early instead of last.
    """

    name: str
    run: Callable[[], Any]
    depends_on: Any = None
    clear: Callable[[], None] | None = None
    main_only: bool = False
    needs: tuple[str, ...] | None = None
    work: Callable[[], Work] | None = None
    priority: int = 0


def remover(*paths: Path) -> Callable[[], None]:
    """A ``Stage.clear`` that deletes ``paths`` (files or folders) where they exist."""

    def clear() -> None:
        for path in paths:
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()

    return clear


@dataclass
class DataConfig:
    """Where the images and labels are."""

    root: str = ""  # a VOC-layout root (VOCdevkit/, VOCdevkit/VOC2012/ or the like) or a COCO instances JSON
    train_split: str = "train"  # classifier training (IRN: train_aug); COCO: a split file of ids or a .json
    seed_split: str = "train"  # maps, pseudo masks and the segmentation network's training set
    # Where seeds and pseudo masks are scored: None = seed_split. The papers make their pseudo masks
    # for train_aug (10,582) and score them on train (1,464): seed_split train_aug, eval_split train.
    eval_split: str | None = None
    val_split: str = "val"  # final segmentation is evaluated on val
    ood_list: str | None = None  # OoD images for W-OoD: a list of paths relative to the list's folder


@dataclass
class RuntimeConfig:
    device: str = "auto"  # auto: cuda when available, else cpu
    # The run's seed. The classifier, IRN, RIB and W-OoD take it as theirs; the segmentation
    # network, BANA's classifier, BBAM's detector and jitter and Mask R-CNN add it to their
    # section's own seed (Context.seeded), so one setting reseeds every training of a run.
    seed: int = 0
    progress: bool = True
    # stages run at once, each in a worker process with this process's threads shared out
    # (wsss.pipeline.runner); one machine, no torchrun. Each stage's outputs are those of a run
    # with its worker's thread count (bit for bit with jobs 2 on 2 threads and jobs 1 on 1).
    jobs: int = 1
    # The CPU's fast paths for the classifier, IRN and segmentation networks (training and the
    # segmentation network's inference; wsss.runtime.FastPaths, measured in docs/speed.md):
    channels_last: bool = False  # NHWC weights and inputs: the same results up to rounding
    autocast: AutocastMode = "none"  # bf16: forward passes in bfloat16 (changes results; fingerprinted)

    @property
    def fast_paths(self) -> FastPaths:
        """``channels_last`` and ``autocast`` for the trainers and inference."""
        return FastPaths(channels_last=self.channels_last, autocast=self.autocast)

    def validate(self) -> None:
        """Raise :class:`ConfigError` on an invalid fast-path setting or job count."""
        self.fast_paths  # noqa: B018  FastPaths checks its values
        if self.jobs < 1:
            raise ConfigError(f"runtime.jobs must be at least 1, got {self.jobs}")


@dataclass(frozen=True)
class RefineDefaults:
    """A method's post-processing values in its reference code (``run_sample.py``).

    Attributes:
        fg_threshold, bg_threshold: IR labels' ``conf_fg_thres`` / ``conf_bg_thres``.
        cam_power: the random walk's ``np_power`` (maps raised to it before the walk).
        sem_seg_bg_threshold: the random walk's ``sem_seg_bg_thres``.
        source: where the values come from.
    """

    fg_threshold: float
    bg_threshold: float
    cam_power: float
    sem_seg_bg_threshold: float
    source: str


@dataclass
class Context:
    """What the stages of one run share: the recipe, the work directory, opened datasets.

    The work directory's layout (``<workdir>/...``)::

        classifier.pt                 the CAM classifier (shared by the image-level methods)
        <name>.pt                     other classifiers a method trains (W-OoD: classifier_wood.pt,
                                      BANA: bap_net.pt, its training checkpoints in bap_net/)
        maps/<method>/<id>.npz        localization maps (the map store)        -> seeds
        ir_labels/<method>/<id>.png   confident fg / bg / 255 (two CRF passes)
        irn/<method>.pt               IRN (boundary + displacement), trained on them
        edges/<method>/<id>.npz       boundary maps at stride 4
        pseudo/<method>/<id>.png      random-walk pseudo masks                  -> pseudo
                                      (boxes: filled boxes; bana: Y_crf, and Y_ret in pseudo/bana_ret/;
                                      bbam: semantic masks, and pseudo/bbam_instances.json)
        seg/<method>/model.pt         DeepLab trained on the pseudo masks (and checkpoints)
        predictions/<method>/<id>.png its predictions on the val split         -> final
        eval/<method>_{seed,pseudo,final}.json
        mask_rcnn_<name>.pt           Mask R-CNN (bbam, instances_fully_supervised) -> eval/<name>_instance.json
    """

    recipe: Any
    workdir: Path
    _datasets: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.workdir = Path(self.workdir)

    @property
    def eval_split(self) -> str:
        """The split seeds and pseudo masks are scored on: ``data.eval_split``, else ``data.seed_split``."""
        data = self.recipe.data
        return data.eval_split or data.seed_split

    def dataset(self, split: str):
        """The recipe's dataset for ``split`` (opened once per run).

        ``data.root`` is a VOC-layout folder (``split``: a split name or file) or a COCO
        instances JSON (``split``: a file of ids); a ``split`` that is itself a COCO ``.json``
        file opens that file, so COCO's train and val annotations can be two splits of one recipe.
        """
        from wsss.data import open_dataset

        if not self.recipe.data.root:
            raise ConfigError("no dataset: set data.root (e.g. --set data.root=PATH)")
        if split not in self._datasets:
            if str(split).lower().endswith(".json"):
                self._datasets[split] = open_dataset(split)
            else:
                self._datasets[split] = open_dataset(self.recipe.data.root, split)
        return self._datasets[split]

    def seeded(self, config: Any) -> Any:
        """``config`` (a section with a ``seed``) with ``runtime.seed`` added to its seed; the same
        object at run seed 0, so a run at seed 0 keeps its fingerprints."""
        offset = self.recipe.runtime.seed
        return dataclasses.replace(config, seed=config.seed + offset) if offset else config

    @property
    def device(self):
        from wsss.runtime import resolve_device

        return resolve_device(self.recipe.runtime.device)

    @property
    def fast_paths(self) -> FastPaths:
        """The recipe's memory format and autocast for its networks (``runtime`` section)."""
        return self.recipe.runtime.fast_paths

    def ood(self):
        """The recipe's OoD images (W-OoD)."""
        from wsss.data.ood import OoDImages

        if not self.recipe.data.ood_list:
            raise ConfigError("no OoD images: set data.ood_list=LIST")
        return OoDImages(self.recipe.data.ood_list)

    # ----------------------------------------------------------------------------- layout
    def model_path(self, name: str = "classifier") -> Path:
        """A network trained once per run and shared by stages: ``<workdir>/<name>.pt``."""
        return self.workdir / f"{name}.pt"

    @property
    def classifier_path(self) -> Path:
        return self.model_path("classifier")

    def maps_dir(self, method: str) -> Path:
        return self.workdir / "maps" / method

    def eval_path(self, method: str, what: str) -> Path:
        """``what``: seed, pseudo or final."""
        return self.workdir / "eval" / f"{method}_{what}.json"

    def ir_label_dir(self, method: str) -> Path:
        return self.workdir / "ir_labels" / method

    def irn_path(self, method: str) -> Path:
        return self.workdir / "irn" / f"{method}.pt"

    def edge_dir(self, method: str) -> Path:
        return self.workdir / "edges" / method

    def pseudo_dir(self, method: str) -> Path:
        return self.workdir / "pseudo" / method

    def seg_dir(self, method: str) -> Path:
        return self.workdir / "seg" / method

    def prediction_dir(self, method: str) -> Path:
        return self.workdir / "predictions" / method


class Method:
    """A registered method: subclass it, set the class attributes, implement :meth:`stages`."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    sections: ClassVar[dict[str, type]] = {}
    refine: ClassVar[RefineDefaults | None] = None
    quick: ClassVar[tuple[str, ...]] = ()
    """``section.key=value`` settings that shorten the method's own stages to a smoke run
    (``wsss demo --quick``); the shared chain's are :data:`wsss.methods.chain.QUICK_SETTINGS`."""

    def validate(self, recipe: Any) -> None:
        """Check the method's settings and extra data before any stage runs.

        The default validates every section that has a ``validate()`` method.
        """
        for section in self.sections:
            config = getattr(recipe, section)
            if hasattr(config, "validate"):
                config.validate()

    def check_inputs(self, ctx: Context) -> list[Exception]:
        """The problems with the files the method needs beyond the dataset (W-OoD's OoD images),
        found before any stage runs; the pipeline reports them with every other problem. Only
        settings belong in :meth:`validate` (``wsss config`` shows a recipe without its data)."""
        return []

    def stages(self, ctx: Context) -> list[Stage]:
        """The method's chain, shared stages (e.g. the CAM classifier) included."""
        raise NotImplementedError

    def pictures(self, ctx: Context) -> dict[str, Path]:
        """Label-map folders the demo draws side by side for a method without seeds (BANA's
        Y_crf and Y_ret): column title -> folder. Default: none."""
        return {}


_REGISTRY: dict[str, Method] = {}


def register(cls: type[Method]) -> type[Method]:
    """Class decorator: add a :class:`Method` to the registry under ``cls.name``.

    Raises:
        ValueError: no name, a name registered already, or a section name another method
            declares with another class.
    """
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    if cls.name in _REGISTRY and type(_REGISTRY[cls.name]) is not cls:
        raise ValueError(f"method {cls.name!r} is registered already ({type(_REGISTRY[cls.name]).__name__})")
    known = method_sections()
    for section, config_class in cls.sections.items():
        if section in known and known[section] is not config_class:
            raise ValueError(f"method {cls.name!r} declares section {section!r} as {config_class.__name__}, "
                             f"another method as {known[section].__name__}")
    _REGISTRY[cls.name] = cls()
    return cls


def registered_methods() -> list[str]:
    """The registered method names, in registration order."""
    return list(_REGISTRY)


def get_method(name: str) -> Method:
    """The registered method ``name``.

    Raises:
        ConfigError: no method of that name (the message lists the registered ones).
    """
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ConfigError(f"unknown method {name!r}; registered: {', '.join(_REGISTRY)}") from None


def quick_settings() -> list[str]:
    """Every registered method's :attr:`Method.quick` settings, each once, in registration order."""
    settings: list[str] = []
    for method in _REGISTRY.values():
        settings += [setting for setting in method.quick if setting not in settings]
    return settings


def method_sections() -> dict[str, type]:
    """Every recipe section the registered methods declare: name -> config class."""
    sections: dict[str, type] = {}
    for method in _REGISTRY.values():
        sections.update(method.sections)
    return sections
