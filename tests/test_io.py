import os
import stat
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from wsss.errors import DataError
from wsss.io import (atomic_write, current_umask, ensure_writable_file, ensure_writable_folder,
                     read_image, read_label_png, voc_palette, write_bytes, write_image,
                     write_label_png, write_text)


def test_atomic_write_leaves_nothing_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_write(target, "w") as handle:
            handle.write("half")
            raise RuntimeError("killed")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


def test_label_png_round_trip_with_palette(tmp_path: Path) -> None:
    labels = np.array([[0, 1, 255], [20, 3, 0]], dtype=np.uint8)
    write_label_png(tmp_path / "m.png", labels)
    assert Image.open(tmp_path / "m.png").mode == "P"
    np.testing.assert_array_equal(read_label_png(tmp_path / "m.png"), labels)


def test_voc_palette_known_colours() -> None:
    palette = voc_palette()
    assert palette[0:3] == [0, 0, 0]
    assert palette[3:6] == [128, 0, 0]        # aeroplane
    assert palette[15 * 3 : 15 * 3 + 3] == [192, 128, 128]  # person
    assert palette[255 * 3 :] == [224, 224, 192]


def test_corrupt_and_wrong_mode_images(tmp_path: Path) -> None:
    image = np.zeros((8, 8, 3), np.uint8)
    write_image(tmp_path / "ok.jpg", image)
    assert read_image(tmp_path / "ok.jpg").shape == (8, 8, 3)
    data = (tmp_path / "ok.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="cut.jpg: corrupt or unreadable image"):
        read_image(tmp_path / "cut.jpg")
    with pytest.raises(DataError, match="nope.png: image file not found"):
        read_label_png(tmp_path / "nope.png")
    with pytest.raises(DataError, match="ok.jpg: label map must be a palette or greyscale PNG"):
        read_label_png(tmp_path / "ok.jpg")


@pytest.fixture
def umask_022():
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def test_written_files_follow_the_umask(tmp_path: Path, umask_022) -> None:
    write_text(tmp_path / "a.txt", "a")
    write_image(tmp_path / "b.png", np.zeros((2, 2, 3), np.uint8))
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "b.png").stat().st_mode) == 0o644
    assert current_umask() == 0o022
    os.umask(0o027)
    write_text(tmp_path / "c.txt", "c")
    assert stat.S_IMODE((tmp_path / "c.txt").stat().st_mode) == 0o640


def test_a_folder_that_cannot_be_written_is_named_not_the_temporary_file(tmp_path: Path) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where a folder should be")
    target = blocker / "maps" / "x.npz"
    with pytest.raises(DataError) as caught:
        write_bytes(target, b"data")
    assert str(caught.value).startswith(f"{target}: cannot write this file (")
    assert ".tmp" not in str(caught.value)
    with pytest.raises(DataError, match=r"blocker/maps: cannot write to the output folder \("):
        ensure_writable_folder(blocker / "maps")
    with pytest.raises(DataError, match="blocker: the output folder is a file, not a folder"):
        ensure_writable_folder(blocker)
    with pytest.raises(DataError, match=r"cam\.pt: the output file is a folder"):
        (tmp_path / "cam.pt").mkdir()
        ensure_writable_file(tmp_path / "cam.pt")
    ensure_writable_file(tmp_path / "new" / "cam.pt")  # creates the folder
    assert (tmp_path / "new").is_dir() and not any((tmp_path / "new").iterdir())


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_folder_is_refused_before_any_work(tmp_path: Path) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        with pytest.raises(DataError, match=r"ro: cannot write to the output folder \(Permission denied\)"):
            ensure_writable_folder(folder)
        with pytest.raises(DataError, match=r"ro/x\.txt: cannot write this file \(Permission denied\)"):
            write_text(folder / "x.txt", "x")
    finally:
        folder.chmod(0o755)
