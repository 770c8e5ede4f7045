"""Compressed FITS in and out: tile-compressed (``.fits.fz``) and gzipped (``.fits.gz``) raw frames
read on the defaults, without decompression bombs; products optionally written tile-compressed."""

from __future__ import annotations

import gzip
import hashlib
import io
import time
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from sqlalchemy import select

from ccdwatch import synth
from ccdwatch.catalog import Catalog
from ccdwatch.config import Config
from ccdwatch.daemon.watch import Watcher
from ccdwatch.fitsio import Compression, RejectedFile, read_product, read_product_hdus, read_raw, write_product
from ccdwatch.models import Calibrated, Frame, Master, Stack
from ccdwatch.pipeline import Pipeline
from ccdwatch.pipeline.ingest import wants
from ccdwatch.report import build_report

from .helpers import make_config


def _gzip_tiled(frame: np.ndarray) -> tuple[bytes, fits.Header]:
    """A tile-compressed (GZIP_1, one tile) frame: the file's bytes and its table header."""
    buf = io.BytesIO()
    fits.HDUList([fits.PrimaryHDU(), fits.CompImageHDU(frame, compression_type="GZIP_1",
                                                       tile_shape=frame.shape)]).writeto(buf)
    blob = buf.getvalue()
    return blob, fits.Header.fromstring(blob[2880:5760])


def _with_heap(blob: bytes, header: fits.Header, heap: bytes) -> bytes:
    """The file with its one tile's compressed bytes replaced by ``heap``."""
    header = header.copy()
    header["PCOUNT"], header["TFORM1"] = len(heap), f"1PB({len(heap)})"
    head = header.tostring().encode()
    head += b" " * (-len(head) % 2880)
    data = np.array([len(heap), 0], dtype=">i4").tobytes() + heap
    return blob[:2880] + head + data + b"\0" * (-len(data) % 2880)


def test_tile_bomb_is_quarantined_quickly_without_big_memory(tmp_path):
    frame = np.random.default_rng(1).integers(900, 1100, (64, 64)).astype(np.uint16)
    blob, header = _gzip_tiled(frame)
    good = tmp_path / "good.fits.fz"
    good.write_bytes(blob)
    np.testing.assert_array_equal(read_raw(good, allow_compressed=True).data, frame)
    # the one 8 kB tile forged to inflate to 256 MiB of zeros: a 260 kB file
    deflate = zlib.compressobj(9, zlib.DEFLATED, 31)
    heap = b"".join(deflate.compress(bytes(1 << 20)) for _ in range(256)) + deflate.flush()
    bomb = tmp_path / "bomb.fits.fz"
    bomb.write_bytes(_with_heap(blob, header, heap))
    assert bomb.stat().st_size < 1 << 20
    tracemalloc.start()
    try:
        with pytest.raises(RejectedFile) as caught:
            read_raw(bomb, allow_compressed=True, max_data_bytes=1 << 20)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert caught.value.reason == "too-large" and "decompression bomb" in caught.value.message
    assert peak < 16 << 20, peak  # astropy alone inflated it whole: ~600 MB


def test_absurd_tiles_are_refused_before_decoding(tmp_path):
    frame = np.zeros((64, 64), np.uint16)
    blob, header = _gzip_tiled(frame)
    header["ZTILE1"] = 10**9  # one tile as large as the image may be; this one is not
    head = header.tostring().encode()
    path = tmp_path / "tiles.fits.fz"
    path.write_bytes(blob[:2880] + head + b" " * (-len(head) % 2880) + blob[5760:])
    with pytest.raises(RejectedFile) as caught:
        read_raw(path, allow_compressed=True)
    assert caught.value.reason == "bad-header" and "ZTILE1" in caught.value.message


def test_compressed_names_are_read_on_the_defaults():
    assert Config().ingest.allow_compressed
    for name in ("a.fits.fz", "a.fits.gz", "a.fit.gz", "a.fts.gz", "a.FITS.FZ"):
        assert wants(Path(name)), name
    assert not wants(Path("a.txt.gz"))


