"""Tests of ccdwatch.fitsio: hostile raw files, atomic product writes, safe path components."""

from __future__ import annotations

import errno
import gzip
import hashlib
import os
import re
import subprocess
import sys
import tempfile
import textwrap
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ccdwatch.fitsio import (
    DiskFull,
    RawFrame,
    RejectedFile,
    fits_suffix,
    is_temp_name,
    read_product,
    read_product_hdus,
    read_raw,
    safe_component,
    safe_product_path,
    sha256_file,
    sweep_temp_files,
    write_product,
)
from ccdwatch.fitsio.atomic import _estimate_bytes

REPO = Path(__file__).resolve().parents[1]
REAL_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "phy241_m51"
SHAPE = (96, 128)  # (NAXIS2, NAXIS1): small synthetic frames keep the file fast
SAFE_RE = re.compile(r"^[A-Za-z0-9_+][A-Za-z0-9._+-]*$")


# ------------------------------------------------------------------------------ helpers
def bias_like(seed: int = 1, shape: tuple[int, int] = SHAPE) -> np.ndarray:
    """A uint16 frame spanning the whole range, so BZERO = 32768 really matters."""
    rng = np.random.default_rng(seed)
    frame = rng.normal(33000.0, 9000.0, shape).clip(0, 65535).astype(np.uint16)
    frame[0, 0], frame[0, 1] = 0, 65535
    return frame


def sky_like(seed: int = 2, shape: tuple[int, int] = SHAPE) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.normal(120.5, 3.2, shape).astype(np.float32)


def write_primary(path: Path, data: np.ndarray | None, **cards) -> Path:
    hdu = fits.PrimaryHDU(data)
    for k, v in cards.items():
        hdu.header[k] = v
    hdu.writeto(path)
    return path


def header_block(cards: list[str]) -> bytes:
    """Hand-made header bytes (80-char cards, END, space padding to 2880)."""
    text = "".join(c.ljust(80)[:80] for c in cards) + "END".ljust(80)
    text += " " * (-len(text) % 2880)
    return text.encode("ascii")


def snapshot(path: Path) -> tuple[bytes, int, int]:
    st_ = os.lstat(path)
    return path.read_bytes(), st_.st_mtime_ns, st_.st_size


def rejected(path: Path, **kw) -> RejectedFile:
    """read_raw must raise RejectedFile (and nothing else) and leave the file untouched."""
    before = snapshot(path) if path.is_file() and not path.is_symlink() else None
    with pytest.raises(RejectedFile) as info:
        read_raw(path, **kw)
    if before is not None:
        assert snapshot(path) == before
    assert isinstance(info.value.message, str) and str(info.value) == info.value.message
    return info.value


def run_isolated(code: str, *args: str, timeout: float = 60.0) -> list[str]:
    """Run a snippet in a fresh interpreter (hangs and rlimits cannot hurt the test run)."""
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args], check=False, cwd=REPO,
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.split()


# ------------------------------------------------------------------------------ good files
def test_uint16_bzero_frame_reads_back_physical_values(tmp_path):
    frame = bias_like()
    path = write_primary(tmp_path / "bias_001.fits", frame, IMAGETYP="BIAS", EXPTIME=0.0)
    assert fits.getheader(path)["BZERO"] == 32768  # stored as int16 + offset
    before = snapshot(path)
    raw = read_raw(path)
    assert isinstance(raw, RawFrame)
    assert raw.data.dtype == np.uint16 and raw.data.shape == SHAPE
    np.testing.assert_array_equal(raw.data, frame)
    assert raw.sha256 == hashlib.sha256(path.read_bytes()).hexdigest() == sha256_file(path)
    st_ = os.stat(path)
    assert (raw.size, raw.inode, raw.mtime_ns, raw.hdu_index) == (st_.st_size, st_.st_ino, st_.st_mtime_ns, 0)
    assert raw.header["IMAGETYP"] == "BIAS" and raw.tail_bytes == 0
    assert snapshot(path) == before


def test_float32_frame_native_order_and_private_copy(tmp_path):
    frame = sky_like()
    path = write_primary(tmp_path / "dark.fit", frame)
    before = snapshot(path)
    raw = read_raw(path)
    assert raw.data.dtype == np.float32 and raw.data.dtype.isnative
    np.testing.assert_array_equal(raw.data, frame)
    assert raw.data.flags.owndata and raw.data.flags.writeable
    raw.data[:] = 0  # the caller's copy; the file is not affected
    assert snapshot(path) == before
    assert raw.sha256 == hashlib.sha256(before[0]).hexdigest()


def test_bscale_bzero_scaled_integers_become_physical(tmp_path):
    physical = np.round(sky_like() * 4) / 4  # representable with BSCALE = 0.25
    hdu = fits.PrimaryHDU(physical.astype(np.float64))
    hdu.scale("int16", bscale=0.25, bzero=100.0)
    path = tmp_path / "scaled.fits"
    hdu.writeto(path)
    raw = read_raw(path)
    assert raw.data.dtype.kind == "f"
    np.testing.assert_allclose(raw.data, physical, atol=1e-6)


