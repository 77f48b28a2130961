"""What the stores share: a folder of one file per image id, its manifest, ``.npz`` reading, box checks."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path
from typing import Any, ClassVar, Mapping, Sequence

import numpy as np

from wsss.errors import ConfigError, DataError
from wsss.io import PathLike, read_json, write_json

MANIFEST_NAME = "manifest.json"
"""The file in a store's folder that records what made the files in it (:meth:`FolderStore.claim`)."""
MANIFEST_FORMAT = "wsss-store-manifest"

# Boxes may exceed the image by float rounding, no more (producers clip them; VOC's 1-pixel
# tolerance belongs to reading hand-made XML, not to files wsss wrote).
BOX_EPSILON = 1e-3


class FolderStore:
    """A folder holding one ``<id><suffix>`` file per image; subclasses read and write them."""

    suffix: ClassVar[str] = ""

    def __init__(self, directory: PathLike) -> None:
        self.directory = Path(directory)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.directory)!r})"

    def path(self, image_id: str) -> Path:
        """The file of ``image_id`` (whether or not it exists)."""
        return self.directory / f"{image_id}{self.suffix}"

    def has(self, image_id: str) -> bool:
        """Whether the file of ``image_id`` exists (resumable stages skip those)."""
        return self.path(image_id).is_file()

    def ids(self) -> list[str]:
        """Sorted ids of the files present (unfinished atomic writes end in ``.tmp``: not listed)."""
        if not self.directory.is_dir():
            return []
        cut = len(self.suffix)
        return sorted(p.name[:-cut] for p in self.directory.glob(f"*{self.suffix}"))

    @property
    def manifest_path(self) -> Path:
        return self.directory / MANIFEST_NAME

    def made_by(self) -> dict[str, Any] | None:
        """What the manifest says made this folder's files, or None (no manifest, or unreadable)."""
        if not self.manifest_path.is_file():
            return None
        try:
            manifest = read_json(self.manifest_path)
        except DataError:
            return None
        if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
            return None
        made_by = manifest.get("made_by")
        return made_by if isinstance(made_by, dict) else None

    def claim(self, made_by: Mapping[str, Any], *, overwrite: bool = False, what: str = "files",
              advice: str = "pass another output folder, or overwrite them",
              about: Mapping[str, Any] | None = None) -> int:
        """Make this folder hold only files made by ``made_by``, before a command adds to it.

        ``made_by`` is what the files depend on (e.g. the checkpoint's digest and the settings
        that change the maps, not run-only ones); it is recorded in ``manifest.json``. A folder
        whose files were made the same way is resumed; one holding files made otherwise, or
        of unknown origin (no manifest), is refused unless ``overwrite``, which deletes them.

        Args:
            made_by: JSON-able values, compared after a JSON round trip; its first key names
                the kind of file (``{"maps": "cam", ...}``).
            overwrite: delete the files already there (whatever made them) and start over.
            what: what the files are, for messages ("map files").
            advice: how to proceed, the end of the refusal's line.
            about: JSON-able facts recorded beside ``made_by`` but not compared (paths).

        Returns:
            How many files of this store the folder holds now (those a run resumes from).

        Raises:
            ConfigError: files made otherwise, or of unknown origin, without ``overwrite``; one
                line naming the folder and saying how to proceed.
        """
        wanted = json.loads(json.dumps(dict(made_by), default=str))
        present = self.ids()
        recorded = self.made_by()
        if present and (overwrite or recorded != wanted):
            if not overwrite:
                if recorded is None:
                    why = f"holds {len(present)} {what} of unknown origin (no {MANIFEST_NAME})"
                else:
                    why = f"holds {len(present)} {what} made otherwise ({_differences(recorded, wanted)})"
                raise ConfigError(f"{why}; {advice}", self.directory)
            for image_id in present:
                self.path(image_id).unlink(missing_ok=True)
            present = []
        if recorded != wanted:
            write_json(self.manifest_path, {"format": MANIFEST_FORMAT, "version": 1, "made_by": wanted,
                                            "about": dict(about or {})})
        return len(present)

    @classmethod
    def looks_like_store(cls, directory: PathLike) -> bool:
        """True when the folder holds at least one file of this store's kind."""
        return any(Path(directory).glob(f"*{cls.suffix}"))


