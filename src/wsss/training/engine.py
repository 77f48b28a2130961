"""The training engine: the one update loop, checkpoint and exact-resume code every trainer runs on.

The CAM classifier, W-OoD, IRN and DeepLab trainers each build a model, their data and an
optimizer, describe one update as ``step(batch) -> loss`` (or ``(loss, {term: value})``), and
hand both to :class:`TrainingEngine`. The engine owns:

* **The loop**: epochs of batches from a :class:`BatchSource`; per update, in this order:
  ``step``, ``zero_grad``, backward, optimizer step, scheduler step.
* **Optimizer**: :func:`poly_sgd`, SGD over parameter groups (learning-rate and weight-decay
  multipliers) with IRN's poly decay (:mod:`wsss.training.schedule`).
* **Mixed precision**: the step wraps its forward passes in :meth:`TrainingEngine.autocast`.
  With ``amp`` on CUDA that is float16 autocast and the engine scales the loss with a
  ``GradScaler``; with bfloat16 fast paths (:class:`wsss.runtime.FastPaths`, on any device) it
  is bfloat16 autocast, which needs no loss scaling (float32's exponent range).
* **History**: one record per update (``iteration``, ``loss``, ``lr`` used, the step's terms) and
  one per epoch (means, ``lr`` at its end, ``seconds``, and what ``on_epoch_end`` adds).
* **Divergence**: a NaN or infinite loss stops training with :class:`LossNotFinite`, naming the
  update; so do NaN or infinite weights after the last update.
* **Checkpoints**: every N updates and/or at epoch ends (:class:`CheckpointSpec`), written
  atomically, read with ``torch.load(weights_only=True)``; beside them ``history.json`` and
  ``training_curve.png``.
* **Exact resume**: model, optimizer, scheduler, scaler, the global RNG states of torch, NumPy
  and Python, the data position, the histories and any state a trainer registers
  (:meth:`TrainingEngine.track`).

**Why resuming is exact.** The engine draws no random numbers. Items that draw from the global
torch RNG (the classifier's and IRN's augmentation) come from a :class:`ShuffledLoader` or an
:class:`EndlessLoader`: a ``DataLoader`` shuffling with its own ``generator``, whose state is
recorded when each pass begins. A checkpoint stores that state and how many batches of the pass
were taken; a resumed run sets the generator back, takes those batches again (drawing from the
global RNG as they did) and only then restores the global RNG states, so every later draw is the
uninterrupted run's. Passes always run to their end, because ``RandomSampler`` draws once more
from the generator when a pass is exhausted. DeepLab's items are seeded by (seed, epoch, index)
instead (:class:`EpochLoaders`): a resumed run only skips the batches already trained.

With ``num_workers > 0`` a loader's items draw from its workers' generators, which a restarted
loader seeds afresh: such a run resumes with other augmentation draws (DeepLab's items excepted).
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Protocol, Sequence

import numpy as np
import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR
from torch.utils.data import DataLoader
from tqdm import tqdm

from wsss import io as wio
from wsss.errors import ConfigError, DataError, WsssError
from wsss.models.weights import load_torch_file
from wsss.runtime import FastPaths, mean_over_processes
from wsss.training.schedule import build_sgd, poly_lr_scheduler

log = logging.getLogger(__name__)

__all__ = [
    "CHECKPOINT_NAME",
    "CURVE_NAME",
    "HISTORY_NAME",
    "BatchSource",
    "CheckpointSpec",
    "EndlessLoader",
    "EpochLoaders",
    "LossNotFinite",
    "ShuffledLoader",
    "StepOutput",
    "TrainingEngine",
    "bias_groups",
    "numpy_mean",
    "poly_sgd",
    "read_checkpoint",
    "rng_state",
    "save_checkpoint",
    "sequential_mean",
    "set_rng_state",
    "warmup_multistep",
    "write_curve",
]

CHECKPOINT_NAME = "checkpoint.pt"
HISTORY_NAME = "history.json"
CURVE_NAME = "training_curve.png"
FORMAT_VERSION = 1
CURVE_INTERVAL_SECONDS = 60.0  # the curve is redrawn at checkpoints at most this often, and at the end

StepOutput = torch.Tensor | tuple[torch.Tensor, Mapping[str, float | None]]
"""What a step returns: the loss, or the loss and named scalar terms for the history."""


class LossNotFinite(WsssError, FloatingPointError):
    """The training loss became NaN or infinite: training stopped (lower the learning rate)."""


# --------------------------------------------------------------------------------- optimizer
def poly_sgd(
    groups: Sequence[tuple[Iterable[nn.Parameter], float] | Mapping[str, Any]],
    lr: float,
    *,
    total_steps: int,
    power: float = 0.9,
    weight_decay: float = 1e-4,
    momentum: float = 0.0,
    nesterov: bool = False,
    reference_momentum_quirk: bool = False,
) -> tuple[torch.optim.SGD, LambdaLR]:
    """SGD over parameter groups and its poly schedule over ``total_steps`` updates.

    Args:
        groups: ``(parameters, lr_multiplier)`` pairs, or dicts with ``params`` and optional
            ``lr_mult`` and ``weight_decay_mult`` (DeepLab's caffe convention: the group's decay
            is ``weight_decay * weight_decay_mult``). Groups without trainable parameters are
            dropped.
        lr: base learning rate.
        total_steps: updates the poly decay spans.
        power: poly power.
        weight_decay, momentum, nesterov, reference_momentum_quirk: see
            :func:`~wsss.training.schedule.build_sgd`.

    Returns:
        ``(optimizer, scheduler)``; call ``scheduler.step()`` after every ``optimizer.step()``.
    """
    pairs, decays = [], []
    for group in groups:
        if isinstance(group, Mapping):
            params, multiplier = group["params"], float(group.get("lr_mult", 1.0))
            decay: float | None = weight_decay * float(group.get("weight_decay_mult", 1.0))
        else:
            params, multiplier = group
            decay = None
        params = [p for p in params if p.requires_grad]
        if params:  # build_sgd drops empty groups; keep the decays aligned with the groups it keeps
            pairs.append((params, multiplier))
            decays.append(decay)
    optimizer = build_sgd(pairs, lr, weight_decay=weight_decay, momentum=momentum, nesterov=nesterov,
                          reference_momentum_quirk=reference_momentum_quirk)
    for param_group, decay in zip(optimizer.param_groups, decays):
        if decay is not None:
            param_group["weight_decay"] = decay
    return optimizer, poly_lr_scheduler(optimizer, total_steps, power)


def bias_groups(model: nn.Module, bias_lr_factor: float) -> list[dict[str, Any]]:
    """maskrcnn-benchmark's parameter groups for :func:`poly_sgd`: weights at the base rate and
    decay, biases at ``bias_lr_factor`` times the rate without decay (``BIAS_LR_FACTOR``,
    ``WEIGHT_DECAY_BIAS`` 0)."""
    named = list(model.named_parameters())
    weights = [p for name, p in named if not name.endswith("bias")]
    biases = [p for name, p in named if name.endswith("bias")]
    return [{"params": weights}, {"params": biases, "lr_mult": bias_lr_factor, "weight_decay_mult": 0.0}]


def warmup_multistep(optimizer: torch.optim.Optimizer, milestones: Sequence[int], warmup_steps: int,
                     warmup_factor: float, decay: Callable[[int], float] | None = None) -> LambdaLR:
    """maskrcnn-benchmark's ``WarmupMultiStepLR``: the rate rises linearly from
    ``warmup_factor`` to 1 over ``warmup_steps`` updates, then falls x0.1 at each milestone; or,
    with ``decay`` (e.g. a poly schedule's multiplier), the warm-up times ``decay(step)``."""
    milestones = tuple(int(m) for m in milestones)
    warmup, factor = int(warmup_steps), float(warmup_factor)

    def multiplier(step: int) -> float:
        warm = factor + (1.0 - factor) * step / warmup if step < warmup else 1.0
        return warm * (0.1 ** sum(step >= m for m in milestones) if decay is None else decay(step))

    return LambdaLR(optimizer, multiplier)


# --------------------------------------------------------------------------------- files
def save_checkpoint(path: str | Path, obj: Mapping[str, Any]) -> None:
    """``torch.save`` of ``obj`` to ``path``, atomically."""
    buffer = io.BytesIO()
    torch.save(dict(obj), buffer)
    wio.write_bytes(path, buffer.getvalue())


def read_checkpoint(path: str | Path, formats: Sequence[str], what: str, map_location: Any = "cpu",
                    version: int = FORMAT_VERSION) -> dict[str, Any]:
    """A dict saved by :func:`save_checkpoint`, read with ``torch.load(weights_only=True)``.

    Args:
        path: the file.
        formats: accepted values of its ``format`` key.
        what: what the file is, for messages ("segmentation training checkpoint").
        map_location: passed to ``torch.load``.
        version: the newest ``version`` this code understands.

    Raises:
        DataError: missing, unreadable (or carrying code), of another format or a newer version;
            the message names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{what} not found", path)
    obj = load_torch_file(path, f"wsss {what}", map_location)
    if not isinstance(obj, dict) or obj.get("format") not in formats:
        raise DataError(f"not a wsss {what}", path)
    if int(obj.get("version", 0)) > version:
        raise DataError(f"{what} version {obj.get('version')} is newer than this wsss understands", path)
    return obj


def rng_state() -> dict[str, Any]:
    """The global RNG states of torch (CPU and CUDA), NumPy and Python, as tensors and lists
    (what ``torch.load(weights_only=True)`` reads back)."""
    name, keys, position, has_gauss, cached = np.random.get_state()
    version, python_state, gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "position": int(position),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "python": [version, list(python_state), gauss],
    }


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what :func:`rng_state` returned (CUDA states only on as many devices)."""
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    numpy_state = state["numpy"]
    np.random.set_state((numpy_state["name"], numpy_state["keys"].numpy().astype(np.uint32),
                         numpy_state["position"], numpy_state["has_gauss"], numpy_state["cached"]))
    version, python_state, gauss = state["python"]
    random.setstate((version, tuple(python_state), gauss))


def write_curve(history: Sequence[Mapping[str, Any]], path: str | Path, title: str) -> None:
    """Loss against iteration (raw and a moving average), with the learning rate beneath; a PNG
    written atomically. Nothing is written for an empty history."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not history:
        return
    steps = np.array([h["iteration"] for h in history])
    losses = np.array([h["loss"] for h in history], dtype=np.float64)
    figure = Figure(figsize=(7, 4.5))
    FigureCanvasAgg(figure)  # Agg: no display needed
    axes, lr_axes = figure.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    window = max(1, len(losses) // 50)
    axes.plot(steps, losses, color="tab:blue", alpha=0.3 if window > 1 else 1.0, linewidth=0.8, label="loss")
    if window > 1:
        smooth = np.convolve(losses, np.ones(window) / window, mode="valid")
        axes.plot(steps[window - 1:], smooth, color="tab:blue", label=f"mean of {window}")
    axes.set_ylabel("training loss")
    axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend(loc="upper right")
    lr_axes.plot(steps, [h["lr"] for h in history], color="tab:orange")
    lr_axes.set_ylabel("lr")
    lr_axes.set_xlabel("iteration")
    lr_axes.grid(alpha=0.3)
    figure.subplots_adjust(left=0.11, right=0.97, top=0.93, bottom=0.1, hspace=0.08)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    wio.write_bytes(path, buffer.getvalue())


# --------------------------------------------------------------------------------- data
class BatchSource(Protocol):
    """Where the engine's batches come from, epoch by epoch, and how to resume mid-epoch."""

    def epoch(self, epoch: int, skip: int) -> Iterator[Any]:
        """The batches of ``epoch`` after the first ``skip`` (which a resumed run has trained on)."""

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint must hold to resume the data where it is."""

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Go back to a saved position (may draw from the global RNG; the engine restores it after)."""


class _Passes:
    """Passes over a ``DataLoader`` that shuffles with its own generator, resumable mid-pass.

    The state is the generator's state when the current pass began and the batches taken since;
    outside a pass (none begun, or the last one ran out) it is the generator's current state.
    """

    def __init__(self, loader: DataLoader) -> None:
        if loader.generator is None:
            raise ValueError("a resumable DataLoader needs its own generator (DataLoader(generator=...)): "
                             "without one its shuffling draws from the global RNG")
        self.loader = loader
        self._iterator: Iterator[Any] | None = None
        self._start: torch.Tensor | None = None
        self.taken = 0

    @property
    def in_pass(self) -> bool:
        return self._iterator is not None

    def begin(self) -> None:
        """Start a new pass, first running the current one out (its sampler's last draw)."""
        if self._iterator is not None:
            for _ in self._iterator:
                pass
        self._start = self.loader.generator.get_state()
        self._iterator = iter(self.loader)
        self.taken = 0

    def take(self) -> Any:
        """The next batch of the current pass; ``StopIteration`` ends the pass."""
        assert self._iterator is not None
        try:
            batch = next(self._iterator)
        except StopIteration:
            self._iterator = None
            raise
        self.taken += 1
        return batch

    def state_dict(self) -> dict[str, Any]:
        if self._iterator is None:
            return {"generator": self.loader.generator.get_state(), "taken": 0}
        assert self._start is not None
        return {"generator": self._start.clone(), "taken": self.taken}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._iterator = None
        if not state:
            return
        self.loader.generator.set_state(state["generator"])
        if self.loader.num_workers > 0:
            log.warning("resuming a DataLoader with workers: its items' random draws differ from an "
                        "uninterrupted run's (resume is exact with num_workers=0)")
        taken = int(state.get("taken", 0))
        if taken:
            self.begin()
            for _ in range(taken):  # the same items again: their draws are replaced by the saved RNG state
                self.take()


class ShuffledLoader:
    """Epochs of a ``DataLoader`` with its own shuffling ``generator`` (one pass per epoch).

    Args:
        loader: the loader; ``len(loader)`` must be the engine's ``steps_per_epoch``.
    """

    def __init__(self, loader: DataLoader) -> None:
        self._passes = _Passes(loader)

    def epoch(self, epoch: int, skip: int) -> Iterator[Any]:
        passes = self._passes
        if skip == 0:
            passes.begin()
        elif not passes.in_pass or passes.taken != skip:
            raise RuntimeError(f"cannot resume epoch {epoch + 1} after {skip} batches: the loader's saved "
                               f"position is {passes.taken} batches into {'a' if passes.in_pass else 'no'} pass")
        while True:
            try:
                yield passes.take()
            except StopIteration:
                return

    def state_dict(self) -> dict[str, Any]:
        return self._passes.state_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._passes.load_state_dict(state)


class EndlessLoader:
    """Batches of a ``DataLoader`` forever, reshuffled at every pass (W-OoD's OoD images)."""

    def __init__(self, loader: DataLoader) -> None:
        self._passes = _Passes(loader)

    def __iter__(self) -> "EndlessLoader":
        return self

    def __next__(self) -> Any:
        passes = self._passes
        if not passes.in_pass:
            passes.begin()
        try:
            return passes.take()
        except StopIteration:
            passes.begin()
            try:
                return passes.take()
            except StopIteration:
                raise RuntimeError("the loader yields no batch (fewer items than one batch?)") from None

    def state_dict(self) -> dict[str, Any]:
        return self._passes.state_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._passes.load_state_dict(state)


class EpochLoaders:
    """Batches from a loader built for each epoch, whose items do not draw from the global RNG.

    Args:
        make: ``make(epoch, skip)``: an iterable of the batches of ``epoch`` after the first
            ``skip`` (DeepLab: a ``DataLoader`` over ``_EpochBatches``).
    """

    def __init__(self, make: Callable[[int, int], Iterable[Any]]) -> None:
        self.make = make

    def epoch(self, epoch: int, skip: int) -> Iterator[Any]:
        return iter(self.make(epoch, skip))

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        pass


class _Stateful(Protocol):
    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: Mapping[str, Any]) -> None: ...