def test_header_only_skips_pixels_but_hashes_the_file(tmp_path):
    path = write_primary(tmp_path / "light.fits", bias_like(), OBJECT="M51", FILTER="I")
    full = read_raw(path)
    head = read_raw(path, header_only=True)
    assert head.data is None
    assert head.sha256 == full.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert head.header == full.header and head.header["BZERO"] == 32768
    assert head.header["OBJECT"] == "M51"


def test_image_in_first_extension_when_primary_is_empty(tmp_path):
    frame = bias_like(3)
    primary = fits.PrimaryHDU()
    primary.header["TELESCOP"] = "LX200"
    ext = fits.ImageHDU(frame, name="SCI")
    ext.header["INHERIT"] = True
    path = tmp_path / "mef.fits"
    fits.HDUList([primary, fits.BinTableHDU.from_columns([fits.Column("A", "J", array=[1, 2])]),
                  ext]).writeto(path)
    raw = read_raw(path)
    assert raw.hdu_index == 2
    np.testing.assert_array_equal(raw.data, frame)
    assert raw.header["EXTNAME"] == "SCI" and raw.header["TELESCOP"] == "LX200"  # INHERIT = T
    assert read_raw(path, header_only=True).hdu_index == 2


def test_cube_with_single_plane_is_squeezed(tmp_path):
    frame = sky_like(5)
    path = write_primary(tmp_path / "cube1.fits", frame[np.newaxis])
    raw = read_raw(path)
    assert raw.data.shape == SHAPE
    np.testing.assert_array_equal(raw.data, frame)


def test_trailing_zeros_or_garbage_are_tolerated_and_counted(tmp_path):
    frame = bias_like(4)
    good = write_primary(tmp_path / "good.fits", frame).read_bytes()
    for tail in (b"\0" * 2880, b"junk" * 25):
        path = tmp_path / f"tail{len(tail)}.fits"
        path.write_bytes(good + tail)
        raw = read_raw(path)
        np.testing.assert_array_equal(raw.data, frame)
        assert raw.tail_bytes == len(tail)
        assert raw.sha256 == hashlib.sha256(good + tail).hexdigest()  # hash of every byte read


def test_missing_final_padding_is_tolerated(tmp_path):
    frame = sky_like(6, (50, 100))  # 20000 data bytes, padded to 20160
    good = write_primary(tmp_path / "g.fits", frame).read_bytes()
    path = tmp_path / "nopad.fits"
    path.write_bytes(good[: 2880 + frame.nbytes])
    np.testing.assert_array_equal(read_raw(path).data, frame)


def test_non_ascii_header_bytes_are_replaced_not_fatal(tmp_path):
    path = write_primary(tmp_path / "deg.fits", bias_like(7), NOTES="CCD at -10 C")
    blob = bytearray(path.read_bytes())
    i = blob.index(b"-10 C")
    blob[i + 3] = 0xB0  # a latin-1 degree sign, as some camera programs write
    path.write_bytes(bytes(blob))
    raw = read_raw(path)
    assert raw.header["NOTES"] == "CCD at -10?C"


# ------------------------------------------------------------------------------ hostile files
def test_empty_file(tmp_path):
    path = tmp_path / "empty.fits"
    path.touch()
    exc = rejected(path)
    assert exc.reason == "empty" and exc.transient


@pytest.mark.parametrize("blob", [b"hello world, not a FITS file\n" * 200, os.urandom(5000),
                                  b"\x89PNG\r\n\x1a\n" + bytes(3000), b" " * 2880])
def test_not_fits(tmp_path, blob):
    path = tmp_path / "x.fits"
    path.write_bytes(blob)
    assert rejected(path).reason == "not-fits"


def test_simple_false_is_not_fits(tmp_path):
    path = tmp_path / "f.fits"
    path.write_bytes(header_block(["SIMPLE  =                    F", "BITPIX  =                    8",
                                   "NAXIS   =                    0"]))
    assert rejected(path).reason == "not-fits"


def test_truncated_header_and_data(tmp_path):
    good = write_primary(tmp_path / "g.fits", bias_like(8)).read_bytes()
    cases = {"cut_header.fits": (good[:1000], "truncated-header"),
             "cut_data.fits": (good[: 2880 + 5000], "truncated-data"),
             "header_only.fits": (good[:2880], "truncated-data")}
    for name, (blob, reason) in cases.items():
        path = tmp_path / name
        path.write_bytes(blob)
        exc = rejected(path)
        assert exc.reason == reason, name
        assert exc.transient
        assert rejected(path, header_only=True).reason == reason


def test_truncated_extension_header(tmp_path):
    path = tmp_path / "mef.fits"
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(sky_like(9))]).writeto(path)
    blob = path.read_bytes()
    path.write_bytes(blob[: 2880 + 1500])  # into the XTENSION header
    assert rejected(path).reason == "truncated-header"


