from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from wsss.config import build, dump_yaml, parse_override, to_dict
from wsss.errors import ConfigError


@dataclass
class Inner:
    lr: float = 0.1
    scales: tuple[float, ...] = (1.0, 0.5)
    mode: Literal["max", "mean"] = "mean"
    note: str | None = None


@dataclass
class Outer:
    epochs: int = 5
    flip: bool = True
    inner: Inner = field(default_factory=Inner)


def test_defaults_then_recipe_then_overrides(tmp_path: Path) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text("epochs: 7\ninner:\n  lr: 0.5\n  scales: [1.0, 2.0]\n")
    cfg = build(Outer, recipe, ["inner.lr=0.25", "flip=false", "inner.mode=max"])
    assert cfg.epochs == 7
    assert cfg.flip is False
    assert cfg.inner.lr == 0.25
    assert cfg.inner.scales == (1.0, 2.0)
    assert cfg.inner.mode == "max"
    assert cfg.inner.note is None


def test_int_is_accepted_for_float_but_not_the_reverse() -> None:
    assert build(Outer, None, ["inner.lr=1"]).inner.lr == 1.0
    assert isinstance(build(Outer, None, ["inner.lr=1"]).inner.lr, float)
    with pytest.raises(ConfigError, match="epochs: expected an integer"):
        build(Outer, None, ["epochs=2.5"])


def test_exponent_without_a_dot_is_a_float(tmp_path: Path) -> None:
    # YAML 1.1 (PyYAML) reads 8e-6 as the string '8e-6'; a float setting takes it as the number
    assert build(Outer, None, ["inner.lr=8e-6"]).inner.lr == 8e-6
    assert build(Outer, None, ["inner.scales=[1e0, 2E+1]"]).inner.scales == (1.0, 20.0)
    recipe = tmp_path / "r.yaml"
    recipe.write_text("inner:\n  lr: -3e-4\n")
    assert build(Outer, recipe).inner.lr == -3e-4
    with pytest.raises(ConfigError, match="expected a number, got '8e'"):
        build(Outer, None, ["inner.lr=8e"])
    with pytest.raises(ConfigError, match="expected an integer"):
        build(Outer, None, ["epochs=1e3"])


@pytest.mark.parametrize(
    "override, message",
    [
        ("inner.lrr=1", "unknown config key inner.lrr"),
        ("inner.mode=median", "not one of"),
        ("flip=yes please", "expected true or false"),
        ("nonsense", "must look like"),
        ("inner.scales=3", "expected a list"),
    ],
)
def test_bad_overrides_are_one_line_errors(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        build(Outer, None, [override])
    assert "\n" not in str(info.value)


def test_bad_recipe_file_names_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochs: [1,\n")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        build(Outer, bad)
    with pytest.raises(ConfigError, match="missing.yaml: recipe file not found"):
        build(Outer, tmp_path / "missing.yaml")
    typo = tmp_path / "typo.yaml"
    typo.write_text("epoch: 3\n")
    with pytest.raises(ConfigError, match=r"unknown config key epoch .*typo.yaml"):
        build(Outer, typo)


def test_round_trip_through_yaml(tmp_path: Path) -> None:
    cfg = build(Outer, None, ["inner.scales=[0.5, 1.5]", "inner.note=hello"])
    path = tmp_path / "dump.yaml"
    path.write_text(dump_yaml(cfg))
    assert build(Outer, path) == cfg
    assert to_dict(cfg)["inner"]["scales"] == [0.5, 1.5]


def test_parse_override_nests_and_parses_yaml() -> None:
    assert parse_override("a.b.c=[1, 2]") == {"a": {"b": {"c": [1, 2]}}}
    assert parse_override("x=0.1") == {"x": 0.1}
    assert parse_override("x=") == {"x": ""}
