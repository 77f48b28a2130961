"""Out-of-distribution images for W-OoD: a folder of images plus a list file.

The list holds one image path per line, relative to the list file's folder (or to ``root``
when given, as W-OoD's ``--ood_root``); blank lines and ``#`` comments are skipped. W-OoD's
``ood_list.txt`` works as it is with ``root`` pointing at its ``OoD_images`` folder.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from wsss.errors import DataError
from wsss.io import PathLike, read_image


class OoDImages:
    """Images with none of the dataset's classes, listed in a text file.

    Args:
        list_file: the list of image paths.
        root: the folder the paths are relative to; default the list file's folder.

    Raises:
        DataError: the list is missing or empty, or a listed image does not exist (named with
            its line number).
    """

    def __init__(self, list_file: PathLike, root: PathLike | None = None) -> None:
        self.list_file = Path(list_file)
        self.root = Path(root) if root is not None else self.list_file.parent
        try:
            text = self.list_file.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise DataError("OoD image list not found", self.list_file) from None
        except UnicodeDecodeError:
            raise DataError("OoD image list is not UTF-8 text", self.list_file) from None
        self.paths: list[Path] = []
        for line_number, line in enumerate(text.splitlines(), start=1):
            entry = line.strip()
            if not entry or entry.startswith("#"):
                continue
            path = self.root / entry
            if not path.is_file():
                raise DataError(f"OoD image on line {line_number} of {self.list_file} not found", path)
            self.paths.append(path)
        if not self.paths:
            raise DataError("OoD image list is empty", self.list_file)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> np.ndarray:
        return self.load_image(index)

    def __repr__(self) -> str:
        return f"OoDImages({str(self.list_file)!r}, {len(self)} images)"

    def load_image(self, index: int) -> np.ndarray:
        """Image ``index`` as RGB ``uint8`` (H, W, 3); greyscale images are expanded."""
        return read_image(self.paths[index])