def test_header_without_end_card_is_capped(tmp_path):
    path = tmp_path / "noend.fits"
    card = b"COMMENT   lots of cards and never an END".ljust(80)
    path.write_bytes(b"SIMPLE  =                    T".ljust(80) + card * (36 * 1001))
    t0 = time.perf_counter()
    assert rejected(path).reason == "bad-header"
    assert time.perf_counter() - t0 < 5


@pytest.mark.parametrize("cards", [
    ["BITPIX  =                   12", "NAXIS   =                    2", "NAXIS1  =  10", "NAXIS2  =  10"],
    ["BITPIX  =                   16", "NAXIS   =                    2", "NAXIS1  =  -10", "NAXIS2  =  10"],
    ["BITPIX  =                   16", "NAXIS   =                    2", "NAXIS1  =  10.5", "NAXIS2  =  10"],
    ["BITPIX  =                   16", "NAXIS   =                    2", "NAXIS1  =  10"],
    ["BITPIX  =                   16", "NAXIS   =                 1000"],
])
def test_bad_structural_keywords(tmp_path, cards):
    path = tmp_path / "bad.fits"
    path.write_bytes(header_block(["SIMPLE  =                    T", *cards]) + bytes(2880 * 2))
    assert rejected(path).reason == "bad-header"


def test_huge_declared_image_in_small_file_is_refused_fast(tmp_path):
    path = tmp_path / "bomb.fits"
    path.write_bytes(header_block(["SIMPLE  =                    T", "BITPIX  =                  -32",
                                   "NAXIS   =                    2", "NAXIS1  =              1000000",
                                   "NAXIS2  =              1000000"]) + bytes(2880))
    assert path.stat().st_size < 6000
    t0 = time.perf_counter()
    assert rejected(path).reason == "too-large"
    assert time.perf_counter() - t0 < 1.0
    # within max_data_bytes but far longer than the file: truncated, still nothing allocated
    assert rejected(path, max_data_bytes=1 << 50).reason == "truncated-data"
    assert rejected(path, header_only=True).reason == "too-large"


def test_huge_declared_image_under_address_space_limit(tmp_path):
    """In a child whose address space is capped ~256 MiB above its current size, the bombs are
    rejected and peak RSS does not move; a control allocation proves the cap is real."""
    bombs = []
    for name, n in (("4TB.fits", 1_000_000), ("1GB.fits", 16_384)):
        p = tmp_path / name
        p.write_bytes(header_block(["SIMPLE  =                    T", "BITPIX  =                  -32",
                                    "NAXIS   =                    2", f"NAXIS1  = {n:20d}",
                                    f"NAXIS2  = {n:20d}"]) + bytes(2880))
        bombs.append(str(p))
    out = run_isolated("""
        import resource, sys
        from ccdwatch.fitsio import read_raw, RejectedFile
        vm = next(int(l.split()[1]) * 1024 for l in open('/proc/self/status') if l.startswith('VmSize'))
        cap = vm + (256 << 20)
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
        try:
            bytearray(512 << 20)
            print('control-allocated')
        except MemoryError:
            print('control-refused')
        rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        for p in sys.argv[1:]:
            try:
                read_raw(p)
                print('accepted')
            except RejectedFile as e:
                print(e.reason)
        rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print((rss1 - rss0) // 1024)  # MiB
    """, *bombs)
    assert out[0] == "control-refused"
    assert out[1:3] == ["too-large", "truncated-data"]
    assert int(out[3]) < 16


def test_fifo_is_refused_without_hanging(tmp_path):
    fifo = tmp_path / "x.fits"
    os.mkfifo(fifo)
    good = write_primary(tmp_path / "good.fits", bias_like())
    out = run_isolated("""
        import os, sys
        from ccdwatch.fitsio import read_raw, RejectedFile
        fifo, good = sys.argv[1:]
        def attempt():
            try:
                read_raw(fifo)
                print('accepted')
            except RejectedFile as e:
                print(e.reason)
        attempt()
        # the FIFO appears between lstat and open: O_NONBLOCK keeps open() from hanging and
        # fstat of the descriptor still refuses it
        regular = os.lstat(good)
        os.lstat = lambda p, *a, **k: regular
        attempt()
    """, str(fifo), str(good), timeout=60)
    assert out == ["not-regular-file", "not-regular-file"]


def test_symlinks_are_never_followed(tmp_path, monkeypatch):
    good = write_primary(tmp_path / "good.fits", bias_like())
    (tmp_path / "zero.fits").symlink_to("/dev/zero")
    (tmp_path / "link.fits").symlink_to(good)
    assert rejected(tmp_path / "zero.fits").reason == "symlink"
    assert rejected(tmp_path / "link.fits").reason == "symlink"
    # swapped for a link after the lstat: O_NOFOLLOW gives ELOOP
    regular = os.lstat(good)
    monkeypatch.setattr(os, "lstat", lambda p, *a, **k: regular)
    assert rejected(tmp_path / "link.fits").reason == "symlink"
    assert rejected(tmp_path / "zero.fits").reason == "symlink"


