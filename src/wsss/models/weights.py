"""Loading backbone weights from local files (never from the network).

Accepted files: a torchvision-format state dict saved with ``torch.save`` (``.pth``/``.pt``/
``.bin``, read with ``torch.load(weights_only=True)``, so no pickled code runs) or a
``.safetensors`` file. Wrappers produced by training scripts are unwrapped: a top-level
``state_dict`` or ``model`` entry, and the ``module.`` prefix that ``DataParallel`` adds.
The ImageNet head (``fc.*``) is ignored.
"""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

import torch
from torch import nn

from wsss.errors import ConfigError, DataError

log = logging.getLogger(__name__)

__all__ = ["WeightsReport", "check_weights_fit", "load_backbone_weights", "load_torch_file", "read_state_dict"]

#: Keys of the file that are never loaded into a backbone (the ImageNet classifier).
IGNORED_PREFIXES = ("fc.",)
#: A file whose tensors cover less than this fraction of the model is for another architecture.
MIN_MATCHED_FRACTION = 0.5
_WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "module")


@dataclass
class WeightsReport:
    """What happened when loading a file into a module.

    Attributes:
        path: the file.
        loaded: names of the tensors loaded.
        missing: model tensors the file did not have (left as initialised).
        unexpected: file tensors the model has no place for (ignored).
    """

    path: Path
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)


