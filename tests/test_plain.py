"""The plain-image fast path of the raw reader gives exactly what astropy gives (values, dtype,
byte order, header), and leaves every other image to astropy."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.io import fits

from ccdwatch.fitsio import raw as rawmod
from ccdwatch.fitsio import read_raw

RNG = np.random.default_rng(7)


def _both(path, monkeypatch):
    fast = read_raw(path, allow_compressed=True)
    with monkeypatch.context() as m:
        m.setattr(rawmod, "plain_image", lambda payload, hdu: None)
        slow = read_raw(path, allow_compressed=True)
    return fast, slow


def _data(dtype, shape=(37, 53)):
    info = np.iinfo(dtype) if np.issubdtype(dtype, np.integer) else None
    if info is not None:
        a = RNG.integers(info.min, info.max, size=shape, dtype=dtype, endpoint=True)
        a.flat[:2] = (info.min, info.max)
        return a
    a = RNG.normal(1000, 50, shape).astype(dtype)
    a.flat[:3] = (np.nan, np.inf, -0.0)
    return a


CASES = [np.uint8, np.int8, np.int16, np.uint16, np.int32, np.uint32, np.int64, np.uint64, np.float32, np.float64]


@pytest.mark.parametrize("dtype", CASES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("where", ["primary", "extension"])
def test_fast_path_equals_astropy(tmp_path, monkeypatch, dtype, where):
    data = _data(dtype)
    path = tmp_path / "f.fits"
    if where == "primary":
        fits.PrimaryHDU(data).writeto(path)
    else:
        fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(data, name="SCI")]).writeto(path)
    fast, slow = _both(path, monkeypatch)
    assert fast.data.dtype == slow.data.dtype and fast.data.dtype.isnative
    assert fast.data.flags.writeable and fast.data.flags.c_contiguous
    np.testing.assert_array_equal(fast.data, slow.data)
    assert fast.header.tostring() == slow.header.tostring() and fast.sha256 == slow.sha256
    if np.issubdtype(dtype, np.integer):
        np.testing.assert_array_equal(fast.data, data)  # and it is the data written


@pytest.mark.parametrize("cards", [
    {"BSCALE": 2.0, "BZERO": 10.0},        # scaled: astropy gives floats
    {"BZERO": 1000},                       # an offset that is not the unsigned one
    {"BLANK": -32768},                     # blank pixels
])
def test_scaled_or_blank_images_are_left_to_astropy(tmp_path, monkeypatch, cards):
    hdu = fits.PrimaryHDU(RNG.integers(-3000, 3000, size=(20, 30), dtype=np.int16))
    for k, v in cards.items():
        hdu.header[k] = v
    path = tmp_path / "scaled.fits"
    hdu.writeto(path, output_verify="silentfix")
    calls = []
    real = rawmod.plain_image
    monkeypatch.setattr(rawmod, "plain_image", lambda p, h: calls.append(real(p, h)) or calls[-1])
    fast = read_raw(path)
    assert calls == [None]  # the fast path declined
    monkeypatch.undo()
    fast2, slow = _both(path, monkeypatch)
    np.testing.assert_array_equal(fast.data, slow.data)
    assert fast.data.dtype == slow.data.dtype == fast2.data.dtype


def test_a_third_axis_of_one_is_read_as_2d(tmp_path, monkeypatch):
    path = tmp_path / "cube1.fits"
    fits.PrimaryHDU(RNG.integers(0, 60000, size=(1, 12, 15)).astype(np.uint16)).writeto(path)
    fast, slow = _both(path, monkeypatch)
    assert fast.data.shape == slow.data.shape == (12, 15)
    np.testing.assert_array_equal(fast.data, slow.data)


def _with_cards(path, cards: list[tuple[str, object]]) -> None:
    """Add ``cards`` at the end of the primary header of the one-block-header file ``path``."""
    raw = bytearray(path.read_bytes())
    text = raw[:2880].decode("ascii")
    end = text.index("END" + " " * 5)
    text = (text[:end] + "".join(fits.Card(k, v).image for k, v in cards) + text[end:])[:2880]
    raw[:2880] = text.encode("ascii")
    path.write_bytes(bytes(raw))


def test_a_card_that_defines_the_data_given_twice_with_different_values_is_refused(tmp_path, monkeypatch):
    """A header repeating BZERO (or BITPIX, NAXISn, BSCALE...) with another value is ambiguous:
    the walk and the fast path read the first, astropy scales with the last (BZERO 0, then 32768:
    every pixel 32768 off). Refused with the reason; the same value twice reads as astropy reads."""
    from ccdwatch.fitsio.rejected import RejectedFile

    data = RNG.integers(-3000, 3000, size=(20, 30), dtype=np.int16)
    for cards in ([("BZERO", 0), ("BZERO", 32768)], [("BSCALE", 1), ("BSCALE", 2)]):
        path = tmp_path / "twice.fits"
        fits.PrimaryHDU(data).writeto(path, overwrite=True)
        _with_cards(path, cards)
        with pytest.raises(RejectedFile, match=f"{cards[0][0]} is given 2 times with different values") as err:
            read_raw(path)
        assert err.value.reason == "bad-header"
    path = tmp_path / "same.fits"
    fits.PrimaryHDU(data).writeto(path)
    _with_cards(path, [("BZERO", 32768), ("BZERO", 32768)])
    fast, slow = _both(path, monkeypatch)
    assert fast.data.dtype == slow.data.dtype == np.uint16
    np.testing.assert_array_equal(fast.data, slow.data)