def test_directory_and_device_are_not_regular(tmp_path, monkeypatch):
    (tmp_path / "x.fits").mkdir()
    assert rejected(tmp_path / "x.fits").reason == "not-regular-file"
    assert rejected(Path("/dev/null")).reason == "not-regular-file"
    regular = os.lstat(write_primary(tmp_path / "good.fits", bias_like()))
    monkeypatch.setattr(os, "lstat", lambda p, *a, **k: regular)
    assert rejected(tmp_path / "x.fits").reason == "not-regular-file"


def test_missing_file_is_not_a_quarantine_case(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_raw(tmp_path / "gone.fits")


@pytest.mark.parametrize("hdus", [
    [fits.PrimaryHDU(), fits.BinTableHDU.from_columns([fits.Column("A", "J", array=[1, 2])])],
    [fits.PrimaryHDU(np.zeros((3, 8, 8), np.float32))],
    [fits.PrimaryHDU(np.zeros(64, np.float32))],
    [fits.PrimaryHDU()],
])
def test_no_image(tmp_path, hdus):
    path = tmp_path / "noimg.fits"
    fits.HDUList(hdus).writeto(path)
    assert rejected(path).reason == "no-image"


# ------------------------------------------------------------------------------ compressed
def test_tile_compressed_fz(tmp_path):
    frame = bias_like(11)
    path = tmp_path / "light.fits.fz"
    fits.HDUList([fits.PrimaryHDU(), fits.CompImageHDU(frame, compression_type="RICE_1")]).writeto(path)
    exc = rejected(path)
    assert exc.reason == "compressed-disabled" and "allow_compressed" in exc.message
    before = snapshot(path)
    raw = read_raw(path, allow_compressed=True)
    assert raw.hdu_index == 1 and raw.data.dtype == np.uint16
    np.testing.assert_array_equal(raw.data, frame)  # RICE is lossless for integers
    assert raw.sha256 == hashlib.sha256(before[0]).hexdigest()
    assert raw.header["NAXIS1"] == SHAPE[1] and "ZNAXIS1" not in raw.header
    head = read_raw(path, allow_compressed=True, header_only=True)
    assert head.data is None and head.header["NAXIS2"] == SHAPE[0]
    assert snapshot(path) == before
    # a compressed header declaring an enormous decompressed image
    blob = path.read_bytes()
    old = f"ZNAXIS1 = {SHAPE[1]:20d}".encode()
    assert old in blob
    bomb = tmp_path / "bomb.fits.fz"
    bomb.write_bytes(blob.replace(old, f"ZNAXIS1 = {10**9:20d}".encode()))
    assert rejected(bomb, allow_compressed=True).reason == "too-large"


def test_gzip(tmp_path):
    frame = sky_like(12)
    plain = write_primary(tmp_path / "p.fits", frame).read_bytes()
    path = tmp_path / "light.fits.gz"
    path.write_bytes(gzip.compress(plain))
    assert rejected(path).reason == "compressed-disabled"
    raw = read_raw(path, allow_compressed=True)
    np.testing.assert_array_equal(raw.data, frame)
    assert raw.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()  # the bytes on disk
    cut = tmp_path / "cut.fits.gz"
    cut.write_bytes(path.read_bytes()[:-200])
    assert rejected(cut, allow_compressed=True).reason == "truncated-data"


def test_gzip_bomb_stops_at_the_budget(tmp_path):
    head = header_block(["SIMPLE  =                    T", "BITPIX  =                    8",
                         "NAXIS   =                    2", "NAXIS1  =                   64",
                         "NAXIS2  =                   64"])
    path = tmp_path / "bomb.fits.gz"
    with gzip.open(path, "wb", compresslevel=1) as gz:
        gz.write(head)
        zeros = bytes(1 << 20)
        for _ in range(64):  # 64 MiB of zeros, about 64 kB compressed
            gz.write(zeros)
    assert path.stat().st_size < 1 << 20
    tracemalloc.start()
    try:
        exc = rejected(path, allow_compressed=True, max_data_bytes=1 << 20)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert exc.reason == "too-large"
    assert peak < 16 << 20, peak


# ------------------------------------------------------------------------------ fuzz
_GOOD = None


def _good_blob() -> bytes:
    global _GOOD
    if _GOOD is None:
        with tempfile.TemporaryDirectory() as d:
            p = Path(d) / "g.fits"
            hdu = fits.PrimaryHDU(bias_like(13, (20, 30)))
            hdu.header["OBJECT"] = "M51"
            fits.HDUList([hdu, fits.ImageHDU(sky_like(14, (10, 12)))]).writeto(p)
            _GOOD = p.read_bytes()
    return _GOOD


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(flips=st.lists(st.tuples(st.integers(0, 2 * 2880 + 2000), st.integers(0, 255)), max_size=6),
       cut=st.one_of(st.none(), st.integers(0, 4 * 2880)),
       allow=st.booleans())
def test_corrupted_files_only_ever_raise_rejected_file(flips, cut, allow):
    blob = bytearray(_good_blob())
    for pos, value in flips:
        if pos < len(blob):
            blob[pos] = value
    if cut is not None:
        del blob[cut:]
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "fuzz.fits"
        p.write_bytes(bytes(blob))
        try:
            raw = read_raw(p, allow_compressed=allow, max_data_bytes=1 << 20)
        except RejectedFile as exc:
            assert exc.reason in {"empty", "not-fits", "truncated-header", "truncated-data",
                                  "too-large", "no-image", "bad-header", "compressed-disabled",
                                  "unreadable"}
        else:
            assert raw.data.ndim == 2 and raw.sha256 == hashlib.sha256(bytes(blob)).hexdigest()


# ------------------------------------------------------------------------------ real data
@pytest.mark.realdata
def test_real_maxim_frames():
    if not REAL_DATA.is_dir():
        pytest.skip("real night not available")
    light = read_raw(REAL_DATA / "M51_I_001.fit")
    assert light.data.shape == (736, 1092) and light.data.dtype == np.uint16
    np.testing.assert_array_equal(light.data, fits.getdata(REAL_DATA / "M51_I_001.fit"))
    dark = read_raw(REAL_DATA / "dark1.fit")
    assert dark.data.dtype == np.float32 and dark.header["IMAGETYP"].strip().upper() == "DARK"
    assert dark.sha256 == sha256_file(REAL_DATA / "dark1.fit")


# ------------------------------------------------------------------------------ products
def _only_entries(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def test_write_product_is_atomic_and_hashes_what_it_wrote(tmp_path):
    data = sky_like(20)
    copy = data.copy()
    hdr = fits.Header({"IMAGETYP": "MASTER", "NCOMBINE": 5})
    out = tmp_path / "masters" / "n1" / "bias.fits"  # parents created
    sha = write_product(out, data, header=hdr)
    assert _only_entries(out.parent) == ["bias.fits"]
    assert sha == hashlib.sha256(out.read_bytes()).hexdigest()
    np.testing.assert_array_equal(data, copy)  # input unchanged
    header, back = read_product(out)
    assert back.dtype == np.float32 and back.dtype.isnative
    np.testing.assert_array_equal(back, data)
    assert header["NCOMBINE"] == 5
    # replacing: a new inode is renamed into place, old content fully replaced
    inode = out.stat().st_ino
    sha2 = write_product(out, data + 1)
    assert out.stat().st_ino != inode and sha2 != sha
    np.testing.assert_array_equal(read_product(out)[1], data + 1)
    assert _only_entries(out.parent) == ["bias.fits"]


def test_read_product_converts_to_float32_and_finds_first_image(tmp_path):
    out = tmp_path / "p.fits"
    frame = bias_like(21)
    write_product(out, fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(frame)]))
    _, data = read_product(out)
    assert data.dtype == np.float32
    np.testing.assert_array_equal(data, frame.astype(np.float32))