def _shown(value: Any) -> str:
    if isinstance(value, str):
        return value if len(value) <= 16 else value[:12] + "..."  # a digest: its head is enough
    text = json.dumps(value, default=str)
    return text if len(text) <= 40 else text[:36] + "..."


def _differences(recorded: Mapping[str, Any], wanted: Mapping[str, Any], shown: int = 3) -> str:
    """``"scales [1.0] -> [1.0, 0.5], ..."``: what differs between two manifests (a difference in
    the first key, the kind of file, is the only one worth showing)."""
    keys = [key for key in dict.fromkeys([*recorded, *wanted]) if recorded.get(key) != wanted.get(key)]
    if keys and keys[0] == next(iter(wanted), None):
        keys = keys[:1]
    parts = [f"{key} {_shown(recorded.get(key))} -> {_shown(wanted.get(key))}" for key in keys[:shown]]
    if len(keys) > shown:
        parts.append(f"and {len(keys) - shown} more")
    return ", ".join(parts)


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """``np.savez_compressed`` of ``arrays`` (in their order) into memory, for an atomic write."""
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    return buffer.getvalue()


def read_npz(path: Path, kind: str, required: Sequence[str]) -> dict[str, np.ndarray]:
    """Every array of a ``.npz`` file, read without unpickling.

    Args:
        path: the file.
        kind: what the file is, for messages (``"map"``, ``"boundary-map"``).
        required: arrays the file must hold.

    Raises:
        DataError: the file is missing, corrupt, not an ``.npz`` archive or lacks a required array.
    """
    needs = f"an '{required[0]}' array" if len(required) == 1 else (
        "arrays " + " and ".join(f"'{name}'" for name in required))
    try:
        data = np.load(path, allow_pickle=False)
        if not isinstance(data, np.lib.npyio.NpzFile):  # a bare .npy array
            raise DataError(f"not a wsss {kind} file (needs {needs})", path)
        with data:
            if not set(required) <= set(data.files):
                raise DataError(f"not a wsss {kind} file (needs {needs})", path)
            # Read every array inside the try: a damaged archive fails here, not later.
            return {name: data[name] for name in data.files}
    except FileNotFoundError:
        raise DataError(f"{kind} file not found", path) from None
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
        raise DataError(f"corrupt {kind} file ({exc})", path) from None


def box_problem(boxes: np.ndarray, height: int, width: int) -> str | None:
    """Why (N, 4) ``x0, y0, x1, y1`` pixel boxes do not fit a (height, width) image, or None."""
    boxes = np.asarray(boxes)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        return f"boxes must be (N, 4), got {boxes.shape}"
    for number, box in enumerate(boxes, start=1):
        problem = single_box_problem(box, height, width)
        if problem is not None:
            return f"box {number} {problem}"
    return None


def single_box_problem(box: np.ndarray, height: int, width: int) -> str | None:
    """Why one ``x0, y0, x1, y1`` box does not fit a (height, width) image, or None."""
    x0, y0, x1, y1 = (float(v) for v in box)
    shown = f"({x0:g}, {y0:g}, {x1:g}, {y1:g})"
    if not np.isfinite([x0, y0, x1, y1]).all():
        return f"{shown} is not finite"
    if x1 < x0 or y1 < y0:
        return f"{shown} has x1 < x0 or y1 < y0"
    if x0 < -BOX_EPSILON or y0 < -BOX_EPSILON or x1 > width + BOX_EPSILON or y1 > height + BOX_EPSILON:
        return f"{shown} lies outside the {width}x{height} image"
    return None
