"""Reading and writing files safely.

Every writer here is atomic: it writes a temporary file in the destination folder and renames
it over the destination, so a killed run never leaves a half-written output that a resumed run
would mistake for a finished one. Every reader turns a missing or corrupt file into a
:class:`~wsss.errors.DataError` that names the file.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import hashlib
import io
import json
import os
import tempfile
from pathlib import Path
from typing import IO, Any, Iterator, Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from wsss.errors import DataError

PathLike = str | os.PathLike

IGNORE_INDEX = 255
"""The label of pixels that no loss or score counts (VOC's object borders, unsure pseudo labels)."""


def current_umask() -> int:
    """The process's umask (read from ``/proc`` where it can be, so nothing changes it even briefly)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _write_failure(exc: OSError, path: Path) -> DataError:
    reason = exc.strerror or type(exc).__name__
    return DataError(f"cannot write this file ({reason})", path)


@contextlib.contextmanager
def atomic_write(path: PathLike, mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path``; rename it onto ``path`` only on success.

    The file gets the mode a plain ``open`` would give it (``0o666`` less the umask), not the
    private ``0o600`` of a temporary file.

    Raises:
        DataError: the folder cannot be created or written (no permission, read-only, full,
            a file in the way), naming ``path``, never the temporary file.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise _write_failure(exc, path) from None
    try:
        with os.fdopen(fd, mode) as handle:
            os.fchmod(handle.fileno(), 0o666 & ~current_umask())
            yield handle
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise _write_failure(exc, path) from None
        raise


def ensure_writable_folder(folder: PathLike, what: str = "output folder") -> Path:
    """Create ``folder`` if needed and prove that files can be written in it, before any work.

    Raises:
        DataError: one line naming the folder (a file in the way, no permission, read-only).
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise DataError(f"the {what} is a file, not a folder", folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".wsss-write-check.", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise DataError(f"cannot write to the {what} ({reason})", folder) from None
    return folder


def ensure_writable_file(path: PathLike, what: str = "output file") -> Path:
    """Check before any work that ``path`` can be written: not a folder, and its folder
    writable (created if needed).

    Raises:
        DataError: one line naming the file or its folder.
    """
    path = Path(path)
    if path.is_dir():
        raise DataError(f"the {what} is a folder", path)
    ensure_writable_folder(path.parent if str(path.parent) else Path("."), f"folder of the {what}")
    return path


def file_digest(path: PathLike) -> str:
    """The SHA-256 of a file's bytes, in hex (what identifies a checkpoint, wherever it lies).

    Raises:
        DataError: the file is missing or unreadable.
    """
    path = Path(path)
    digest = hashlib.sha256()
    try:
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    except FileNotFoundError:
        raise DataError("file not found", path) from None
    except OSError as exc:
        raise DataError(f"cannot read this file ({exc.strerror or type(exc).__name__})", path) from None
    return digest.hexdigest()


def write_bytes(path: PathLike, data: bytes) -> None:
    with atomic_write(path, "wb") as handle:
        handle.write(data)


def write_text(path: PathLike, text: str) -> None:
    with atomic_write(path, "w") as handle:
        handle.write(text)


def write_json(path: PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot serialise {type(value).__name__} to JSON")


def write_csv(path: PathLike, rows: Sequence[Sequence[Any]]) -> None:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    write_text(path, buffer.getvalue())


def read_json(path: PathLike) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError("file not found", path) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"not valid JSON ({exc})", path) from None


def _open_image(path: Path) -> Image.Image:
    try:
        image = Image.open(path)
        image.load()  # decode now so truncation and corruption surface here
    except FileNotFoundError:
        raise DataError("image file not found", path) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"corrupt or unreadable image ({exc})", path) from None
    return image


def read_image(path: PathLike) -> np.ndarray:
    """An RGB image as a ``uint8`` array of shape (H, W, 3)."""
    image = _open_image(Path(path))
    return np.asarray(image.convert("RGB"), dtype=np.uint8).copy()


def image_size(path: PathLike) -> tuple[int, int]:
    """(height, width) of an image, reading only its header."""
    path = Path(path)
    try:
        with Image.open(path) as image:
            width, height = image.size
    except FileNotFoundError:
        raise DataError("image file not found", path) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"corrupt or unreadable image ({exc})", path) from None
    return height, width


def read_label_png(path: PathLike) -> np.ndarray:
    """A label map (palette or grey PNG) as a ``uint8`` array of shape (H, W).

    Raises:
        DataError: the file is missing, corrupt, or not a single-channel index image.
    """
    path = Path(path)
    image = _open_image(path)
    if image.mode not in ("P", "L", "I", "I;16"):
        raise DataError(f"label map must be a palette or greyscale PNG, got mode {image.mode}", path)
    array = np.asarray(image)
    if array.ndim != 2:
        raise DataError(f"label map must be 2-D, got shape {array.shape}", path)
    if array.dtype != np.uint8:
        if array.size and (array.min() < 0 or array.max() > 255):
            raise DataError("label map has values outside 0..255", path)
        array = array.astype(np.uint8)
    return array.copy()


def write_label_png(path: PathLike, labels: np.ndarray, palette: Sequence[int] | None = None) -> None:
    """Write a (H, W) ``uint8`` label map as a palette PNG (255 = ignore), atomically."""
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"label map must be 2-D, got shape {labels.shape}")
    image = Image.fromarray(labels.astype(np.uint8), mode="P")
    image.putpalette(list(palette) if palette is not None else voc_palette())
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    write_bytes(path, buffer.getvalue())


def write_image(path: PathLike, image: np.ndarray, quality: int = 95) -> None:
    """Write an RGB ``uint8`` image; JPEG or PNG by the file's extension, atomically."""
    path = Path(path)
    fmt = "JPEG" if path.suffix.lower() in (".jpg", ".jpeg") else "PNG"
    buffer = io.BytesIO()
    pil = Image.fromarray(np.asarray(image, dtype=np.uint8))
    if fmt == "JPEG":
        pil.save(buffer, format=fmt, quality=quality)
    else:
        pil.save(buffer, format=fmt)
    write_bytes(path, buffer.getvalue())


def voc_palette(size: int = 256) -> list[int]:
    """The PASCAL VOC colour map (bit-interleaved), 255 -> (224, 224, 192) as in VOC."""
    return list(_voc_palette(size))


@functools.lru_cache(maxsize=4)
def _voc_palette(size: int) -> tuple[int, ...]:
    palette: list[int] = []
    for index in range(size):
        r = g = b = 0
        value = index
        for shift in range(7, -1, -1):
            r |= ((value >> 0) & 1) << shift
            g |= ((value >> 1) & 1) << shift
            b |= ((value >> 2) & 1) << shift
            value >>= 3
        palette.extend((r, g, b))
    if size > 255:
        palette[255 * 3 : 255 * 3 + 3] = [224, 224, 192]
    return tuple(palette)
