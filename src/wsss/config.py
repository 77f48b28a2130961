"""Typed configuration: dataclasses with the papers' defaults, YAML recipes, ``--set`` overrides.

A recipe is a YAML file whose keys mirror the dataclass fields::

    classifier:
      epochs: 10
    cam:
      scales: [1.0, 0.5, 1.5, 2.0]

Any field can be overridden from the command line with ``--set classifier.epochs=3``; the value
is parsed as YAML (``true``, ``[1, 2]``, ``0.1``) and checked against the field's type. Unknown
keys are errors, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from pathlib import Path
from typing import Any, Iterable, TypeVar

import yaml

from wsss.errors import ConfigError

_EXPONENT_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")

T = TypeVar("T")


def to_dict(config: Any) -> dict[str, Any]:
    """A plain nested dict (tuples as lists), fit for YAML/JSON."""

    def convert(value: Any) -> Any:
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            return {f.name: convert(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, (list, tuple)):
            return [convert(v) for v in value]
        if isinstance(value, dict):
            return {k: convert(v) for k, v in value.items()}
        if isinstance(value, Path):
            return str(value)
        return value

    return convert(config)


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    """Check ``value`` against a type annotation, converting where it is lossless."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in args:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(f"{where}: {value!r} does not match {annotation}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {list(args)}")
        return value
    if dataclasses.is_dataclass(annotation):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return from_dict(annotation, value, where)
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ConfigError(f"{where}: expected {len(args)} values, got {len(value)}")
            items = [_coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args))]
        else:
            item_type = args[0] if args else Any
            items = [_coerce(v, item_type, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if annotation is float:
        if isinstance(value, str) and _EXPONENT_NUMBER.fullmatch(value.strip()):
            value = float(value)  # YAML 1.1 reads 8e-6 (no dot) as a string
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"{where}: expected a finite number, got {value!r}")
        return float(value)
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    if annotation is Path:
        if not isinstance(value, (str, Path)):
            raise ConfigError(f"{where}: expected a path, got {value!r}")
        return Path(value)
    return value


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def from_dict(cls: type[T], data: dict[str, Any], where: str = "") -> T:
    """Build dataclass ``cls`` from a (partial) nested dict; missing keys keep their defaults."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where or cls.__name__}: expected a mapping, got {data!r}")
    hints = _hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - names)
    if unknown:
        prefix = f"{where}." if where else ""
        raise ConfigError(
            f"unknown config key {prefix}{unknown[0]} (known: {', '.join(sorted(names))})"
        )
    kwargs = {
        key: _coerce(value, hints[key], f"{where}.{key}" if where else key)
        for key, value in data.items()
    }
    return cls(**kwargs)


def merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge ``update`` into a copy of ``base``."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def parse_override(text: str) -> dict[str, Any]:
    """``"a.b.c=value"`` -> ``{"a": {"b": {"c": value}}}`` with value parsed as YAML."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r} must look like section.key=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: value is not valid YAML ({exc})") from None
    for part in reversed(key.split(".")):
        value = {part: value}
    return value


RECIPE_DIR = Path(__file__).resolve().parent / "configs"
"""The packaged recipes (``synth/demo``, ``voc/cam``, ...), one YAML file each."""


def packaged_recipes() -> list[str]:
    """The names of the recipes shipped with wsss (``synth/demo``, ``voc/cam``, ...)."""
    return sorted(str(p.relative_to(RECIPE_DIR).with_suffix("")) for p in RECIPE_DIR.rglob("*.yaml"))


def recipe_path(name: str | Path) -> Path:
    """A recipe file: a path, or a name like ``synth/demo`` under the packaged ``configs/``
    (also written as the repository's path, ``configs/synth/demo.yaml``, from any folder)."""
    path = Path(name)
    if path.suffix in (".yaml", ".yml") and path.exists():
        return path
    packaged = RECIPE_DIR / f"{name}.yaml"
    if packaged.exists():
        return packaged
    if path.suffix == ".yaml" and path.parts[:1] == ("configs",) and (RECIPE_DIR / Path(*path.parts[1:])).is_file():
        return RECIPE_DIR / Path(*path.parts[1:])
    raise ConfigError(f"recipe {name!r} not found (a YAML file, or one of: {', '.join(packaged_recipes())})")


def recipe_section(name: str | Path, section: str, cls: type[T]) -> T:
    """One section of a recipe as its config class (defaults where the recipe says nothing):
    the trainers' named recipes read the packaged YAML, so a recipe's values live in one place."""
    data = read_yaml(recipe_path(name)).get(section) or {}
    try:
        return from_dict(cls, data, section)
    except ConfigError as exc:
        raise ConfigError(f"{exc} (recipe {name})") from None


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: recipe file not found") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({' '.join(str(exc).split())})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a recipe must be a mapping of sections")
    return data


def build(cls: type[T], recipe: str | Path | dict[str, Any] | None = None,
          overrides: Iterable[str] = ()) -> T:
    """The config of type ``cls`` from defaults, then a recipe, then ``key=value`` overrides."""
    data: dict[str, Any] = {}
    if recipe is not None:
        data = read_yaml(recipe) if isinstance(recipe, (str, Path)) else dict(recipe)
    for text in overrides:
        data = merge(data, parse_override(text))
    source = f" (recipe {recipe})" if isinstance(recipe, (str, Path)) else ""
    try:
        return from_dict(cls, data)
    except ConfigError as exc:
        raise ConfigError(f"{exc}{source}") from None
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"invalid config{source}: {exc}") from None


def dump_yaml(config: Any) -> str:
    return yaml.safe_dump(to_dict(config), sort_keys=False)