def test_read_product_hdus_is_fully_loaded(tmp_path):
    out = tmp_path / "master.fits"
    table = fits.BinTableHDU.from_columns(
        [fits.Column(name="FRAME_ID", format="K", array=np.array([3, 4])),
         fits.Column(name="SHA256", format="64A", array=np.array(["a" * 64, "b" * 64]))], name="INPUTS")
    mask = (bias_like(22) > 40000).astype(np.uint8)
    write_product(out, fits.HDUList([fits.PrimaryHDU(sky_like(22)), table, fits.ImageHDU(mask, name="HOTPIX")]))
    hdul = read_product_hdus(out)
    out.unlink()  # nothing may still need the file
    assert list(hdul[1].data["FRAME_ID"]) == [3, 4]
    np.testing.assert_array_equal(hdul["HOTPIX"].data, mask)
    np.testing.assert_array_equal(hdul[0].data, sky_like(22))


def _failing_writeto(error: BaseException):
    def writeto(self, fileobj, *args, **kwargs):
        fileobj.write(b"SIMPLE  =                    T" + b" " * 3000)  # a partial file
        raise error
    return writeto


@pytest.mark.parametrize("error, expected", [(RuntimeError("crash mid-write"), RuntimeError),
                                             (OSError(errno.ENOSPC, "No space left on device"), DiskFull)])
def test_failed_write_leaves_old_file_and_no_temp(tmp_path, monkeypatch, error, expected):
    out = tmp_path / "stack.fits"
    write_product(out, sky_like(23))
    old = out.read_bytes()
    monkeypatch.setattr(fits.HDUList, "writeto", _failing_writeto(error))
    with pytest.raises(expected):
        write_product(out, sky_like(24))
    assert out.read_bytes() == old
    assert _only_entries(tmp_path) == ["stack.fits"]
    # and no partial file when there was no old one
    with pytest.raises(expected):
        write_product(tmp_path / "new.fits", sky_like(24))
    assert _only_entries(tmp_path) == ["stack.fits"]


def test_disk_full_before_writing(tmp_path):
    with pytest.raises(DiskFull) as info:
        write_product(tmp_path / "a.fits", sky_like(), min_free_bytes=1 << 62)
    assert isinstance(info.value, OSError) and info.value.errno == errno.ENOSPC
    assert _only_entries(tmp_path) == []


