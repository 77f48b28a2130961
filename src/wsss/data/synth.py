"""The generated benchmark: a small PASCAL-VOC-shaped dataset built to show what WSSS methods fix.

``wsss synth ROOT`` writes images, class and instance masks, VOC XML boxes, split lists, an
out-of-distribution (OoD) image set and diagnostic maps. Every image reproduces, by
construction, the failure modes the five papers attack:

1. **Discriminative part vs body** (CAM, AdvCAM, RIB). Each object has a small *part*
   (``part_fraction`` of its area) painted with a pattern unique to its class: a saturated
   colour and one of five textures (stripes, dots, checker, rings, zigzag) at a class-specific
   angle. The rest of the object, the *body*, is only weakly informative: its colour and
   texture come from a *body group* shared by ``classes_per_body_group`` classes, shifted by a
   small class-specific hue bias (``body_evidence``), and its outline comes from the class's
   shape family only part of the time (``shape_evidence``). A classifier can therefore rely on
   the part alone, and a CAM peaks there.
2. **Context co-occurrence** (W-OoD). The first ``context_classes`` classes own a background
   context texture ("boat" -> "water", "train" -> "rail", ...) that appears in
   ``context_rate`` of the images holding the class and in ``context_false_rate`` of the others.
   Context pixels are background (label 0). The OoD set (``ROOT/ood``) shows these contexts
   and ordinary clutter with no object at all.
3. **Objects are not boxes** (BANA, BBAM). Shapes are ellipses, blobs, stars, crescents,
   irregular polygons and peanuts, rotated and stretched; several objects and classes per
   image occlude each other (masks are the visible pixels), over textured backgrounds with
   class-neutral clutter, pixel noise and JPEG compression.

Layout written under ``ROOT`` (VOC conventions, see ``docs/design.md``)::

    JPEGImages/<id>.jpg               RGB image
    SegmentationClass/<id>.png        palette PNG, 0 = background, 1..K classes (no 255 band)
    SegmentationObject/<id>.png       palette PNG, instance 1..N in XML order, 0 = background
    Annotations/<id>.xml              VOC XML, tight 1-based inclusive box of visible pixels
    SynthParts/<id>.png               class id on the visible part pixels, 0 elsewhere
    SynthContext/<id>.png             owning class id on visible context pixels, 0 elsewhere
    ImageSets/Segmentation/{train,val,trainval}.txt
    classes.txt                       background first
    ood/JPEGImages/<id>.jpg, ood/SynthContext/<id>.png, ood/ood.txt (paths relative to ood/)
    synth_images.jsonl                one JSON record per image (classes, contexts, objects)
    synth.json                        config, version, class descriptions, statistics; last

Determinism: image ``i`` (0-based) of split ``s`` draws everything from one generator seeded
with ``SeedSequence([seed, SPLIT_CODES[s], i])``; class definitions depend on the config but
not on the seed. The same config gives byte-identical files, so an interrupted run, re-run
with the same arguments, fills in only the missing files and ends with the same dataset.
"""

from __future__ import annotations

import colorsys
import dataclasses
import functools
import json
import logging
import math
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from tqdm import tqdm

from wsss import io as wio
from wsss.errors import ConfigError, DataError

log = logging.getLogger(__name__)

SYNTH_VERSION = 1
"""Bumped whenever the same config would draw different pixels."""

CLASS_NAMES: tuple[str, ...] = (
    "boat", "train", "bird", "cow", "cat", "dog", "horse", "sheep",
    "plane", "bottle", "chair", "plant", "person", "bus", "car", "bicycle",
    "sofa", "table", "monitor", "motorbike", "kite", "lamp", "cup", "fish",
)  # fmt: skip
"""Pool of class names; a config with ``classes=K`` uses the first K."""

CONTEXT_NAMES: tuple[str, ...] = ("water", "rail", "sky", "grass")
"""Context textures; context ``i`` belongs to class ``i + 1`` (boat/water, train/rail, ...)."""

SHAPE_FAMILIES: tuple[str, ...] = ("ellipse", "blob", "star", "crescent", "polygon", "peanut")
PART_PATTERNS: tuple[str, ...] = ("stripes", "dots", "checker", "rings", "zigzag")
BODY_TEXTURES: tuple[str, ...] = ("mottled", "grain", "patchy", "smooth")
CLUTTER_SHAPES: tuple[str, ...] = ("ellipse", "polygon", "rectangle", "stick")

SPLIT_CODES = {"train": 0, "val": 1, "ood": 2}
"""Second entry of each image's ``SeedSequence``."""

BACKGROUND_NAME = "background"
MANIFEST_NAME = "synth.json"
PARTIAL_NAME = "synth.partial.json"
RECORDS_NAME = "synth_images.jsonl"

# Body group hues keep clear of the context hues (water/sky ~0.55-0.6, grass ~0.3) so that a
# body never looks like a context; after this list runs out, hues are spaced evenly.
_BODY_GROUP_HUES = (0.05, 0.78, 0.14, 0.90, 0.68, 0.20, 0.97, 0.72)
# Hue shift (fraction of the colour wheel) between the two extreme classes of a body group at
# body_evidence = 1 is twice this.
_BODY_HUE_SPREAD = 0.15