def _compress_copy(plain: Path, target: Path, i: int) -> Path:
    """A compressed copy of a raw frame, in turn tile-compressed (RICE_1) and gzipped."""
    if i % 2 == 0:
        with fits.open(plain) as hdul:
            header = hdul[0].header.copy()
            data = hdul[0].data
            out = target / f"{plain.stem}.fits.fz"
            fits.HDUList([fits.PrimaryHDU(), fits.CompImageHDU(data, header=header, compression_type="RICE_1")]
                         ).writeto(out)
        return out
    suffix = (".fits.gz", ".fit.gz", ".fts.gz")[i // 2 % 3]
    out = target / f"{plain.stem}{suffix}"
    out.write_bytes(gzip.compress(plain.read_bytes(), mtime=0))
    return out


def _reduce(cfg) -> Catalog:
    cat = Catalog(cfg.paths.database)
    with Pipeline(cfg, cat) as pipe:
        Watcher(cfg, pipe, progress=False).run_once()
    return cat


def _rows(cat: Catalog) -> dict[str, tuple]:
    with cat.reader() as s:
        return {Path(f.path).name.split(".")[0]: (f.imagetyp, f.state, f.exptime, f.filter, f.object, f.camera_key,
                                                   f.naxis1, f.naxis2, f.n_stars, f.fwhm, f.sky, f.sky_noise)
                for f in s.scalars(select(Frame))}


def _pixels(cat: Catalog) -> dict[str, np.ndarray]:
    with cat.reader() as s:
        calibrated = {Path(f.path).name.split(".")[0]: c.path for f, c in s.execute(
            select(Frame, Calibrated).join(Calibrated, Calibrated.frame_id == Frame.id).where(Calibrated.current))}
        masters = {f"{m.kind}-{m.filter}": m.path for m in s.scalars(select(Master))}
        stacks = {f"stack-{x.filter}": x.path for x in s.scalars(select(Stack))}
    return {k: read_product(p)[1] for k, p in {**calibrated, **masters, **stacks}.items()}


def test_compressed_raws_and_products_give_the_same_catalogue_and_pixels(tmp_path):
    camera = synth.Camera(shape=(128, 160))
    plain_cfg = make_config(tmp_path / "plain")
    truth = synth.make_night(plain_cfg.paths.incoming, camera=camera, seed=31, n_bias=3, n_dark=3, n_flat=3,
                             filters=("V",), n_light=3, n_stars=40)
    packed_cfg = make_config(tmp_path / "packed", products={"compress": "gzip"})
    raws = [p for kind in ("bias", "dark", "flat", "light") for p in truth.files[kind]]
    for i, raw in enumerate(raws):
        _compress_copy(raw, packed_cfg.paths.incoming, i)
    plain, packed = _reduce(plain_cfg), _reduce(packed_cfg)
    try:
        rows = _rows(plain)
        assert rows == _rows(packed) and len(rows) == len(raws)
        assert {r[1] for r in rows.values() if r[0] == "light"} == {"stacked"}
        a, b = _pixels(plain), _pixels(packed)
        assert a.keys() == b.keys() and len(a) == 3 + 3 + 1
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)  # lossless, NaN where NaN
        with packed.reader() as s:
            stack = s.scalar(select(Stack.path))
            names = [Path(p).name for p in s.scalars(select(Calibrated.path))]
        assert names and not any(suffix in n for n in names for suffix in (".fits_", ".fit_", ".fts_"))
        # the night report reads the compressed products (and re-reads the compressed raws) too
        with packed.reader() as s:
            night = s.scalar(select(Frame.night).where(Frame.imagetyp == "light"))
        pictures = {}
        for label, cfg, cat in (("plain", plain_cfg, plain), ("packed", packed_cfg, packed)):
            page = build_report(cfg, cat, night, tmp_path / f"report-{label}")
            pictures[label] = sorted(p.name for p in (page.parent / "img").glob("*.png"))
        assert len(pictures["packed"]) == len(pictures["plain"]) >= 4, pictures
        with fits.open(stack) as hdul:  # really tile-compressed on disk
            assert isinstance(hdul[1], fits.CompImageHDU) and hdul[0].data is None
    finally:
        plain.close()
        packed.close()


@pytest.mark.parametrize("method", ["gzip", "rice"])
def test_compressed_products_read_back_and_are_deterministic(tmp_path, method, monkeypatch):
    rng = np.random.default_rng(5)
    image = rng.normal(400.0, 20.0, (256, 320)).astype(np.float32)
    image[3, 4] = np.nan
    mask = (rng.random((256, 320)) < 0.01).astype(np.uint8)
    header = fits.Header({"OBJECT": "M51", "OVERSCAN": 1001.5})

    def hdus() -> fits.HDUList:
        table = fits.BinTableHDU.from_columns([fits.Column(name="X", format="E", array=np.arange(3.0))],
                                              name="SOURCES")
        return fits.HDUList([fits.PrimaryHDU(image, header=header), table, fits.ImageHDU(mask, name="BADPIX")])

    how = Compression(method, 16.0)
    sha = write_product(tmp_path / "a.fits", hdus(), compression=how)
    assert sha == hashlib.sha256((tmp_path / "a.fits").read_bytes()).hexdigest()  # hashed as written
    later = time.time() + 3600.0  # an hour later (gzip streams carry the time they were made)
    monkeypatch.setattr(time, "time", lambda: later)
    assert write_product(tmp_path / "b.fits", hdus(), compression=how) == sha  # same bytes every time
    monkeypatch.undo()
    back = read_product_hdus(tmp_path / "a.fits")
    assert back[0].header["OBJECT"] == "M51" and back[0].header["OVERSCAN"] == 1001.5
    assert list(back["SOURCES"].data["X"]) == [0.0, 1.0, 2.0]
    np.testing.assert_array_equal(back["BADPIX"].data, mask)  # integer planes: lossless
    got = back[0].data
    assert np.isnan(got[3, 4]) and np.isfinite(np.delete(got.ravel(), 3 * 320 + 4)).all()
    if method == "gzip":
        np.testing.assert_array_equal(got, image)
    else:  # quantised to sigma/16 with dithering: an error well below the noise
        err = np.nan_to_num(got - image)
        assert np.abs(err).max() < 20.0 / 16 and abs(float(err.mean())) < 0.05
    assert (tmp_path / "a.fits").stat().st_size < image.nbytes


@pytest.mark.parametrize(("table", "needles"), [
    ({"compress": "fpack"}, ["products.compress", "'gzip'", "'rice'"]),
    ({"quantize_level": 0}, ["products.quantize_level", "> 0"]),
    ({"compres": "gzip"}, ["did you mean 'products.compress'"]),
])
def test_bad_products_config_names_the_key_and_the_fix(tmp_path, table, needles):
    from ccdwatch.config import ConfigError, parse_config

    with pytest.raises(ConfigError) as err:
        parse_config({"products": table}, base=tmp_path)
    for needle in needles:
        assert needle in str(err.value)