def test_write_product_argument_errors(tmp_path):
    with pytest.raises(ValueError):
        write_product(tmp_path / "a.fits", fits.HDUList([fits.PrimaryHDU()]), header=fits.Header())
    with pytest.raises(ValueError):
        write_product(tmp_path / "a.fits.part", sky_like())
    with pytest.raises(TypeError):
        write_product(tmp_path / "a.fits", [1, 2, 3])


def test_sweep_temp_files_removes_only_our_temps(tmp_path):
    keep = ["a.fits", ".hidden", "x.fits.part", "notes.tmp", "sub/b.fits", "sub/.ccdwatch-tmpx"]
    ours = [".ccdwatch-tmp-0a1b2c-a.fits", "sub/deeper/.ccdwatch-tmp-ffffff-stack.fits"]
    for rel in keep + ours:
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x")
    outside = tmp_path.parent / f"{tmp_path.name}-outside"
    outside.mkdir()
    (outside / ".ccdwatch-tmp-000000-x.fits").write_bytes(b"x")
    (tmp_path / "linkdir").symlink_to(outside)
    removed = sweep_temp_files(tmp_path)
    assert sorted(removed) == sorted(tmp_path / r for r in ours)
    assert all((tmp_path / r).exists() for r in keep)
    assert (outside / ".ccdwatch-tmp-000000-x.fits").exists()
    # a temp written by write_product is recognised by both helpers
    assert is_temp_name(ours[0]) and sweep_temp_files(tmp_path) == []
    assert sweep_temp_files(tmp_path / "missing") == []


def test_sweep_spares_young_temps(tmp_path):
    p = tmp_path / ".ccdwatch-tmp-abc-x.fits"
    p.write_bytes(b"x")
    assert sweep_temp_files(tmp_path, min_age_seconds=3600) == []
    old = time.time() - 7200
    os.utime(p, (old, old))
    assert sweep_temp_files(tmp_path, min_age_seconds=3600) == [p]


# ------------------------------------------------------------------------------ names
@pytest.mark.parametrize("name, expected", [
    ("M51_001.fits", False), (".M51_001.fits", True), ("M51_001.fits.part", True),
    ("M51_001.FITS.TMP", True), ("M51_001.fits~", True), ("a.fits.partial", True),
    ("a.fits.crdownload", True), (".ccdwatch-tmp-1a2b-stack.fits", True), ("dir/.x.fits", True),
])
def test_is_temp_name(name, expected):
    assert is_temp_name(name) is expected


@pytest.mark.parametrize("name, expected", [
    ("a.fits", ".fits"), ("a.FIT", ".fits"), ("a.Fts", ".fits"), ("a.fits.fz", ".fz"),
    ("a.fz", ".fz"), ("a.fits.gz", ".gz"), ("a.FIT.GZ", ".gz"), ("a.txt.gz", None),
    ("a.gz", None), ("a.jpg", None), ("fits", None), ("a.fits.bak", None),
])
def test_fits_suffix(name, expected):
    assert fits_suffix(name) == expected


HOSTILE = ["../../x", "/etc/x", "..", ".", "", "   ", "a" * 300, "Ångström M51 ☃", "x\0y",
           "-rf", "NUL", "C:\\Windows\\x", "~/x", "a/../../../b", "\u202eevil"]


@pytest.mark.parametrize("value", HOSTILE + [None])
def test_safe_component_hostile_values(value, tmp_path):
    s = safe_component(value)
    assert SAFE_RE.match(s) and len(s) <= 64 and s not in (".", "..")
    p = safe_product_path(tmp_path, "stacks", value, "x.fits")
    assert p.resolve().is_relative_to(tmp_path.resolve()) and p.parent.parent.parent == tmp_path


def test_safe_component_is_readable_and_distinct():
    assert safe_component("M 51") == "M_51"
    assert safe_component("Ångström") == "Angstrom"
    assert safe_component(None) == safe_component("  ") == "unnamed"
    assert safe_component("", default="nofilter") == "nofilter"
    long_a, long_b = "stack_" + "a" * 100 + "_v1.fits", "stack_" + "a" * 101 + "_v1.fits"
    ca, cb = safe_component(long_a), safe_component(long_b)
    assert ca != cb and ca.endswith(".fits") and len(ca) == 64
    assert safe_component(long_a) == ca  # deterministic
    assert safe_component("..") != safe_component("日本")  # nothing usable, still distinct


def test_safe_product_path_refuses_symlink_escape(tmp_path):
    root = tmp_path / "products"
    root.mkdir()
    (root / "stacks").symlink_to(tmp_path)
    with pytest.raises(ValueError):
        safe_product_path(root, "stacks", "x.fits")
    with pytest.raises(ValueError):
        safe_product_path(root)


@settings(max_examples=300, deadline=None)
@given(value=st.text(), max_len=st.integers(1, 80))
def test_safe_component_property(value, max_len):
    s = safe_component(value, max_len=max_len, default="x")
    assert SAFE_RE.match(s) and len(s) <= max_len
    assert s == safe_component(value, max_len=max_len, default="x")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(parts=st.lists(st.text(), min_size=1, max_size=4))