@dataclass
class SynthConfig:
    """Every knob of the generated benchmark.

    The defaults make a set that the whole pipeline handles on 2 CPU cores in minutes. The
    part/body/context knobs are first guesses meant to be calibrated against real CAMs: the
    target is a CAM that peaks on the part, a best background threshold around 0.15-0.25 and
    foreground precision above recall, as on PASCAL VOC.
    """

    seed: int = 0
    """Root of every random draw (a non-negative integer)."""
    train: int = 1000
    """Number of training images."""
    val: int = 300
    """Number of validation images."""
    ood: int = 300
    """Number of OoD images (contexts and clutter, no object) for W-OoD."""
    size: int = 128
    """Image side in pixels (images are square)."""
    size_range: tuple[int, int] | None = None
    """Inclusive range of the image side in pixels, drawn per image (images stay square); None:
    every image is ``size`` wide. Lengths given as fractions of ``size`` (objects, parts, clutter,
    pattern periods) are then fractions of each image's own side, and ``size`` is used nowhere.
    PASCAL VOC's geometry: ``(320, 500)`` with ``object_size`` ``(0.3, 0.6)`` gives objects of
    ~100-300 px (VOC's images are 500 px on the long side, most of them not square)."""
    classes: int = 8
    """Number of foreground classes K (2..len(CLASS_NAMES)); names are CLASS_NAMES[:K]."""

    objects_per_image: tuple[float, ...] = (0.45, 0.35, 0.20)
    """Probabilities of drawing 1, 2, 3, ... objects (normalised; more entries allow more)."""
    new_class_prob: float = 0.55
    """Probability that each object after the first is of a class not yet in the image."""
    object_size: tuple[float, float] = (0.45, 0.8)
    """Range of an object's long axis as a fraction of ``size`` (58-102 px at 128 px; the mean
    visible object is ~2200 px, a disc of ~53 px, and its part ~330 px, ~20 px across)."""
    object_aspect: tuple[float, float] = (0.55, 1.0)
    """Range of short/long axis ratio of an object."""
    shape_evidence: float = 0.5
    """Probability that an object takes its class's shape family (else a uniform one)."""
    min_visible: float = 0.6
    """Least fraction of an object's area that stays visible (occlusion and frame); else redraw."""
    min_part_visible: float = 0.6
    """Least fraction of an object's part that stays visible; else redraw."""
    placement_attempts: int = 25
    """Draws tried for each object before it is dropped (the first object is never dropped)."""

    part_fraction: tuple[float, float] = (0.10, 0.18)
    """Range of the part's share of the object's area (drawn per object)."""
    part_position: tuple[float, float] = (0.5, 1.0)
    """Range of the part centre's place among the object's pixels, as quantiles of their
    normalised distance from the object's centre: (0.5, 1) the outer half (a "head" on the
    rim), (0, 0.5) the inner half, (0, 1) anywhere."""
    part_period: float = 0.04
    """Period of the part pattern as a fraction of ``size`` (5 px at 128 px; floor 3 px)."""
    body_evidence: float = 0.3
    """Class-specific hue bias of bodies, 0 (body names only the group) .. 1 (body names the
    class): classes of a group sit ``body_evidence * 0.15`` apart from the group hue at the
    extremes, against an instance hue jitter of ``body_jitter``."""
    classes_per_body_group: int = 4
    """Classes sharing one body appearance (colour family and texture); groups = ceil(K / this)."""
    body_saturation: tuple[float, float] = (0.35, 0.6)
    """Range of a body's colour saturation (backgrounds draw theirs in 0.05..0.3): the lower it
    reaches, the less a body stands out from the background as "some object"."""
    body_jitter: float = 0.035
    """Standard deviation of an instance's body hue around its class hue (colour-wheel units)."""

    context_classes: int = 2
    """Classes that own a context (at most K // 2 and len(CONTEXT_NAMES) are used)."""
    context_rate: float = 0.9
    """P(context drawn | its class is in the image)."""
    context_false_rate: float = 0.05
    """P(context drawn | its class is not in the image)."""
    ood_context_rate: float = 0.8
    """Fraction of OoD images showing a context (one, uniformly); the rest are plain scenes."""

    clutter_count: tuple[int, int] = (2, 6)
    """Inclusive range of the number of class-neutral clutter shapes per image."""
    clutter_size: tuple[float, float] = (0.06, 0.22)
    """Range of a clutter shape's long axis as a fraction of ``size``."""
    clutter_body_like: float = 0.1
    """Probability that a clutter shape wears a body group's appearance (a part-less decoy)."""
    noise_std: float = 4.0
    """Standard deviation of the Gaussian pixel noise (0..255 scale)."""
    jpeg_quality: tuple[int, int] = (80, 95)
    """Inclusive range of the JPEG quality, drawn per image."""

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first invalid field."""

        def bad(name: str, why: str) -> ConfigError:
            return ConfigError(f"synth config: {name} {why} (got {getattr(self, name)!r})")

        for name in ("seed", "train", "val", "ood"):
            if int(getattr(self, name)) < 0:
                raise bad(name, "must be >= 0")
        if self.train < 1:  # an empty train split trains nothing
            raise bad("train", "must be at least 1")
        if not 32 <= self.size <= 4096:
            raise bad("size", "must be in 32..4096")
        if self.size_range is not None and not 32 <= self.size_range[0] <= self.size_range[1] <= 4096:
            raise bad("size_range", "must be a range 32 <= low <= high <= 4096")
        if not 2 <= self.classes <= len(CLASS_NAMES):
            raise bad("classes", f"must be in 2..{len(CLASS_NAMES)}")
        probs = np.asarray(self.objects_per_image, dtype=float)
        if probs.ndim != 1 or not 1 <= probs.size <= 255 or (probs < 0).any() or probs.sum() <= 0:
            raise bad("objects_per_image", "must be non-negative probabilities of 1, 2, ... (<= 255) objects")
        for name in ("object_size", "object_aspect", "part_fraction", "clutter_size", "body_saturation"):
            low, high = getattr(self, name)
            if not 0 < low <= high <= 1:
                raise bad(name, "must be a range 0 < low <= high <= 1")
        low, high = self.part_position
        if not 0 <= low <= high <= 1:
            raise bad("part_position", "must be a range 0 <= low <= high <= 1")
        if self.part_fraction[1] > 0.5:
            raise bad("part_fraction", "must stay below half the object")
        for name in (
            "new_class_prob", "shape_evidence", "min_visible", "min_part_visible", "body_evidence",
            "context_rate", "context_false_rate", "ood_context_rate", "clutter_body_like",
        ):  # fmt: skip
            if not 0 <= float(getattr(self, name)) <= 1:
                raise bad(name, "must be in 0..1")
        if self.placement_attempts < 1:
            raise bad("placement_attempts", "must be >= 1")
        if not 0 < self.part_period <= 0.5:
            raise bad("part_period", "must be in (0, 0.5]")
        if self.classes_per_body_group < 1:
            raise bad("classes_per_body_group", "must be >= 1")
        if self.body_jitter < 0 or self.noise_std < 0:
            raise ConfigError("synth config: body_jitter and noise_std must be >= 0")
        if self.context_classes < 0:
            raise bad("context_classes", "must be >= 0")
        low, high = self.clutter_count
        if not 0 <= low <= high:
            raise bad("clutter_count", "must be a range 0 <= low <= high")
        low, high = self.jpeg_quality
        if not 1 <= low <= high <= 100:
            raise bad("jpeg_quality", "must be a range 1 <= low <= high <= 100")

    @property
    def active_context_classes(self) -> int:
        """How many classes own a context: ``context_classes`` capped at K // 2 and the pool."""
        return min(self.context_classes, self.classes // 2, len(CONTEXT_NAMES))

    def to_dict(self) -> dict[str, Any]:
        """The config as JSON values (tuples become lists), as stored in ``synth.json``.

        ``size_range`` is left out when None, so a set of square ``size`` images keeps the
        ``synth.json`` it had before the field existed (and a set written then still resumes).
        """
        values = json.loads(json.dumps(dataclasses.asdict(self)))
        if values["size_range"] is None:
            del values["size_range"]
        return values

    def image_side(self, split: str, index: int) -> int:
        """The side in pixels of image ``index`` (0-based) of ``split``: ``size``, or a draw from
        ``size_range`` by a generator of its own (the image's other draws are those of
        :func:`image_rng` whatever its side)."""
        if self.size_range is None:
            return self.size
        rng = np.random.default_rng(np.random.SeedSequence([int(self.seed), SPLIT_CODES[split], int(index), 1]))
        low, high = self.size_range
        return int(rng.integers(low, high + 1))

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "SynthConfig":
        """Build a config from a (partial) dict such as ``to_dict`` output or a recipe section.

        Raises:
            ConfigError: an unknown field or a value of the wrong type.
        """
        from wsss import config as wconfig

        return wconfig.from_dict(cls, values, where="synth")


# --------------------------------------------------------------------------------------------
# Class definitions (fixed by the config, independent of the seed)


@dataclass(frozen=True)
class ClassSpec:
    """How one class looks. ``id`` is in 1..K."""

    id: int
    name: str
    shape_family: str
    part_pattern: str
    part_colour: tuple[int, int, int]
    part_secondary: tuple[int, int, int]
    part_angle: float
    """Orientation of the part pattern in image space, degrees."""
    body_group: int
    body_hue: float
    """Mean body hue of the class (group hue plus its class bias), colour-wheel units."""
    body_texture: str
    context: str | None

    def describe(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    """One HSV colour (all in 0..1, hue wraps) as float32 RGB on the 0..255 scale."""
    return np.asarray(colorsys.hsv_to_rgb(h % 1.0, min(max(s, 0.0), 1.0), min(max(v, 0.0), 1.0)),
                      dtype=np.float32) * 255.0  # fmt: skip


def body_group_hues(groups: int) -> list[float]:
    """The base hue of each body group."""
    if groups <= len(_BODY_GROUP_HUES):
        return list(_BODY_GROUP_HUES[:groups])
    return [(0.05 + g / groups) % 1.0 for g in range(groups)]


def class_specs(config: SynthConfig) -> list[ClassSpec]:
    """The K class definitions: shape family, part pattern, body group and context.

    Classes are spread over the pools by index (class ``c`` takes body group ``(c-1) % G``,
    shape family ``(c-1) % 6``, pattern ``(c-1) % 5`` and a part hue ``(c-1) / K`` of the
    wheel), so neighbours differ in every attribute and nothing depends on K elsewhere.
    """
    k = config.classes
    groups = math.ceil(k / config.classes_per_body_group)
    hues = body_group_hues(groups)
    members: dict[int, list[int]] = {}
    for c in range(1, k + 1):
        members.setdefault((c - 1) % groups, []).append(c)
    specs = []
    for c in range(1, k + 1):
        group = (c - 1) % groups
        peers = members[group]
        rank = peers.index(c)
        # Classes of a group are spread evenly over [-1, 1] and shifted by body_evidence.
        offset = 0.0 if len(peers) == 1 else 2.0 * rank / (len(peers) - 1) - 1.0
        body_hue = (hues[group] + config.body_evidence * _BODY_HUE_SPREAD * offset) % 1.0
        part_hue = ((c - 1) / k + 0.02) % 1.0
        dark_secondary = ((c - 1) // len(PART_PATTERNS)) % 2 == 0
        secondary = _hsv(part_hue, 0.9, 0.18) if dark_secondary else _hsv(part_hue, 0.08, 0.98)
        specs.append(
            ClassSpec(
                id=c,
                name=CLASS_NAMES[c - 1],
                shape_family=SHAPE_FAMILIES[(c - 1) % len(SHAPE_FAMILIES)],
                part_pattern=PART_PATTERNS[(c - 1) % len(PART_PATTERNS)],
                part_colour=tuple(int(round(x)) for x in _hsv(part_hue, 0.9, 0.95)),
                part_secondary=tuple(int(round(x)) for x in secondary),
                part_angle=float((c - 1) * 47 % 180),
                body_group=group,
                body_hue=round(body_hue, 6),
                body_texture=BODY_TEXTURES[group % len(BODY_TEXTURES)],
                context=CONTEXT_NAMES[c - 1] if c <= config.active_context_classes else None,
            )
        )
    return specs


# --------------------------------------------------------------------------------------------
# Drawing helpers (all vectorised over pixels)


@functools.lru_cache(maxsize=64)
def _interp_weights(n: int, cells: int) -> np.ndarray:
    """(n, cells + 1) weights that smoothly interpolate a lattice of cells + 1 knots to n pixels."""
    t = (np.arange(n, dtype=np.float64) + 0.5) / n * cells
    i0 = np.minimum(t.astype(np.int64), cells - 1)
    f = t - i0
    f = f * f * (3.0 - 2.0 * f)  # smoothstep: no visible lattice creases
    weights = np.zeros((n, cells + 1), dtype=np.float32)
    weights[np.arange(n), i0] = 1.0 - f
    weights[np.arange(n), i0 + 1] = f
    weights.setflags(write=False)
    return weights


def smooth_noise(
    rng: np.random.Generator, height: int, width: int, cells: int | tuple[int, int], channels: int = 1
) -> np.ndarray:
    """Band-limited noise of unit-ish amplitude, (height, width, channels) float32.

    A ``cells``-cell lattice of normal values (``(cells_y, cells_x)`` for anisotropic noise)
    interpolated to the pixel grid: large cells give mottling, many cells give grain.
    """
    cy, cx = (cells, cells) if isinstance(cells, int) else cells
    lattice = rng.standard_normal((channels, cy + 1, cx + 1), dtype=np.float32)
    wy, wx = _interp_weights(height, cy), _interp_weights(width, cx)
    return np.ascontiguousarray((wy @ lattice @ wx.T).transpose(1, 2, 0))


def local_frame(
    cx: float, cy: float, radius: float, angle: float, aspect: float
) -> tuple[tuple[int, int], np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Coordinates over the square patch that holds a shape of the given pose.

    Returns the patch's top-left pixel ``(y0, x0)``, the pixel offsets ``dx, dy`` from the
    centre and the shape coordinates ``u`` (along the long axis, in units of ``radius``) and
    ``v`` (across it, in units of ``radius * aspect``). A shape is drawn where ``f(u, v)`` holds
    and lies inside the unit disc in (u, v).
    """
    x0, y0 = int(math.floor(cx - radius)), int(math.floor(cy - radius))
    x1, y1 = int(math.ceil(cx + radius)) + 1, int(math.ceil(cy + radius)) + 1
    dx = (np.arange(x0, x1, dtype=np.float32) + 0.5 - cx)[None, :]
    dy = (np.arange(y0, y1, dtype=np.float32) + 0.5 - cy)[:, None]
    cos, sin = math.cos(angle), math.sin(angle)
    u = (dx * cos + dy * sin) / radius
    v = (-dx * sin + dy * cos) / (radius * aspect)
    return (y0, x0), dx + 0 * dy, dy + 0 * dx, u, v


def sample_shape_params(rng: np.random.Generator, family: str) -> dict[str, Any]:
    """The random parameters of one shape of ``family`` (see :func:`shape_mask`)."""
    if family in ("ellipse", "rectangle", "stick"):
        return {}
    if family == "blob":
        return {
            "base": float(rng.uniform(0.70, 0.76)),
            "amplitudes": rng.uniform(0.0, 0.08, size=3).tolist(),
            "phases": rng.uniform(0.0, 2 * math.pi, size=3).tolist(),
        }
    if family == "star":
        return {
            "points": int(rng.integers(4, 7)),
            "inner": float(rng.uniform(0.45, 0.6)),
            "sharpness": float(rng.uniform(1.0, 2.5)),
            "phase": float(rng.uniform(0.0, 2 * math.pi)),
        }
    if family == "crescent":
        return {"offset": float(rng.uniform(0.40, 0.55)), "bite": float(rng.uniform(0.60, 0.72))}
    if family == "polygon":
        n = int(rng.integers(5, 9))
        # Jittered even angles keep every gap below pi, so the polygon is star-shaped about 0.
        angles = (2 * math.pi * (np.arange(n) + rng.uniform(-0.3, 0.3, size=n)) / n) % (2 * math.pi)
        order = np.argsort(angles)
        return {"angles": angles[order].tolist(), "radii": rng.uniform(0.55, 1.0, size=n)[order].tolist()}
    if family == "peanut":
        return {"separation": float(rng.uniform(0.30, 0.42))}
    raise ValueError(f"unknown shape family {family!r}")


def shape_mask(family: str, u: np.ndarray, v: np.ndarray, params: dict[str, Any]) -> np.ndarray:
    """Boolean mask of a shape in normalised coordinates (inside the unit disc)."""
    rho2 = u * u + v * v
    if family == "ellipse":
        return rho2 <= 1.0
    if family == "rectangle":
        return (np.abs(u) <= 0.72) & (np.abs(v) <= 0.72)
    if family == "stick":
        return (np.abs(u) <= 0.95) & (np.abs(v) <= 0.3)
    if family == "crescent":
        return (rho2 <= 1.0) & ((u - params["offset"]) ** 2 + v * v > params["bite"] ** 2)
    if family == "peanut":
        c = params["separation"]
        r2 = (1.0 - c) ** 2
        return ((u - c) ** 2 + v * v <= r2) | ((u + c) ** 2 + v * v <= r2)
    rho = np.sqrt(rho2)
    theta = np.arctan2(v, u)
    if family == "blob":
        edge = np.full_like(rho, params["base"])
        for k, (a, p) in enumerate(zip(params["amplitudes"], params["phases"]), start=2):
            edge += a * np.cos(k * theta + p)
        return rho <= edge
    if family == "star":
        lobes = ((1.0 + np.cos(params["points"] * theta + params["phase"])) / 2.0) ** params["sharpness"]
        return rho <= params["inner"] + (1.0 - params["inner"]) * lobes
    if family == "polygon":
        angles = np.asarray(params["angles"])
        radii = np.asarray(params["radii"])
        px, py = radii * np.cos(angles), radii * np.sin(angles)
        t = theta % (2 * math.pi)
        j = (np.searchsorted(angles, t, side="right") - 1) % len(angles)
        k = (j + 1) % len(angles)
        # Distance along the ray at angle t to the edge P_j P_k: cross(P_j, P_k) / cross(d, P_k - P_j).
        ex, ey = px[k] - px[j], py[k] - py[j]
        numerator = px[j] * py[k] - py[j] * px[k]
        denominator = np.cos(t) * ey - np.sin(t) * ex
        return rho * denominator <= numerator
    raise ValueError(f"unknown shape family {family!r}")


def part_pattern(kind: str, dx: np.ndarray, dy: np.ndarray, period: float, angle_deg: float) -> np.ndarray:
    """Boolean two-tone pattern at pixel offsets ``dx, dy`` (True = primary colour)."""
    a = math.radians(angle_deg)
    s = dx * math.cos(a) + dy * math.sin(a)
    t = -dx * math.sin(a) + dy * math.cos(a)
    if kind == "stripes":
        return (s / period) % 1.0 < 0.5
    if kind == "dots":
        cell = period * 1.5
        return ((s % cell) - cell / 2) ** 2 + ((t % cell) - cell / 2) ** 2 > (0.3 * cell) ** 2
    if kind == "checker":
        return (np.floor(s / period) + np.floor(t / period)) % 2 == 0
    if kind == "rings":
        return (np.sqrt(dx * dx + dy * dy) / period) % 1.0 < 0.5
    if kind == "zigzag":
        tooth = np.abs((t / (2 * period)) % 1.0 - 0.5) * 2 * period
        return ((s + tooth) / period) % 1.0 < 0.5
    raise ValueError(f"unknown part pattern {kind!r}")


def body_texture(rng: np.random.Generator, kind: str, height: int, width: int) -> np.ndarray:
    """Multiplicative brightness texture of a body (values near 1), (height, width) float32."""
    if kind == "mottled":
        return 1.0 + 0.12 * smooth_noise(rng, height, width, 3)[..., 0]
    if kind == "grain":
        return 1.0 + 0.07 * rng.standard_normal((height, width), dtype=np.float32)
    if kind == "patchy":
        return np.where(smooth_noise(rng, height, width, 4)[..., 0] > 0, 1.07, 0.93).astype(np.float32)
    if kind == "smooth":
        return np.ones((height, width), dtype=np.float32)
    raise ValueError(f"unknown body texture {kind!r}")


def nearest_pixels(mask: np.ndarray, centre: tuple[float, float], count: int) -> np.ndarray:
    """The ``count`` pixels of ``mask`` nearest to ``centre = (y, x)`` (a disc clipped to the mask)."""
    ys, xs = np.nonzero(mask)
    if count >= ys.size:
        return mask.copy()
    d2 = (ys - centre[0]) ** 2 + (xs - centre[1]) ** 2
    keep = np.argpartition(d2, count - 1)[:count]
    out = np.zeros_like(mask)
    out[ys[keep], xs[keep]] = True
    return out


def tight_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """0-based inclusive ``(x_min, y_min, x_max, y_max)`` of a non-empty mask."""
    rows, cols = np.any(mask, axis=1), np.any(mask, axis=0)
    y_min, y_max = np.flatnonzero(rows)[[0, -1]]
    x_min, x_max = np.flatnonzero(cols)[[0, -1]]
    return int(x_min), int(y_min), int(x_max), int(y_max)


# --------------------------------------------------------------------------------------------
# Scenes


@dataclass
class SynthObject:
    """One placed object. Frame-sized masks; ``visible`` shrinks as later objects cover it."""

    class_id: int
    family: str
    mask: np.ndarray
    part: np.ndarray
    full_area: int
    full_part_area: int
    truncated: bool
    window: tuple[slice, slice]
    """The in-frame part of the object's square patch, as frame slices."""
    geometry: dict[str, Any] = field(repr=False)
    """Patch-level arrays and pose that :meth:`SceneDrawer.paint_object` needs."""
    colour: np.ndarray | None = field(default=None, repr=False)
    """(h, w, 3) float32 paint over ``window``, set once the object is placed."""
    visible: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.visible = self.mask.copy()


@dataclass
class Scene:
    """One drawn image with its ground truth and metadata record."""

    image: np.ndarray
    labels: np.ndarray | None
    instances: np.ndarray | None
    parts: np.ndarray | None
    context: np.ndarray
    quality: int
    record: dict[str, Any]
    """What ``synth_images.jsonl`` stores: classes, contexts (owner ids), objects with boxes."""
    drawn: list[SynthObject] = field(default_factory=list)
    """The objects in drawing order (instance ``i + 1`` is ``drawn[i]``)."""


def image_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The generator of image ``index`` (0-based) of ``split``: independent of every other image."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), SPLIT_CODES[split], int(index)]))


def image_id(split: str, index: int) -> str:
    """``train_00001`` for index 0 of train."""
    return f"{split}_{index + 1:05d}"


class SceneDrawer:
    """Draws scenes for one config. Stateless between images: all randomness comes from ``rng``."""

    def __init__(self, config: SynthConfig) -> None:
        self.config = config
        self.specs = class_specs(config)
        self.size = config.size
        self.groups = math.ceil(config.classes / config.classes_per_body_group)
        self.group_hues = body_group_hues(self.groups)
        self.context_owners = [s.id for s in self.specs if s.context is not None]
        self.period = max(3.0, config.part_period * config.size)
        self.px = config.size / 128.0  # texture lengths below are written for 128-px images
        grid = np.arange(self.size, dtype=np.float32) + 0.5
        self.xx = np.broadcast_to(grid[None, :], (self.size, self.size))
        self.yy = np.broadcast_to(grid[:, None], (self.size, self.size))
        probs = np.asarray(config.objects_per_image, dtype=float)
        self.object_count_probs = probs / probs.sum()

    # -- background --------------------------------------------------------------------------

    def background(self, rng: np.random.Generator) -> np.ndarray:
        """Muted base colour, a gentle gradient, colour mottling and grain."""
        n = self.size
        base = _hsv(rng.uniform(), rng.uniform(0.05, 0.3), rng.uniform(0.35, 0.8))
        canvas = np.broadcast_to(base, (n, n, 3)).astype(np.float32)
        direction = rng.uniform(0, 2 * math.pi)
        ramp = (self.xx * math.cos(direction) + self.yy * math.sin(direction)) / n - 0.5
        canvas = canvas * (1.0 + rng.uniform(0.0, 0.3) * ramp)[..., None]
        canvas += rng.uniform(6, 20) * smooth_noise(rng, n, n, int(rng.integers(2, 6)), 3)
        canvas += rng.uniform(2, 7) * smooth_noise(rng, n, n, int(rng.integers(12, 24)), 1)
        return canvas

    def draw_context(self, rng: np.random.Generator, name: str, canvas: np.ndarray) -> np.ndarray:
        """Paint context ``name`` onto ``canvas`` in place; return its pixel mask."""
        n, px = self.size, self.px
        xx, yy = self.xx, self.yy
        if name in ("water", "grass"):
            top = n * (1.0 - rng.uniform(0.3, 0.5))
            wavelength = px * rng.uniform(25, 60)
            wave = px * rng.uniform(1.0, 4.0) * np.sin(2 * math.pi * xx / wavelength + rng.uniform(0, 6.3))
            if name == "grass":
                wave = wave + px * rng.uniform(-2.5, 2.5, size=(1, n)).astype(np.float32)
            mask = yy >= top + wave
            if name == "water":
                colour = _hsv(rng.normal(0.57, 0.015), rng.uniform(0.45, 0.7), rng.uniform(0.5, 0.7))
                wobble = 2.0 * px * np.sin(2 * math.pi * xx / (px * rng.uniform(15, 30)))
                ripples = np.sin(2 * math.pi * (yy + wobble) / (px * rng.uniform(5, 8)))
                shade = 1.0 + 0.07 * ripples + 0.08 * smooth_noise(rng, n, n, 5)[..., 0]
                # Sparse glints: broken highlights on the ripple crests.
                shade = shade + 0.15 * ((ripples > 0.85) & (smooth_noise(rng, n, n, 8)[..., 0] > 0.5))
            else:
                colour = _hsv(rng.normal(0.29, 0.02), rng.uniform(0.5, 0.75), rng.uniform(0.45, 0.65))
                blades = smooth_noise(rng, n, n, (3, max(8, n // 3)))[..., 0]
                shade = 1.0 + 0.18 * blades + 0.06 * rng.standard_normal((n, n), dtype=np.float32)
            paint = colour * shade[..., None]
        elif name == "sky":
            bottom = n * rng.uniform(0.3, 0.5) + rng.uniform(-0.1, 0.1) * (xx - n / 2)
            mask = yy <= bottom
            colour = _hsv(rng.normal(0.56, 0.015), rng.uniform(0.3, 0.5), rng.uniform(0.8, 0.95))
            gradient = 1.0 - 0.2 * (1.0 - yy / max(1.0, float(bottom.max())))
            paint = colour * gradient[..., None]
            clouds = smooth_noise(rng, n, n, 4)[..., 0] > rng.uniform(0.3, 0.8)
            paint = np.where(clouds[..., None], np.float32(240.0), paint)
        elif name == "rail":
            angle = math.radians(rng.uniform(-12, 12))
            centre = rng.uniform(0.3, 0.75) * n
            half = rng.uniform(0.09, 0.13) * n
            s = (xx - n / 2) * math.cos(angle) + (yy - centre) * math.sin(angle)
            d = -(xx - n / 2) * math.sin(angle) + (yy - centre) * math.cos(angle)
            mask = np.abs(d) <= half
            ballast = _hsv(rng.uniform(0.05, 0.1), rng.uniform(0.1, 0.25), rng.uniform(0.4, 0.55))
            paint = ballast * (1.0 + 0.15 * rng.standard_normal((n, n), dtype=np.float32))[..., None]
            sleepers = ((s / (px * rng.uniform(7, 10))) % 1.0 < 0.4) & (np.abs(d) <= 0.85 * half)
            paint = np.where(sleepers[..., None], _hsv(0.07, 0.6, 0.3), paint)
            rails = np.abs(np.abs(d) - 0.5 * half) <= max(1.0, 0.012 * n)
            paint = np.where(rails[..., None], _hsv(0.6, 0.05, 0.85), paint)
        else:
            raise ValueError(f"unknown context {name!r}")
        canvas[mask] = paint[mask]
        return mask

    def draw_clutter(self, rng: np.random.Generator, canvas: np.ndarray) -> np.ndarray:
        """Class-neutral shapes (never a part pattern); return their union mask."""
        cfg, n = self.config, self.size
        union = np.zeros((n, n), dtype=bool)
        for _ in range(int(rng.integers(cfg.clutter_count[0], cfg.clutter_count[1] + 1))):
            body_like = rng.uniform() < cfg.clutter_body_like
            if body_like:
                family = SHAPE_FAMILIES[int(rng.integers(len(SHAPE_FAMILIES)))]
                group = int(rng.integers(self.groups))
                colour = _hsv(rng.normal(self.group_hues[group], cfg.body_jitter),
                              rng.uniform(*cfg.body_saturation), rng.uniform(0.45, 0.8))  # fmt: skip
                texture = BODY_TEXTURES[group % len(BODY_TEXTURES)]
            else:
                family = CLUTTER_SHAPES[int(rng.integers(len(CLUTTER_SHAPES)))]
                colour = _hsv(rng.uniform(), rng.uniform(0.0, 0.3), rng.uniform(0.2, 0.85))
                texture = "mottled"
            radius = 0.5 * n * rng.uniform(*cfg.clutter_size)
            aspect = rng.uniform(0.4, 1.0)
            cx, cy = rng.uniform(0, n, size=2)
            params = sample_shape_params(rng, family)
            (y0, x0), _, _, u, v = local_frame(cx, cy, radius, rng.uniform(0, math.pi), aspect)
            local = shape_mask(family, u, v, params)
            paint = colour * body_texture(rng, texture, *local.shape)[..., None]
            frame, patch = _clip(y0, x0, local.shape, n)
            sel = local[patch]
            canvas[frame][sel] = paint[patch][sel]
            union[frame] |= sel
        return union

    # -- objects -----------------------------------------------------------------------------

    def sample_object(
        self,
        rng: np.random.Generator,
        class_id: int,
        centre_pool: np.ndarray | None,
        force_centre: bool = False,
    ) -> SynthObject:
        """Draw one object of ``class_id``: pose, shape and part (painted once placed)."""
        cfg, n = self.config, self.size
        spec = self.specs[class_id - 1]
        if rng.uniform() < cfg.shape_evidence:
            family = spec.shape_family
        else:
            family = SHAPE_FAMILIES[int(rng.integers(len(SHAPE_FAMILIES)))]
        radius = 0.5 * n * rng.uniform(*cfg.object_size)
        aspect = rng.uniform(*cfg.object_aspect)
        angle = rng.uniform(0, 2 * math.pi)
        if force_centre:
            cx = cy = n / 2.0
        elif centre_pool is not None and centre_pool.size:
            # Context-owning class on its context: centre on a context pixel (boat on water).
            pick = int(rng.integers(centre_pool.shape[0]))
            cy, cx = centre_pool[pick] + 0.5
        else:
            cx, cy = rng.uniform(0.5 * radius, n - 0.5 * radius, size=2)
        params = sample_shape_params(rng, family)
        (y0, x0), dx, dy, u, v = local_frame(cx, cy, radius, angle, aspect)
        local = shape_mask(family, u, v, params)
        if not local.any():  # degenerate draw: fall back to an ellipse of the same pose
            family, local = "ellipse", u * u + v * v <= 1.0
        full_area = int(local.sum())

        # The part: the pixels nearest a point drawn in a band of distances from the centre
        # (by default the outer half of the shape: a "head").
        rho = np.hypot(u, v)[local]
        ys, xs = np.nonzero(local)
        low, high = np.quantile(rho, cfg.part_position)
        band = np.flatnonzero((rho >= low) & (rho <= high))
        pick = band[int(rng.integers(band.size))]
        part_area = max(1, int(round(rng.uniform(*cfg.part_fraction) * full_area)))
        part_local = nearest_pixels(local, (ys[pick], xs[pick]), part_area)

        frame, patch = _clip(y0, x0, local.shape, n)
        mask = np.zeros((n, n), dtype=bool)
        part = np.zeros((n, n), dtype=bool)
        mask[frame] = local[patch]
        part[frame] = part_local[patch]
        geometry = {"patch": patch, "dx": dx, "dy": dy, "radius": radius, "part_local": part_local,
                    "part_centre": (dx[ys[pick], xs[pick]], dy[ys[pick], xs[pick]])}  # fmt: skip
        return SynthObject(
            class_id=class_id, family=family, mask=mask, part=part, full_area=full_area,
            full_part_area=int(part_local.sum()), truncated=bool(mask.sum() < full_area),
            window=frame, geometry=geometry,
        )  # fmt: skip

    def paint_object(self, rng: np.random.Generator, obj: SynthObject, light: float) -> None:
        """Set ``obj.colour``: body colour with class bias and instance jitter, group texture,
        side light, and the class's part pattern over the part."""
        cfg, spec, g = self.config, self.specs[obj.class_id - 1], obj.geometry
        dx, dy = g["dx"], g["dy"]
        hue = rng.normal(spec.body_hue, cfg.body_jitter)
        body = _hsv(hue, rng.uniform(*cfg.body_saturation), rng.uniform(0.45, 0.8))
        shade = body_texture(rng, spec.body_texture, *dx.shape)
        shade = shade * (1.0 + 0.15 * (dx * math.cos(light) + dy * math.sin(light)) / g["radius"])
        paint = body * shade[..., None]
        primary = np.asarray(spec.part_colour, np.float32) * rng.uniform(0.92, 1.05)
        secondary = np.asarray(spec.part_secondary, np.float32)
        px, py = g["part_centre"]
        angle = spec.part_angle + rng.uniform(-8, 8)
        tone = part_pattern(spec.part_pattern, dx - px, dy - py, self.period, angle)
        part_paint = np.where(tone[..., None], primary, secondary)
        paint = np.where(g["part_local"][..., None], part_paint, paint)
        obj.colour = paint[g["patch"]]

    def place_objects(
        self, rng: np.random.Generator, classes: Sequence[int], centre_pools: dict[int, np.ndarray]
    ) -> list[SynthObject]:
        """Place objects back to front, redrawing any that would hide too much of itself or others."""
        cfg = self.config
        light = rng.uniform(0, 2 * math.pi)
        placed: list[SynthObject] = []
        for class_id in classes:
            for attempt in range(cfg.placement_attempts):
                force = not placed and attempt == cfg.placement_attempts - 1
                obj = self.sample_object(rng, class_id, centre_pools.get(class_id), force)
                if not self._fits(obj, placed):
                    continue
                for other in placed:
                    other.visible &= ~obj.mask
                self.paint_object(rng, obj, light)
                placed.append(obj)
                break
        return placed

    def _fits(self, obj: SynthObject, placed: list[SynthObject]) -> bool:
        cfg = self.config
        if obj.mask.sum() < cfg.min_visible * obj.full_area:
            return False
        if obj.part.sum() < cfg.min_part_visible * obj.full_part_area:
            return False
        for other in placed:
            visible = other.visible & ~obj.mask
            if visible.sum() < cfg.min_visible * other.full_area:
                return False
            if (visible & other.part).sum() < cfg.min_part_visible * other.full_part_area:
                return False
        return True

    # -- whole images ------------------------------------------------------------------------

    def plan_classes(self, rng: np.random.Generator) -> list[int]:
        """Class of each object to draw, in drawing order."""
        k = self.config.classes
        count = 1 + int(rng.choice(len(self.object_count_probs), p=self.object_count_probs))
        pool = rng.permutation(np.arange(1, k + 1)).tolist()
        chosen = [pool.pop()]
        for _ in range(count - 1):
            if pool and rng.uniform() < self.config.new_class_prob:
                chosen.append(pool.pop())
            else:
                chosen.append(chosen[int(rng.integers(len(chosen)))])
        return [int(c) for c in rng.permutation(chosen)]

    def finish(self, rng: np.random.Generator, canvas: np.ndarray) -> tuple[np.ndarray, int]:
        """Add pixel noise and quantise; draw the JPEG quality."""
        if self.config.noise_std > 0:
            noise = rng.standard_normal(canvas.shape, dtype=np.float32)
            canvas = canvas + np.float32(self.config.noise_std) * noise
        image = np.clip(np.rint(canvas), 0, 255).astype(np.uint8)
        low, high = self.config.jpeg_quality
        return image, int(rng.integers(low, high + 1))

    def draw_contexts(
        self, rng: np.random.Generator, canvas: np.ndarray, owners: Sequence[int]
    ) -> tuple[np.ndarray, dict[int, np.ndarray]]:
        """Paint the contexts of ``owners`` in order; return the owner map and each mask."""
        context_map = np.zeros((self.size, self.size), dtype=np.uint8)
        masks = {}
        for owner in owners:
            mask = self.draw_context(rng, self.specs[owner - 1].context, canvas)
            context_map[mask] = owner
            masks[owner] = mask
        return context_map, masks

    def scene(self, rng: np.random.Generator, image_name: str) -> Scene:
        """A labelled image: background, contexts, clutter, then objects back to front."""
        cfg = self.config
        classes = self.plan_classes(rng)
        present = set(classes)
        owners = []
        for owner in self.context_owners:
            rate = cfg.context_rate if owner in present else cfg.context_false_rate
            if rng.uniform() < rate:
                owners.append(owner)
        canvas = self.background(rng)
        context_map, context_masks = self.draw_contexts(rng, canvas, owners)
        clutter = self.draw_clutter(rng, canvas)
        pools = {o: np.argwhere(m) for o, m in context_masks.items()}
        objects = self.place_objects(rng, classes, pools)

        n = self.size
        labels = np.zeros((n, n), dtype=np.uint8)
        instances = np.zeros((n, n), dtype=np.uint8)
        parts = np.zeros((n, n), dtype=np.uint8)
        for number, obj in enumerate(objects, start=1):
            inside = obj.mask[obj.window]
            canvas[obj.window][inside] = obj.colour[inside]
            labels[obj.visible] = obj.class_id
            instances[obj.visible] = number
            parts[obj.visible & obj.part] = obj.class_id
        context_map[clutter | (labels > 0)] = 0
        image, quality = self.finish(rng, canvas)

        object_records = []
        for obj in objects:
            x_min, y_min, x_max, y_max = tight_box(obj.visible)
            object_records.append({
                "class": obj.class_id,
                "family": obj.family,
                "box": [x_min + 1, y_min + 1, x_max + 1, y_max + 1],
                "area": int(obj.visible.sum()),
                "full_area": obj.full_area,
                "part_area": int((obj.visible & obj.part).sum()),
                "full_part_area": obj.full_part_area,
                "truncated": obj.truncated,
            })  # fmt: skip
        record = {
            "id": image_name,
            "classes": sorted({o.class_id for o in objects}),
            "contexts": owners,
            "context_pixels": {str(o): int((context_map == o).sum()) for o in owners},
            "objects": object_records,
        }
        return Scene(image, labels, instances, parts, context_map, quality, record, objects)

    def ood_scene(self, rng: np.random.Generator, image_name: str) -> Scene:
        """An OoD image: background, usually one context, clutter; no object of any class."""
        owners = []
        if self.context_owners and rng.uniform() < self.config.ood_context_rate:
            owners = [self.context_owners[int(rng.integers(len(self.context_owners)))]]
        canvas = self.background(rng)
        context_map, _ = self.draw_contexts(rng, canvas, owners)
        clutter = self.draw_clutter(rng, canvas)
        context_map[clutter] = 0
        image, quality = self.finish(rng, canvas)
        record = {
            "id": image_name,
            "classes": [],
            "contexts": owners,
            "context_pixels": {str(o): int((context_map == o).sum()) for o in owners},
            "objects": [],
        }
        return Scene(image, None, None, None, context_map, quality, record)


Window = tuple[slice, slice]


def _clip(y0: int, x0: int, shape: tuple[int, int], n: int) -> tuple[Window, Window]:
    """Matching slices of the frame and of a patch at (y0, x0), restricted to the frame."""
    h, w = shape
    fy0, fx0 = max(y0, 0), max(x0, 0)
    fy1, fx1 = min(y0 + h, n), min(x0 + w, n)
    fy1, fx1 = max(fy1, fy0), max(fx1, fx0)
    return (slice(fy0, fy1), slice(fx0, fx1)), (slice(fy0 - y0, fy1 - y0), slice(fx0 - x0, fx1 - x0))


# --------------------------------------------------------------------------------------------
# Files


def voc_xml(name: str, size: int, objects: Sequence[dict[str, Any]], class_names: Sequence[str]) -> str:
    """VOC annotation XML for one image (boxes 1-based inclusive, as in VOC)."""
    root = ET.Element("annotation")
    ET.SubElement(root, "folder").text = "synth"
    ET.SubElement(root, "filename").text = f"{name}.jpg"
    source = ET.SubElement(root, "source")
    ET.SubElement(source, "database").text = "wsss synth"
    size_el = ET.SubElement(root, "size")
    for tag, value in (("width", size), ("height", size), ("depth", 3)):
        ET.SubElement(size_el, tag).text = str(value)
    ET.SubElement(root, "segmented").text = "1"
    for obj in objects:
        el = ET.SubElement(root, "object")
        ET.SubElement(el, "name").text = class_names[obj["class"]]
        ET.SubElement(el, "pose").text = "Unspecified"
        ET.SubElement(el, "truncated").text = str(int(obj["truncated"]))
        ET.SubElement(el, "difficult").text = "0"
        box = ET.SubElement(el, "bndbox")
        for tag, value in zip(("xmin", "ymin", "xmax", "ymax"), obj["box"]):
            ET.SubElement(box, tag).text = str(value)
    ET.indent(root, space="  ")
    return ET.tostring(root, encoding="unicode") + "\n"


def _paths(root: Path, split: str, name: str) -> dict[str, Path]:
    if split == "ood":
        return {
            "image": root / "ood" / "JPEGImages" / f"{name}.jpg",
            "context": root / "ood" / "SynthContext" / f"{name}.png",
        }
    return {
        "image": root / "JPEGImages" / f"{name}.jpg",
        "labels": root / "SegmentationClass" / f"{name}.png",
        "instances": root / "SegmentationObject" / f"{name}.png",
        "xml": root / "Annotations" / f"{name}.xml",
        "parts": root / "SynthParts" / f"{name}.png",
        "context": root / "SynthContext" / f"{name}.png",
    }


@functools.lru_cache(maxsize=1)
def _palette() -> tuple[int, ...]:
    return tuple(wio.voc_palette())


def _write_missing(paths: dict[str, Path], scene: Scene, class_names: Sequence[str], size: int) -> int:
    """Write the files of ``scene`` that do not exist yet; return how many were written."""
    palette = _palette()  # computed once: building it per file was a third of the run time
    record = scene.record
    writers: dict[str, Callable[[Path], None]] = {
        "image": lambda p: wio.write_image(p, scene.image, quality=scene.quality),
        "labels": lambda p: wio.write_label_png(p, scene.labels, palette),
        "instances": lambda p: wio.write_label_png(p, scene.instances, palette),
        "xml": lambda p: wio.write_text(p, voc_xml(record["id"], size, record["objects"], class_names)),
        "parts": lambda p: wio.write_label_png(p, scene.parts, palette),
        "context": lambda p: wio.write_label_png(p, scene.context, palette),
    }
    written = 0
    for key, path in paths.items():
        if not path.exists():
            writers[key](path)
            written += 1
    return written


def _header(config: SynthConfig) -> dict[str, Any]:
    return {"generator": "wsss.data.synth", "version": SYNTH_VERSION, "config": config.to_dict()}


def existing_state(root: str | Path, config: SynthConfig) -> str:
    """``"complete"``, ``"partial"`` (resumable) or ``"new"`` for generating ``config`` at ``root``.

    Raises:
        DataError: ``root`` holds a synth set of another config or version, or holds other files.
    """
    root = Path(root)
    want = _header(config)
    for name, state in ((MANIFEST_NAME, "complete"), (PARTIAL_NAME, "partial")):
        path = root / name
        if not path.exists():
            continue
        have = wio.read_json(path)
        if not isinstance(have, dict) or have.get("generator") != want["generator"]:
            raise DataError("is not a wsss synth manifest", path)
        if have.get("version") != SYNTH_VERSION:
            raise DataError(
                f"was written by synth version {have.get('version')}, this is version {SYNTH_VERSION};"
                " generate into another folder",
                path,
            )
        old = have.get("config", {})
        differing = sorted(k for k in set(old) | set(want["config"]) if old.get(k) != want["config"].get(k))
        if differing:
            raise DataError(
                f"was generated with a different config (differs in: {', '.join(differing)});"
                " generate into another folder or delete this one",
                path,
            )
        return state
    if root.exists() and not root.is_dir():
        raise DataError("exists and is not a folder", root)
    if root.exists() and any(root.iterdir()):
        raise DataError("folder is not empty and holds no synth.json; generate into an empty folder", root)
    return "new"


def generate(root: str | Path, config: SynthConfig | None = None, progress: bool = True) -> Path:
    """Write the benchmark described by ``config`` to ``root``; return ``root``.

    Resumable: files already present are kept (they are identical to what would be written),
    and ``synth.json`` is written last. If ``root`` already holds a complete set of the same
    config nothing is done.

    Raises:
        ConfigError: the config is invalid.
        DataError: ``root`` holds a set of another config, or unrelated files.
    """
    config = config or SynthConfig()
    config.validate()
    root = Path(root)
    state = existing_state(root, config)
    if state == "complete":
        log.info("%s already holds this synth set (synth.json matches); nothing to do", root)
        return root
    if state == "new":
        wio.write_json(root / PARTIAL_NAME, _header(config))
    else:
        log.info("resuming the synth set in %s", root)

    drawer = SceneDrawer(config)
    drawers = {config.size: drawer}  # one per image side (size_range): the pixel grids are per side
    class_names = [BACKGROUND_NAME] + [s.name for s in drawer.specs]
    wio.write_text(root / "classes.txt", "\n".join(class_names) + "\n")

    jobs = [(split, i) for split in ("train", "val", "ood") for i in range(getattr(config, split))]
    records: dict[str, list[dict[str, Any]]] = {"train": [], "val": [], "ood": []}
    written = 0
    for split, index in tqdm(jobs, desc="synth", unit="img", disable=not progress):
        name = image_id(split, index)
        rng = image_rng(config.seed, split, index)
        side = config.image_side(split, index)
        if side not in drawers:
            drawers[side] = SceneDrawer(dataclasses.replace(config, size=side, size_range=None))
        here = drawers[side]
        scene = here.ood_scene(rng, name) if split == "ood" else here.scene(rng, name)
        if config.size_range is not None:  # records of square `size` images stay as they were
            scene.record["size"] = side
        written += _write_missing(_paths(root, split, name), scene, class_names, side)
        records[split].append(scene.record)

    lists = root / "ImageSets" / "Segmentation"
    for split in ("train", "val"):
        wio.write_text(lists / f"{split}.txt", "".join(r["id"] + "\n" for r in records[split]))
    trainval = records["train"] + records["val"]
    wio.write_text(lists / "trainval.txt", "".join(r["id"] + "\n" for r in trainval))
    wio.write_text(root / "ood" / "ood.txt", "".join(f"JPEGImages/{r['id']}.jpg\n" for r in records["ood"]))
    wio.write_text(
        root / RECORDS_NAME,
        "".join(
            json.dumps({"split": split, **r}, separators=(",", ":")) + "\n"
            for split, split_records in records.items()
            for r in split_records
        ),
    )
    manifest = {
        **_header(config),
        "classes": class_names,
        "class_descriptions": [s.describe() for s in drawer.specs],
        "context_classes": {s.name: s.context for s in drawer.specs if s.context},
        "splits": {s: len(records[s]) for s in records},
        "files": {
            "images": "JPEGImages/<id>.jpg",
            "class_masks": "SegmentationClass/<id>.png",
            "instance_masks": "SegmentationObject/<id>.png",
            "boxes": "Annotations/<id>.xml",
            "parts": "SynthParts/<id>.png",
            "context": "SynthContext/<id>.png",
            "splits": "ImageSets/Segmentation/{train,val,trainval}.txt",
            "ood_list": "ood/ood.txt",
            "records": RECORDS_NAME,
        },
        "statistics": measure(records, drawer.specs, config.size),
    }
    wio.write_json(root / MANIFEST_NAME, manifest)
    (root / PARTIAL_NAME).unlink(missing_ok=True)
    log.info("synth set written to %s (%d files written now)", root, written)
    return root


# --------------------------------------------------------------------------------------------
# Statistics


def _mean(values: Sequence[float]) -> float | None:
    return round(float(np.mean(values)), 4) if len(values) else None


def measure(
    records: dict[str, list[dict[str, Any]]], specs: Sequence[ClassSpec], size: int
) -> dict[str, Any]:
    """Dataset statistics from the per-image records (train and val pooled unless named); ``size``
    is the side of the images whose record names none."""
    labelled = records["train"] + records["val"]
    objects = [o for r in labelled for o in r["objects"]]
    part_fraction = [o["part_area"] / o["area"] for o in objects]
    fill = [
        o["area"] / ((o["box"][2] - o["box"][0] + 1) * (o["box"][3] - o["box"][1] + 1)) for o in objects
    ]
    context = {}
    for spec in specs:
        if spec.context is None:
            continue
        with_class = [spec.id in r["contexts"] for r in labelled if spec.id in r["classes"]]
        without = [spec.id in r["contexts"] for r in labelled if spec.id not in r["classes"]]
        context[spec.name] = {
            "context": spec.context,
            "images_with_class": len(with_class),
            "rate_with_class": _mean(with_class),
            "rate_without_class": _mean(without),
            "ood_rate": _mean([spec.id in r["contexts"] for r in records["ood"]]),
        }
    per_class = {}
    for spec in specs:
        mine = [o for o in objects if o["class"] == spec.id]
        per_class[spec.name] = {
            "images": {s: sum(spec.id in r["classes"] for r in records[s]) for s in ("train", "val")},
            "objects": len(mine),
            "part_fraction": _mean([o["part_area"] / o["area"] for o in mine]),
            "fill_ratio": _mean([f for f, o in zip(fill, objects) if o["class"] == spec.id]),
            "own_shape_family": _mean([o["family"] == spec.shape_family for o in mine]),
        }
    return {
        "images": {s: len(records[s]) for s in records},
        "objects_per_image": _mean([len(r["objects"]) for r in labelled]),
        "classes_per_image": _mean([len(r["classes"]) for r in labelled]),
        "part_fraction": _mean(part_fraction),
        "part_fraction_range": (
            [round(min(part_fraction), 4), round(max(part_fraction), 4)] if objects else None
        ),
        "fill_ratio": _mean(fill),
        "visible_fraction": _mean([o["area"] / o["full_area"] for o in objects]),
        "occluded_or_truncated": _mean([o["area"] < o["full_area"] for o in objects]),
        "foreground_fraction": _mean([sum(o["area"] for o in r["objects"]) / r.get("size", size) ** 2
                                      for r in labelled]),
        "object_area_px": _mean([o["area"] for o in objects]),
        "part_area_px": _mean([o["part_area"] for o in objects]),
        "context": context,
        "ood_with_context": _mean([bool(r["contexts"]) for r in records["ood"]]),
        "per_class": per_class,
    }


def read_records(root: str | Path) -> list[dict[str, Any]]:
    """The per-image records of a generated set (``synth_images.jsonl``), in split order."""
    path = Path(root) / RECORDS_NAME
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        raise DataError("file not found (is this a complete synth set?)", path) from None
    try:
        return [json.loads(line) for line in lines if line.strip()]
    except json.JSONDecodeError as exc:
        raise DataError(f"not valid JSON lines ({exc})", path) from None
