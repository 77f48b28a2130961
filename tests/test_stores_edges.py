"""The boundary-map store (``wsss.stores.edges``): round trips, ids, and bad files naming themselves."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from wsss.errors import DataError
from wsss.stores.edges import EdgeStore, load_edges, save_edges


def test_round_trip_float16_with_and_without_displacement(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    edge = rng.random((5, 7)).astype(np.float32)
    displacement = rng.normal(size=(2, 5, 7)).astype(np.float32)
    store = EdgeStore(tmp_path / "edges")
    store.save("a", edge, displacement)
    store.save("b", edge)
    assert store.ids() == ["a", "b"] and store.has("a") and not store.has("c")
    assert store.path("a") == tmp_path / "edges" / "a.npz"
    back, back_disp = store.load("a")
    assert back.dtype == np.float32 and back_disp.dtype == np.float32
    np.testing.assert_allclose(back, edge, atol=1e-3)
    np.testing.assert_allclose(back_disp, displacement, atol=1e-2)
    assert store.load("b")[1] is None
    with np.load(store.path("a"), allow_pickle=False) as data:
        assert data.files == ["edge", "displacement"] and data["edge"].dtype == np.float16
    # The store and the file functions write the same bytes.
    save_edges(tmp_path / "same.npz", edge, displacement)
    assert (tmp_path / "same.npz").read_bytes() == store.path("a").read_bytes()
    assert [p.name for p in store.directory.iterdir() if p.suffix != ".npz"] == []  # no temporary files


def test_bad_files_are_data_errors(tmp_path: Path) -> None:
    store = EdgeStore(tmp_path)
    with pytest.raises(DataError, match="none.npz: boundary-map file not found"):
        store.load("none")
    store.path("junk").write_bytes(b"junk")
    with pytest.raises(DataError, match="junk.npz: corrupt boundary-map file"):
        store.load("junk")
    np.savez(store.path("other"), something=np.zeros(3))
    with pytest.raises(DataError, match="other.npz: not a wsss boundary-map file"):
        store.load("other")
    save_edges(store.path("range"), np.full((3, 3), 1.5, np.float32))
    with pytest.raises(DataError, match=r"range.npz: edge map must hold finite values in \[0, 1\]"):
        load_edges(store.path("range"))
    save_edges(store.path("flat"), np.zeros(9, np.float32))
    with pytest.raises(DataError, match=r"flat.npz: edge map must be \(h, w\)"):
        load_edges(store.path("flat"))
    save_edges(store.path("disp"), np.zeros((3, 3), np.float32), np.zeros((2, 3, 4), np.float32))
    with pytest.raises(DataError, match=r"disp.npz: displacement must be \(2, 3, 3\)"):
        load_edges(store.path("disp"))