def test_safe_product_path_property(parts, tmp_path):
    p = safe_product_path(tmp_path, *parts)
    rel = p.relative_to(tmp_path)
    assert len(rel.parts) == len(parts)
    assert all(SAFE_RE.match(c) for c in rel.parts)
    assert p.resolve().is_relative_to(tmp_path.resolve())


@pytest.mark.parametrize("n_keys", [28, 29, 30, 50, 65])
def test_size_estimate_of_a_product_matches_what_is_written(tmp_path: Path, n_keys: int) -> None:
    """The free-space check's estimate (no serialisation) is the size on disk for image and table
    HDUs, headers of any length included: 29 and 65 keys make 35 and 71 cards, whose END card
    exactly fills the last 2880-byte block."""
    header = fits.Header([(f"KEY{i}", i) for i in range(n_keys)])
    table = fits.BinTableHDU.from_columns([fits.Column(name="X", format="E", array=np.arange(333, dtype=np.float32))])
    hdul = fits.HDUList([fits.PrimaryHDU(np.zeros((101, 77), np.float32), header=header), table,
                         fits.ImageHDU(np.zeros((101, 77), np.uint8), name="BADPIX")])
    estimate = _estimate_bytes(hdul)
    write_product(tmp_path / "p.fits", hdul)
    assert estimate == (tmp_path / "p.fits").stat().st_size


def _planes(shape=(300, 401)):
    """Float planes larger than a write slice (256 KiB), an odd width: the last slice is short."""
    data = sky_like(21, shape)
    data[3, 4], data[5, 6] = np.nan, np.inf
    data.view(np.uint32)[7, 8] = 0x7FC00123  # a NaN with a payload: every bit is written as it is
    sigma = (np.sqrt(np.abs(np.nan_to_num(data))) + np.float32(3.0)).astype(np.float64)
    return data, sigma


@pytest.mark.parametrize("missed", [False, True])
def test_float_planes_are_swapped_as_they_are_hashed_into_astropys_bytes(tmp_path, monkeypatch, missed):
    """write_product hands astropy native float planes as big-endian views and swaps them slice by
    slice as it hashes: the file astropy itself writes, byte for byte; the HDUs hold their own
    arrays again afterwards. When astropy does not hand a plane over whole (``missed``), the
    product is written again the plain way, to the same bytes."""
    from ccdwatch.fitsio import atomic

    monkeypatch.setattr(atomic, "_SLICE", 256 << 10)  # planes of several slices, whatever the default
    data, sigma = _planes()
    small = np.arange(12, dtype=np.float32).reshape(3, 4)  # below a slice: astropy's own swap
    strided = np.asfortranarray(data)  # not C-contiguous: astropy's own swap
    counts = np.arange(data.size, dtype=np.uint16).reshape(data.shape)  # unsigned: astropy's BZERO
    make = lambda: fits.HDUList([fits.PrimaryHDU(data), fits.ImageHDU(sigma, name="UNCERT"),  # noqa: E731
                                 fits.ImageHDU(small, name="SMALL"), fits.ImageHDU(strided, name="F"),
                                 fits.ImageHDU(counts, name="N")])
    make().writeto(tmp_path / "astropy.fits")
    swapped = []
    real = atomic._HashingWriter._write_swapped
    monkeypatch.setattr(atomic._HashingWriter, "_write_swapped",
                        lambda self, view, owner: False if missed else swapped.append(view.nbytes) or real(self, view, owner))
    hdus = make()
    sha = write_product(tmp_path / "ours.fits", hdus)
    assert sorted(swapped) == ([] if missed else sorted([data.nbytes, sigma.nbytes]))  # the two big C planes
    assert (tmp_path / "ours.fits").read_bytes() == (tmp_path / "astropy.fits").read_bytes()
    assert sha == sha256_file(tmp_path / "ours.fits")
    assert hdus[0].data is data and hdus[1].data is sigma  # given back, unchanged
    assert data.view(np.uint32)[7, 8] == 0x7FC00123
    with fits.open(tmp_path / "ours.fits") as back:
        assert back[0].data.view(np.uint32).tobytes() == data.astype(">f4").view(np.uint32).tobytes()
        np.testing.assert_array_equal(back["UNCERT"].data, sigma)
        np.testing.assert_array_equal(back["N"].data, counts)


def test_any_fits_name_looks_at_the_top_level_only(tmp_path):
    """`watch --once` starts the workers' server at once when the incoming folder holds a FITS
    name (temp names and other files do not count), else only once its scan finds files."""
    from ccdwatch.fitsio.names import any_fits_name

    assert not any_fits_name(tmp_path / "absent")
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / ".ccdwatch-tmp-1-a.fits").write_bytes(b"")
    (tmp_path / "b.fits.part").write_bytes(b"")
    (tmp_path / "night").mkdir()
    (tmp_path / "night" / "c.fits").write_bytes(b"")
    assert not any_fits_name(tmp_path)
    (tmp_path / "d.FIT").write_bytes(b"")
    assert any_fits_name(tmp_path)


