from pathlib import Path

import numpy as np
import pytest

from wsss.errors import DataError
from wsss.maps import LocalizationMaps, MapStore, load_maps, strided_size


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