def load_torch_file(path: str | os.PathLike, what: str, map_location: object = "cpu") -> object:
    """``torch.load(path, weights_only=True)`` for a file wsss (or torchvision) wrote.

    A file that does not load that way is corrupt, truncated, or a pickle made elsewhere; the
    error says so and names the file. It never repeats PyTorch's advice to load it with
    ``weights_only=False``, which would run whatever code the pickle holds.

    Args:
        path: the file (its existence is the caller's to check, with its own words).
        what: what the file should be, for the message ("wsss checkpoint", "weights file").
        map_location: passed to ``torch.load``.

    Raises:
        DataError: "<path>: not a readable <what> (corrupt, truncated, or a pickle from elsewhere)".
    """
    try:
        with warnings.catch_warnings():  # the safe unpickler's remarks on a foreign pickle's protocol
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location=map_location, weights_only=True)
    except Exception:  # zip errors, unpickling errors, EOF: all one thing to the user
        raise DataError(f"not a readable {what} (corrupt, truncated, or a pickle from elsewhere)",
                        path) from None


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a state dict from a local file, unwrapped and with ``module.`` prefixes removed.

    Raises:
        DataError: the file is missing, unreadable, or holds no tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError("weights file not found (wsss never downloads weights: pass a local file)", path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            obj: object = load_file(str(path), device="cpu")
        except Exception:  # safetensors raises several types for a bad file
            raise DataError("not a readable safetensors weights file (corrupt or truncated)", path) from None
    else:
        obj = load_torch_file(path, "weights file")
    for _ in range(3):  # a checkpoint may nest {"model": {"state_dict": ...}}
        if isinstance(obj, Mapping):
            wrapped = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
            if wrapped is not None and not any(isinstance(v, torch.Tensor) for v in obj.values()):
                obj = wrapped
                continue
        break
    if not isinstance(obj, Mapping):
        raise DataError(f"weights file holds a {type(obj).__name__}, not a state dict", path)
    state = {}
    for key, value in obj.items():
        if not isinstance(value, torch.Tensor):
            continue
        key = str(key)
        while key.startswith("module."):
            key = key[len("module."):]
        state[key] = value
    if not state:
        raise DataError("weights file holds no tensors", path)
    return state


def load_backbone_weights(
    module: nn.Module,
    path: str | os.PathLike,
    *,
    ignore_prefixes: tuple[str, ...] = IGNORED_PREFIXES,
    min_matched_fraction: float = MIN_MATCHED_FRACTION,
) -> WeightsReport:
    """Load a torchvision-format state dict into ``module``, tolerating missing/extra keys.

    Missing and unexpected tensors are logged as a warning listing them; BatchNorm's
    ``num_batches_tracked`` counters are not worth a warning (old torchvision files lack them).

    Args:
        module: the backbone.
        path: the local weights file.
        ignore_prefixes: file keys dropped before matching.
        min_matched_fraction: below this fraction of the model's tensors found in the file, the
            file is taken to be for another architecture.

    Returns:
        A :class:`WeightsReport`.

    Raises:
        DataError: the file cannot be read.
        ConfigError: the file is for another architecture (a shape mismatch, or too little of the
            model found in it).
    """
    path = Path(path)
    target = module.state_dict()
    source = _fitting_state(module, target, path, ignore_prefixes, min_matched_fraction)
    report = WeightsReport(path=path)
    counted = [k for k in target if not k.endswith("num_batches_tracked")]

    loadable = {k: v for k, v in source.items() if k in target}
    module.load_state_dict(loadable, strict=False)
    report.loaded = sorted(loadable)
    report.missing = [k for k in counted if k not in source]
    report.unexpected = sorted(k for k in source if k not in target)
    if report.missing or report.unexpected:
        log.warning(
            "%s: loaded %d tensors; missing from the file (left as initialised): %s; "
            "in the file but not in the model (ignored): %s",
            path, len(report.loaded), ", ".join(report.missing) or "none",
            ", ".join(report.unexpected) or "none",
        )
    else:
        log.info("%s: loaded %d tensors", path, len(report.loaded))
    return report


def _fitting_state(module: nn.Module, target: Mapping[str, torch.Tensor], path: Path,
                   ignore_prefixes: tuple[str, ...], min_matched_fraction: float) -> dict[str, torch.Tensor]:
    """The file's tensors (less ``ignore_prefixes``) after checking they fit ``target``, the
    module's state dict: no tensor of another shape, enough of the module covered."""
    source = {k: v for k, v in read_state_dict(path).items() if not k.startswith(ignore_prefixes)}
    mismatched = [
        f"{key} (file {tuple(value.shape)}, model {tuple(target[key].shape)})"
        for key, value in source.items()
        if key in target and tuple(value.shape) != tuple(target[key].shape)
    ]
    if mismatched:
        more = f" and {len(mismatched) - 3} more" if len(mismatched) > 3 else ""
        raise ConfigError(
            f"weights do not fit backbone {_describe(module)}: {len(mismatched)} tensors have the "
            f"wrong shape, e.g. {'; '.join(mismatched[:3])}{more}",
            path,
        )
    counted = [k for k in target if not k.endswith("num_batches_tracked")]
    matched = [k for k in counted if k in source]
    if len(matched) < min_matched_fraction * max(1, len(counted)):
        raise ConfigError(
            f"weights do not fit backbone {_describe(module)}: only {len(matched)} of its "
            f"{len(counted)} tensors are in the file",
            path,
        )
    return source


def check_weights_fit(
    build: Callable[[], nn.Module],
    path: str | os.PathLike,
    *,
    ignore_prefixes: tuple[str, ...] = IGNORED_PREFIXES,
    min_matched_fraction: float = MIN_MATCHED_FRACTION,
) -> tuple[int, int]:
    """Check, without loading it, that a weights file would load into the module ``build()``
    makes, as :func:`load_backbone_weights` checks it (``wsss run --dry-run``).

    The module is built on PyTorch's ``meta`` device: shapes only, no memory, no initialisation
    cost. The file is read in full (a few hundred MB at most for the ImageNet backbones).

    Returns:
        ``(found, total)``: how many of the module's tensors the file holds, of how many
        (BatchNorm's ``num_batches_tracked`` counters not counted).

    Raises:
        DataError: the file is missing or unreadable.
        ConfigError: the file is for another architecture.
    """
    with torch.device("meta"):
        module = build()
    target = module.state_dict()
    source = _fitting_state(module, target, Path(path), ignore_prefixes, min_matched_fraction)
    counted = [k for k in target if not k.endswith("num_batches_tracked")]
    return sum(1 for k in counted if k in source), len(counted)


def _describe(module: nn.Module) -> str:
    name = getattr(module, "name", "")
    return repr(name) if name else type(module).__name__