# --------------------------------------------------------------------------------- the engine
def numpy_mean(values: Sequence[float]) -> float:
    """``float(np.mean(values))``: how the classifier and W-OoD average their epoch's losses."""
    return float(np.mean(values))


def sequential_mean(values: Sequence[float]) -> float:
    """A running sum divided by the count: how IRN averages its epoch's loss terms."""
    total = 0.0
    for value in values:
        total += value
    return total / max(len(values), 1)


@dataclass
class CheckpointSpec:
    """Where and when the engine writes checkpoints, and what must match to resume one.

    Attributes:
        folder: holds ``checkpoint.pt``, ``history.json`` and ``training_curve.png``.
        format: the checkpoint's ``format`` key (one per trainer).
        what: what the file is, for messages.
        every: updates between checkpoints (``None``: only at epoch ends and at the end).
        at_epoch_end: also write one when an epoch's data runs out (and when training stops).
        metadata: saved beside the state (class names, the full config, ...).
        settings: flat result settings; resuming a checkpoint whose values differ is refused.
        check: ``check(checkpoint, path)`` raises if the checkpoint cannot be resumed (e.g. it
            is for another class count); runs before the settings are compared.
        curve_title: title of the training curve.
    """

    folder: Path
    format: str
    what: str = "training checkpoint"
    every: int | None = None
    at_epoch_end: bool = False
    metadata: dict[str, Any] = field(default_factory=dict)
    settings: dict[str, Any] | None = None
    check: Callable[[dict[str, Any], Path], None] | None = None
    curve_title: str = "training"

    @property
    def path(self) -> Path:
        return Path(self.folder) / CHECKPOINT_NAME