def test_read_ahead_advises_only_what_read_raw_would_open(tmp_path, monkeypatch):
    """`read_ahead` (a catch-up's prefetch) asks the kernel to read regular files, at most
    ``max_bytes`` of each, and skips, without raising or blocking, what `read_raw` refuses."""
    from ccdwatch.fitsio import read_ahead

    good = write_primary(tmp_path / "good.fits", bias_like())
    small = write_primary(tmp_path / "small.fits", bias_like(shape=(4, 4)))
    fifo = tmp_path / "fifo.fits"
    os.mkfifo(fifo)
    link = tmp_path / "link.fits"
    link.symlink_to(good)
    (tmp_path / "dir.fits").mkdir()
    advised: list[tuple[int, int, int]] = []
    real = os.posix_fadvise

    def spy(fd: int, offset: int, length: int, advice: int) -> None:
        advised.append((os.fstat(fd).st_ino, offset, length))
        assert advice == os.POSIX_FADV_WILLNEED
        real(fd, offset, length, advice)

    monkeypatch.setattr(os, "posix_fadvise", spy)
    limit = good.stat().st_size - 2880  # less than the file: the length advised is the limit
    read_ahead([fifo, link, tmp_path / "dir.fits", tmp_path / "gone.fits", good, small], limit)
    assert advised == [(good.stat().st_ino, 0, limit), (small.stat().st_ino, 0, small.stat().st_size)]
    assert read_raw(good).data is not None  # nothing changed for the reader


def _cached_bytes(path: Path) -> int | None:
    """Bytes of ``path`` in the page cache (util-linux ``fincore``), None when it cannot tell."""
    try:
        out = subprocess.run(["fincore", "--bytes", "--noheadings", "--output", "RES", str(path)],
                             capture_output=True, text=True, timeout=30, check=True).stdout.strip()
        return int(out)
    except (OSError, subprocess.SubprocessError, ValueError):
        return None


def test_a_raw_read_for_the_last_time_leaves_the_page_cache(tmp_path):
    """`read_raw(drop_cache=True)` (a light being calibrated) lets the file's cached pages go; a
    plain read keeps them (an ingest, whose light is read again to be calibrated)."""
    data = np.arange(512 * 512, dtype=np.uint16).reshape(512, 512)
    paths = [tmp_path / f"f{i}.fits" for i in range(3)]
    for p in paths:
        fits.PrimaryHDU(data).writeto(p)
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)  # clean pages: the kernel drops no dirty page
        finally:
            os.close(fd)
        p.read_bytes()  # cached
    control = os.open(paths[2], os.O_RDONLY)
    try:
        os.posix_fadvise(control, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(control)
    if _cached_bytes(paths[2]) != 0 or not _cached_bytes(paths[0]):
        pytest.skip("no fincore here, or a file system whose pages cannot be dropped (tmpfs)")
    assert np.array_equal(read_raw(paths[0], drop_cache=True).data, data)
    assert np.array_equal(read_raw(paths[1]).data, data)
    assert _cached_bytes(paths[0]) == 0
    assert _cached_bytes(paths[1]) >= paths[1].stat().st_size  # whole pages


def test_planes_sharing_memory_and_odd_planes_are_written_as_astropy_writes_them(tmp_path):
    """The planes handed to astropy as big-endian views are recognised by the array astropy
    writes, not by its address: a plane that is a leading slice of another, or the same memory
    seen as integers, is written as astropy writes it (before, one of the two went out with its
    bytes in the wrong order, and the check that a plane was missed did not see it). An empty
    (n, 0) plane is written; a plane read lazily with BLANK is not loaded to be looked at."""
    from ccdwatch.fitsio import atomic

    a = np.random.default_rng(3).standard_normal((1024, 512)).astype(np.float32)
    assert a.nbytes >= 2 * atomic._SLICE
    cases = {
        "prefix": lambda: fits.HDUList([fits.PrimaryHDU(a), fits.ImageHDU(a[:512], name="TOP")]),
        "intview": lambda: fits.HDUList([fits.PrimaryHDU(a), fits.ImageHDU(a.view(np.int32), name="BITS")]),
        "empty": lambda: fits.HDUList([fits.PrimaryHDU(np.zeros((5, 0), np.float32))]),
    }
    for name, make in cases.items():
        make().writeto(tmp_path / f"{name}-astropy.fits")
        sha = write_product(tmp_path / f"{name}.fits", make())
        assert (tmp_path / f"{name}.fits").read_bytes() == (tmp_path / f"{name}-astropy.fits").read_bytes(), name
        assert sha == sha256_file(tmp_path / f"{name}.fits"), name
    blanked = np.arange(700 * 700, dtype=np.int16).reshape(700, 700)
    src = tmp_path / "blank-src.fits"
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(blanked, name="BLANKED", header=fits.Header([("BLANK", -1)]))]).writeto(src)
    with fits.open(src, lazy_load_hdus=True) as lazy:
        write_product(tmp_path / "blank.fits", lazy)
    with fits.open(tmp_path / "blank.fits") as back, fits.open(src) as ref:
        assert back["BLANKED"].header["BITPIX"] == 16
        np.testing.assert_array_equal(back["BLANKED"].data, ref["BLANKED"].data)
