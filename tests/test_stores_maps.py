"""The localization-map store (``wsss.stores.maps``): round trips, per-box maps, bad files."""

from pathlib import Path

import numpy as np
import pytest

from wsss.errors import DataError
from wsss.stores.maps import LocalizationMaps, MapStore, load_maps, strided_size


def _maps(h: int = 10, w: int = 13, keys=(2, 5)) -> LocalizationMaps:
    rng = np.random.default_rng(0)
    c = len(keys)
    return LocalizationMaps(
        keys=np.array(keys),
        strided=rng.random((c, *strided_size(h, w))).astype(np.float32),
        high_res=rng.random((c, h, w)).astype(np.float32),
    )


def test_strided_size_is_ceil_division() -> None:
    assert strided_size(500, 375) == (125, 94)
    assert strided_size(4, 5) == (1, 2)
    assert strided_size(1, 1) == (1, 1)


def test_round_trip_float16_no_pickle(tmp_path: Path) -> None:
    store = MapStore(tmp_path / "maps")
    maps = _maps()
    store.save("a", maps)
    assert store.has("a") and not store.has("b")
    assert store.ids() == ["a"]
    back = store.load("a")
    np.testing.assert_array_equal(back.keys, [2, 5])
    np.testing.assert_allclose(back.high_res, maps.high_res, atol=1e-3)
    np.testing.assert_allclose(back.strided, maps.strided, atol=1e-3)
    with np.load(store.path("a"), allow_pickle=False) as data:
        assert data["high_res"].dtype == np.float16
    # no temporary files are left behind
    assert [p.name for p in (tmp_path / "maps").iterdir()] == ["a.npz"]


def test_shape_checks() -> None:
    with pytest.raises(ValueError, match="keys"):
        LocalizationMaps(keys=np.array([1]), strided=None, high_res=np.zeros((2, 4, 4)))
    with pytest.raises(ValueError, match="strided"):
        LocalizationMaps(keys=np.array([1]), strided=np.zeros((1, 2, 2)), high_res=np.zeros((1, 9, 9)))


def test_bad_files_are_data_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="map file not found"):
        load_maps(tmp_path / "none.npz")
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip")
    with pytest.raises(DataError, match="junk.npz: corrupt map file"):
        load_maps(junk)
    other = tmp_path / "other.npz"
    np.savez(other, something=np.zeros(3))
    with pytest.raises(DataError, match="not a wsss map file"):
        load_maps(other)
    nan = _maps()
    nan.high_res[0, 0, 0] = np.nan
    MapStore(tmp_path).save("nan", nan)
    with pytest.raises(DataError, match="nan.npz: map 'high_res' contains NaN"):
        load_maps(tmp_path / "nan.npz")


def test_class_maps_keep_their_file_layout(tmp_path: Path) -> None:
    # No boxes: exactly the arrays (and bytes) the store has always written.
    maps = _maps()
    store = MapStore(tmp_path)
    store.save("a", maps)
    with np.load(store.path("a"), allow_pickle=False) as data:
        assert data.files == ["keys", "high_res", "strided"]
    assert store.load("a").boxes is None
    assert store.path("a").read_bytes() == maps.to_bytes()


def test_per_box_maps_round_trip_with_repeated_keys(tmp_path: Path) -> None:
    boxes = np.array([[0, 0, 5, 4], [3.5, 2, 13, 10], [1, 1, 2, 2]], np.float32)
    maps = LocalizationMaps(keys=np.array([2, 2, 5]), strided=None,
                            high_res=np.random.default_rng(1).random((3, 10, 13)).astype(np.float32), boxes=boxes)
    store = MapStore(tmp_path)
    store.save("b", maps)
    back = store.load("b")
    np.testing.assert_array_equal(back.keys, [2, 2, 5])
    assert back.boxes.dtype == np.float32
    np.testing.assert_array_equal(back.boxes, boxes)
    np.testing.assert_allclose(back.high_res, maps.high_res, atol=1e-3)
    assert back.strided is None


def test_keys_repeat_only_with_boxes_and_boxes_fit_the_image() -> None:
    high_res = np.zeros((2, 10, 13), np.float32)
    with pytest.raises(ValueError, match="repeat a class"):
        LocalizationMaps(keys=np.array([3, 3]), strided=None, high_res=high_res)
    with pytest.raises(ValueError, match=r"boxes must be \(2, 4\)"):
        LocalizationMaps(keys=np.array([3, 3]), strided=None, high_res=high_res, boxes=np.zeros((1, 4)))
    with pytest.raises(ValueError, match="box 2 .* lies outside the 13x10 image"):
        LocalizationMaps(keys=np.array([3, 3]), strided=None, high_res=high_res,
                         boxes=np.array([[0, 0, 13, 10], [0, 0, 14, 10]]))
    with pytest.raises(ValueError, match="box 1 .* x1 < x0"):
        LocalizationMaps(keys=np.array([3, 4]), strided=None, high_res=high_res,
                         boxes=np.array([[5, 0, 4, 10], [0, 0, 1, 1]]))


def test_inconsistent_files_are_data_errors(tmp_path: Path) -> None:
    repeated = tmp_path / "repeated.npz"
    np.savez_compressed(repeated, keys=np.array([1, 1]), high_res=np.zeros((2, 4, 4), np.float16))
    with pytest.raises(DataError, match="repeated.npz: inconsistent map file .*repeat a class"):
        load_maps(repeated)
    outside = tmp_path / "outside.npz"
    np.savez_compressed(outside, keys=np.array([1]), high_res=np.zeros((1, 4, 4), np.float16),
                        boxes=np.array([[0, 0, 9, 4]], np.float32))
    with pytest.raises(DataError, match="outside.npz: inconsistent map file .*lies outside the 4x4 image"):
        load_maps(outside)
    bare = tmp_path / "bare.npz"
    with open(bare, "wb") as handle:
        np.save(handle, np.zeros(3))
    with pytest.raises(DataError, match="bare.npz: not a wsss map file"):
        load_maps(bare)


def test_ids_and_looks_like_store(tmp_path: Path) -> None:
    store = MapStore(tmp_path / "none")
    assert store.ids() == [] and not store.has("a")
    store.save("b", _maps())
    store.save("a", _maps())
    (store.directory / "c.png").write_bytes(b"")
    assert store.ids() == ["a", "b"]
    assert MapStore.looks_like_store(store.directory)
    assert not MapStore.looks_like_store(tmp_path)
    assert repr(store) == f"MapStore({str(store.directory)!r})"