def _changed_settings(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    # A setting the checkpoint does not know (added to wsss since) counts as unchanged.
    return sorted(key for key in current if key in saved and saved[key] != current[key])


class TrainingEngine:
    """Runs a trainer's updates: the loop, AMP, history, checkpoints, exact resume.

    Typical use::

        optimizer, scheduler = poly_sgd(groups, lr, total_steps=total)
        engine = TrainingEngine(model, optimizer, scheduler, total_steps=total,
                                steps_per_epoch=len(loader), device=device, checkpoint=spec)
        engine.restore(resume=True)
        engine.fit(ShuffledLoader(loader), step)
        engine.epochs  # one record per epoch

    Args:
        model: the module whose state is checkpointed (the unwrapped one under DDP); put in train
            mode at every epoch start.
        optimizer, scheduler: stepped once per update.
        total_steps: updates in all (the schedule's length).
        steps_per_epoch: batches an epoch yields.
        device: where training runs (AMP only on CUDA).
        amp: float16 mixed precision (CUDA only; ignored elsewhere, and under bfloat16 fast paths).
        fast_paths: ``fast_paths.autocast == "bf16"``: :meth:`autocast` is bfloat16 autocast on
            ``device`` (the trainer applies the memory format to its model and inputs itself).
        world_size: processes training together; the logged loss is their mean.
        is_main: this process writes the checkpoints and shows the bar.
        epoch_keys: per-update values averaged into each epoch record, in this order.
        epoch_mean: how they are averaged (:func:`numpy_mean` or :func:`sequential_mean`).
        desc: name in the progress bar, log lines and errors.
        progress: show a tqdm bar.
        checkpoint: where and when to checkpoint; ``None`` writes nothing.
        callback: ``callback(iteration, loss)`` after every update (and the checkpoint it
            triggers); raising stops training (a simulated kill in tests).
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: LambdaLR,
        *,
        total_steps: int,
        steps_per_epoch: int,
        device: torch.device,
        amp: bool = False,
        fast_paths: FastPaths | None = None,
        world_size: int = 1,
        is_main: bool = True,
        epoch_keys: Sequence[str] = ("loss",),
        epoch_mean: Callable[[Sequence[float]], float] = numpy_mean,
        desc: str = "train",
        progress: bool = True,
        checkpoint: CheckpointSpec | None = None,
        callback: Callable[[int, float], None] | None = None,
    ) -> None:
        if total_steps < 1 or steps_per_epoch < 1:
            raise ValueError(f"total_steps and steps_per_epoch must be >= 1, got {total_steps} and {steps_per_epoch}")
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        self.total_steps, self.steps_per_epoch = int(total_steps), int(steps_per_epoch)
        self.device = torch.device(device)
        self.fast_paths = fast_paths or FastPaths()
        self.use_amp = bool(amp) and self.device.type == "cuda" and not self.fast_paths.bf16
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.use_amp)
        self.world_size, self.is_main = int(world_size), bool(is_main)
        self.epoch_keys, self.epoch_mean = tuple(epoch_keys), epoch_mean
        self.desc, self.progress = desc, progress
        self.spec, self.callback = checkpoint, callback
        self.iteration = 0
        self.resumed_from = 0
        self.history: list[dict[str, Any]] = []  # one record per update
        self.epochs: list[dict[str, Any]] = []  # one record per epoch
        self.seconds = 0.0  # time spent in this call's fit
        self._tracked: dict[str, tuple[Callable[[], Any], Callable[[Any], None]]] = {}
        self._pending: dict[str, Any] | None = None  # a restored checkpoint's RNG and data states
        self._data: BatchSource | None = None
        self._streams: dict[str, _Stateful] = {}
        self._curve_drawn = -math.inf
        self._stop = self.total_steps

    # -- setup ---------------------------------------------------------------------------------
    def autocast(self) -> contextlib.AbstractContextManager:
        """Mixed precision for the step's forward passes: bfloat16 under bfloat16 fast paths,
        float16 with AMP on CUDA, else a no-op."""
        if self.fast_paths.bf16:
            return self.fast_paths.autocast_on(self.device)
        return torch.autocast(self.device.type, enabled=self.use_amp)

    def track(self, name: str, get: Callable[[], Any], set: Callable[[Any], None]) -> None:
        """Save ``get()`` in every checkpoint under ``name``; a resumed run calls ``set(value)``.

        Register before :meth:`restore`. Values must be what ``weights_only`` loading reads
        (tensors, numbers, strings, lists, dicts).
        """
        self._tracked[name] = (get, set)

    def restore(self, resume: bool = True) -> bool:
        """Load the checkpoint, if there is one and ``resume``; whether one was loaded.

        Model, optimizer, scheduler, scaler, histories and tracked state are restored now; the
        data position and the global RNG states when :meth:`fit` starts. ``resume=False``
        deletes a stale checkpoint (main process), so a fresh run that stops early cannot be
        mistaken for the old one.

        Raises:
            DataError: the checkpoint is unreadable or not of this trainer (naming it).
            ConfigError: its settings differ from this run's, or it is for another schedule.
        """
        spec = self.spec
        if spec is None:
            return False
        path = spec.path
        if not resume:
            if self.is_main:
                path.unlink(missing_ok=True)
            return False
        if not path.is_file():
            return False
        checkpoint = read_checkpoint(path, (spec.format,), spec.what)  # on the CPU, where RNG states live
        if spec.check is not None:
            spec.check(checkpoint, path)
        if spec.settings is not None:
            saved = checkpoint.get("settings") or checkpoint.get("config") or {}
            changed = _changed_settings(saved, spec.settings)
            if changed:
                details = ", ".join(f"{key}: {saved[key]!r} -> {spec.settings[key]!r}" for key in changed[:4])
                raise ConfigError(f"cannot resume, the config changed ({details}); use another folder or "
                                  "delete the checkpoint to start over", path)
        for key, mine in (("total_steps", self.total_steps), ("steps_per_epoch", self.steps_per_epoch)):
            if key in checkpoint and int(checkpoint[key]) != mine:
                raise ConfigError(f"cannot resume, the checkpoint has {key} {checkpoint[key]} but this run "
                                  f"{mine} (another training set?); use another folder", path)
        self.model.load_state_dict(checkpoint["model"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.scheduler.load_state_dict(checkpoint["scheduler"])
        if self.use_amp and checkpoint.get("scaler"):
            self.scaler.load_state_dict(checkpoint["scaler"])
        self.history = list(checkpoint.get("history", []))
        self.epochs = list(checkpoint.get("epochs", []))
        self.iteration = self.resumed_from = int(checkpoint["iteration"])
        for name, (_, set_state) in self._tracked.items():
            if name in checkpoint.get("tracked", {}):
                set_state(checkpoint["tracked"][name])
        self._pending = checkpoint
        log.info("%s: resuming from %s at iteration %d of %d", self.desc, path, self.iteration, self.total_steps)
        return True

    # -- the loop ------------------------------------------------------------------------------
    def fit(
        self,
        data: BatchSource,
        step: Callable[[Any], StepOutput],
        *,
        streams: Mapping[str, _Stateful] | None = None,
        stop_at: int | None = None,
        on_epoch_start: Callable[[int], None] | None = None,
        on_epoch_end: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        """Train until ``total_steps`` (or ``stop_at``) updates are done in all.

        Args:
            data: the batches.
            step: ``step(batch)`` runs the forward pass (in :meth:`autocast`) and returns the
                loss, or ``(loss, terms)`` with named scalars for the history (``None``: not
                computed this update).
            streams: further data with a position to checkpoint (W-OoD's OoD batches), by name.
            stop_at: stop after this many updates; the schedule still spans ``total_steps``.
            on_epoch_start: ``on_epoch_start(epoch)`` (0-based) before an epoch's first update
                (not when resuming inside it).
            on_epoch_end: ``on_epoch_end(record)`` when an epoch ends; may add to the record
                (validation) before it is saved.

        Raises:
            LossNotFinite: the loss became NaN or infinite, or the weights did in the last update.
        """
        self._data, self._streams = data, dict(streams or {})
        stop = self._stop = self.total_steps if stop_at is None else min(self.total_steps, int(stop_at))
        if self._pending is not None:
            checkpoint, self._pending = self._pending, None
            # Replaying the data position draws from the global RNG: restore it afterwards.
            data.load_state_dict(checkpoint.get("data") or {})
            for name, stream in self._streams.items():
                stream.load_state_dict((checkpoint.get("streams") or {}).get(name) or {})
            set_rng_state(checkpoint["rng"])
        spe = self.steps_per_epoch
        started = time.perf_counter()
        bar = tqdm(total=stop, initial=self.iteration, desc=self.desc,
                   disable=not (self.progress and self.is_main), leave=False)
        try:
            while True:
                epoch, skip = divmod(self.iteration, spe)
                if skip == 0 and len(self.epochs) < epoch:
                    # Stopped after an epoch's last update but before its end was recorded.
                    epoch, skip = epoch - 1, spe
                elif self.iteration >= stop:
                    break
                elif skip and len(self.epochs) > epoch:
                    self.epochs.pop()  # the record of an epoch stopped early, which now goes on
                self._run_epoch(data, step, epoch, skip, stop, bar, on_epoch_start, on_epoch_end)
        finally:
            bar.close()
            self.seconds = time.perf_counter() - started
        # The last update's loss was finite, but its step may still have broken the weights.
        broken = next((name for name, p in self.model.named_parameters() if not torch.isfinite(p).all()), None)
        if broken is not None:
            raise LossNotFinite(f"{self.desc}: the weights became NaN or infinite ({broken}) at iteration "
                                f"{self.iteration} of {self.total_steps}; training stopped: lower the learning rate")

    def _run_epoch(self, data: BatchSource, step: Callable[[Any], StepOutput], epoch: int, skip: int,
                   stop: int, bar: tqdm, on_epoch_start: Callable[[int], None] | None,
                   on_epoch_end: Callable[[dict[str, Any]], None] | None) -> None:
        spe = self.steps_per_epoch
        batches = data.epoch(epoch, skip)
        if skip == 0 and on_epoch_start is not None:
            on_epoch_start(epoch)
        self.model.train()
        started = time.perf_counter()
        for batch in batches:
            self._update(batch, step, epoch, stop, bar)
            if self.iteration >= stop:
                break
        seconds = time.perf_counter() - started
        if self.iteration < stop and self.iteration != (epoch + 1) * spe:
            raise RuntimeError(f"{self.desc}: epoch {epoch + 1} gave {self.iteration - epoch * spe} batches, "
                               f"expected {spe}")
        steps = self.history[epoch * spe:self.iteration]
        record: dict[str, Any] = {"epoch": epoch + 1, "step": self.iteration}
        for key in self.epoch_keys:
            values = [h[key] for h in steps if h.get(key) is not None]
            record[key] = self.epoch_mean(values) if values else None
        record.update({"lr": self.optimizer.param_groups[0]["lr"], "seconds": seconds})
        terms = ", ".join(f"{key} {record[key]:.4f}" for key in self.epoch_keys if record[key] is not None)
        log.info("%s epoch %d: %s (%.1f s)", self.desc, epoch + 1, terms, seconds)
        if on_epoch_end is not None:
            on_epoch_end(record)
        self.epochs.append(record)
        if self.spec is not None and self.spec.at_epoch_end and self.is_main:
            self.save()

    def _update(self, batch: Any, step: Callable[[Any], StepOutput], epoch: int, stop: int, bar: tqdm) -> None:
        lr = self.optimizer.param_groups[0]["lr"]
        output = step(batch)
        loss, terms = (output, {}) if isinstance(output, torch.Tensor) else output
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.iteration += 1
        value = mean_over_processes(loss.detach(), self.world_size)
        if not math.isfinite(value):
            raise LossNotFinite(f"{self.desc}: the loss became {value} at iteration {self.iteration} of "
                                f"{self.total_steps} (epoch {epoch + 1}, lr {lr:.4g}); training stopped: "
                                "lower the learning rate")
        self.history.append({"iteration": self.iteration, "loss": value, "lr": lr, **terms})
        bar.update(1)
        bar.set_postfix(loss=f"{value:.4f}", lr=f"{lr:.3g}", epoch=epoch + 1)
        spec = self.spec
        if spec is not None and self.is_main and (
                (spec.every and self.iteration % spec.every == 0)
                or (self.iteration >= stop and not spec.at_epoch_end)):
            self.save()
        if self.callback is not None:
            self.callback(self.iteration, value)

    # -- checkpoints ---------------------------------------------------------------------------
    def save(self) -> None:
        """Write the checkpoint, ``history.json`` and (at most once a minute, and at the end) the
        training curve, each atomically."""
        spec = self.spec
        if spec is None:
            return
        assert self._data is not None, "save() runs inside fit()"
        save_checkpoint(spec.path, {
            "format": spec.format, "version": FORMAT_VERSION, "iteration": self.iteration,
            "total_steps": self.total_steps, "steps_per_epoch": self.steps_per_epoch,
            **spec.metadata, "settings": spec.settings,
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.use_amp else {},
            "rng": rng_state(), "data": self._data.state_dict(),
            "streams": {name: stream.state_dict() for name, stream in self._streams.items()},
            "history": self.history, "epochs": self.epochs,
            "tracked": {name: get() for name, (get, _) in self._tracked.items()},
        })
        wio.write_json(Path(spec.folder) / HISTORY_NAME, self.history)
        finished = self.iteration >= self._stop
        if finished or time.monotonic() - self._curve_drawn > CURVE_INTERVAL_SECONDS:
            write_curve(self.history, Path(spec.folder) / CURVE_NAME, spec.curve_title)
            self._curve_drawn = time.monotonic()