def replace_fields(config: T, changes: dict[str, Any], what: str) -> T:
    """A copy of the dataclass ``config`` with ``changes``.

    Raises:
        ConfigError: a key that is not a field ("unknown <what> option(s): ...").
    """
    known = {f.name for f in dataclasses.fields(config)}
    unknown = sorted(set(changes) - known)
    if unknown:
        raise ConfigError(f"unknown {what} option(s): {', '.join(unknown)}")
    return dataclasses.replace(config, **changes)


class Settings:
    """Base of the config dataclasses: ``to_dict()`` and ``replace(**changes)``.

    A subclass names itself in errors with ``option_name`` ("unknown IRN option(s): ...").
    """

    option_name: typing.ClassVar[str] = "config"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self: T, **changes: Any) -> T:
        """A copy with ``changes``; unknown keys and NaN or infinite numbers are a :class:`ConfigError`."""
        changed = replace_fields(self, changes, self.option_name)
        check_finite(changed, self.option_name)
        return changed


def check_ranges(config: Any, where: str, *, at_least: dict[str, float] | None = None,
                 at_most: dict[str, float] | None = None, positive: tuple[str, ...] = (),
                 ranges: tuple[str, ...] = ()) -> None:
    """Range checks of a config dataclass's numeric fields (``None`` values are skipped).

    Args:
        config: the dataclass.
        where: its section name, for messages (``classifier``).
        at_least: field -> least allowed value (``{"epochs": 1, "weight_decay": 0}``).
        at_most: field -> greatest allowed value (``{"bg_threshold": 1}``).
        positive: fields that must be above 0.
        ranges: ``(low, high)`` fields that need ``0 < low <= high``.

    Raises:
        ConfigError: the first field out of range, naming it and its value.
    """
    check_finite(config, where)
    for name, least in (at_least or {}).items():
        value = getattr(config, name)
        if value is not None and value < least:
            raise ConfigError(f"{where}.{name} must be at least {least:g}, got {value!r}")
    for name, most in (at_most or {}).items():
        value = getattr(config, name)
        if value is not None and value > most:
            raise ConfigError(f"{where}.{name} must be at most {most:g}, got {value!r}")
    for name in positive:
        value = getattr(config, name)
        if value is not None and not value > 0:
            raise ConfigError(f"{where}.{name} must be positive, got {value!r}")
    for name in ranges:
        value = getattr(config, name)
        if value is not None and not 0 < value[0] <= value[1]:
            raise ConfigError(f"{where}.{name} must be a range 0 < low <= high, got {list(value)}")


def check_finite(config: Any, where: str) -> None:
    """Refuse a NaN or infinite number anywhere in the dataclass ``config`` (nested dataclasses,
    lists and dicts included); a recipe's numbers are checked as they are read, this catches
    those set in code.

    Raises:
        ConfigError: naming the setting, e.g. ``classifier.lr``.
    """

    def visit(value: Any, name: str) -> None:
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{name} must be a finite number, got {value!r}")
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            for item in dataclasses.fields(value):
                visit(getattr(value, item.name), f"{name}.{item.name}")
        elif isinstance(value, (list, tuple)):
            for index, item in enumerate(value):
                visit(item, f"{name}[{index}]")
        elif isinstance(value, dict):
            for key, item in value.items():
                visit(item, f"{name}.{key}")

    visit(config, where)


def with_settings(config: T | None, default: type[T], settings: dict[str, Any], what: str) -> T:
    """``config`` (``default()`` when None) with keyword ``settings`` replacing fields, validated
    (NaN and infinite numbers refused, then ``validate()``): what a library call taking
    ``config=`` and ``**settings`` does first."""
    config = replace_fields(config if config is not None else default(), settings, what)
    check_finite(config, what)
    config.validate()
    return config


RUN_ONLY = "run_only"
"""Field metadata key: the setting changes speed or memory, not results (``run_only_field``)."""


def run_only_field(default: Any) -> Any:
    """A dataclass field whose value changes how a result is computed, not the result itself
    (batching, workers, checkpoint interval): stages leave it out of their fingerprint, and a
    resumed training may change it."""
    return dataclasses.field(default=default, metadata={RUN_ONLY: True})


def result_settings(config: Any) -> dict[str, Any]:
    """``to_dict(config)`` without its run-only fields (see :func:`run_only_field`)."""
    return {f.name: to_dict(getattr(config, f.name)) for f in dataclasses.fields(config)
            if not f.metadata.get(RUN_ONLY)}


SCALE_MODES = ("reference", "image")
"""How settings measured in pixels, grid cells or logits are read (the recipe's ``scale``):

* ``reference``: literally, the reference code's values (PASCAL VOC's scale) at every image size;
* ``image``: relative to the reference's scale, per image (the image's size, its maps' cells, the
  network's logits on it), so that each equals the literal value exactly at the reference's scale.

The formulas and reference values are in ``docs/scale.md``.
"""

ScaleMode = typing.Literal["reference", "image"]

REFERENCE_IMAGE_SIZE = (375, 500)
"""(H, W) of the image the references' pixel and cell settings were set for: PASCAL VOC's
typical 500 x 375 photograph (IRN, AdvCAM, RIB, BANA, BBAM's CRF and DeepLab all run on VOC
images at their own size). Its diagonal is 625 px; its stride-4 grid 94 x 125."""


def check_scale(scale: str) -> str:
    """``scale`` if it is one of :data:`SCALE_MODES`; else a one-line :class:`ConfigError`."""
    if scale not in SCALE_MODES:
        raise ConfigError(f"scale must be one of {', '.join(SCALE_MODES)}, got {scale!r}")
    return scale
